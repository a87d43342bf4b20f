"""predict.py and python -m tools.visualize: a trained checkpoint on images of any kind."""

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CIFAR10_CLASSES,
    REPO_ROOT,
    SHARED_TARBALL,
    SMALL,
    one_line_error,
    run_download_data,
    run_script,
)
from PIL import Image

from dataloader import DeviceLoader, load_split, read_manifest
from dataloader.images import read_image_file as read_image
from training.checkpoint import (
    load_checkpoint,
    load_ready_model,
    model_from_checkpoint,
    save_checkpoint,
)
from utils import UserError


def train(data: Path, out: Path, *args: str) -> Path:
    result = run_script("train.py", "--data", data, "--out", out, *SMALL, *args)
    assert result.returncode == 0, result.stderr
    return out / "best.pt"


@pytest.fixture(scope="module")
def synthetic_checkpoint(synthetic_cifar10_dir, tmp_path_factory) -> Path:
    return train(synthetic_cifar10_dir, tmp_path_factory.mktemp("run"), "--epochs", "1")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A few real JPEGs of the shared copy (3 training and 2 test images per class) as an
    image-folder source, that source prepared by download_data.py, and a checkpoint trained
    on it for two epochs: (source, dataset folder, checkpoint)."""
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"real CIFAR-10 tarball not found at {SHARED_TARBALL}")
    source = tmp_path_factory.mktemp("real-jpegs")
    wanted = {"train": 3, "test": 2}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_TARBALL) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in wanted:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) < wanted[parts[0]]:
                taken[key] = taken.get(key, 0) + 1
                (source / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
                (source / member.name).write_bytes(tar.extractfile(member).read())
    out = tmp_path_factory.mktemp("real-data")
    prepared = run_download_data("--source", source, "--out", out)
    assert prepared.returncode == 0, prepared.stderr
    # 20 training images: batches of 8, since training keeps full batches only.
    run = tmp_path_factory.mktemp("run")
    checkpoint = train(out / "cifar10", run, "--epochs", "2", "--batch-size", "8")
    return source, out / "cifar10", checkpoint


def predict(*args) -> list[dict]:
    result = run_script("predict.py", *args, "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.real_data
def test_predict_agrees_with_eval_on_real_jpegs(real_run):
    source, dataset_dir, checkpoint = real_run
    jpegs = predict(checkpoint, source / "test")
    assert len(jpegs) == 2 * len(CIFAR10_CLASSES)
    for prediction in jpegs:
        assert Path(prediction["image"]).suffix == ".jpg"
        top = prediction["top"]
        assert len(top) == 5 and all(t["class"] in CIFAR10_CLASSES for t in top)
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6

    # eval.py on the prepared test split (the same images, decoded once into PNGs) scores
    # exactly what predict.py's top-1 and top-5 on the original JPEGs score.
    result = run_script("eval.py", checkpoint, "--split", "test", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)["test"]
    truth = [Path(p["image"]).parent.name for p in jpegs]
    ranked = [[t["class"] for t in p["top"]] for p in jpegs]
    top1 = [classes[0] == name for classes, name in zip(ranked, truth, strict=True)]
    top5 = [name in classes for classes, name in zip(ranked, truth, strict=True)]
    assert scores["top1"] == pytest.approx(100 * np.mean(top1))
    assert scores["top5"] == pytest.approx(100 * np.mean(top5))

    # Image by image, predict.py on the prepared PNGs gives the probabilities of eval's path:
    # the cached split batched by DeviceLoader with the run's normalisation and memory format.
    pngs = predict(checkpoint, dataset_dir / "images" / "test")
    by_path = {Path(p["image"]).resolve(): p["top"] for p in pngs}
    saved = load_checkpoint(checkpoint)
    model = model_from_checkpoint(saved, checkpoint).eval()
    images, labels = load_split(dataset_dir, "test")
    loader = DeviceLoader(
        images,
        labels,
        7,
        mean=saved["normalization"]["mean"],
        std=saved["normalization"]["std"],
        train=False,
        channels_last=saved["args"]["channels_last"],
    )
    with torch.no_grad():
        expected = torch.cat([model(batch).softmax(1) for batch, _ in loader])
    entries = read_manifest(dataset_dir / "test_img2labels.json")
    assert len(entries) == len(pngs) == len(jpegs)
    for (path, _), probabilities in zip(entries, expected, strict=True):
        top = by_path[Path(path).resolve()]
        assert top[0]["label"] == int(probabilities.argmax())
        for t in top:
            assert t["probability"] == pytest.approx(float(probabilities[t["label"]]), abs=1e-5)

    # And each JPEG is predicted as the PNG holding its pixels.
    png_of = {read_image(Path(p["image"])).numpy().tobytes(): p["top"] for p in pngs}
    for prediction in jpegs:
        same = png_of[read_image(Path(prediction["image"])).numpy().tobytes()]
        assert [t["label"] for t in prediction["top"]] == [t["label"] for t in same]


def write_odd_images(folder: Path) -> list[str]:
    """Images of other sizes, modes and formats, and files that are no images; returns the
    names of the broken ones."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(folder / "big.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 80), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(folder / "rgba.png")
    deep = rng.integers(0, 65536, (40, 40)).astype(np.uint16)
    Image.fromarray(deep).save(folder / "sixteen-bit.png")
    pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("P").save(folder / "palette.gif")
    (folder / "sub").mkdir()
    Image.fromarray(pixels).save(folder / "sub" / "nested.bmp")
    (folder / "notes.txt").write_text("not an image, and not named like one: ignored")
    (folder / "broken.png").write_bytes(b"not an image")
    return ["broken.png"]


def test_read_image_any_size_and_mode(tmp_path):
    write_odd_images(tmp_path / "odd")
    for name in ("big.jpg", "gray.png", "rgba.png", "sixteen-bit.png", "palette.gif"):
        image = read_image(tmp_path / "odd" / name)
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32), name
    assert read_image(tmp_path / "odd" / "big.jpg", 224).shape == (3, 224, 224)
    # A 16-bit image is scaled to 8 bits, not clipped to white.
    assert read_image(tmp_path / "odd" / "sixteen-bit.png").float().std() > 20
    gray = read_image(tmp_path / "odd" / "gray.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


@pytest.mark.slow
def test_predict_skips_unreadable_files_and_fails_at_the_end(synthetic_checkpoint, tmp_path):
    broken = write_odd_images(tmp_path / "odd")
    missing = tmp_path / "missing.png"
    (tmp_path / "empty").mkdir()
    args = [synthetic_checkpoint, tmp_path / "odd", missing, tmp_path / "empty"]
    result = run_script("predict.py", *args, "--device", "cpu", "--batch-size", "2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    predicted = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(predicted) == 6  # big, gray, palette, rgba, sixteen-bit, sub/nested
    for line in predicted:
        assert line.count(" %") == 5 and line.split(": ")[1].split()[0] in CIFAR10_CLASSES
    for name in (*broken, "missing.png: no such file", "empty: a folder without image files"):
        assert name in result.stderr
    assert "3 of 9 inputs could not be read" in result.stderr

    result = run_script("predict.py", *args, "--device", "cpu", "--json", "--top-k", "2")
    assert result.returncode == 1
    predictions = json.loads(result.stdout)
    assert len(predictions) == 9
    assert sum("error" in p for p in predictions) == 3
    assert all(len(p["top"]) == 2 for p in predictions if "top" in p)


@pytest.mark.slow
def test_predict_errors_are_one_line(synthetic_checkpoint, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32)).save(image)
    one_line_error(run_script("predict.py", tmp_path / "none.pt", image), "no such checkpoint")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    one_line_error(run_script("predict.py", bad, image), "bad.pt")
    for flags, message in (
        (["--top-k", "0"], "argument --top-k"),
        (["--batch-size", "x"], "argument --batch-size"),
        (["--device", "tpu"], "unknown device"),
    ):
        result = run_script("predict.py", synthetic_checkpoint, image, *flags)
        one_line_error(result, message)
    result = run_script("predict.py", synthetic_checkpoint)
    one_line_error(result, "the following arguments are required")


@pytest.mark.slow
def test_predict_prints_names_as_one_line_of_plain_text(synthetic_checkpoint, tmp_path):
    # Names that would clear the screen, retitle the terminal and forge a line of output.
    forged = "\x1b[2J\x1b]0;owned\x07 x\nforged.png: cat 100.0 %"
    checkpoint = load_checkpoint(synthetic_checkpoint)
    checkpoint["classes"] = [f"{name}\x1b[8m\n{name}" for name in checkpoint["classes"]]
    for key in ("format", "version"):  # save_checkpoint writes them
        del checkpoint[key]
    save_checkpoint(checkpoint, tmp_path / "named.pt")
    image = tmp_path / f"{forged}.png"
    Image.new("RGB", (32, 32), "white").save(image)
    result = run_script("predict.py", tmp_path / "named.pt", image, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    (line,) = result.stdout.splitlines()
    shown = f"{tmp_path}/\\x1b[2J\\x1b]0;owned\\x07 x\\x0aforged.png: cat 100.0 %.png"
    assert line.startswith(shown + ": ")
    listed = line.removeprefix(shown + ": ").split(" %, ")
    assert len(listed) == 5
    assert all("\\x1b[8m\\x0a" in entry for entry in listed)


@pytest.mark.slow
def test_classifier_matches_the_training_numerics(synthetic_checkpoint, synthetic_cifar10_dir):
    classifier = load_ready_model(synthetic_checkpoint, torch.device("cpu"))
    assert classifier.input_size == 32
    images, _ = load_split(synthetic_cifar10_dir, "valid")
    batch = classifier.inputs(images[:4])
    assert batch.is_contiguous(memory_format=torch.channels_last)
    statistics = classifier.checkpoint["normalization"]
    expected = (images[:4].float() / 255 - torch.tensor(statistics["mean"])[:, None, None]) / (
        torch.tensor(statistics["std"])[:, None, None]
    )
    assert torch.allclose(batch, expected, atol=1e-5)
    probabilities = classifier.probabilities(images[:4])
    assert probabilities.shape == (4, 10)
    assert torch.allclose(probabilities.sum(1), torch.ones(4))


@pytest.mark.slow
def test_visualize_draws_one_panel_per_stage_at_its_resolution(synthetic_checkpoint, tmp_path):
    from tools.visualize import draw_fish

    image = tmp_path / "photo.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "fish.png"
    Image.new("RGB", (8, 8)).save(out)  # an earlier figure, which a new one replaces
    result = subprocess.run(
        [sys.executable, "-m", "tools.visualize", synthetic_checkpoint, image, "--out", out],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 1000
    assert "tail1 16x16" in result.stdout and "body3 32x32" in result.stdout

    classifier = load_ready_model(synthetic_checkpoint, torch.device("cpu"))
    pixels = read_image(image)
    features = {k: v[0] for k, v in classifier.features(pixels[None]).items()}
    figure = draw_fish(pixels, features, "test")
    panels = [ax for ax in figure.axes if ax.get_images()]
    names = [ax.get_label() for ax in panels]
    assert names == ["input", "stem", "tail1", "tail2", "tail3", "bridge",
                     "body1", "body2", "body3", "head1", "head2", "head3"]  # fmt: skip
    sides = [ax.get_images()[0].get_array().shape[0] for ax in panels]
    assert sides == [32, 32, 16, 8, 4, 4, 8, 16, 32, 16, 8, 4]
    # Every panel is drawn at a size proportional to its resolution: the fish's outline.
    widths = [ax.get_position().width for ax in panels]
    assert widths == pytest.approx([w / 32 * widths[0] for w in sides])


@pytest.mark.slow
def test_visualize_errors_are_one_line(synthetic_checkpoint, tmp_path):
    command = [sys.executable, "-m", "tools.visualize", synthetic_checkpoint, tmp_path / "no.png"]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=300
    )
    one_line_error(result, "no.png: no such file")


def test_visualize_replaces_nothing_but_a_png_and_checks_before_loading(tmp_path):
    from tools.visualize import main as visualize

    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    trained = b"PK\x03\x04 a trained checkpoint"
    for name in ("keep.pt", "checkpoint.png"):
        (tmp_path / name).write_bytes(trained)
    (tmp_path / "folder.png").mkdir()
    # The checkpoint given does not exist: each --out is refused before it is looked for.
    missing = tmp_path / "missing.pt"
    for out, message in (
        (tmp_path / "keep.pt", "keep.pt: must end in .png"),
        (tmp_path / "checkpoint.png", "checkpoint.png: exists and is not a PNG image"),
        (tmp_path / "folder.png", "a folder, not a file"),
        (tmp_path / "keep.pt" / "fish.png", "keep.pt is a file, not a folder"),
    ):
        with pytest.raises(UserError, match=re.escape(message)):
            visualize([str(missing), str(image), "--out", str(out)])
    for name in ("keep.pt", "checkpoint.png"):
        assert (tmp_path / name).read_bytes() == trained
    with pytest.raises(UserError, match=r"missing\.pt: no such checkpoint"):
        visualize([str(missing), str(image), "--out", str(tmp_path / "fish.png")])
