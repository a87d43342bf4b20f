"""train.py's flags: the run-defining ones come from the parser's groups, so a recipe flag
added later is compared on --resume with nothing else to edit."""

import argparse

from training.options import (
    RUN_DEFINING_GROUPS,
    build_parser,
    parse_args,
    resume_mismatches,
    run_defining_fields,
)


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
    # --cutout: the flag of runs before the augmentation table, hidden and refused by name.
    assert sorted(ungrouped) == ["cutout", "data", "overwrite", "preset", "resume"]


def test_resume_still_names_a_changed_model_flag():
    saved = vars(parse_args([]))
    assert resume_mismatches(saved, parse_args(["--init", "identity"])) == [
        "--init authors (now identity)"
    ]
