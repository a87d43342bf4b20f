"""Optimizers and learning-rate schedules, chosen by name from tables; and the rate at which
batch norm's running statistics follow the batches.

Adding one is one entry, a function whose keyword parameters name the settings it uses;
an unknown name is a ValueError naming the choices. Every schedule steps once per batch
and takes a linear warm-up (``warmup_epochs``). The functions take keywords, never a
command line: training/options.py turns train.py's flags into them.
"""

import inspect
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler

Optimizer = torch.optim.Optimizer
Scheduler = lr_scheduler.LRScheduler


def _sgd(groups, *, lr: float, momentum: float, nesterov: bool, fused: bool) -> Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)


def _adam(groups, *, lr: float, fused: bool) -> Optimizer:
    return torch.optim.Adam(groups, lr=lr, fused=fused)


def _adamw(groups, *, lr: float, fused: bool) -> Optimizer:
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}
"""(parameter groups, the settings it names) -> an optimizer."""


def _with_warmup(optimizer: Optimizer, schedule: Scheduler, warmup: int) -> Scheduler:
    if not warmup:
        return schedule
    linear = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [linear, schedule], milestones=[warmup])


def _step(
    optimizer: Optimizer, *, warmup_steps: int, steps_per_epoch: int, step_size: int, gamma: float
) -> Scheduler:
    step = lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=gamma)
    return _with_warmup(optimizer, step, warmup_steps)


def _cosine(optimizer: Optimizer, *, total_steps: int, warmup_steps: int) -> Scheduler:
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps)
    return _with_warmup(optimizer, cosine, warmup_steps)


def _onecycle(
    optimizer: Optimizer, *, total_steps: int, lr: float, warmup_epochs: float, epochs: int
) -> Scheduler:
    # Its own warm-up, from lr / 25 up to lr, then down; the share of the run in epochs,
    # not rounded to steps, so that a few steps still make two phases.
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=warmup_epochs / epochs
    )


def _linear(optimizer: Optimizer, *, total_steps: int, warmup_steps: int) -> Scheduler:
    # Down to zero after the last step, as airbench's schedule (with its warm-up) ends.
    decay = lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=0.0, total_iters=total_steps - warmup_steps
    )
    return _with_warmup(optimizer, decay, warmup_steps)


SCHEDULES: dict[str, Callable[..., Scheduler]] = {
    "step": _step,
    "cosine": _cosine,
    "onecycle": _onecycle,
    "linear": _linear,
}
"""(optimizer, the settings it names) -> a per-step scheduler."""
DEFAULT_WARMUP = {"onecycle": 0.3}  # share of the run; the other schedules: no warm-up


def _choose(table, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]


def _call_with_what_it_names(build: Callable, first, settings: dict):
    """``build(first, **settings)`` with only the settings among its parameters."""
    names = inspect.signature(build).parameters
    return build(first, **{key: value for key, value in settings.items() if key in names})


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool) -> list:
    """Weight decay on the weights of convolutions and linear layers; on batch-norm scales
    and shifts and on biases (the 1-D parameters) only if ``decay_norm_bias``: decaying them
    shrinks nothing the loss needs shrunk."""
    if decay_norm_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decayed = [p for p in model.parameters() if p.ndim > 1]
    exempt = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 1e-4,
    decay_norm_bias: bool = True,
    fused: bool = False,
) -> Optimizer:
    """The optimizer ``name`` over ``model``'s parameters; the defaults are the seed recipe.
    ``fused`` (CUDA only) updates every parameter in a few launches instead of one per
    tensor."""
    build = _choose(OPTIMIZERS, name, "optimizer")
    groups = parameter_groups(model, weight_decay, decay_norm_bias)
    settings = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "fused": fused}
    return _call_with_what_it_names(build, groups, settings)


def resolve_warmup_epochs(name: str, epochs: int, warmup_epochs: float | None) -> float:
    """The warm-up in epochs: the one given, else the schedule's default share of the run."""
    if warmup_epochs is not None:
        return warmup_epochs
    return DEFAULT_WARMUP.get(name, 0.0) * epochs


def make_scheduler(
    optimizer: Optimizer,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    warmup_epochs: float | None = None,
    step_size: int = 30,
    gamma: float = 0.1,
) -> Scheduler:
    """The schedule ``name`` over ``epochs`` epochs of ``steps_per_epoch`` steps, peaking at
    ``lr``; ``step_size`` (epochs) and ``gamma`` are the step schedule's."""
    build = _choose(SCHEDULES, name, "schedule")
    total = epochs * steps_per_epoch
    warmup_epochs = resolve_warmup_epochs(name, epochs, warmup_epochs)
    # Rounded to steps, a warm-up of nearly the whole run could leave the schedule none.
    warmup = min(round(warmup_epochs * steps_per_epoch), total - 1)
    settings = {
        "total_steps": total,
        "warmup_steps": warmup,
        "steps_per_epoch": steps_per_epoch,
        "lr": lr,
        "warmup_epochs": warmup_epochs,
        "epochs": epochs,
        "step_size": step_size,
        "gamma": gamma,
    }
    return _call_with_what_it_names(build, optimizer, settings)


def set_batch_norm_momentum(model: nn.Module, momentum: float | None) -> None:
    """Sets the momentum of every batch-norm layer of ``model``: the weight of each batch's
    statistics in the running ones that evaluation uses (PyTorch's convention: airbench's
    0.6 is 0.4 here). None leaves the layers' own (PyTorch's 0.1)."""
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
