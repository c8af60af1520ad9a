"""Optimiser parameter groups and the learning-rate rule every run trains under.

The rule is the official DynamicViT one (``engine.py``: ``param_group["lr"] = lr_schedule[it] *
param_group["lr_scale"]``, and 0 while ``epoch < fix_step``): one schedule from timm's
``CosineLRScheduler``, and each group's lr is its declared ``lr_scale`` times the scheduled lr at
every step, warm-up and floor included. A frozen group is held at lr 0 and still stepped by the
optimiser (AdamW's moments move, the weights do not), as the official lr-0 groups.

Groups: the method's own modules (``Method.lr_scales``: name prefix -> scale) and the backbone (the
recipe's ``backbone_lr_scale``, frozen for ``freeze_backbone_epochs``), each split into decay and
no-decay parameters as timm does (1-D tensors, biases and ``model.no_weight_decay()`` get none);
``frozen_params`` are never optimised.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from bench.errors import UsageError

LR_RULE = "group lr = lr_scale x scheduled lr (warm-up and floor included); frozen groups at lr 0, still stepped"


def param_groups(model: nn.Module, lr_scales: dict[str, float], recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """Named parameter groups (``lr_scale``, ``weight_decay``, ``frozen_epochs``) of a patched model."""
    names = dict(model.named_parameters())
    frozen = set(recipe["frozen_params"])
    unknown = sorted(frozen - set(names))
    if unknown:
        raise UsageError(f"recipe frozen_params: the model has no parameter {unknown[0]!r}")
    no_wd = set(getattr(model, "no_weight_decay", lambda: set())())
    wd = float(recipe["weight_decay"])
    groups: dict[str, dict[str, Any]] = {}
    for name, p in names.items():
        if not p.requires_grad or name in frozen:
            continue
        owner = next((pre for pre in lr_scales if name == pre or name.startswith(pre + ".")), None)
        decay = not (p.ndim <= 1 or name.endswith(".bias") or name in no_wd)
        key = (owner or "backbone") + ("" if decay else "_no_decay")
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "weight_decay": wd if decay else 0.0,
                "lr_scale": float(lr_scales[owner]) if owner else float(recipe["backbone_lr_scale"]),
                "frozen_epochs": 0 if owner else int(recipe["freeze_backbone_epochs"]),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def describe_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the run record states about its groups."""
    return [
        {
            "name": g["name"],
            "params": sum(p.numel() for p in g["params"]),
            "lr_scale": g["lr_scale"],
            "weight_decay": g["weight_decay"],
            "frozen_epochs": g["frozen_epochs"],
        }
        for g in groups
    ]


def build_optimizer(groups: list[dict[str, Any]], recipe: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {}
    if recipe["opt_eps"] is not None:
        kwargs["eps"] = float(recipe["opt_eps"])
    if recipe["opt_betas"] is not None:
        kwargs["betas"] = tuple(float(b) for b in recipe["opt_betas"])
    for g in groups:
        g["lr"] = lr  # the base lr of every group; the scheduler multiplies in lr_scale
    return create_optimizer_v2(groups, opt=recipe["opt"], lr=lr, weight_decay=float(recipe["weight_decay"]), **kwargs)


class GroupSchedule:
    """timm's cosine schedule applied by the rule above, per step or (``lr_step: epoch``) per epoch.

    Per epoch replays DeiT's loop: ``lr_scheduler.step(epoch)`` runs after epoch ``epoch``, so epoch
    e trains at the schedule's value for ``max(e - 1, 0)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: dict[str, Any], steps_per_epoch: int):
        self.optimizer, self.per_epoch = optimizer, recipe["lr_step"] == "epoch"
        epochs = int(recipe["epochs"])
        unit = 1 if self.per_epoch else steps_per_epoch
        if self.per_epoch and float(recipe["warmup_epochs"]) != int(recipe["warmup_epochs"]):
            raise UsageError(f"recipe lr_step: epoch needs whole warmup_epochs, got {recipe['warmup_epochs']}")
        total = max(1, epochs * unit)
        warmup = int(float(recipe["warmup_epochs"]) * unit)
        prefix = bool(recipe["warmup_prefix"])
        self.scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(1, total - warmup) if prefix else total,
            lr_min=float(recipe["min_lr"]),
            warmup_t=warmup,
            warmup_lr_init=float(recipe["warmup_lr"]),
            warmup_prefix=prefix,
            t_in_epochs=self.per_epoch,
        )

    def apply(self, step: int, epoch: int) -> None:
        """Set every group's lr for this step (of this epoch)."""
        if self.per_epoch:
            self.scheduler.step(max(epoch - 1, 0))
        else:
            self.scheduler.step_update(step)
        for g in self.optimizer.param_groups:
            if epoch < g.get("frozen_epochs", 0):
                g["lr"] = 0.0

    def scheduled_lr(self, step: int, epoch: int) -> float:
        """The schedule's value (before any group's scale) at this step."""
        t = max(epoch - 1, 0) if self.per_epoch else step
        return float(self.scheduler._get_lr(t)[0])
