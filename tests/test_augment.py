"""The augmentation table (dataloader.augment.AUGMENTATIONS), the pipelines built from it,
train.py's --augment and --cutout-size, and resuming runs recorded before the table."""

import dataclasses
import random
import re

import pytest
import torch

from dataloader import DeviceLoader, cutout, normalize, pca_lighting
from dataloader.augment import (
    AUGMENTATIONS,
    CONVERSIONS,
    Augmentation,
    Batch,
    Domain,
    Parameter,
    images_only,
    random_crop_flip,
    random_resized_crop_flip,
)
from dataloader.loader import AUGMENT_STREAM, SHUFFLE_STREAM, _stream_seed
from training.options import parse_args, resume_mismatches, upgrade_saved_args

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
# The values a batch of each domain holds: uint8 by its dtype; lighting shifts [0, 1] pixels
# by a few hundredths; normalised pixels lie between (0 - mean) / std and (1 - mean) / std.
RANGES = {
    Domain.PIXELS: (0, 255),
    Domain.UNIT: (-0.25, 1.25),
    Domain.NORMALISED: (
        min(-m / s for m, s in zip(MEAN, STD, strict=True)),
        max((1 - m) / s for m, s in zip(MEAN, STD, strict=True)),
    ),
}


def pixels(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)


def batch_of(images: torch.Tensor, seed: int = 0, epoch: int = 0) -> Batch:
    """A batch of ``images`` (labels 0, 1, ..., 9, 0, ...) whose every random source follows
    ``seed``."""
    return Batch(
        images=images,
        targets=torch.arange(len(images)) % 10,
        indices=torch.arange(len(images)),
        generator=torch.Generator().manual_seed(seed),
        host_random=random.Random(seed),
        epoch=epoch,
        seed=seed,
        num_classes=10,
    )


def loader(images: torch.Tensor, **kwargs) -> DeviceLoader:
    return DeviceLoader(
        images, torch.arange(len(images)), 25, mean=MEAN, std=STD, train=True, **kwargs
    )


def test_an_unknown_augmentation_is_refused_naming_the_choices(capsys):
    choices = ", ".join(AUGMENTATIONS)  # crop-flip, imagenet, none, cutout, ...
    with pytest.raises(ValueError, match=re.escape(f"'flop'; choose from: {choices}")):
        loader(pixels(50), augment=["crop-flip", "flop"])
    with pytest.raises(SystemExit):
        parse_args(["--augment", "crop-flip", "flop"])
    assert "invalid choice: 'flop'" in capsys.readouterr().err


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_augmentation_keeps_shape_dtype_and_range_and_follows_its_seed(name):
    augmentation = AUGMENTATIONS[name]
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    batch = pixels(8)
    if augmentation.works_on > Domain.PIXELS:
        batch = CONVERSIONS[augmentation.works_on](batch, mean, std)
    params = {parameter.name: parameter.default for parameter in augmentation.parameters}

    def augmented(seed: int) -> Batch:
        return augmentation.step(batch_of(batch.clone(), seed), params)

    result = augmented(1)
    assert result.images.shape == batch.shape and result.images.dtype == batch.dtype
    low, high = RANGES[augmentation.works_on]
    assert low <= result.images.min() and result.images.max() <= high
    assert torch.equal(augmented(1).images, result.images)
    assert torch.equal(augmented(1).targets, result.targets)
    assert name == "none" or not torch.equal(augmented(2).images, result.images)


# What DeviceLoader's training batches were before the table, from the same primitives: an
# augmentation by name, then cutout of the given size (0: none), drawing from one generator.
BEFORE_THE_TABLE = {
    "crop-flip": lambda images, generator, mean, std: normalize(
        random_crop_flip(images, generator), mean, std
    ),
    "imagenet": lambda images, generator, mean, std: normalize(
        pca_lighting(random_resized_crop_flip(images.float().div_(255), generator), generator),
        mean,
        std,
    ),
    "none": lambda images, generator, mean, std: normalize(images, mean, std),
}


def batches_before_the_table(images, augment, cutout_size, seed, epochs):
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    batches = []
    for epoch in range(epochs):
        shuffle = torch.Generator().manual_seed(_stream_seed(seed, epoch, SHUFFLE_STREAM))
        generator = torch.Generator().manual_seed(_stream_seed(seed, epoch, AUGMENT_STREAM, 0))
        order = torch.randperm(len(images), generator=shuffle)
        for start in range(0, len(images), 25):
            batch = BEFORE_THE_TABLE[augment](
                images[order[start : start + 25]], generator, mean, std
            )
            batches.append(cutout(batch, generator, cutout_size) if cutout_size else batch)
    return batches


@pytest.mark.parametrize(
    ("augment", "cutout_size"), [("crop-flip", 0), ("imagenet", 0), ("none", 0), ("crop-flip", 8)]
)
def test_the_same_seed_gives_the_batches_it_gave_before_the_table(augment, cutout_size):
    images = pixels(100)
    names = [augment, *(["cutout"] if cutout_size else [])]
    now = loader(images, augment=names, augment_params={"cutout_size": cutout_size}, seed=7)
    batches = []
    for epoch in range(2):
        now.set_epoch(epoch)
        batches += [batch for batch, _ in now]
    expected = batches_before_the_table(images, augment, cutout_size, seed=7, epochs=2)
    assert len(batches) == len(expected) == 8
    assert all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True))


def test_an_interrupted_epoch_with_cutout_continues_with_the_same_batches():
    options = {"augment": ["crop-flip", "cutout"], "augment_params": {"cutout_size": 8}}
    running = loader(pixels(100), seed=3, **options)
    running.set_epoch(1)
    batches = iter(running)
    next(batches)
    state = running.state_dict()
    rest = [images for images, _ in batches]
    resumed = loader(pixels(100), seed=3, **options)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for (a, _), b in zip(resumed, rest, strict=True))


def test_a_step_cannot_follow_one_on_a_later_domain():
    with pytest.raises(ValueError, match=r"crop-flip \(on uint8 pixels\) cannot follow cutout"):
        loader(pixels(50), augment=["cutout", "crop-flip"])
    loader(pixels(50), augment=["crop-flip", "imagenet", "cutout"])  # pixels, [0, 1], normalised


def test_an_added_augmentation_needs_no_other_edit(monkeypatch):
    # A parameter of its own, taken from the settings by its key, as --roll-pixels would be.
    roll = Augmentation(
        images_only(lambda images, generator, params: images.roll(params["pixels"], dims=-1)),
        Domain.PIXELS,
        (Parameter("pixels", int, 1, 1, 32, "columns to roll"),),
    )
    monkeypatch.setitem(AUGMENTATIONS, "roll", roll)
    monkeypatch.setitem(AUGMENTATIONS, "vflip", Augmentation(
        images_only(lambda images, generator, params: images.flip(-2)), Domain.PIXELS))  # fmt: skip
    assert parse_args(["--augment", "vflip", "cutout"]).augment == ["vflip", "cutout"]
    images = pixels(50)
    flipped = loader(images, augment=["roll", "vflip"], augment_params={"roll_pixels": 3})
    (batch, ids), *_ = flipped
    expected = normalize(images[ids].roll(3, dims=-1).flip(-2), MEAN, STD)
    assert torch.equal(batch, expected)


def test_augment_flags():
    assert parse_args([]).augment == ["crop-flip"] and parse_args([]).cutout_size is None
    assert parse_args(["--augment", "crop-flip", "cutout"]).cutout_size == 16
    args = parse_args(["--augment", "cutout", "--cutout-size", "8"])
    assert args.augment == ["cutout"] and args.cutout_size == 8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--augment", "cutout", "--cutout-size", "33"], "--cutout-size: must be from 1 to 32"),
        (["--cutout-size", "8"], "--cutout-size needs cutout in --augment"),
        # The flag of runs before the table: refused by name, not read as --cutout-size.
        (["--cutout", "8"], "--cutout 8: give --augment NAME cutout --cutout-size N instead"),
        (["--augment", "crop-flip", "cutout", "--cutout", "8"], "--cutout 8: give --augment"),
        (["--cutout", "0"], "(--cutout 0: leave cutout out of --augment)"),
        (["--augment", "cutout", "crop-flip"], "crop-flip (on uint8 pixels) cannot follow cutout"),
        (["--augment", "cutout", "none"], "none means no augmentation and stands alone"),
        (["--augment", "crop-flip", "crop-flip"], "crop-flip given more than once"),
    ],
)
def test_bad_augment_flags_are_one_line_errors(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith("train.py: error: ") and message in last_line


def legacy_args(augment: str, cutout_size: int) -> dict:
    """A checkpoint's args before the table: --augment one name, --cutout N (0: off)."""
    args = {k: v for k, v in vars(parse_args([])).items() if k != "cutout_size"}
    return {**args, "augment": augment, "cutout": cutout_size}


def test_args_recorded_before_the_table_read_as_todays():
    assert upgrade_saved_args({"augment": "crop-flip", "cutout": 8, "lr": 0.1}) == {
        "augment": ["crop-flip", "cutout"],
        "cutout_size": 8,
        "lr": 0.1,
    }
    assert upgrade_saved_args({"augment": "imagenet", "cutout": 0}) == {
        "augment": ["imagenet"],
        "cutout_size": None,
    }
    assert upgrade_saved_args({"augment": "none"}) == {"augment": ["none"], "cutout_size": None}
    # Cutout alone, as today's flags say it (none stands alone).
    assert upgrade_saved_args({"augment": "none", "cutout": 8}) == {
        "augment": ["cutout"],
        "cutout_size": 8,
    }
    today = {"augment": ["crop-flip"], "cutout_size": None}
    assert upgrade_saved_args(today) == today


def test_runs_recorded_before_the_table_resume_under_todays_flags():
    with_cutout = ["--augment", "crop-flip", "cutout", "--cutout-size", "8"]
    assert resume_mismatches(legacy_args("crop-flip", 0), parse_args([])) == []
    assert resume_mismatches(legacy_args("crop-flip", 8), parse_args(with_cutout)) == []
    # A changed augmentation is still refused.
    assert resume_mismatches(
        legacy_args("crop-flip", 0), parse_args(["--augment", "imagenet"])
    ) == ["--augment crop-flip (now imagenet)"]
    # Cutout's size is named only where both runs use cutout.
    assert resume_mismatches(legacy_args("crop-flip", 8), parse_args([])) == [
        "--augment crop-flip cutout (now crop-flip)"
    ]
    assert resume_mismatches(
        legacy_args("crop-flip", 8), parse_args(["--augment", "crop-flip", "cutout"])
    ) == ["--cutout-size 8 (now 16)"]


# The ingredients of the fastest CIFAR-10 recipes: crop, alternating-flip, mixup, cutmix.


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs():
    images = pixels(1000)
    epochs = [
        AUGMENTATIONS["alternating-flip"].step(batch_of(images, seed=5, epoch=e), {}).images
        for e in range(3)
    ]
    flipped = [(batch != images).flatten(1).any(1) for batch in epochs]
    # Every flipped image is its mirror image; random pixels are never symmetric.
    for batch, mask in zip(epochs, flipped, strict=True):
        assert torch.equal(batch[mask], images[mask].flip(3))
    assert 450 < int(flipped[0].sum()) < 550  # a fair coin per image
    assert torch.equal(flipped[1], ~flipped[0]) and torch.equal(flipped[2], flipped[0])
    other_seed = AUGMENTATIONS["alternating-flip"].step(batch_of(images, seed=6), {}).images
    assert not torch.equal(other_seed, epochs[0])


def test_alternating_flip_follows_the_image_not_its_place_in_the_batch():
    images = pixels(64)
    loader_a = loader(images, augment=["alternating-flip"], seed=2)
    loader_a.set_epoch(0)
    (first, ids), *_ = loader_a
    # The same images, shuffled: each is flipped as its position in the split says.
    batch = dataclasses.replace(batch_of(images[ids], seed=2), indices=ids)
    again = AUGMENTATIONS["alternating-flip"].step(batch, {})
    assert torch.equal(first, normalize(again.images, MEAN, STD))
    assert not torch.equal(ids, torch.arange(25))


def test_crop_moves_without_mirroring():
    ramp = torch.arange(32, dtype=torch.uint8).repeat(64, 3, 32, 1)  # each row 0..31
    cropped = AUGMENTATIONS["crop"].step(batch_of(ramp, seed=1), {"padding": 4}).images
    # A shift of the columns by -4..4 with zeros brought in: rows never run backwards.
    inside = cropped[:, 0, 16, 4:-4].int()  # a middle row: never a padded one
    assert (inside.diff(dim=1) == 1).all()
    shifts = inside[:, 0] - 4
    assert shifts.min() >= -4 and shifts.max() <= 4 and len(shifts.unique()) > 4


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_blends_each_image_with_the_previous_one_and_its_target_alike(name):
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    images = normalize(pixels(16), mean, std)
    batch = batch_of(images, seed=3)
    mixed = AUGMENTATIONS[name].step(batch, {"alpha": 1.0})
    labels, partners = batch.targets, batch.targets.roll(1, 0)
    share = mixed.targets[0, labels[0]]
    assert mixed.targets.shape == (16, 10) and mixed.targets.dtype == torch.float32
    torch.testing.assert_close(mixed.targets.sum(1), torch.ones(16))
    assert 0 < share < 1
    expected = torch.zeros(16, 10)
    expected[torch.arange(16), labels] += share
    expected[torch.arange(16), partners] += 1 - share
    torch.testing.assert_close(mixed.targets, expected)
    previous = images.roll(1, 0)
    if name == "mixup":
        torch.testing.assert_close(mixed.images, share * images + (1 - share) * previous)
    else:
        # A box of the previous image, its area the partner's share; the rest untouched.
        box = (mixed.images != images).any(0).any(0)
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert box.sum() == len(rows) * len(cols)  # a rectangle
        assert float(box.float().mean()) == pytest.approx(float(1 - share))
        assert torch.equal(mixed.images[:, :, box], previous[:, :, box])


def test_mixing_needs_the_classes_and_takes_one_mixer():
    with pytest.raises(ValueError, match="crop-flip mixup mixes the targets: give num_classes"):
        loader(pixels(50), augment=["crop-flip", "mixup"])
    with pytest.raises(ValueError, match="mixup and cutmix both mix the targets; give one"):
        loader(pixels(50), augment=["mixup", "cutmix"], num_classes=10)
    # Evaluation loaders yield the labels as they are.
    plain = DeviceLoader(pixels(50), torch.arange(50) % 10, 25, mean=MEAN, std=STD,
                         train=False, augment=["mixup"], num_classes=10)  # fmt: skip
    assert all(labels.dtype == torch.int64 for _, labels in plain)


@pytest.mark.parametrize(
    "augment",
    [["crop", "alternating-flip"], ["crop-flip", "mixup"], ["crop-flip", "cutout", "cutmix"]],
)
def test_an_interrupted_epoch_with_the_new_augmentations_continues_alike(augment):
    options = {"augment": augment, "num_classes": 100, "seed": 4}  # labels 0..99
    running = loader(pixels(100), **options)
    running.set_epoch(1)
    batches = iter(running)
    next(batches)
    state = running.state_dict()
    rest = list(batches)
    resumed = loader(pixels(100), **options)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) == 3
    for (images, targets), (images_again, targets_again) in zip(rest, again, strict=True):
        assert torch.equal(images, images_again) and torch.equal(targets, targets_again)


def test_the_new_augmentations_flags():
    args = parse_args(["--augment", "crop", "alternating-flip", "mixup", "--mixup-alpha", "0.2"])
    assert (args.crop_padding, args.mixup_alpha, args.cutmix_alpha) == (4, 0.2, None)
    assert parse_args(["--augment", "cutmix"]).cutmix_alpha == 1.0
    with pytest.raises(SystemExit):
        parse_args(["--augment", "mixup", "cutmix"])
