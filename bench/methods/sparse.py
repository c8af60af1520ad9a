"""Sparse training under a fixed parameter budget, shared by SViTE, S2ViTE and SViTE+ (Chen et al., 2021).

* :class:`UnstructuredSparsity`: a mask on every weight matrix (patch embedding, qkv, proj, fc1, fc2,
  head; biases and norms stay dense) at ERK layer densities. Every ``update_interval`` steps each layer
  drops the ``f(t)`` fraction of its active weights with the smallest magnitude and grows as many
  inactive ones with the largest gradient magnitude (RigL), grown weights starting at zero; ``f(t)``
  is cosine-annealed from ``drop_start`` towards ``drop_end`` over the whole run (the official
  CosineDecay) and updates stop after ``stop_fraction`` of training. The nonzero count never changes.
* :class:`StructuredSparsity`: the same loop over attention heads and MLP neurons. A head is cut by
  zeroing its columns of ``proj`` (its output), a neuron by zeroing its ``fc2`` column; heads are
  dropped by the first-order Taylor importance ``|sum(dL/dO_h * O_h)|`` of their output, neurons by the
  L1 norm of their fc1 row plus fc2 column, and both are regrown by the L1 norm of the gradient of
  those output weights (nonzero although the weights are zero, because the head's or neuron's input
  weights are kept). After training, cut heads and neurons are removed from the model
  (:func:`remove_structures`) so the smaller model's FLOPs and throughput are real.

Masks live in the method (and its resumable train state), never in the state_dict: a cut weight is a
zero weight, so a saved model needs no masks to be evaluated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.methods.base import Param

#: module-name suffixes of the weight matrices SViTE sparsifies (the classifier is ``head`` itself)
SPARSE_SUFFIXES = ("patch_embed.proj", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

SCHEDULE_PARAMS = {
    "density": Param(0.5, "fraction of weights (SViTE) or of heads and neurons (S2ViTE) kept"),
    "update_interval": Param(
        100, "optimiser steps between prune-and-grow updates (delta T)", types=(int,), minimum=1, maximum=1_000_000
    ),
    "drop_start": Param(0.5, "fraction of active weights dropped and regrown at the first update", minimum=0),
    "drop_end": Param(
        0.005, "the fraction the cosine schedule anneals towards (reached at the end of training)", minimum=0
    ),
    "stop_fraction": Param(0.8, "fraction of training after which the sparsity pattern is frozen"),
    "from_scratch": Param(
        False,
        "re-initialise the backbone before training (the paper's recipe) instead of fine-tuning the dense one",
        types=(bool,),
    ),
}


def check_schedule(method: str, config: dict[str, Any]) -> None:
    if not 0.0 < config["density"] <= 1.0:
        raise UsageError(f"method {method!r}: parameter 'density' must be in (0, 1], got {config['density']!r}")
    if config["update_interval"] < 1:
        raise UsageError(f"method {method!r}: parameter 'update_interval' must be >= 1")
    for key in ("drop_start", "drop_end", "stop_fraction"):
        if not 0.0 <= config[key] <= 1.0:
            raise UsageError(f"method {method!r}: parameter {key!r} must be in [0, 1], got {config[key]!r}")


def drop_fraction(
    step: int, total_steps: int, start: float = 0.5, end: float = 0.005, stop_fraction: float = 0.8
) -> float:
    """Cosine-annealed drop fraction at ``step``; 0 once updates have stopped.

    As the official ``CosineDecay`` (torch's CosineAnnealingLR with T_max = every iteration of training,
    SViTE/main.py:346): the cosine spans the whole run, so at the last update (``stop_fraction``) it has
    not reached ``end`` (0.053 at 80%, not 0.005).
    """
    if step >= int(stop_fraction * total_steps):
        return 0.0
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def is_update_step(step: int, total_steps: int, config: dict[str, Any]) -> bool:
    return step > 0 and step % config["update_interval"] == 0 and step < int(config["stop_fraction"] * total_steps)


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear / Conv2d modules SViTE masks, by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (name == "head" or name.endswith(SPARSE_SUFFIXES))
    }


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel layer densities (RigL): proportional to sum(shape) / prod(shape), capped at 1,
    scaled so that the total number of kept weights is ``density`` of all of them."""
    numel = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / numel[k] for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[k] for k in dense)
        free = {k for k in shapes if k not in dense}
        eps = budget / sum(raw[k] * numel[k] for k in free)
        over = {k for k in free if eps * raw[k] > 1.0}
        if not over:
            return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}
        dense |= over


class UnstructuredSparsity:
    """Per-layer weight masks with RigL prune-and-grow at a constant number of nonzeros."""

    def __init__(self, density: float, seed: int):
        self.density = density
        self.seed = seed
        self.masks: dict[str, torch.Tensor] = {}
        self._layers: dict[str, nn.Module] = {}

    def attach(self, model: nn.Module, magnitude: bool) -> None:
        """Initial masks at ERK densities: random (training from scratch) or the largest weights (fine-tuning)."""
        self._layers = sparse_layers(model)
        densities = erk_densities({k: tuple(m.weight.shape) for k, m in self._layers.items()}, self.density)
        gen = torch.Generator().manual_seed(self.seed)
        for name, layer in self._layers.items():
            w = layer.weight.detach()
            keep = max(1, round(densities[name] * w.numel()))
            score = w.abs().flatten().cpu() if magnitude else torch.rand(w.numel(), generator=gen)
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[torch.topk(score, keep, sorted=False).indices] = True
            self.masks[name] = mask.view_as(w).to(w.device)
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, layer in self._layers.items():
            mask = self.masks[name]
            if mask.device != layer.weight.device:
                mask = self.masks[name] = mask.to(layer.weight.device)
            layer.weight.mul_(mask)

    def nonzeros(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @torch.no_grad()
    def prune_and_grow(self, fraction: float) -> int:
        """Drop ``fraction`` of each layer's active weights by magnitude, regrow as many by gradient; returns
        how many weights moved. Needs the gradients of the current step."""
        moved = 0
        for name, layer in self._layers.items():
            w, mask, grad = layer.weight, self.masks[name], layer.weight.grad
            if grad is None:
                continue
            n = int(fraction * int(mask.sum()))
            if n == 0:
                continue
            flat_mask = mask.flatten()
            active = torch.where(flat_mask, w.detach().abs().flatten(), torch.full_like(w.flatten(), float("inf")))
            dropped = torch.topk(active, n, largest=False).indices
            new_mask = flat_mask.clone()
            new_mask[dropped] = False
            # grow among the weights inactive after the drop (just-dropped ones may come back, as in RigL)
            candidates = torch.where(new_mask, torch.full_like(w.flatten(), -1.0), grad.abs().flatten())
            grown = torch.topk(candidates, n).indices
            new_mask[grown] = True
            w.view(-1)[grown] = 0.0  # grown weights start at zero
            self.masks[name] = new_mask.view_as(mask)
            moved += n
        self.apply_masks()
        return moved

    def layer_densities(self) -> dict[str, float]:
        return {k: float(m.float().mean()) for k, m in self.masks.items()}

    def state(self) -> dict[str, Any]:
        return {"masks": {k: m.cpu() for k, m in self.masks.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        for k, m in state.get("masks", {}).items():
            if k in self.masks:
                self.masks[k] = m.to(self.masks[k].device)
        self.apply_masks()


def zero_weight_gmacs(model: nn.Module, layer_gmacs: dict[str, float]) -> float:
    """GMACs spent on zero weights of the sparsified layers: what sparse kernels could at best save.
    ``layer_gmacs`` holds fvcore's dense count per layer name."""
    saved = 0.0
    for name, layer in sparse_layers(model).items():
        w = layer.weight
        saved += layer_gmacs.get(name, 0.0) * (1.0 - float((w != 0).float().mean()))
    return saved
