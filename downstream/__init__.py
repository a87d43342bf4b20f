"""FishNet beyond classification: torchvision detection and segmentation models on its
feature maps, and the canvas task that shows them learning on CIFAR-10 images.

- ``downstream.backbones``: a FishNet (or the ResNet baseline) as a detection backbone with a
  feature pyramid, and as a segmentation model;
- ``downstream.canvas``: canvases with CIFAR-10 images pasted on them, their boxes and
  per-pixel masks, made deterministically from a seed;
- ``downstream.metrics``: box mean average precision and mean intersection over union.
"""
