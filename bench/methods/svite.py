"""SViTE, S2ViTE and SViTE+ (Chen et al., NeurIPS 2021, arXiv 2106.04533): sparse ViT training under a
fixed parameter budget. The shared prune-and-grow machinery is in :mod:`bench.methods.sparse` and
:mod:`bench.methods.structured`.

* ``svite``: unstructured weight sparsity at ``density`` (ERK layer densities, RigL updates).
* ``s2vite``: ``density`` of the attention heads and MLP neurons kept; after training the cut ones are
  removed from the model (``prepare_inference``), so its GMACs and throughput are measured, not assumed.
* ``svite_plus``: ``svite`` plus a learnable token selector: a Linear(C, 1) scorer on the embedded tokens
  (after the position embedding, before block 0) keeps ``int(num_patches * keep_ratio)`` patch tokens and
  the class token (keep 0.95 keeps 187 of 197 tokens: the paper's "(5%, 50%)" with density 0.5). Training
  picks them with a hard top-k Gumbel-Softmax (straight-through), temperature annealed linearly from
  ``tau_start`` to ``tau_end``.

Harness protocol, where the official code differs (documented choices): at evaluation unselected tokens
are removed, not zeroed, and the choice is a deterministic top-k without Gumbel noise. Training follows
the official code (unselected tokens zeroed, straight-through mask over all tokens): with removal the
scorer gets no signal from the tokens it drops, and in our tests it learned to drop the informative ones. Fine-tuning from the dense
backbone starts from magnitude masks; ``from_scratch: true`` re-initialises the backbone and draws random
masks, as the paper's 600-epoch DeiT recipe.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.methods.base import Method, Param, check_vit, num_patches, register_method
from bench.methods.pruning import StagedPruning
from bench.methods.sparse import SCHEDULE_PARAMS, UnstructuredSparsity, check_schedule, drop_fraction, is_update_step
from bench.methods.structured import StructuredSparsity, remove_structures

#: attribute of the model that holds SViTE+'s token scorer (so it is saved in the state_dict)
SELECTOR = "svite_token_selector"


class _SparseSchedule:
    """The prune-and-grow clock shared by the three methods."""

    def __init__(self, method: Method, sparsity: Any):
        self.method, self.sparsity = method, sparsity
        self.total_steps = 1
        self.history: list[dict[str, Any]] = []

    def maybe_update(self, step: int) -> None:
        cfg = self.method.config
        if cfg["density"] < 1.0 and is_update_step(step, self.total_steps, cfg):
            fraction = drop_fraction(step, self.total_steps, cfg["drop_start"], cfg["drop_end"], cfg["stop_fraction"])
            moved = self.sparsity.prune_and_grow(fraction)
            self.history.append({"step": step, "drop_fraction": fraction, "moved": moved})


def _reinit(model: nn.Module) -> None:
    if not hasattr(model, "init_weights"):
        raise UsageError("from_scratch needs a timm VisionTransformer (init_weights)")
    model.init_weights()


class _SparseTraining:
    """Mixin: the prune-and-grow training hooks around a ``self.sparsity`` (unstructured or structured)."""

    reads_weights = True  # masks start from the weights' magnitudes

    def _init_sparsity(self, sparsity: Any) -> None:
        if not self.reduces_tokens and self.keep_ratio != 1.0:
            raise UsageError(f"method {self.name!r} keeps every token (keep_ratio 1.0); its budget is 'density'")
        check_schedule(self.name, self.config)
        self.sparsity = sparsity
        self.clock = _SparseSchedule(self, sparsity)

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        self.clock.total_steps = total_steps

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        self.clock.maybe_update(step)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if self.config["density"] < 1.0:
            self.sparsity.apply_masks()  # AdamW moments and weight decay must not revive cut weights

    def train_state(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity.state(), "history": list(self.clock.history)}

    def load_train_state(self, state: dict[str, Any]) -> None:
        if "sparsity" in state:
            self.sparsity.load_state(state["sparsity"])
            self.clock.history = list(state.get("history", []))


class _WeightSparse(_SparseTraining):
    """Mixin: unstructured SViTE sparsity."""

    weight_sparse = True

    def _attach_sparsity(self, model: nn.Module) -> None:
        if self.config["from_scratch"]:
            _reinit(model)
        if self.config["density"] < 1.0:
            self.sparsity.attach(model, magnitude=not self.config["from_scratch"])

    def train_metrics(self) -> dict[str, Any]:
        if self.config["density"] >= 1.0:
            return {}
        return {"nonzero_weights": self.sparsity.nonzeros(), "sparse_updates": len(self.clock.history)}


@register_method
class SViTE(_WeightSparse, Method):
    name = "svite"
    roles = ("weight_budget",)
    family = "svite"
    description = (
        "SViTE: unstructured sparse training at a fixed density (ERK masks, magnitude drop, gradient regrowth)"
    )
    identity_params = {"density": 1.0}
    params = dict(SCHEDULE_PARAMS)

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        self._init_sparsity(UnstructuredSparsity(self.config["density"], self.seed))

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        self._attach_sparsity(model)
        return model


@register_method
class S2ViTE(_SparseTraining, Method):
    name = "s2vite"
    roles = ("weight_budget",)
    family = "svite"
    description = (
        "S2ViTE: structured sparse training of attention heads and MLP neurons (Taylor / L1 drop, gradient "
        "regrowth), cut structures removed after training"
    )
    identity_params = {"density": 1.0}
    params = dict(SCHEDULE_PARAMS)

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        self._init_sparsity(StructuredSparsity(self.config["density"]))

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        if self.config["from_scratch"]:
            _reinit(model)
        if self.config["density"] < 1.0:
            self._handles.extend(self.sparsity.attach(model))
        return model

    def train_metrics(self) -> dict[str, Any]:
        if self.config["density"] >= 1.0:
            return {}
        return {
            **self.sparsity.counts(),
            "active_params": self.sparsity.active_params(),
            "sparse_updates": len(self.clock.history),
        }

    def prepare_inference(self, model: nn.Module) -> nn.Module:
        remove_structures(model)
        return model


@register_method
class SViTEPlus(_WeightSparse, StagedPruning):
    name = "svite_plus"
    roles = ("learned",)
    family = "svite"
    description = (
        "SViTE+: SViTE weight sparsity plus a learnable top-k token selector after the position embedding "
        "(hard Gumbel-Softmax, straight-through, in training)"
    )
    learns_parameters = True
    input_dependent = True
    overhead_modules = (SELECTOR,)
    identity_params = {"density": 1.0}
    params = {
        **SCHEDULE_PARAMS,
        "tau_start": Param(10.0, "Gumbel-Softmax temperature at the start of training"),
        "tau_end": Param(0.1, "temperature at the end (linear annealing)"),
        "selector_lr_scale": Param(
            1.0,
            "the token scorer's learning rate as a multiple of the recipe's (the paper "
            "trains it with the model; short fine-tunes need it faster)",
            minimum=0,
        ),
    }

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        self._init_sparsity(UnstructuredSparsity(self.config["density"], self.seed))
        if self.config["tau_start"] <= 0 or self.config["tau_end"] <= 0:
            raise UsageError(f"method {self.name!r}: temperatures must be > 0")
        self.tau = float(self.config["tau_start"])
        self._gen = torch.Generator().manual_seed(self.seed)
        self._step = 0  # optimiser steps taken: a resumed run's temperature continues from there

    def stages(self, model: nn.Module) -> list[tuple[int, int]]:
        return [(0, max(1, int(num_patches(model) * self.keep_ratio + 1e-6)))]

    def attach_learned(self, model: nn.Module) -> None:
        if not hasattr(model, SELECTOR):
            dim = int(getattr(model, "embed_dim", model.num_features))
            setattr(model, SELECTOR, nn.Linear(dim, 1))
        if self.keep_ratio >= 1.0:
            getattr(model, SELECTOR).requires_grad_(False)

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        self._attach_sparsity(model)  # before the selector exists: it is not sparsified
        return super().apply(model)

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        super().on_train_start(model, total_steps)
        self._set_tau(self._step)  # 0, or the step a resumed run stopped at (train_state)

    def lr_scales(self) -> dict[str, float]:
        return {SELECTOR: float(self.config["selector_lr_scale"])}

    def _set_tau(self, step: int) -> None:
        t = min(1.0, step / max(1, self.clock.total_steps - 1))
        self.tau = self.config["tau_start"] + (self.config["tau_end"] - self.config["tau_start"]) * t

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        super().after_optimizer_step(model, step)
        self._step = step + 1
        self._set_tau(self._step)

    def train_state(self) -> dict[str, Any]:
        return {**super().train_state(), "generator": self._gen.get_state(), "tau": self.tau, "step": self._step}

    def load_train_state(self, state: dict[str, Any]) -> None:
        super().load_train_state(state)
        if "generator" in state:
            self._gen.set_state(state["generator"])
            self.tau = state["tau"]
            self._step = int(state.get("step", 0))

    def reduce(
        self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = getattr(model, SELECTOR)(patches).squeeze(-1)  # (B, N)
        if not (model.training and torch.is_grad_enabled()):
            idx = torch.topk(scores, keep, dim=1, sorted=False).indices.sort(dim=1).values
            kept = torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            return kept, torch.gather(positions, 1, idx)
        u = torch.rand(scores.shape, generator=self._gen).to(scores.device).clamp_(1e-9, 1 - 1e-9)
        perturbed = (scores - torch.log(-torch.log(u))) / self.tau
        idx = torch.topk(perturbed, keep, dim=1, sorted=False).indices
        hard = torch.zeros_like(scores).scatter_(1, idx, 1.0)
        soft = perturbed.softmax(dim=1)
        # straight-through, as the official code: unselected tokens are zeroed (not removed) while training, so
        # the scorer also learns from the tokens it dropped; the forward multiplies by exactly 0 or 1
        mask = hard + (soft - soft.detach())
        return patches * mask.unsqueeze(-1), positions
