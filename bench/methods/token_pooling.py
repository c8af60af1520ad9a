"""Token Pooling (Marin et al., WACV 2023, arXiv 2110.03860) and the baselines it is compared with.

* ``token_pooling``: between blocks, N patch tokens are replaced by K tokens found by a few
  iterations of (weighted) K-Medoids or K-Means on the token features (:mod:`bench.methods.clustering`),
  minimising the reconstruction error. Weights are each token's *significance*, the attention it
  receives (summed over heads and queries) in the block just before, as in PoWER-BERT; clusters are
  seeded with the K most significant tokens. The class token is never pooled.
* ``importance``: keep the K most significant tokens (PoWER-BERT's score-based selection).
* ``grid_pool``: 2-D average pooling of the token grid to the largest grid with at most K tokens.
* ``random`` (the foundation's) completes the paper's comparison at equal token budgets.

Choices where the paper leaves room, and why:

* Placement: the pooling layer sits *between* blocks (a forward pre-hook on the next block), so no
  timm code is replaced and every method of this harness reduces tokens at the same points.
* Budgets: the paper sets per-layer token counts with PoWER-BERT's learned retention configuration,
  which it does not list. ``schedule: every_block`` (the ``token_pooling`` suite's default) reduces
  before every block from 1 on, geometrically down to rho^3 of the patches before the last block;
  ``schedule: stages`` (blocks 3/6/9 keeping rho, rho^2, rho^3) meets DynamicViT on its keep-ratio axis.
* Distances are squared Euclidean, the reconstruction error's own metric, for both variants;
  5 iterations (a few suffice: the error curve flattens fast, see ``tests/test_token_pooling.py``), always all
  of them: stopping at convergence would read the assignments on the host (a synchronisation per step on an
  accelerator), and a converged step is a fixed point, so the output is the same.
* Training: assignments carry no gradient; K-Means outputs are means of the inputs and K-Medoids
  outputs are input tokens, so gradients flow through the pooled tokens to everything before them.
  Significance is computed from explicit (unfused) attention in the blocks that feed a pooling layer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UsageError
from bench.methods.base import Param, check_vit, register_method
from bench.methods.clustering import Clustering, farthest_point_init, kmeans, kmedoids, significance_init
from bench.methods.pruning import StagedPruning

#: attribute of the model that holds the (parameter-free) pooling module, so fvcore books its cost apart
POOLER = "token_pooler"


class SignificanceTap:
    """Per block, the attention each token receives (summed over heads and queries) in the last forward."""

    def __init__(self) -> None:
        self.scores: dict[int, torch.Tensor] = {}
        self._fused: list[tuple[nn.Module, bool]] = []

    def attach(self, model: nn.Module, blocks: list[int], method: str) -> list[torch.utils.hooks.RemovableHandle]:
        handles = []
        for b in sorted(set(blocks)):
            attn = model.blocks[b].attn
            if not (hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module)):
                raise UsageError(
                    f"method {method!r} needs timm's Attention (with attn_drop) in block {b}, got {type(attn).__name__}"
                )
            self._fused.append((attn, attn.fused_attn))
            attn.fused_attn = False  # the significance needs the attention probabilities themselves
            handles.append(attn.attn_drop.register_forward_hook(functools.partial(self._record, b)))
        return handles

    def _record(self, block: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.scores[block] = inputs[0].detach().sum(dim=(1, 2))  # (B, H, Nq, Nk) -> (B, Nk)

    def detach(self) -> None:
        for attn, fused in self._fused:
            attn.fused_attn = fused
        self._fused.clear()
        self.scores.clear()


class _SignificanceMethod(StagedPruning):
    """Methods that read the significance of the tokens entering each stage."""

    input_dependent = True

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        self.tap = SignificanceTap()
        self._blocks: list[int] = []
        self._prefix = 1

    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        if self.keep_ratio < 1.0:
            self._blocks = [b for b, _ in self.stages(model)]
            self._prefix = int(model.num_prefix_tokens)
            self._handles.extend(self.tap.attach(model, [b - 1 for b in self._blocks], self.name))
        return super().apply(model)

    def significance(self, stage: int) -> torch.Tensor:
        """(B, N) significance of the current patch tokens, from the block before this stage."""
        return self.tap.scores[self._blocks[stage] - 1][:, self._prefix :]

    def remove(self) -> None:
        super().remove()
        self.tap.detach()


class TokenPooler(nn.Module):
    """Parameter-free clustering step; a module only so that its cost is reported on its own.

    It is counted by what it executes (``count_executed_flops``, :mod:`bench.measure.flops`), not by fvcore's
    trace alone: the last assignment pass and any step after convergence do not feed the output, and a trace
    keeps only what does."""

    count_executed_flops = True

    def __init__(self, clustering: str, weighted: bool, iterations: int, init: str):
        super().__init__()
        self.clustering, self.weighted, self.iterations, self.init = clustering, weighted, iterations, init

    def forward(self, patches: torch.Tensor, significance: torch.Tensor, keep: int) -> Clustering:
        if self.init == "significance":
            seeds = significance_init(significance, keep)
        else:
            seeds = farthest_point_init(patches.detach(), significance, keep)
        fit = kmedoids if self.clustering == "kmedoids" else kmeans
        return fit(patches, keep, seeds, weights=significance if self.weighted else None, iterations=self.iterations)


@register_method
class TokenPooling(_SignificanceMethod):
    name = "token_pooling"
    roles = ("learned", "merging")
    family = "token_pooling"
    description = "Token Pooling: tokens downsampled by weighted K-Medoids/K-Means clustering between blocks"
    overhead_modules = (POOLER,)
    params = {
        **StagedPruning.params,
        "clustering": Param(
            "kmedoids",
            "'kmedoids' (outputs are input tokens) or 'kmeans' (cluster means)",
            types=(str,),
            choices=("kmedoids", "kmeans"),
        ),
        "weighted": Param(True, "weight tokens by their significance (attention received)", types=(bool,)),
        "iterations": Param(5, "clustering iterations per pooling layer", types=(int,), minimum=0, maximum=1000),
        "init": Param(
            "significance",
            "seeds: the K most significant tokens, or farthest-point from the most significant",
            types=(str,),
            choices=("significance", "farthest"),
        ),
    }

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        if self.config["iterations"] < 1:
            raise UsageError(
                f"method {self.name!r}: parameter 'iterations' must be >= 1, got {self.config['iterations']}"
            )
        self._pooled: nn.Module | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        if self.keep_ratio < 1.0:
            setattr(
                model,
                POOLER,
                TokenPooler(
                    self.config["clustering"], self.config["weighted"], self.config["iterations"], self.config["init"]
                ),
            )
            self._pooled = model
        return super().apply(model)

    def reduce(
        self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fit: Clustering = getattr(model, POOLER)(patches, self.significance(stage), keep)
        if self.record_kept:
            self.record_groups(fit.assignment, positions)
        return fit.tokens, torch.gather(positions, 1, fit.representative)

    def remove(self) -> None:
        super().remove()
        if self._pooled is not None and hasattr(self._pooled, POOLER):
            delattr(self._pooled, POOLER)
        self._pooled = None


@register_method
class Importance(_SignificanceMethod):
    name = "importance"
    roles = ("learned",)
    family = "token_pooling"
    description = "keep the tokens that receive the most attention (PoWER-BERT's significance score)"

    def score(self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.significance(stage)


def pooled_grid(rows: int, cols: int, budget: int, aspect: float | None = None) -> tuple[int, int]:
    """The largest grid with at most ``budget`` cells that fits in rows x cols; among equally large ones, the
    closest to ``aspect`` (rows/cols; default this grid's). Stages pass the image's patch-grid aspect, so a
    square image is pooled to near-square grids (8x8 -> 4x8 -> 4x4 -> 2x4), not to ever thinner strips."""
    aspect = rows / cols if aspect is None else aspect
    best = (1, 1)
    for r in range(1, rows + 1):
        c = min(cols, budget // r)
        if c < 1:
            break
        better = r * c > best[0] * best[1] or (
            r * c == best[0] * best[1] and abs(r / c - aspect) < abs(best[0] / best[1] - aspect)
        )
        if better:
            best = (r, c)
    return best


@register_method
class GridPool(StagedPruning):
    name = "grid_pool"
    roles = ("merging",)
    family = "token_pooling"
    description = "2-D average pooling of the token grid to the largest grid within each stage's token budget"

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        self._grids: list[tuple[int, int]] = []

    def stages(self, model: nn.Module) -> list[tuple[int, int]]:
        grid = tuple(model.patch_embed.grid_size)
        self._grids = [grid]
        out = []
        for block, budget in super().stages(model):
            new = pooled_grid(*self._grids[-1], budget, aspect=grid[0] / grid[1])
            if new[0] * new[1] < self._grids[-1][0] * self._grids[-1][1]:
                out.append((block, new[0] * new[1]))
                self._grids.append(new)
        return out

    def reduce(
        self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (r, c), new = self._grids[stage], self._grids[stage + 1]
        B, _, C = patches.shape
        grid = patches.transpose(1, 2).reshape(B, C, r, c)
        pooled = F.adaptive_avg_pool2d(grid, new).flatten(2).transpose(1, 2)
        # each pooled token stands for the original patch nearest its window's centre
        cols = int(model.patch_embed.grid_size[1])
        pos = positions.reshape(B, 1, r, c).to(patches.dtype)
        rr = F.adaptive_avg_pool2d(torch.div(pos, cols, rounding_mode="floor"), new).round()
        cc = F.adaptive_avg_pool2d(pos % cols, new).round()
        if self.record_kept:
            self.record_groups(window_cells((r, c), new).to(positions.device).expand(B, -1), positions)
        return pooled, (rr * cols + cc).flatten(1).long()


def window_cells(grid: tuple[int, int], pooled: tuple[int, int]) -> torch.Tensor:
    """(rows*cols,) index of the pooled cell whose adaptive-pooling window holds each input cell, row-major.

    Adaptive windows overlap when the sizes do not divide (rows i*R//R' to ceil((i+1)*R/R')): a cell in two
    windows is given to the later one, so the groups partition the grid as drawn in the gallery."""

    def axis(n: int, m: int) -> torch.Tensor:
        starts = torch.tensor([(i * n) // m for i in range(m)])
        return torch.searchsorted(starts, torch.arange(n), right=True) - 1

    rows, cols = axis(grid[0], pooled[0]), axis(grid[1], pooled[1])
    return (rows[:, None] * pooled[1] + cols[None, :]).flatten()
