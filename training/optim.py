"""Optimizers and learning-rate schedules, chosen by name from tables.

Adding one is one entry; an unknown name is a ValueError naming the choices. Every
schedule steps once per batch and takes a linear warm-up (``warmup_epochs``).
"""

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler

Optimizer = torch.optim.Optimizer
Scheduler = lr_scheduler.LRScheduler


def _sgd(groups, args: argparse.Namespace, fused: bool) -> Optimizer:
    return torch.optim.SGD(
        groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov, fused=fused
    )


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": _sgd,
    "adam": lambda groups, args, fused: torch.optim.Adam(groups, lr=args.lr, fused=fused),
    "adamw": lambda groups, args, fused: torch.optim.AdamW(groups, lr=args.lr, fused=fused),
}


def _with_warmup(optimizer: Optimizer, schedule: Scheduler, warmup: int) -> Scheduler:
    if not warmup:
        return schedule
    linear = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [linear, schedule], milestones=[warmup])


def _step(args, optimizer: Optimizer, total: int, warmup: int, per_epoch: int) -> Scheduler:
    step = lr_scheduler.StepLR(optimizer, step_size=args.step_size * per_epoch, gamma=args.gamma)
    return _with_warmup(optimizer, step, warmup)


def _cosine(args, optimizer: Optimizer, total: int, warmup: int, per_epoch: int) -> Scheduler:
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
    return _with_warmup(optimizer, cosine, warmup)


def _onecycle(args, optimizer: Optimizer, total: int, warmup: int, per_epoch: int) -> Scheduler:
    # Its own warm-up, from lr / 25 up to lr, then down; the share of the run in epochs,
    # not rounded to steps, so that a few steps still make two phases.
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=total, pct_start=warmup_epochs(args) / args.epochs
    )


SCHEDULES: dict[str, Callable[..., Scheduler]] = {
    "step": _step,
    "cosine": _cosine,
    "onecycle": _onecycle,
}
"""(args, optimizer, total steps, warm-up steps, steps per epoch) -> a per-step scheduler."""
DEFAULT_WARMUP = {"onecycle": 0.3}  # share of the run; the other schedules: no warm-up


def _choose(table, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]


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


def make_optimizer(args: argparse.Namespace, model: nn.Module, device: torch.device) -> Optimizer:
    build = _choose(OPTIMIZERS, args.optimizer, "optimizer")
    groups = parameter_groups(model, args.weight_decay, args.decay_norm_bias)
    # Fused kernels update every parameter in a few launches instead of one per tensor.
    return build(groups, args, device.type == "cuda")


def warmup_epochs(args: argparse.Namespace) -> float:
    if args.warmup_epochs is not None:
        return args.warmup_epochs
    return DEFAULT_WARMUP.get(args.schedule, 0.0) * args.epochs


def make_scheduler(args: argparse.Namespace, optimizer: Optimizer, per_epoch: int) -> Scheduler:
    """The schedule of ``args.schedule`` over ``args.epochs`` epochs of ``per_epoch`` steps."""
    build = _choose(SCHEDULES, args.schedule, "schedule")
    total = args.epochs * per_epoch
    # Rounded to steps, a warm-up of nearly the whole run could leave the schedule none.
    warmup = min(round(warmup_epochs(args) * per_epoch), total - 1)
    return build(args, optimizer, total, warmup, per_epoch)
