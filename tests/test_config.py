"""train.py --config FILE: a run's args.json, or a YAML or JSON file, as the defaults under
the command line's flags, every value checked as its flag would be; and a run reproduced
from its args.json."""

import json
import signal
import sys

import pytest
import torch
from conftest import without_timing

import train
from training.options import PRESETS, parse_args, recorded_args
from utils import UserError


def write(path, content) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def refused(argv, capsys) -> str:
    """The one error line of a command line that parse_args refuses."""
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1
    return errors[0]


def test_the_command_line_beats_the_config_which_beats_the_preset(tmp_path):
    config = write(tmp_path / "c.yaml", "preset: cpu\nepochs: 3\nlr: 0.05\n")
    args = parse_args(["--config", config, "--lr", "0.3"])
    assert (args.preset, args.epochs, args.lr) == ("cpu", 3, 0.3)
    assert (args.batch_size, args.momentum) == (PRESETS["cpu"]["batch_size"], 0.9)
    assert args.out == "runs/fishnet99-cpu"
    # The command line's preset replaces the config's; the config's values still beat it.
    args = parse_args(["--config", config, "--preset", "fast"])
    assert (args.preset, args.epochs, args.lr) == ("fast", 3, 0.05)
    assert args.batch_size == PRESETS["fast"]["batch_size"]


def test_yaml_and_json_set_the_same_values(tmp_path):
    yaml_text = (
        "epochs: 5\nweight_decay: 1e-4\naugment: [crop-flip, cutout]\ncutout_size: 8\n"
        "nesterov: true\nema: null\ndata: mine\n"
    )
    mapping = {"epochs": 5, "weight_decay": 1e-4, "augment": ["crop-flip", "cutout"],
               "cutout_size": 8, "nesterov": True, "ema": None, "data": "mine"}  # fmt: skip
    from_yaml = parse_args(["--config", write(tmp_path / "c.yml", yaml_text), "--preset", "fast"])
    from_json = parse_args(["--config", write(tmp_path / "c.json", mapping), "--preset", "fast"])
    # YAML reads 1e-4 as a text; it goes through --weight-decay's type as on the command line.
    assert from_yaml.weight_decay == 1e-4 and isinstance(from_yaml.weight_decay, float)
    assert vars(from_yaml) | {"config": None} == vars(from_json) | {"config": None}
    assert (from_json.cutout_size, from_json.ema, from_json.nesterov) == (8, None, True)
    # A relative path is the working folder's, as --data's is.
    assert from_json.data == "mine"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_runs_record_gives_back_every_flag(preset, tmp_path):
    flags = ["--preset", preset, "--epochs", "4", "--augment", "crop-flip", "cutout",
             "--cutout-size", "8", "--no-transfer", "--out", "runs/x", "--overwrite"]  # fmt: skip
    args = parse_args(flags)
    record = {"command": "python train.py " + " ".join(flags), "args": recorded_args(args)}
    assert not {"config", "resume", "overwrite"} & set(record["args"])
    again = parse_args(["--config", write(tmp_path / "args.json", record)])
    assert vars(again) == vars(args) | {"config": str(tmp_path / "args.json"), "overwrite": False}


def test_an_older_record_takes_the_defaults_of_flags_it_predates(tmp_path):
    """A fast run from before --init, --ema and the augmentation table: the preset's values of
    today (identity init, a moving average) would make another run."""
    saved = recorded_args(parse_args(["--preset", "fast"]))
    for key in ("init", "ema", "cutout_size"):
        del saved[key]
    saved |= {"augment": "crop-flip", "cutout": 8}
    args = parse_args(["--config", write(tmp_path / "args.json", {"command": "", "args": saved})])
    assert (args.init, args.ema, args.augment, args.cutout_size) == (
        "authors", None, ["crop-flip", "cutout"], 8,
    )  # fmt: skip
    assert (args.preset, args.lr) == ("fast", PRESETS["fast"]["lr"])


def test_null_and_false_override_a_presets_values(tmp_path):
    config = write(tmp_path / "c.json", {"ema": None, "nesterov": False, "compile": None})
    args = parse_args(["--preset", "fast", "--config", config])
    assert (args.ema, args.nesterov, args.compile) == (None, False, None)
    assert parse_args(["--preset", "fast", "--config", config, "--ema", "0.9"]).ema == 0.9


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"foo": 1}, "unknown key 'foo'"),
        (
            {"batch-size": 64},
            "unknown key 'batch-size' (keys are the flags' names with underscores: batch_size)",
        ),
        ({"epoch": 3}, "unknown key 'epoch' (did you mean epochs?)"),
        ({"cutout": 8, "augment": ["crop-flip"]}, "unknown key 'cutout'"),
        ({"epochs": 0}, "epochs: must be a positive integer, got 0"),
        ({"epochs": 2.5}, "epochs: invalid positive_int value: '2.5'"),
        ({"epochs": 100_000}, "epochs: must be at most 10,000"),
        ({"epochs": None}, "epochs: null, but --epochs needs a value"),
        ({"epochs": True}, "epochs: must be a number or a text, got true"),
        ({"lr": "fast"}, "lr: invalid positive_float value: 'fast'"),
        ({"lr": [0.1]}, "lr: must be a number or a text, got a list"),
        ({"nesterov": {"on": True}}, "nesterov: must be true or false, got a mapping"),
        ({"model": "fishnet42"}, "model: invalid choice: 'fishnet42'"),
        ({"preset": "gpu"}, "preset: invalid choice: 'gpu'"),
        ({"augment": []}, "augment: must be a list of one or more values, got an empty list"),
        # One name alone, as runs before the augmentation table recorded it: only a record
        # of such a run may say it so.
        (
            {"augment": "crop-flip cutout"},
            'augment: must be a list of one or more values, got "crop',
        ),
        ({"augment": ["crop-flip", "blur"]}, "augment: invalid choice: 'blur'"),
        ({"nesterov": "yes"}, 'nesterov: must be true or false, got "yes"'),
        ({"deterministic": 1}, "deterministic: must be true or false, got 1"),
        ({"resume": True}, "resume is not a setting of a run; give --resume on the command line"),
        ({"overwrite": True}, "overwrite is not a setting of a run; give --overwrite on the"),
        ({"config": "other.json"}, "config is not a setting of a run; give --config on the"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_file_and_key(mapping, message, tmp_path, capsys):
    config = write(tmp_path / "c.json", mapping)
    assert f"train.py: error: --config {config}: {message}" in refused(["--config", config], capsys)


def test_a_yaml_boolean_for_a_word_is_explained(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "amp: off\n")
    error = refused(["--config", config], capsys)
    assert "amp: must be one of auto, bf16, fp16, off, got false" in error
    assert "unquoted on, off, yes and no" in error
    assert parse_args(["--config", write(tmp_path / "q.yaml", "amp: 'off'\n")]).amp == "off"


def test_the_folder_flags_are_accepted_off(tmp_path):
    """Records of runs before args.json left them out hold them."""
    config = write(tmp_path / "c.json", {"resume": False, "overwrite": False, "config": None})
    args = parse_args(["--config", config, "--overwrite"])
    assert (args.resume, args.overwrite) == (False, True)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("none.json", None, "cannot read it (No such file or directory)"),
        ("c.txt", "epochs: 3", "not a .json, .yaml or .yml file"),
        ("list.json", "[1, 2]", "not a mapping of flags to values"),
        ("empty.yaml", "", "not a mapping of flags to values"),
        ("broken.json", '{"epochs": 3', "not JSON (Expecting ',' delimiter"),
        ("broken.yaml", "epochs: [3\n", "not YAML (expected ',' or ']'"),
        ("binary.json", b"\xff\xfe{}", "cannot read it ('utf-8' codec can't decode"),
    ],
)
def test_a_file_that_is_no_config_is_one_line_naming_it(name, content, message, tmp_path, capsys):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert f"--config {path}: {message}" in refused(["--config", str(path)], capsys)


def test_a_device_or_folder_is_refused_unread(tmp_path, capsys):
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    (tmp_path / "folder.yaml").mkdir()
    for name, reason in (("zero.json", "not a regular file"), ("folder.yaml", "Is a directory")):
        config = str(tmp_path / name)
        assert f"--config {config}: cannot read it ({reason})" in refused(
            ["--config", config], capsys
        )


def test_yaml_without_pyyaml_names_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml then raises ImportError
    config = write(tmp_path / "c.yaml", "epochs: 3\n")
    assert "reading YAML needs the package PyYAML" in refused(["--config", config], capsys)
    assert parse_args(["--config", write(tmp_path / "c.json", {"epochs": 3})]).epochs == 3


def test_an_augmentations_parameter_follows_the_command_lines_augment(tmp_path, capsys):
    config = write(tmp_path / "c.json", {"augment": ["crop-flip", "cutout"], "cutout_size": 8})
    assert parse_args(["--config", config]).cutout_size == 8
    # --augment without cutout drops the config's --cutout-size, which the user never gave...
    args = parse_args(["--config", config, "--augment", "crop-flip"])
    assert (args.augment, args.cutout_size) == (["crop-flip"], None)
    # ...but not one given on the command line.
    error = refused(["--config", config, "--augment", "crop-flip", "--cutout-size", "8"], capsys)
    assert "--cutout-size needs cutout in --augment" in error
    # A config whose own augment leaves its parameter out is wrong in itself.
    alone = write(tmp_path / "alone.json", {"cutout_size": 8})
    assert f"--config {alone}: cutout_size needs cutout in augment" in refused(
        ["--config", alone], capsys
    )
    assert parse_args(["--config", alone, "--augment", "cutout"]).cutout_size == 8


def test_help_with_a_config_shows_its_values_as_the_defaults(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "preset: cpu\nepochs: 7\naugment: [crop-flip, cutout]\n")
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--config", config, "--help"])
    assert stopped.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "epochs (default: 7)" in shown
    assert "(default: crop-flip cutout)" in shown
    assert f"images per step and process (default: {PRESETS['cpu']['batch_size']})" in shown


def test_a_program_passing_the_flags_on_reports_the_config_as_its_error(tmp_path):
    config = write(tmp_path / "c.json", {"foo": 1})
    with pytest.raises(UserError, match=r"unknown key 'foo' \(among the flags that ablate.py"):
        parse_args(["--config", config], passed_on_by="ablate.py")


def train_in_process(*flags) -> None:
    """train.py's main, with the signal handlers and the deterministic mode it sets put
    back afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        train.main([*map(str, flags)])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_a_run_reproduced_from_its_args_json_has_the_same_history(synthetic_cifar10_dir, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    train_in_process("--data", synthetic_cifar10_dir, "--out", first, "--device", "cpu",
                     "--width", "0.0625", "--batch-size", "32", "--epochs", "2", "--seed", "3",
                     "--schedule", "cosine", "--deterministic")  # fmt: skip
    train_in_process("--config", first / "args.json", "--out", again)

    record = json.loads((first / "args.json").read_text())
    assert not {"config", "resume", "overwrite"} & set(record["args"])
    rerun = json.loads((again / "args.json").read_text())
    assert rerun["args"] == record["args"] | {"out": str(again)}
    a = torch.load(first / "last.pt", weights_only=True)
    b = torch.load(again / "last.pt", weights_only=True)
    assert len(a["history"]) == 2
    assert without_timing(a["history"]) == without_timing(b["history"])
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key


def test_the_recipe_ingredients_in_a_config(tmp_path):
    yaml_text = (
        "augment: [crop, alternating-flip, mixup]\nmixup_alpha: 0.2\nbn_momentum: 0.4\n"
        "schedule: linear\ntest_augment: [flip, translate]\n"
    )
    args = parse_args(["--config", write(tmp_path / "c.yaml", yaml_text)])
    assert (args.crop_padding, args.mixup_alpha, args.bn_momentum) == (4, 0.2, 0.4)
    assert (args.schedule, args.test_augment) == ("linear", ["flip", "translate"])
    # None: the empty list --test-augment stands for; a run recorded with --flip-eval.
    assert (
        parse_args(["--config", write(tmp_path / "n.json", {"test_augment": []})]).test_augment
        == []
    )
    record = {"command": "train.py --flip-eval", "args": {"flip_eval": True}}
    assert parse_args(["--config", write(tmp_path / "r.json", record)]).test_augment == ["flip"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.json", "[" * 3000 + "]" * 3000, "not a config file (nested too deeply)"),
        ("deep.yaml", "a: " + "[" * 3000 + "]" * 3000, "not a config file (nested too deeply)"),
        ("digits.yaml", "epochs: " + "9" * 5000, "not a config file (Exceeds the limit"),
        # Written by hand: today's terms only, a list for augment and no --flip-eval.
        ("string.yaml", "augment: cutout\n", "augment: must be a list of one or more values"),
        ("flip.json", '{"flip_eval": true}', "unknown key 'flip_eval'"),
    ],
)
def test_files_that_only_look_like_configs_are_one_line_errors(tmp_path, capsys, name, content,
                                                              message):  # fmt: skip
    line = refused(["--config", write(tmp_path / name, content)], capsys)
    assert f"--config {tmp_path / name}: " in line and message in line and len(line) < 400
