"""train.py's flags, the named recipes (presets), config files (--config), what must match on
--resume, and the adapters that turn the flags into the training library's keywords."""

import argparse
import difflib
import json
from pathlib import Path

from dataloader.augment import (
    AUGMENTATIONS,
    TEST_AUGMENTATIONS,
    Parameter,
    check_order,
    check_test_augment,
    parameter_key,
)
from dataloader.manifests import DEFAULT_DATA
from models import INITS, SWITCHES, check_width, model_names, switch_kwargs
from training.cli import (
    HelpFormatter,
    at_most,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from training.distributed import DEFAULT_TIMEOUT_SECONDS
from training.optim import OPTIMIZERS, SCHEDULES
from training.precision import AMP_CHOICES
from utils import UserError, one_line, read_regular_file

# The recipes, airbench-style: every hyperparameter a preset sets, with its unit, beside
# it. A preset replaces the defaults; flags given on the command line win. The evidence
# (accuracy, runs, hardware) is in docs/recipes.md's presets table; bench.py report makes
# the results table.
#
# seed:     the seeds' recipe (85.06 % test top-1 reported by them, RTX 2080 Ti).
# fast:     untuned on a GPU: the H100 run of 2026-11-23 (CIFAR-10, JPEG q75 copy) reached
#           84.54 % test top-1 in 12 epochs (102.6 s) before the identity init, the
#           norm/bias exemption and the moving average were added.
# accuracy: untuned; the same H100 run reached 90.99 % in 60 epochs (425 s).
# cpu:      measured on a 2-core CPU (docs/recipes.md).
FAST = {
    "epochs": 12,  # epochs
    "batch_size": 512,  # images per step and process
    "lr": 0.4,  # peak learning rate
    "nesterov": True,
    "weight_decay": 5e-4,  # on convolution and linear weights only (decay_norm_bias)
    "decay_norm_bias": False,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "init": "identity",  # unit branches and classifier start at zero: loss ln(10) at step 0
    "ema": 0.99,  # moving-average decay per step (about 100 steps of memory)
}
DEFAULT_PRESET = "seed"
PRESETS = {
    "seed": {},
    "fast": FAST,
    "accuracy": {**FAST, "epochs": 60, "ema": 0.999},
    # Minutes on a laptop CPU: a quarter-width FishNet-99 on 10,000 images for 2 epochs.
    "cpu": {
        **FAST,
        "width": 0.25,
        "train_subset": 10_000,  # images
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.2,
        "ema": None,
    },
}

# The augmentations' parameters by their key among the flags (cutout_size: --cutout-size), with
# the augmentation that takes each. A parameter is None unless its augmentation is in
# --augment, so that it defines only the runs that use it.
AUGMENT_PARAMETERS = {
    parameter_key(name, parameter): (name, parameter)
    for name, augmentation in AUGMENTATIONS.items()
    for parameter in augmentation.parameters
}

# What defines a run: the flags of these argument groups. --resume refuses to continue a run
# when one of them differs, and lets every other flag (where and how fast it runs) change; a
# flag added to one of these groups is run-defining with nothing else to edit. A checkpoint
# written before a field existed is taken to hold the field's default, the value that
# reproduces it.
RUN_DEFINING_GROUPS = ("model", "FishNet ablation switches", "recipe")

# What this invocation does with the run folder, not settings of the run: args.json does not
# record them, and a config file may hold them only off (older args.json files do), so that
# rerunning a run's record never continues or replaces a run unasked.
INVOCATION_FLAGS = ("config", "resume", "overwrite")
# A config file is a few kilobytes; the bound keeps a device or a huge file from hanging the
# parser or filling memory.
MAX_CONFIG_BYTES = 1 << 20


# Upper bounds of the flags whose larger values would only hang, overflow or exhaust the
# machine (a run of a million epochs, a network 100 times as wide, a seed torch cannot take).
MAX_WIDTH = 4.0
MAX_EPOCHS = 10_000
MAX_SEED = 2**32 - 1
MAX_TIMEOUT_SECONDS = 24 * 3600
MAX_BATCH_SIZE = 1 << 16
# Images per evaluation batch on CUDA when --eval-batch-size is not given (or the training
# batch size, if larger): evaluation keeps no activations for a backward pass, so it fits.
DEFAULT_EVAL_BATCH_SIZE = 1024
DEFAULT_SAVE_EVERY_SECONDS = 60.0
seed_number = at_most(non_negative_int, MAX_SEED)


def model_width(text: str) -> float:
    value = float(text)
    try:
        check_width(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value > MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WIDTH:g}, got {text}")
    return value


def parameter_type(parameter: Parameter):
    """The argparse type of an augmentation's parameter, within its bounds."""

    def parse(text: str) -> float:
        value = parameter.type(text)
        if not parameter.minimum <= value <= parameter.maximum:
            raise argparse.ArgumentTypeError(
                f"must be from {parameter.minimum} to {parameter.maximum}, got {text}"
            )
        return value

    parse.__name__ = parameter.type.__name__  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train FishNet (or a ResNet baseline) on CIFAR-10 or CIFAR-100.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--preset",
        default=DEFAULT_PRESET,
        choices=PRESETS,
        help="a named recipe; flags override it, and --help shows its values as the defaults",
    )
    add(
        "--config",
        metavar="FILE",
        default=None,
        help="a run's args.json, or a YAML or JSON file of flags by their names with "
        "underscores (batch_size: 64): its values replace the preset's (its preset is the "
        "one used unless --preset is given), flags override them, and --help shows them "
        "as the defaults",
    )
    add(
        "--data",
        default=str(DEFAULT_DATA),
        help="folder made by data/download_data.py (a relative path starts at the working folder)",
    )
    # Flags of older runs, refused by name with today's spelling (argparse would otherwise
    # take --cutout for an abbreviation of --cutout-size).
    add("--cutout", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add("--flip-eval", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    model = parser.add_argument_group("model").add_argument
    model("--model", default="fishnet99", choices=model_names(), help="the network")
    model("--width", type=model_width, default=1.0, help="channel multiplier (multiple of 1/16)")
    model("--init", default=INITS[0], choices=INITS, help="weight initialisation")
    # FishNet's ablation switches (docs/ablations.md): each default is the paper's choice.
    switch = parser.add_argument_group("FishNet ablation switches").add_argument
    switch(
        "--downsample",
        default="maxpool",
        choices=SWITCHES["downsample"],
        help="2x down-sampling of tail and head stages (conv: strided BN-ReLU-conv2x2)",
    )
    switch(
        "--upsample",
        default="nearest",
        choices=SWITCHES["upsample"],
        help="2x up-sampling of body stages (deconv: BN-ReLU-ConvTranspose2d, kernel 2)",
    )
    switch(
        "--body-shortcut",
        default="reduce",
        choices=SWITCHES["body_shortcut"],
        help="first unit of a body stage: channel reduction r(x) or a 1x1 conv",
    )
    on_off = argparse.BooleanOptionalAction
    switch("--body-dilation", action=on_off, default=True, help="dilation 2^j in body stage j")
    switch("--transfer", action=on_off, default=True, help="transfer blocks (off: identity)")
    switch(
        "--bridge",
        default="se",
        choices=SWITCHES["bridge"],
        help="SE-gated bridge, its residual units alone, or none",
    )
    recipe = parser.add_argument_group("recipe").add_argument
    recipe("--epochs", type=at_most(positive_int, MAX_EPOCHS), default=100, help="epochs")
    recipe("--batch-size", type=positive_int, default=256, help="images per step and process")
    recipe("--optimizer", default="sgd", choices=OPTIMIZERS, help="optimizer")
    recipe("--lr", type=positive_float, default=0.1, help="peak learning rate")
    recipe("--momentum", type=fraction, default=0.9, help="SGD momentum")
    recipe("--nesterov", action=on_off, default=False, help="Nesterov momentum (SGD)")
    recipe("--weight-decay", type=non_negative_float, default=1e-4, help="L2 penalty")
    recipe(
        "--decay-norm-bias",
        action=on_off,
        default=True,
        help="weight decay on batch-norm and bias parameters too",
    )
    recipe("--schedule", default="step", choices=SCHEDULES, help="learning-rate schedule")
    recipe("--step-size", type=positive_int, default=30, help="epochs between lr drops (step)")
    recipe("--gamma", type=positive_float, default=0.1, help="lr factor at each drop (step)")
    recipe(
        "--warmup-epochs",
        type=non_negative_float,
        default=None,
        help="linear warm-up in epochs (none given: 30%% of the run for onecycle, else none)",
    )
    recipe("--label-smoothing", type=fraction, default=0.0, help="label smoothing")
    recipe(
        "--bn-momentum",
        type=at_most(positive_float, 1.0),
        default=None,
        help="weight of each batch in batch norm's running statistics (PyTorch's momentum; "
        "none given: PyTorch's 0.1)",
    )
    recipe(
        "--augment",
        nargs="+",
        default=["crop-flip"],
        choices=AUGMENTATIONS,
        metavar="NAME",
        help="augmentations of every training image, applied in the order given: "
        f"{', '.join(AUGMENTATIONS)}",
    )
    for key, (name, parameter) in AUGMENT_PARAMETERS.items():
        recipe(
            _flag(key),
            type=parameter_type(parameter),
            default=None,
            help=f"{parameter.help}, with {name} in --augment (none given: {parameter.default})",
        )
    recipe(
        "--ema",
        type=fraction,
        default=None,
        help="decay per step of an exponential moving average of the weights, which is "
        "evaluated and checkpointed (none given: no average)",
    )
    recipe("--seed", type=seed_number, default=0, help="seed of weights, shuffle, augmentation")
    recipe(
        "--train-subset",
        type=positive_int,
        default=None,
        help="train on this many images (none given: all)",
    )
    recipe(
        "--train-on-all",
        action=on_off,
        default=False,
        help="train on train + valid (50,000 CIFAR images) and report the test split "
        "after every epoch; best.pt is then the last epoch",
    )
    run = parser.add_argument_group("run").add_argument
    run("--out", default=None, help="output folder (none given: runs/MODEL-PRESET)")
    existing_run = parser.add_mutually_exclusive_group()
    existing_run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt"
    )
    existing_run.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out"
    )
    run(
        "--save-every",
        type=at_most(non_negative_float, MAX_TIMEOUT_SECONDS),
        default=DEFAULT_SAVE_EVERY_SECONDS,
        help="seconds between checkpoints: last.pt (with best.pt) is written after the first "
        "epoch to end this long after the previous write, after the last epoch, and when the "
        "run is stopped (Ctrl-C, SIGTERM); 0: after every epoch",
    )
    run(
        "--report-test",
        action=on_off,
        default=False,
        help="evaluate the test split after every epoch too (for time-to-accuracy)",
    )
    run(
        "--test-augment",
        nargs="+",
        default=[],
        choices=TEST_AUGMENTATIONS,
        metavar="NAME",
        help="also score every evaluated split with these test-time augmentations, each "
        f"beside the plain score: {', '.join(TEST_AUGMENTATIONS)} (docs/recipes.md; "
        "default: none)",
    )
    run(
        "--tensorboard",
        action=on_off,
        default=False,
        help="write the training curves (at every progress update) and every epoch's scores "
        "as TensorBoard event files into OUT/tensorboard/ (needs pip install tensorboard)",
    )
    speed = parser.add_argument_group("where and how fast").add_argument
    speed("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    speed(
        "--amp",
        default="auto",
        choices=AMP_CHOICES,
        help="mixed precision; auto: bf16 on GPUs that compute it natively, fp16 with a "
        "gradient scaler on older GPUs, off on CPUs",
    )
    speed(
        "--eval-batch-size",
        type=at_most(positive_int, MAX_BATCH_SIZE),
        default=None,
        help=f"images per evaluation batch (none given: on CUDA {DEFAULT_EVAL_BATCH_SIZE}, or "
        "--batch-size if larger; elsewhere --batch-size)",
    )
    speed("--channels-last", action=on_off, default=True, help="NHWC memory format")
    speed(
        "--compile",
        action=on_off,
        default=None,
        help="torch.compile the training step with CUDA graphs (default: on CUDA when the "
        "run is long enough to pay the compilation back; train.py says what it chose)",
    )
    speed("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun")
    speed("--deterministic", action="store_true", help="deterministic kernels (slower)")
    speed(
        "--dist-timeout",
        type=at_most(positive_float, MAX_TIMEOUT_SECONDS),
        default=DEFAULT_TIMEOUT_SECONDS,
        help="under torchrun: seconds to wait for the other processes to join, and for any "
        "exchange between them",
    )
    return parser


def parse_args(
    argv: list[str] | None = None, passed_on_by: str | None = None
) -> argparse.Namespace:
    """train.py's flags. ``passed_on_by`` names another program (ablate.py, bench.py) that
    passes them on to train.py: a bad flag is then that program's one-line UserError,
    before it starts any work, instead of train.py's usage message."""
    parser = build_parser()
    if passed_on_by is not None:

        def refuse(message: str) -> None:
            raise UserError(
                f"{message} (among the flags that {passed_on_by} passes on to train.py; "
                "python train.py --help lists them)"
            )

        parser.error = refuse
    early = _early_parser(parser).parse_known_args(argv)[0]
    config = read_config(early.config, parser) if early.config is not None else {}
    # Set before parsing, so that --help shows the preset's values as the defaults, and the
    # config's over them.
    parser.set_defaults(**PRESETS[early.preset or config.get("preset", DEFAULT_PRESET)])
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    if "cutout" in args:
        parser.error(
            f"--cutout {args.cutout}: give --augment NAME cutout --cutout-size N instead "
            "(--cutout 0: leave cutout out of --augment)"
        )
    if "flip_eval" in args:
        parser.error("--flip-eval: give --test-augment flip instead")
    if args.nesterov and (args.optimizer != "sgd" or args.momentum == 0):
        parser.error("--nesterov needs --optimizer sgd and a non-zero --momentum")
    if args.warmup_epochs is not None and args.warmup_epochs >= args.epochs:
        parser.error("--warmup-epochs must be shorter than --epochs")
    try:
        check_order(args.augment)
    except ValueError as error:
        parser.error(f"--augment: {error}")
    given = _given_on_command_line(argv) if config else None
    for key, (name, parameter) in AUGMENT_PARAMETERS.items():
        if name in args.augment:
            if getattr(args, key) is None:
                setattr(args, key, parameter.default)
        elif getattr(args, key) is not None:
            if given is None or key in given:
                parser.error(f"{_flag(key)} needs {name} in --augment")
            if "augment" not in given:
                parser.error(f"--config {args.config}: {key} needs {name} in augment")
            # The config's parameter of an augmentation that --augment leaves out.
            setattr(args, key, None)
    try:
        switch_kwargs(args.model, vars(args))
    except ValueError as error:
        parser.error(str(error))
    try:
        check_test_augment(args.test_augment)
    except ValueError as error:
        parser.error(f"--test-augment: {error}")
    if args.out == "":
        parser.error("--out: an empty path; give the run's folder")
    if args.out is None:
        args.out = default_out(args.model, args.preset)
    return args


def default_out(model: str, preset: str) -> str:
    """The run folder when --out is not given: named after the recipe as well as the model,
    so that two presets (the Quick start's cpu then fast) never meet in one folder."""
    return f"runs/{model}-{preset}"


def _early_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A parser of --preset and --config alone, with ``parser``'s messages (a wrong preset is
    reported as train.py's, or as the passing program's): it reads them before --help is
    acted on. A preset not given is None, so that the config's preset can stand in."""
    early = argparse.ArgumentParser(prog=parser.prog, add_help=False)
    early.add_argument("--preset", choices=PRESETS)
    early.add_argument("--config")
    early.error = parser.error
    return early


def _given_on_command_line(argv: list[str] | None) -> set[str]:
    """The destinations of the flags that ``argv`` gives (a valid command line)."""
    parser = build_parser()
    # Not set_defaults: argparse would put its defaults in the namespace, SUPPRESS included.
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def read_config(file: str, parser: argparse.ArgumentParser) -> dict:
    """The values of ``parser``'s flags that a config file sets, by destination, checked as
    strictly as the flags are; any mistake is ``parser.error`` naming the file (and the key).

    A .json file is a train.py ``args.json`` (its ``args``, upgraded to today's flags; a
    run-defining flag it lacks did not exist then, and takes the default that reproduces
    the run) or any other JSON object; a .yaml or .yml file is a YAML mapping.
    """
    where = f"--config {file}"
    suffix = Path(file).suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        parser.error(f"{where}: not a .json, .yaml or .yml file")
    try:
        text = read_regular_file(Path(file), MAX_CONFIG_BYTES).decode()
    except OSError as error:
        parser.error(f"{where}: cannot read it ({error.strerror or one_line(error)})")
    except ValueError as error:  # not a regular file, too large, not UTF-8
        parser.error(f"{where}: cannot read it ({one_line(error)})")
    if suffix == ".json":
        try:
            mapping = json.loads(text)
        except ValueError as error:
            parser.error(f"{where}: not JSON ({one_line(error)[:200]})")
        except RecursionError:
            parser.error(f"{where}: not a config file (nested too deeply)")
    else:
        try:
            import yaml
        except ImportError:
            parser.error(f"{where}: reading YAML needs the package PyYAML (pip install pyyaml)")
        try:
            mapping = yaml.safe_load(text)
        except yaml.YAMLError as error:
            # The problem and its line; the first line of the message is often only context.
            problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}" if problem and mark else ""
            parser.error(f"{where}: not YAML ({problem or one_line(error)}{at})")
        except RecursionError:
            parser.error(f"{where}: not a config file (nested too deeply)")
        except ValueError as error:  # a number PyYAML cannot convert, such as 5,000 digits
            parser.error(f"{where}: not a config file ({one_line(error)[:200]})")
    if not isinstance(mapping, dict):
        parser.error(f"{where}: not a mapping of flags to values")
    record = mapping.keys() == {"command", "args"} and isinstance(mapping["args"], dict)
    if record:
        mapping = mapping["args"]
    actions = {
        action.dest: action for action in parser._actions if action.default is not argparse.SUPPRESS
    }
    config = {}
    # Only a run's record is in an older run's terms; a file written by hand is in today's.
    for key, value in (upgrade_saved_args(mapping) if record else mapping).items():
        if key not in actions:
            parser.error(f"{where}: unknown key {key!r}{_key_hint(key, actions)}")
        if key in INVOCATION_FLAGS:
            if value is not None and value is not False:
                parser.error(
                    f"{where}: {key} is not a setting of a run; give {_flag(key)} on the "
                    "command line"
                )
            continue
        try:
            config[key] = _config_value(parser, actions[key], value)
        except ValueError as error:
            hint = ""
            if isinstance(value, bool) and suffix != ".json":
                hint = " (YAML reads unquoted on, off, yes and no as booleans: quote them)"
            parser.error(f"{where}: {key}: {error}{hint}")
    if record:
        for key in run_defining_fields(parser):
            config.setdefault(key, parser.get_default(key))
    return config


def _key_hint(key: object, keys: dict) -> str:
    """What an unknown key of a config file may have meant."""
    if isinstance(key, str) and key.replace("-", "_") in keys:
        return f" (keys are the flags' names with underscores: {key.replace('-', '_')})"
    close = difflib.get_close_matches(str(key), keys, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _config_value(parser: argparse.ArgumentParser, action: argparse.Action, value: object):
    """``value`` of a config file as ``action``'s flag takes it: null only where the flag's
    default is none, a boolean for an on/off flag, a list for a flag of several values, and
    each value through the flag's type and choices; ValueError says what is wrong."""
    if value is None:
        if action.default is not None:
            raise ValueError(f"null, but {action.option_strings[0]} needs a value")
        return None
    if action.nargs == 0:  # --x / --no-x, or a flag that only turns something on
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {_shown_config_value(value)}")
        return value
    if action.nargs == "+":
        # An empty list only where the flag's default is one (--test-augment: none).
        if not isinstance(value, list) or not (value or action.default == []):
            raise ValueError(
                f"must be a list of one or more values, got {_shown_config_value(value)}"
            )
        return [_one_config_value(parser, action, item) for item in value]
    return _one_config_value(parser, action, value)


def _one_config_value(parser: argparse.ArgumentParser, action: argparse.Action, value: object):
    """One value through the flag's type (given its command-line text) and choices."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        expected = (
            f"one of {', '.join(map(str, action.choices))}"
            if action.choices
            else "a number or a text"
        )
        raise ValueError(f"must be {expected}, got {_shown_config_value(value)}")
    # argparse's own conversion and check, so a value is refused as its flag would be.
    try:
        converted = parser._get_value(action, str(value))
        parser._check_value(action, converted)
    except argparse.ArgumentError as error:
        raise ValueError(error.message) from None
    return converted


def _shown_config_value(value: object) -> str:
    """A value of a config file in a message: a scalar as JSON writes it, a list or mapping
    by its kind (YAML's aliases can make one that takes gigabytes to write out)."""
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return json.dumps(value, default=str)


def recorded_args(args: argparse.Namespace) -> dict:
    """The flags that args.json and the checkpoints record: the run's settings, without
    what this invocation did with the run folder (:data:`INVOCATION_FLAGS`)."""
    return {key: value for key, value in vars(args).items() if key not in INVOCATION_FLAGS}


def optimizer_kwargs(args: argparse.Namespace) -> dict:
    """The keywords of training.optim.make_optimizer that train.py's flags set."""
    return {
        "name": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum,
        "nesterov": args.nesterov,
        "weight_decay": args.weight_decay,
        "decay_norm_bias": args.decay_norm_bias,
    }


def scheduler_kwargs(args: argparse.Namespace) -> dict:
    """The keywords of training.optim.make_scheduler that train.py's flags set (the steps
    per epoch come from the data)."""
    return {
        "name": args.schedule,
        "epochs": args.epochs,
        "lr": args.lr,
        "warmup_epochs": args.warmup_epochs,
        "step_size": args.step_size,
        "gamma": args.gamma,
    }


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def run_defining_fields(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The destinations of the flags in :data:`RUN_DEFINING_GROUPS` (train.py's parser by
    default), in the order of ``--help``."""
    parser = parser or build_parser()
    # argparse keeps a group's actions in private fields; it has no public way to list them.
    groups = {group.title: group for group in parser._action_groups}
    return [action.dest for title in RUN_DEFINING_GROUPS for action in groups[title]._group_actions]


def upgrade_saved_args(saved: dict) -> dict:
    """A checkpoint's flags in today's terms.

    - Runs before the augmentation table recorded --augment as one name and --cutout N (0:
      off) beside it: augment "crop-flip" with cutout 8 is today's --augment crop-flip
      cutout --cutout-size 8.
    - Runs before the table of test-time augmentations recorded --flip-eval: today's
      --test-augment flip.
    """
    upgraded = dict(saved)
    if isinstance(saved.get("augment"), str):
        upgraded.pop("cutout", None)
        cutout_size = saved.get("cutout", 0)
        before = [] if saved["augment"] == "none" and cutout_size else [saved["augment"]]
        upgraded["augment"] = [*before, *(["cutout"] if cutout_size else [])]
        upgraded["cutout_size"] = cutout_size or None
    if "flip_eval" in saved:
        upgraded["test_augment"] = ["flip"] if upgraded.pop("flip_eval") else []
    return upgraded


def _shown(value: object) -> str:
    """A flag's value as it is written on the command line (lists: space-separated)."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def changed_from_preset(args: argparse.Namespace, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The run-defining flags (but ``leave_out``) that ``args`` sets otherwise than its
    preset, as command-line words: ["--epochs", "4"]."""
    preset = parse_args(["--preset", args.preset])
    words = []
    for key in run_defining_fields():
        value = getattr(args, key)
        if key in leave_out or value == getattr(preset, key):
            continue
        if isinstance(value, bool):
            words.append(_flag(key) if value else _flag(key).replace("--", "--no-", 1))
        else:
            words.extend([_flag(key), _shown(value)])
    return words


def resume_mismatches(saved: dict, args: argparse.Namespace) -> list[str]:
    """The run-defining flags whose values differ between a checkpoint and ``args``."""
    saved = upgrade_saved_args(saved)
    parser = build_parser()
    defaults = parser.parse_args([])
    fields = [
        f for f in run_defining_fields(parser) if not (f == "epochs" and args.schedule == "step")
    ]
    # A step schedule does not depend on the run's length, so such a run may be extended.
    # An augmentation's parameter is named only where both runs use the augmentation.
    augment = saved.get("augment", defaults.augment), args.augment
    fields = [
        key
        for key in fields
        if key not in AUGMENT_PARAMETERS
        or all(AUGMENT_PARAMETERS[key][0] in names for names in augment)
    ]
    return [
        f"{_flag(key)} {_shown(saved.get(key, getattr(defaults, key)))} "
        f"(now {_shown(getattr(args, key))})"
        for key in fields
        if saved.get(key, getattr(defaults, key)) != getattr(args, key)
    ]
