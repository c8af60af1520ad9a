"""Recipe keys and their defaults, and the resolution of a recipe from its layers (defaults, a named preset,
the suite's fields), each value with its source.
"""

from __future__ import annotations

import copy
from typing import Any

from bench.errors import UsageError

#: every recipe key and its default. The augmentation defaults are off: the embedded data's random
#: placement is its augmentation; the named recipes (``bench/recipes``) turn on the papers' stacks.
DEFAULT_RECIPE: dict[str, Any] = {
    # optimisation
    "epochs": 0,
    "batch_size": 128,
    "opt": "adamw",
    "lr": 5e-4,
    "min_lr": 1e-6,
    "warmup_lr": 1e-6,
    "warmup_epochs": 0,
    "warmup_prefix": False,
    "lr_step": "step",
    "weight_decay": 0.05,
    "opt_eps": None,
    "opt_betas": None,
    "clip_grad": 1.0,
    "label_smoothing": 0.1,
    "drop_path": 0.0,
    "amp": True,
    "max_steps_per_epoch": None,
    "lr_base_batch": None,
    # parameter groups: the backbone's lr as a multiple of the scheduled lr, frozen (lr 0) epochs, never trained
    "backbone_lr_scale": 1.0,
    "freeze_backbone_epochs": 0,
    "frozen_params": [],
    # image augmentation (timm.data.create_transform)
    "auto_augment": None,
    "color_jitter": None,
    "interpolation": "bicubic",
    "scale": None,
    "ratio": None,
    "hflip": None,
    "re_prob": 0.0,
    "re_mode": "pixel",
    "re_count": 1,
    # batch augmentation (timm.data.Mixup) and sampling
    "mixup": 0.0,
    "cutmix": 0.0,
    "cutmix_minmax": None,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "repeated_aug": 1,
    # weight averaging (timm.utils.ModelEmaV3), evaluated as its own metrics
    "model_ema": False,
    "model_ema_decay": 0.9999,
    "model_ema_warmup": False,
}


def resolve_recipe(*layers: tuple[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe and each value's source from ``(where, spec)`` layers, later ones winning.

    A spec is a mapping of recipe keys, optionally naming a preset (``recipe: dynamicvit``) whose values
    come first, or a preset name alone. Sources read "default", "recipe <name>: <official file:line>" or
    the suite field that set the value.
    """
    from bench.recipes import preset

    out, sources = copy.deepcopy(DEFAULT_RECIPE), {k: "default" for k in DEFAULT_RECIPE}
    for where, spec in layers:
        if spec is None:
            continue
        spec = {"recipe": spec} if isinstance(spec, str) else spec
        if "recipe" in spec:
            try:
                values = preset(spec["recipe"])
            except UsageError as e:
                raise UsageError(f"{where}.recipe: {e}") from None
            for k, (v, src) in values.items():
                out[k], sources[k] = copy.deepcopy(v), src
        for k, v in spec.items():
            if k != "recipe":
                out[k], sources[k] = copy.deepcopy(v), where
    return out, sources
