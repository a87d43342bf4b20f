"""PCA lighting (``--augment imagenet``) is fb.resnet.torch's Lighting transform."""

import torch

from dataloader import pca_lighting
from dataloader.augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC


def fb_resnet_lighting(alpha: torch.Tensor) -> torch.Tensor:
    """fb.resnet.torch, datasets/transforms.lua: eigvec:clone():cmul(alpha:view(1, 3):expand(3,
    3)):cmul(eigval:view(1, 3):expand(3, 3)):sum(2), for one image's alpha."""
    eigvec, eigval = torch.tensor(IMAGENET_EIGVEC), torch.tensor(IMAGENET_EIGVAL)
    return (eigvec * alpha.view(1, 3).expand(3, 3) * eigval.view(1, 3).expand(3, 3)).sum(1)


def test_largest_component_is_a_brightness_shift():
    expected = torch.tensor([-0.5675, -0.5808, -0.5836]) * 0.2175
    torch.testing.assert_close(fb_resnet_lighting(torch.tensor([1.0, 0.0, 0.0])), expected)
    torch.testing.assert_close(
        expected, torch.tensor([-0.1234, -0.1263, -0.1269]), atol=1e-4, rtol=0
    )


def test_shift_of_each_image_is_fb_resnet_lighting_of_its_alpha():
    images = torch.rand(5, 3, 4, 4)
    shift = pca_lighting(images, torch.Generator().manual_seed(3), alphastd=0.1) - images
    alpha = 0.1 * torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    for image_shift, image_alpha in zip(shift, alpha, strict=True):
        expected = fb_resnet_lighting(image_alpha)
        torch.testing.assert_close(image_shift, expected[:, None, None].expand(3, 4, 4))
