"""From a decoded image of any mode and size to the 32x32 RGB pixels the CIFAR models take.

data/download_data.py (preparing a dataset), predict.py (classifying one's own images) and the
manifest readers share these rules, so an image gives the same pixels whichever way it comes in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from utils import one_line

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 32
UINT16_MAX = 65535


class ImageError(ValueError):
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
        # A large JPEG decodes at a fraction of its size, still no smaller than 32x32.
        image.draft(None, (IMAGE_SIZE, IMAGE_SIZE))
    rgb = to_rgb(image)
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        if not resize:
            raise ImageSizeError(f"{rgb.width}x{rgb.height}, not {IMAGE_SIZE}x{IMAGE_SIZE}")
        rgb = ImageOps.fit(rgb, (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.array(rgb)


def read_image_file(path: Path) -> torch.Tensor:
    """An image file of any format PIL reads, any size and mode, as uint8 RGB [3, 32, 32].

    A 32x32 image keeps its pixels, so a prepared dataset's PNGs give exactly what training
    and evaluation saw; others are resized as download_data.py --resize does
    (:func:`cifar_pixels`). Every failure is an ImageError naming the file.
    """
    if Path(path).exists() and not Path(path).is_file():
        # A FIFO or device would block the read; a folder is no image either.
        raise ImageError(f"{path}: not a regular file")
    try:
        with Image.open(path) as opened:
            pixels = cifar_pixels(opened, resize=True)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ImageError as error:
        raise ImageError(f"{path}: cannot use this image ({error})") from None
    except Exception as error:
        # PIL's decoders report damaged or foreign files with many kinds of exception.
        raise ImageError(f"{path}: not a readable image ({one_line(error)[:300]})") from None
    # torch is imported here, the one place it is needed: data/download_data.py uses the rest
    # of this module and starts about 2 s sooner without it.
    import torch

    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
