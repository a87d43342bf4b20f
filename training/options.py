"""train.py's flags, the named recipes (presets), what must match on --resume, and the
adapters that turn the flags into the training library's keywords."""

import argparse

from dataloader.augment import AUGMENTATIONS, Parameter, check_order, parameter_key
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
from utils import UserError

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
        "--data",
        default=str(DEFAULT_DATA),
        help="folder made by data/download_data.py (a relative path starts at the working folder)",
    )
    # The flag of runs before the augmentation table, refused by name (argparse would
    # otherwise take it for an abbreviation of --cutout-size).
    add("--cutout", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
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
    default_augment = ["crop-flip"]
    recipe(
        "--augment",
        nargs="+",
        default=default_augment,
        choices=AUGMENTATIONS,
        metavar="NAME",
        help="augmentations of every training image, applied in the order given: "
        f"{', '.join(AUGMENTATIONS)} (default: {' '.join(default_augment)})",
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
        "--flip-eval",
        action=on_off,
        default=False,
        help="also score validation with horizontal-flip test-time augmentation",
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
    preset = _preset_parser(parser).parse_known_args(argv)[0].preset
    # Set before parsing, so that --help shows the preset's values as the defaults.
    parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if "cutout" in args:
        parser.error(
            f"--cutout {args.cutout}: give --augment NAME cutout --cutout-size N instead "
            "(--cutout 0: leave cutout out of --augment)"
        )
    if args.nesterov and (args.optimizer != "sgd" or args.momentum == 0):
        parser.error("--nesterov needs --optimizer sgd and a non-zero --momentum")
    if args.warmup_epochs is not None and args.warmup_epochs >= args.epochs:
        parser.error("--warmup-epochs must be shorter than --epochs")
    try:
        check_order(args.augment)
    except ValueError as error:
        parser.error(f"--augment: {error}")
    for key, (name, parameter) in AUGMENT_PARAMETERS.items():
        if name not in args.augment and getattr(args, key) is not None:
            parser.error(f"{_flag(key)} needs {name} in --augment")
        if name in args.augment and getattr(args, key) is None:
            setattr(args, key, parameter.default)
    try:
        switch_kwargs(args.model, vars(args))
    except ValueError as error:
        parser.error(str(error))
    if args.out is None:
        args.out = default_out(args.model, args.preset)
    return args


def default_out(model: str, preset: str) -> str:
    """The run folder when --out is not given: named after the recipe as well as the model,
    so that two presets (the Quick start's cpu then fast) never meet in one folder."""
    return f"runs/{model}-{preset}"


def _preset_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A parser of --preset alone, with ``parser``'s messages (a wrong preset is reported as
    train.py's, or as the passing program's): it reads the preset before --help is acted
    on."""
    preset = argparse.ArgumentParser(prog=parser.prog, add_help=False)
    preset.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)
    preset.error = parser.error
    return preset


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
    """A checkpoint's flags in today's terms. Runs before the augmentation table recorded
    --augment as one name and --cutout N (0: off) beside it: augment "crop-flip" with
    cutout 8 is today's --augment crop-flip cutout --cutout-size 8."""
    if not isinstance(saved.get("augment"), str):
        return saved
    upgraded = {key: value for key, value in saved.items() if key != "cutout"}
    cutout_size = saved.get("cutout", 0)
    before = [] if saved["augment"] == "none" and cutout_size else [saved["augment"]]
    upgraded["augment"] = [*before, *(["cutout"] if cutout_size else [])]
    upgraded["cutout_size"] = cutout_size or None
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
