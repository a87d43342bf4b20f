"""Command-line tools on top of the library: ``python -m tools.convert`` (the authors' ImageNet
weights as a checkpoint of this repository) and ``python -m tools.visualize`` (the fish of a
trained model)."""
