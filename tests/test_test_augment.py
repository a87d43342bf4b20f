"""Test-time augmentation (dataloader.augment.TEST_AUGMENTATIONS): its views, its scores
beside the plain ones in evaluation, train.py's and eval.py's --test-augment; and the
training metrics of batches whose targets are mixed."""

import pytest
import torch
from torch import nn

from dataloader import DeviceLoader
from dataloader.augment import TEST_AUGMENTATIONS, VIEWS, translate
from eval import parse_args as eval_args
from training.metrics import METRICS, batch_sums, describe_scores, evaluate, metric_values
from training.options import parse_args, upgrade_saved_args

CPU = torch.device("cpu")


def small_net() -> nn.Module:
    """A convolution sees where things are, so its logits change under a flip or a shift."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 10),
    )  # fmt: skip


def split_loader(count: int = 60, batch: int = 25) -> DeviceLoader:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return DeviceLoader(images, labels, batch, mean=(0.5,) * 3, std=(0.25,) * 3, train=False)


def test_translate_shifts_and_reflects_the_border():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    down_right = translate(images, 1, 1)
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1])
    assert torch.equal(down_right[..., 0, 1:], images[..., 1, :-1])  # row -1 reflects row 1
    up_left = translate(images, -1, -1)
    assert torch.equal(up_left[..., :-1, :-1], images[..., 1:, 1:])


def test_every_test_time_augmentation_is_a_weighted_mean_of_known_views():
    for name, weights in TEST_AUGMENTATIONS.items():
        assert set(weights) <= set(VIEWS), name
        assert sum(weights.values()) == pytest.approx(1.0), name


def manual_top1(model, loader, combine) -> float:
    hits = total = 0
    with torch.no_grad():
        for images, labels in loader:
            logits = combine(lambda view: model(view).float(), images)
            hits += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    return 100 * hits / total


def test_the_scores_of_test_time_augmentation_are_airbenchs_means_beside_the_plain_ones():
    model, loader = small_net(), split_loader()
    plain = evaluate(model, loader, 10, CPU, "off")
    both = evaluate(model, loader, 10, CPU, "off", test_augment=["flip", "translate"])
    assert {key: both[key] for key in plain if key != "confusion"} == {
        key: value for key, value in plain.items() if key != "confusion"
    }
    assert torch.equal(both["confusion"], plain["confusion"])

    def flip(net, x):
        return (net(x) + net(x.flip(3))) / 2

    def translated(net, x):
        shifted = [flip(net, translate(x, 1, 1)), flip(net, translate(x, -1, -1))]
        return flip(net, x) / 2 + (shifted[0] + shifted[1]) / 4

    assert both["flip_top1"] == pytest.approx(manual_top1(model, loader, flip))
    assert both["translate_top1"] == pytest.approx(manual_top1(model, loader, translated))
    assert 0 <= both["translate_top5"] <= 100 and "flip_loss" not in both
    assert both["flip_top1"] != both["top1"] or both["translate_top1"] != both["top1"]


def test_channels_last_images_give_the_same_scores():
    model, loader = small_net(), split_loader()
    nchw = evaluate(model, loader, 10, CPU, "off", test_augment=["translate"])
    loader.channels_last = True
    nhwc = evaluate(model.to(memory_format=torch.channels_last), loader, 10, CPU, "off",
                    test_augment=["translate"])  # fmt: skip
    assert nhwc["translate_top1"] == pytest.approx(nchw["translate_top1"])


def test_mixed_targets_score_the_shares_of_the_classes_among_the_top_logits():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0, -2.0, -3.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    labels = torch.tensor([0, 3])
    loss = torch.tensor(2.0)
    one_hot = nn.functional.one_hot(labels, 6).float()
    assert torch.equal(batch_sums(logits, labels, loss), batch_sums(logits, one_hot, loss))
    # Image 0: 70 % class 1 (second-highest logit), 30 % class 0 (highest): top-1 counts 0.3.
    # Image 1: 60 % class 5 (highest), 40 % class 0 (lowest): top-1 0.6, top-5 0.6.
    mixed = torch.tensor([[0.3, 0.7, 0, 0, 0, 0], [0.4, 0, 0, 0, 0, 0.6]])
    values = metric_values(batch_sums(logits, mixed, loss).tolist(), 2)
    assert values["top1"] == pytest.approx(100 * (0.3 + 0.6) / 2)
    assert values["top5"] == pytest.approx(100 * (1.0 + 0.6) / 2)
    assert [metric.key for metric in METRICS] == ["loss", "top1", "top5"]


def test_the_epoch_line_shows_each_test_time_augmentation():
    row = {"valid_loss": 1.0, "valid_top1": 50.0, "valid_top5": 90.0,
           "valid_flip_top1": 51.0, "valid_translate_top1": 52.5}  # fmt: skip
    assert describe_scores(row, "valid").endswith("top-5 90.00 (flip 51.00, translate 52.50)")


def test_test_augment_flags_and_the_flags_they_replace(capsys):
    assert parse_args([]).test_augment == []
    assert parse_args(["--test-augment", "flip", "translate"]).test_augment == [
        "flip",
        "translate",
    ]
    with pytest.raises(SystemExit):
        parse_args(["--flip-eval"])
    assert "--flip-eval: give --test-augment flip instead" in capsys.readouterr().err
    assert upgrade_saved_args({"flip_eval": True, "lr": 0.1}) == {
        "test_augment": ["flip"],
        "lr": 0.1,
    }
    assert upgrade_saved_args({"flip_eval": False}) == {"test_augment": []}


def test_eval_py_takes_test_augment_and_refuses_flip_by_its_new_name(capsys):
    assert eval_args(["x.pt", "--test-augment", "translate"]).test_augment == ["translate"]
    with pytest.raises(SystemExit):
        eval_args(["x.pt", "--flip"])
    assert "--flip: give --test-augment flip instead" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_args(["x.pt", "--test-augment", "rotate"])
    assert "invalid choice: 'rotate'" in capsys.readouterr().err


def test_a_test_time_augmentation_given_twice_is_refused(capsys):
    for parse in (parse_args, lambda argv: eval_args(["x.pt", *argv])):
        with pytest.raises(SystemExit):
            parse(["--test-augment", "flip", "translate", "flip"])
        assert "--test-augment: flip given more than once" in capsys.readouterr().err
