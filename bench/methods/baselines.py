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
    roles = ("reference",)
    description = "the unmodified backbone (every token enters every block)"

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        return model


@register_method
class StaticCentre(StagedPruning):
    name = "static"
    roles = ("control",)
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
    roles = ("control",)
    description = "a seeded random subset of patch tokens, drawn anew per image, in training and evaluation"
    input_dependent = True  # not on the pixels, but differs per image, so FLOPs are averaged like one

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params):
        super().__init__(keep_ratio, seed, **params)
        self._train_gen = torch.Generator().manual_seed(self.seed)
        self._training = False
        #: evaluation draws per (device, batch size): one tensor per stage, made once and kept on the device
        self._eval_draws: dict[tuple[torch.device, int], list[torch.Tensor]] = {}

    def on_forward_start(self, x: torch.Tensor) -> None:
        self._training = self._model.training

    def apply(self, model: nn.Module) -> nn.Module:
        self._model = model
        self._eval_draws.clear()
        return super().apply(model)

    def train_state(self) -> dict:
        return {"generator": self._train_gen.get_state()}

    def load_train_state(self, state: dict) -> None:
        if "generator" in state:
            self._train_gen.set_state(state["generator"])

    def score(self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self._training:
            return torch.rand(patches.shape[:2], generator=self._train_gen).to(patches.device)
        return self._eval_draw(stage, patches)

    def _eval_draw(self, stage: int, patches: torch.Tensor) -> torch.Tensor:
        """Evaluation is reproducible: every forward of a batch of B images gets what a host generator seeded
        with ``seed + 1`` at the start of the forward draws, stage after stage (so image i of every batch of
        that size sees the same subsets whatever ran before, on any device, as before this cache).

        The draws are made once per device and batch size (by the first forward, e.g. a timing's warm-up)
        and kept on the device: later evaluation forwards build no generator, copy nothing to the device
        and wait on nothing (a host draw and copy per stage was a blocking host-to-device transfer inside
        the timed loop)."""
        key = (patches.device, int(patches.shape[0]))
        draws = self._eval_draws.get(key, [])
        shape = tuple(patches.shape[:2])
        if stage < len(draws) and tuple(draws[stage].shape) == shape:
            return draws[stage]
        if stage > len(draws):
            raise RuntimeError(f"method 'random': stage {stage} scored before stage {len(draws)}")
        gen = torch.Generator().manual_seed(self.seed + 1)  # the stream from its start, this stage appended
        shapes = [tuple(d.shape) for d in draws[:stage]] + [shape]
        self._eval_draws[key] = [torch.rand(s, generator=gen, device="cpu").to(patches.device) for s in shapes]
        return self._eval_draws[key][stage]
