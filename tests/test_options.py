"""train.py's flags: the run-defining ones come from the parser's groups, so a recipe flag
added later is compared on --resume with nothing else to edit."""

import argparse
from pathlib import Path

import pytest

from training.options import (
    PRESETS,
    RUN_DEFINING_GROUPS,
    build_parser,
    changed_from_preset,
    parse_args,
    resume_mismatches,
    run_defining_fields,
)

REPO = Path(__file__).resolve().parents[1]


def test_the_run_defining_fields_are_the_model_switch_and_recipe_flags():
    fields = run_defining_fields()
    assert {"model", "width", "init", "downsample", "bridge", "epochs", "lr", "seed"} <= set(fields)
    assert {"augment", "cutout_size", "label_smoothing", "ema", "train_on_all"} <= set(fields)
    # Where and how fast a run executes may change on --resume.
    assert not {"data", "out", "device", "amp", "compile", "eval_batch_size"} & set(fields)
    assert len(fields) == len(set(fields))


def test_a_flag_added_to_the_recipe_group_is_run_defining():
    parser = build_parser()
    recipe = next(g for g in parser._action_groups if g.title == RUN_DEFINING_GROUPS[-1])
    recipe.add_argument("--mixup", type=float, default=0.0)
    assert "mixup" in run_defining_fields(parser)


def test_every_flag_belongs_to_a_group_with_a_rule():
    """A flag outside the named groups would be neither checked on --resume nor listed as
    free to change: each one sits in a group whose title says which it is."""
    parser = build_parser()
    ungrouped = [
        action.dest
        for group in parser._action_groups
        if group.title not in (*RUN_DEFINING_GROUPS, "run", "where and how fast")
        for action in group._group_actions
        if not isinstance(action, argparse._HelpAction)
    ]
    # --cutout, --flip-eval: flags of older runs, hidden and refused by name.
    expected = ["config", "cutout", "data", "flip_eval", "overwrite", "preset", "resume"]
    assert sorted(ungrouped) == expected


def test_resume_still_names_a_changed_model_flag():
    saved = vars(parse_args([]))
    assert resume_mismatches(saved, parse_args(["--init", "identity"])) == [
        "--init authors (now identity)"
    ]


def test_each_preset_has_its_own_default_folder():
    folders = {parse_args(["--preset", preset]).out for preset in PRESETS}
    assert len(folders) == len(PRESETS)
    assert parse_args(["--preset", "cpu"]).out == "runs/fishnet99-cpu"
    assert parse_args(["--preset", "cpu", "--model", "resnet50"]).out == "runs/resnet50-cpu"
    assert parse_args(["--preset", "cpu", "--out", "mine"]).out == "mine"


@pytest.mark.parametrize("preset", ["cpu", "fast"])
def test_help_shows_the_chosen_presets_values_as_defaults(preset, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--preset", preset, "--help"])
    assert stopped.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"epochs (default: {PRESETS[preset]['epochs']})" in shown
    assert f"images per step and process (default: {PRESETS[preset]['batch_size']})" in shown


def test_a_wrong_preset_is_refused_before_help(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--preset", "gpu", "--help"])
    assert stopped.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err


def test_the_default_data_folder_is_the_one_download_data_writes_from_any_folder(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert Path(parse_args([]).data) == REPO / "data" / "cifar10"
    assert Path(parse_args(["--data", "mine"]).data) == Path("mine")  # the working folder's


def test_changed_from_preset_names_the_flags_a_run_sets_otherwise():
    args = parse_args(["--preset", "cpu", "--epochs", "4", "--no-nesterov", "--width", "0.5"])
    assert changed_from_preset(args, leave_out=("width",)) == ["--epochs", "4", "--no-nesterov"]
    assert changed_from_preset(parse_args(["--preset", "fast"])) == []


def test_an_empty_out_is_refused_rather_than_the_working_folder_taken(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--out", ""])
    assert "--out: an empty path" in capsys.readouterr().err
