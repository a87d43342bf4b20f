"""The checkpoint format, and the one way from a checkpoint to a model ready to run.

A checkpoint is a dict saved with ``torch.save`` holding tensors and plain containers only,
so ``torch.load(weights_only=True)`` reads it without running code. Its keys:

==================  ==========================================================================
``format``          ``"fishnet-cifar-checkpoint"``; ``version``: :data:`CHECKPOINT_VERSION`
``model``           ``{"name": registered model, "kwargs": its factory's arguments}``
``state_dict``      the trained weights
``ema_state_dict``  the moving average of the weights, where the run kept one (``--ema``);
                    evaluation and prediction use it
``classes``         class names in label order
``normalization``   ``{"mean": [3 floats], "std": [3 floats]}`` of the training split
``dataset``         class names and the sha256 of the training manifest
``args``            the training flags
``history``         one dict per finished epoch; ``epoch``: their number
``train_state``     what --resume needs besides the weights (:class:`training.engine.TrainState`)
==================  ==========================================================================

Checkpoints of version 1 kept the resume state at the top level; they still load.
"""

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from dataloader import normalize
from dataloader.images import image_tensor, preparation, read_image_file
from models import MODELS, STEM_INPUT_SIZES, build_model, upgrade_state_dict
from training.precision import AMP_CHOICES, autocast, resolve_amp
from utils import UnsafeFile, UserError, atomic_write, load_torch_file, one_line

CHECKPOINT_FORMAT = "fishnet-cifar-checkpoint"
CHECKPOINT_FILES = ("last.pt", "best.pt")  # a run folder's checkpoints
CHECKPOINT_VERSION = 1
# A checkpoint of FishNet-201 is about 175 MB with its optimizer state; anything far
# larger is not one, and reading it whole could exhaust the memory. Its tensors take no
# more memory than the file's size (utils.load_torch_file).
MAX_CHECKPOINT_BYTES = 4 << 30


def checkpoints_in(folder: Path) -> list[str]:
    """The names of the checkpoints (:data:`CHECKPOINT_FILES`) that ``folder`` holds."""
    return [name for name in CHECKPOINT_FILES if (Path(folder) / name).exists()]


def refuse_existing_run(folder: Path) -> None:
    """A UserError if ``folder`` holds a run (a checkpoint): only --resume or --overwrite
    may touch it. A folder whose run ended before its first checkpoint holds nothing to
    keep."""
    kept = checkpoints_in(folder)
    if kept:
        raise UserError(
            f"{folder} already holds a run ({', '.join(kept)}); give another --out for a new "
            "run, --resume to continue this one, or --overwrite to replace it"
        )


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}
    try:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
    except (OSError, RuntimeError) as error:
        # torch.save reports a full disk as a RuntimeError; the previous file is intact.
        raise UserError(
            f"{path}: cannot write the checkpoint ({one_line(error)}); the previous one, "
            "if any, is intact"
        ) from None


def read_torch_file(path: Path, what: str = "checkpoint") -> object:
    """A torch file's content (tensors and plain containers only, so nothing in it runs),
    within the bounds of :func:`utils.load_torch_file`; anything else is a one-line
    UserError naming the file."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"{path}: no such {what} file")
        return load_torch_file(path, MAX_CHECKPOINT_BYTES)
    except UserError:
        raise
    except UnsafeFile as error:
        raise UserError(f"{path}: refused, {one_line(error)}") from None
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() and "unsupported" in str(error).lower():
            raise UserError(
                f"{path}: not a {what} of this repository (it holds objects other than "
                "tensors and plain containers, which are not loaded since that could run code)"
            ) from None
        raise UserError(f"{path}: not a readable {what} (damaged or not one)") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({one_line(error)})") from None
    except Exception as error:
        raise UserError(
            f"{path}: not a readable {what} (damaged, truncated or not one: {one_line(error)})"
        ) from None


def load_checkpoint(path: Path) -> dict:
    """Loads a checkpoint of this repository and checks its parts; anything else is a
    one-line UserError naming the file and what is wrong."""
    path = Path(path)
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a checkpoint of this repository")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"{path}: checkpoint version {checkpoint.get('version')!r}, "
            f"this code reads version {CHECKPOINT_VERSION}"
        )
    check_model_parts(checkpoint, path)
    return checkpoint


def _require(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise UserError(f"{path}: damaged checkpoint: {what}")


def _is_tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    )


def _is_str_dict(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def check_model_parts(checkpoint: dict, path: Path) -> None:
    """What every reader needs: the model's name and arguments, its weights, the classes,
    the normalisation, the training flags the readers use, the dataset's record and the
    epoch."""
    spec = checkpoint.get("model")
    _require(
        isinstance(spec, dict)
        and spec.get("name") in MODELS
        and isinstance(spec.get("kwargs"), dict),
        path,
        f"'model' must name one of {', '.join(MODELS)} with its arguments",
    )
    _require(_is_tensor_dict(checkpoint.get("state_dict")), path, "'state_dict' is not weights")
    if "ema_state_dict" in checkpoint:
        _require(_is_tensor_dict(checkpoint["ema_state_dict"]), path, "bad 'ema_state_dict'")
    classes = checkpoint.get("classes")
    _require(
        isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes),
        path,
        "'classes' must be a non-empty list of names",
    )
    stats = checkpoint.get("normalization")
    _require(isinstance(stats, dict), path, "no 'normalization'")
    for key in ("mean", "std"):
        values = stats.get(key)
        _require(
            isinstance(values, list)
            and len(values) == 3
            and all(isinstance(v, float | int) and math.isfinite(v) for v in values),
            path,
            f"normalization '{key}' must be 3 finite numbers",
        )
    _require(all(v > 0 for v in stats["std"]), path, "normalization 'std' must be positive")
    trained = checkpoint.get("args")
    _require(isinstance(trained, dict), path, "no training flags ('args')")
    _require(
        isinstance(trained.get("amp"), bool) or trained.get("amp") in (None, *AMP_CHOICES),
        path,
        f"'args' amp must be one of {', '.join(AMP_CHOICES)}",
    )
    dataset = checkpoint.get("dataset", {})  # converted checkpoints have none
    _require(
        isinstance(dataset, dict)
        and isinstance(dataset.get("path", ""), str)
        and isinstance(dataset.get("train_sha256", ""), str)
        and _is_str_dict(dataset.get("sha256", {})),
        path,
        "'dataset' must hold its path and manifest hashes as text",
    )
    epoch = checkpoint.get("epoch")
    _require(isinstance(epoch, int) and epoch >= 0, path, "'epoch' must be a whole number")
    _require(isinstance(checkpoint.get("history"), list), path, "'history' must be a list")


def model_from_checkpoint(checkpoint: dict, path: Path, weights: str | None = None) -> nn.Module:
    """The checkpoint's model with its weights: ``state_dict``, ``ema_state_dict`` or, by
    default, the moving average where the run kept one (it is what validation scored).

    The arguments are checked against the weights on the meta device first, so that a
    checkpoint claiming a huge model allocates nothing before it is refused.
    """
    if weights is None:
        weights = "ema_state_dict" if "ema_state_dict" in checkpoint else "state_dict"
    spec, state_dict = checkpoint["model"], checkpoint[weights]
    try:
        with torch.device("meta"):
            skeleton = build_model(spec["name"], **spec["kwargs"])
        # A checkpoint written before the layers had today's names, renamed as loading does.
        state_dict = upgrade_state_dict(skeleton, state_dict)
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state_dict.items()}
        if expected != found:
            wrong = sorted(set(expected) ^ set(found)) or [
                k for k in expected if expected[k] != found[k]
            ]
            raise ValueError(f"{len(wrong)} tensors differ, first {wrong[0]}")
        model = build_model(spec["name"], **spec["kwargs"])
        model.load_state_dict(state_dict)
    except (ValueError, RuntimeError, TypeError) as error:
        raise UserError(
            f"{path}: the weights do not fit {spec['name']} with {spec['kwargs']} "
            f"({one_line(error)})"
        ) from None
    num_outputs = spec["kwargs"].get("num_classes", 10)
    if num_outputs != len(checkpoint["classes"]):
        raise UserError(
            f"{path}: {len(checkpoint['classes'])} class names for {num_outputs} outputs"
        )
    return model


def pretrained_cfg(checkpoint: dict) -> dict:
    """What the checkpoint's model needs to be given images, under the keys of timm's
    ``pretrained_cfg``: the input size, the mean and std of [0, 1] pixels, how images are
    resized and cropped to it, and the class names."""
    size = STEM_INPUT_SIZES[checkpoint["model"]["kwargs"].get("stem", "cifar")]
    statistics = checkpoint["normalization"]
    return {
        "input_size": (3, size, size),
        "mean": tuple(statistics["mean"]),
        "std": tuple(statistics["std"]),
        **preparation(size),
        "num_classes": len(checkpoint["classes"]),
        "label_names": tuple(checkpoint["classes"]),
    }


class Preprocess:
    """An image file (or an opened PIL image) as a model's normalised float input
    [3, size, size]: the pixels predict.py reads (:func:`dataloader.images.square_pixels`),
    normalised with the training split's statistics."""

    def __init__(self, cfg: dict) -> None:
        self.size = cfg["input_size"][-1]
        self.mean, self.std = cfg["mean"], cfg["std"]

    def __call__(self, image: str | Path | Image.Image) -> Tensor:
        if isinstance(image, Image.Image):
            pixels = image_tensor(image, self.size)
        else:
            pixels = read_image_file(Path(image), self.size)
        return normalize(pixels[None], self.mean, self.std)[0]

    def __repr__(self) -> str:
        return f"Preprocess(size={self.size}, mean={self.mean}, std={self.std})"


@dataclass
class ReadyModel:
    """A checkpoint's model on a device, in evaluation mode, with the numerics of its
    training run: its normalisation, memory format and precision."""

    model: nn.Module
    checkpoint: dict
    device: torch.device
    amp: str
    channels_last: bool

    @property
    def classes(self) -> list[str]:
        return self.checkpoint["classes"]

    @property
    def normalization(self) -> dict:
        return self.checkpoint["normalization"]

    @property
    def input_size(self) -> int:
        """The side of the square images the model takes, its stem's
        (:data:`models.STEM_INPUT_SIZES`)."""
        return self.model.pretrained_cfg["input_size"][-1]

    def inputs(self, images: Tensor) -> Tensor:
        """uint8 [B, 3, H, W] images as the model's normalised float input."""
        statistics = self.normalization
        batch = normalize(images.to(self.device), statistics["mean"], statistics["std"])
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    @torch.no_grad()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """Every stage's map (the model's forward_features), in float32."""
        with autocast(self.device, self.amp):
            features = self.model.forward_features(self.inputs(images))
        return {name: feature.float() for name, feature in features.items()}

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax over the classes, float32 [B, num_classes]."""
        with autocast(self.device, self.amp):
            logits = self.model(self.inputs(images))
        return logits.float().softmax(dim=1)


def load_ready_model(
    path: Path, device: torch.device, amp: str | None = None, checkpoint: dict | None = None
) -> ReadyModel:
    """The model of a checkpoint file, ready to run on ``device``.

    The weights are the moving average where the run kept one. The precision is the run's
    on CUDA and fp32 on a CPU, unless ``amp`` says otherwise; the memory format is the run's.
    The model is in evaluation mode and carries what it takes to be given images of one's
    own: ``model.pretrained_cfg`` (:func:`pretrained_cfg`) and ``model.preprocess``
    (:class:`Preprocess`).
    """
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    trained = checkpoint["args"]
    model = model_from_checkpoint(checkpoint, path).to(device).eval()
    model.pretrained_cfg = pretrained_cfg(checkpoint)
    model.preprocess = Preprocess(model.pretrained_cfg)
    channels_last = bool(trained.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if amp is None:
        amp = resolve_amp(trained.get("amp"), device) if device.type == "cuda" else "off"
    return ReadyModel(model, checkpoint, device, amp, channels_last)
