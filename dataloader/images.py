"""From a decoded image of any mode and size to the square RGB pixels a model takes: 32x32
for the CIFAR models, 224x224 for the ImageNet ones.

data/download_data.py (preparing a dataset), predict.py (classifying one's own images) and the
manifest readers share these rules, so an image gives the same pixels whichever way it comes in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from utils import UserError, one_line

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 32  # CIFAR's
# The files taken as images, in a dataset's folders and among predict.py's inputs: formats
# that Pillow decodes without plug-ins.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
UINT16_MAX = 65535
# The ImageNet models were evaluated on the centre 224x224 of each image scaled to a shorter
# side of 256 (torchvision's Resize(256) and CenterCrop(224) in the authors' main.py).
IMAGENET_CROP_FRACTION = 224 / 256


class ImageError(UserError, ValueError):
    """An image that decodes but cannot be used as it is; the message says why, in one line."""


class ImageSizeError(ImageError):
    """An image that is not 32x32 where resizing was not asked for."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of an opened image, turned upright as its EXIF orientation says.

    convert("RGB") would clip 16- and 32-bit integer pixels at 255 and floating-point pixels
    at 1, so those are brought to 8 bits here: 16-bit by their high byte, 32-bit integers by
    the same rule when they lie within 0..65535, floating-point ones in [0, 1] times 255.
    Other ranges have no known white and are refused.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        gray = np.asarray(image).astype(np.uint16) >> 8
    elif image.mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > UINT16_MAX:
            raise ImageError(
                f"32-bit integer pixels range over {low}..{high}, outside the 16-bit "
                f"0..{UINT16_MAX} that can be scaled to 8 bits"
            )
        gray = values >> 8
    elif image.mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageError(
                f"floating-point pixels range over {values.min()}..{values.max()}, "
                "outside the 0..1 that can be scaled to 8 bits"
            )
        gray = np.rint(values * 255)
    else:
        try:
            return image.convert("RGB")
        except ValueError as error:
            raise ImageError(f"mode {image.mode} cannot be converted to RGB ({error})") from None
    return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")


def cifar_pixels(image: Image.Image, resize: bool) -> np.ndarray:
    """An opened image as uint8 RGB [32, 32, 3] (see to_rgb for the modes).

    A 32x32 image keeps its pixels. Another size raises ImageSizeError unless resize is
    true; then its shorter side is brought to 32 (bicubic) and the centre cut out.
    """
    if resize:
        return square_pixels(image, IMAGE_SIZE)
    rgb = to_rgb(image)
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageSizeError(f"{rgb.width}x{rgb.height}, not {IMAGE_SIZE}x{IMAGE_SIZE}")
    return np.array(rgb)


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """An opened image as uint8 RGB [size, size, 3] (see to_rgb for the modes), prepared as
    the models taking size x size inputs saw their images.

    At CIFAR's 32, a 32x32 image keeps its pixels; another has its shorter side brought to
    32 (bicubic) and the centre cut out, as download_data.py --resize does. At a larger size
    (ImageNet's 224), every image is prepared as the authors evaluated their ImageNet models:
    the shorter side brought to size / IMAGENET_CROP_FRACTION (256; bilinear), then the
    centre size x size cut out.
    """
    if size != IMAGE_SIZE:
        return np.array(resize_and_centre_crop(to_rgb(image), size))
    # A large JPEG decodes at a fraction of its size, still no smaller than 32x32.
    image.draft(None, (size, size))
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = ImageOps.fit(rgb, (size, size), Image.Resampling.BICUBIC)
    return np.array(rgb)


def resize_and_centre_crop(rgb: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(round(size / IMAGENET_CROP_FRACTION))`` then
    ``CenterCrop(size)`` on a PIL image, with their rounding: the longer side is truncated,
    the crop's offsets rounded."""
    shorter = round(size / IMAGENET_CROP_FRACTION)
    width, height = rgb.size
    if width <= height:
        scaled = (shorter, int(shorter * height / width))
    else:
        scaled = (int(shorter * width / height), shorter)
    if scaled != rgb.size:
        rgb = rgb.resize(scaled, Image.Resampling.BILINEAR)
    left, top = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
    return rgb.crop((left, top, left + size, top + size))


def preparation(size: int) -> dict:
    """How :func:`square_pixels` prepares an image for a model of input ``size``, in the
    terms of timm's ``pretrained_cfg``: the resampling and the fraction of the resized image
    that the centre crop keeps."""
    if size == IMAGE_SIZE:
        return {"interpolation": "bicubic", "crop_pct": 1.0}
    return {"interpolation": "bilinear", "crop_pct": IMAGENET_CROP_FRACTION}


def image_tensor(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """An opened image as the uint8 RGB [3, size, size] tensor of :func:`square_pixels`."""
    # torch is imported here, the one place it is needed: data/download_data.py uses the rest
    # of this module and starts about 2 s sooner without it.
    import torch

    return torch.from_numpy(square_pixels(image, size)).permute(2, 0, 1).contiguous()


def read_image_file(path: Path, size: int = IMAGE_SIZE) -> torch.Tensor:
    """An image file of any format PIL reads, any size and mode, as uint8 RGB
    [3, size, size], prepared for a model of that input size (:func:`square_pixels`).

    At CIFAR's 32, a 32x32 image keeps its pixels, so a prepared dataset's PNGs give exactly
    what training and evaluation saw; others are resized as download_data.py --resize does.
    Every failure is an ImageError naming the file.
    """
    if Path(path).exists() and not Path(path).is_file():
        # A FIFO or device would block the read; a folder is no image either.
        raise ImageError(f"{path}: not a regular file")
    try:
        with Image.open(path) as opened:
            return image_tensor(opened, size)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ImageError as error:
        raise ImageError(f"{path}: cannot use this image ({error})") from None
    except Exception as error:
        # PIL's decoders report damaged or foreign files with many kinds of exception.
        raise ImageError(f"{path}: not a readable image ({one_line(error)})") from None
