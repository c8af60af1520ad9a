"""The method contract: how a token-sparsification method plugs into any timm VisionTransformer.

A method is a small class with declared parameters. ``apply`` patches a built model in place (hooks,
not forks of timm's code), ``token_schedule`` says how many tokens enter each block, and
``extra_losses`` adds training terms. A method adds state_dict keys only if it learns parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import UsageError
from bench.methods.params import Param
from bench.registry import Registry, did_you_mean
from bench.roles import check_roles


@dataclass
class BatchSum:
    """A loss term that is a sum over the batch divided by a count over the whole batch (DynamicViT's token
    distillation: the error summed over the batch's kept tokens, over how many tokens were kept). A method's
    ``extra_losses`` returns one of these, not the quotient, so that a step accumulated over micro-batches
    divides by the count of the whole per-device batch, as one big batch would, rather than by each
    micro-batch's own count. Every other term is a mean over the batch's images."""

    total: torch.Tensor
    count: torch.Tensor

    def value(self) -> torch.Tensor:
        return self.total / self.count.detach().clamp_min(1.0)


@dataclass
class TrainContext:
    """What a method's extra losses may look at during a training step."""

    images: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of every method plugin. Subclasses set ``name``, ``description`` and ``params``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    #: True when the method adds trainable parameters (and therefore state_dict keys).
    learns_parameters: ClassVar[bool] = False
    #: True when the method's token choice depends on the input image.
    input_dependent: ClassVar[bool] = False
    #: child modules of the patched model that hold the method's own compute (scorers, clustering):
    #: their fvcore count is reported on its own as well as within the total
    overhead_modules: ClassVar[tuple[str, ...]] = ()
    #: how the harness and the report treat the method (see :data:`bench.roles.ROLES`): "reference" (dense),
    #: "control" (static, random), "learned", "merging", "weight_budget". Literals only: the suite loader
    #: reads them from this file's syntax tree without importing torch (:mod:`bench.methods.catalog`)
    roles: ClassVar[tuple[str, ...]] = ()
    #: the paper figures the method is drawn in (a figure names the family it draws); "" for none
    family: ClassVar[str] = ""
    #: False for methods whose budget is not a token count (weight sparsity): they run at keep ratio 1.0.
    #: Follows the "weight_budget" role (set by ``__init_subclass__``, never declared)
    reduces_tokens: ClassVar[bool] = True
    #: True when the method zeroes individual weights (its theoretical sparse GMACs are reported)
    weight_sparse: ClassVar[bool] = False
    #: True when ``apply`` reads weight values (SViTE's masks): validation then builds it on real weights, not meta
    reads_weights: ClassVar[bool] = False
    #: parameters under which the method must compute exactly the dense model (checked by the contract tests)
    identity_params: ClassVar[dict[str, Any]] = {}
    #: True when the method reads the class token (EViT ranks patches by its attention): a backbone without one
    #: (timm's ``class_token=False``, ``global_pool='avg'``; register tokens are no class token) is refused by
    #: :meth:`check_model`. Methods that leave it False treat every prefix token (class token or register) alike
    #: and need none
    needs_class_token: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_roles(cls.__name__, cls.roles)
        cls.reduces_tokens = "weight_budget" not in cls.roles

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < keep_ratio <= 1.0:
            raise UsageError(f"method {self.name!r}: keep_ratio must be in (0, 1], got {keep_ratio!r}")
        self.keep_ratio = float(keep_ratio)
        self.seed = int(seed)
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise UsageError(
                f"method {self.name!r} has no parameter {unknown[0]!r}{did_you_mean(unknown[0], sorted(self.params))}"
                f" (parameters: {', '.join(sorted(self.params)) or 'none'})"
            )
        self.config = {k: p.default for k, p in self.params.items()}
        for k, v in params.items():
            self.config[k] = self.params[k].check(self.name, k, v)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- the contract -------------------------------------------------------------------------
    @property
    def reads_class_token(self) -> bool:
        return self.needs_class_token

    def check_model(self, model: nn.Module) -> None:
        """Refuse, in one line, a backbone that lacks what the method reads (its class token); ``apply`` calls it,
        and suite validation before anything runs."""
        if self.reads_class_token and not has_class_token(model):
            raise UsageError(
                f"method {self.name!r} ranks tokens by the class token's attention, and {model_name(model)} has no "
                f"class token ({prefix_description(model)}): it would rank by a "
                f"{'register' if int(getattr(model, 'num_prefix_tokens', 0)) else 'patch'}'s attention; use a "
                f"backbone with a class token"
            )

    def apply(self, model: nn.Module) -> nn.Module:
        """Patch ``model`` in place and return it."""
        return model

    def token_schedule(self, model: nn.Module) -> list[int]:
        """Tokens (prefix tokens included) entering each block at evaluation."""
        return [num_tokens(model)] * len(model.blocks)

    def extra_losses(self, model: nn.Module, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """Weighted extra training terms, added to the task loss. Keys name the terms in logs."""
        return {}

    def needs_teacher(self) -> bool:
        return False

    def attach_teacher(self, teacher: nn.Module) -> None:
        """Called once with the frozen teacher before training, e.g. to hook features beyond its logits."""

    # -- training hooks (all optional) --------------------------------------------------------
    def lr_scales(self) -> dict[str, float]:
        """The method's own modules (parameter-name prefix) and their lr as a multiple of the scheduled lr.

        They get optimiser groups of their own; every other parameter is the backbone's, at the recipe's
        ``backbone_lr_scale`` (``bench.train.optim``).
        """
        return {}

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        """Called once before training (also on resume) with the run's total optimiser steps."""

    def train_metrics(self) -> dict[str, Any]:
        """Method figures logged with every epoch and kept in the run record (e.g. the nonzero count)."""
        return {}

    def prepare_inference(self, model: nn.Module) -> nn.Module:
        """Called on trained weights before evaluation and measurement (e.g. to remove pruned structures)."""
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Schedules that move with training progress (temperatures, sparsity updates)."""

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Gradients are ready here (e.g. grow-by-gradient rules)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Weights were just updated (e.g. re-apply masks)."""

    def train_state(self) -> dict[str, Any]:
        """Method state that a resumed run must restore for exact resumption (RNG states, masks)."""
        return {}

    def load_train_state(self, state: dict[str, Any]) -> None:
        """Restore what ``train_state`` returned."""

    def remove(self) -> None:
        """Undo ``apply``'s hooks (learned modules stay attached)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "keep_ratio": self.keep_ratio, "seed": self.seed, **self.config}


def num_tokens(model: nn.Module) -> int:
    """Tokens entering the first block: patch tokens plus prefix (class/register) tokens."""
    return num_patches(model) + int(getattr(model, "num_prefix_tokens", 1))


def num_patches(model: nn.Module) -> int:
    return int(model.patch_embed.num_patches)


def has_class_token(model: nn.Module) -> bool:
    """Whether the model's first token is a class token (timm's ``cls_token``; registers follow it)."""
    return getattr(model, "cls_token", None) is not None


def model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def prefix_description(model: nn.Module) -> str:
    """e.g. "global_pool='avg', 4 register tokens": how the model pools, for messages about its prefix tokens."""
    registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    text = f"global_pool={getattr(model, 'global_pool', '?')!r}"
    return text + (f", {registers} register token{'s' * (registers != 1)}" if registers else ", no prefix tokens")


def check_vit(model: nn.Module, method: str) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
        raise UsageError(f"method {method!r} needs a timm VisionTransformer-like model, got {type(model).__name__}")
    if getattr(model, "global_pool", "token") not in ("token", "avg", "") and method != "dense":
        raise UsageError(f"method {method!r}: global_pool={model.global_pool!r} is not supported")


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS.add(cls.name, cls)
    return cls


def create_method(name: str, keep_ratio: float = 1.0, seed: int = 0, **params: Any) -> Method:
    return METHODS.get(name)(keep_ratio=keep_ratio, seed=seed, **params)


def list_methods() -> list[str]:
    return METHODS.names()
