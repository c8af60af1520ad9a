"""Reference methods: the dense backbone and the static / random pruning ablations.

``static`` and ``random`` prune at exactly the stages and keep counts of the learned methods, so the
ablation isolates *which* tokens are kept from *how many*.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.methods.base import Method, check_vit, register_method
from bench.methods.pruning import StagedPruning


@register_method
class Dense(Method):
    name = "dense"
    description = "the unmodified backbone (every token enters every block)"

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        return model


@register_method
class StaticCentre(StagedPruning):
    name = "static"
    description = "fixed spatial pattern chosen without looking at the input: patches nearest the image centre"

    def score(self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rows, cols = model.patch_embed.grid_size
        r = torch.div(positions, cols, rounding_mode="floor").to(patches.dtype)
        c = (positions % cols).to(patches.dtype)
        dist = (r - (rows - 1) / 2) ** 2 + (c - (cols - 1) / 2) ** 2
        # ties (equal distance) are broken by position so the pattern is fully determined
        return -(dist + positions.to(patches.dtype) * 1e-6)


@register_method
class RandomSubset(StagedPruning):
    name = "random"
    description = "a seeded random subset of patch tokens, drawn anew per image, in training and evaluation"
    input_dependent = True  # not on the pixels, but differs per image, so FLOPs are averaged like one

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params):
        super().__init__(keep_ratio, seed, **params)
        self._train_gen = torch.Generator().manual_seed(self.seed)
        self._gen = self._train_gen

    def on_forward_start(self, x: torch.Tensor) -> None:
        # evaluation is reproducible: image i of every batch sees the same draw whatever ran before
        self._gen = self._train_gen if self._model.training else torch.Generator().manual_seed(self.seed + 1)

    def apply(self, model: nn.Module) -> nn.Module:
        self._model = model
        return super().apply(model)

    def train_state(self) -> dict:
        return {"generator": self._train_gen.get_state()}

    def load_train_state(self, state: dict) -> None:
        if "generator" in state:
            self._train_gen.set_state(state["generator"])

    def score(self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.rand(patches.shape[:2], generator=self._gen).to(patches.device)
