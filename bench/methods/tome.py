"""ToMe: Token Merging (Bolya et al., ICLR 2023, "Token Merging: Your ViT But Faster"), off the shelf.

What the official timm patch (facebookresearch/ToMe: ``tome/patch/timm.py``, ``tome/merge.py``,
``tome/utils.py``) computes, on the in-block contract (:mod:`bench.methods.inblock`):

* In every block with r > 0, between the attention and the MLP, **bipartite soft matching** on the block's keys
  averaged over heads (:attr:`BlockView.keys`): the tokens are split alternately into A (even positions; the
  class token is A's first) and B (odd positions); each A token's most cosine-similar B token is its edge; the
  r A tokens with the most similar edges are merged into their B token, the class token (any prefix token)
  never. At most half the non-prefix tokens go per block: ``r = min(r, (t - prefix) // 2)``. The output is
  [prefix tokens, unmerged A tokens in their order, B tokens].
* Merges are **size-weighted averages**: each token carries how many patches it stands for (``size``, ones at
  first); ``x = merge(x * size, sum) / merge(size, sum)``.
* **Proportional attention**: once sizes exist, every block's attention logits get ``+ log(size)`` of each key
  (:meth:`InBlockMethod.attention_bias`, passed to timm's fused attention as its additive mask). Parameter
  ``prop_attn`` (default True: the official patch's default for models evaluated off the shelf).
* The r schedule of ``tome.utils.parse_r``: an int (every block), a list (per block, padded with 0), or with
  ``inflect`` the pair (r, inflect): ``min = int(r * (1 - inflect))``, ``max = 2r - min``, block i merges
  ``int(min + (max - min) / (L - 1) * i)``; inflect -1 is the paper's decreasing schedule.
* Source tracking for the gallery: an identity adjacency merged with ``amax`` (``merge_source``), only while
  ``record_kept``.

A suite that gives ``r`` runs ToMe once, at keep ratio 1.0 (``Param.replaces_keep_ratio``: the keep ratios
would all run the same r). The harness's keep-ratio axis (r not given): the r whose analytic GMACs (:func:`block_macs`) are closest to those
of the staged pruning schedule at the same keep ratio (3 stages before blocks 3/6/9 of 12 keeping
``int(n * k^s)`` patches: :func:`bench.methods.pruning.stage_keep_counts`). Keep ratio 1.0 merges nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.methods.base import Param, num_patches, num_tokens, register_method
from bench.methods.inblock import BlockView, InBlockMethod, log_size_bias
from bench.methods.pruning import default_stage_blocks, stage_keep_counts


def parse_r(depth: int, r: int | list[int], inflect: float = 0.0) -> list[int]:
    """Tokens to merge in each of ``depth`` blocks (before the per-block cap of half the tokens)."""
    if isinstance(r, list):
        if len(r) > depth:
            raise UsageError(f"method 'tome': r lists {len(r)} blocks, the model has {depth}")
        return list(r) + [0] * (depth - len(r))
    low = int(r * (1.0 - inflect))
    high = 2 * r - low
    step = (high - low) / (depth - 1) if depth > 1 else 0.0
    return [int(low + step * i) for i in range(depth)]


def merged_counts(schedule: list[int], tokens: int, prefix: int) -> list[int]:
    """Tokens each block really merges: its r capped at half the non-prefix tokens entering it."""
    out = []
    for r in schedule:
        r = max(0, min(r, (tokens - prefix) // 2))
        out.append(r)
        tokens -= r
    return out


def block_macs(block: nn.Module, n_in: int, n_out: int) -> int:
    """Analytic multiply-adds of one timm ``Block`` that ``n_in`` tokens enter and ``n_out`` leave, fvcore's
    convention (1 MAC = 1 flop): the attention half sees ``n_in`` tokens (qkv 3NC², q@k^T and attn@v 2N²C,
    proj NC², LayerNorm 5NC), the MLP half ``n_out`` (fc1 + fc2, 8NC² at mlp_ratio 4, LayerNorm 5NC). A
    merging block (``n_out < n_in``) adds ToMe's similarity a @ b^T: ceil(N/2) * floor(N/2) * head_dim."""
    attn, mlp = block.attn, block.mlp
    width = attn.num_heads * attn.head_dim
    c = block.norm1.normalized_shape[0]
    macs = n_in * attn.qkv.in_features * attn.qkv.out_features + 2 * n_in * n_in * width
    macs += n_in * attn.proj.in_features * attn.proj.out_features + 5 * n_in * c
    macs += n_out * (mlp.fc1.in_features * mlp.fc1.out_features + mlp.fc2.in_features * mlp.fc2.out_features)
    macs += 5 * n_out * c
    if n_out < n_in:
        macs += ((n_in + 1) // 2) * (n_in // 2) * attn.head_dim
    return macs


def blocks_macs(model: nn.Module, entering: list[int], leaving: list[int]) -> int:
    """Analytic multiply-adds of all the blocks of ``model`` (:func:`block_macs` summed)."""
    return sum(block_macs(b, i, o) for b, i, o in zip(model.blocks, entering, leaving, strict=True))


@dataclass
class Matching:
    """ToMe's bipartite soft matching of one block: which A tokens stay, which merge, into which B token."""

    r: int
    prefix: int
    unmerged: torch.Tensor  # (B, |A| - r, 1) A positions that stay (prefix first, then in their order)
    merged: torch.Tensor  # (B, r, 1) A positions merged away (most similar edge first)
    into: torch.Tensor  # (B, r, 1) the B position each merged A token goes into

    def merge(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """(B, t, c) -> (B, t - r, c): [prefix tokens, unmerged A, B with the merged A reduced into them]."""
        a, b = x[:, ::2], x[:, 1::2]
        n, ta, c = a.shape
        unm = a.gather(1, self.unmerged.expand(n, ta - self.r, c))
        src = a.gather(1, self.merged.expand(n, self.r, c))
        dst = b.scatter_reduce(1, self.into.expand(n, self.r, c), src, reduce=mode)
        # prefix tokens are never merged nor merged into: the first of A and of B, taken in their own order
        p = self.prefix
        return torch.cat([x[:, :p], unm[:, (p + 1) // 2 :], dst[:, p // 2 :]], dim=1)


def bipartite_soft_matching(metric: torch.Tensor, r: int, prefix: int) -> Matching | None:
    """The matching on ``metric`` (B, t, d) merging ``r`` tokens (capped at half the non-prefix tokens), or None.

    The official protection of the class token (A's first row) and the distillation token (B's first column),
    extended to any number of prefix tokens: the prefix tokens in A have no edge, those in B take none."""
    t = metric.shape[1]
    r = min(r, (t - prefix) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
        if prefix:
            scores[:, : (prefix + 1) // 2].fill_(-math.inf)
        if prefix > 1:
            scores[:, :, : prefix // 2].fill_(-math.inf)
        node_max, node_idx = scores.max(dim=-1)
        edges = node_max.argsort(dim=-1, descending=True)[..., None]
        unmerged, merged = edges[:, r:], edges[:, :r]
        into = node_idx[..., None].gather(1, merged)
        if prefix:
            unmerged = unmerged.sort(dim=1).values  # prefix tokens first, the others in their order
    return Matching(r, prefix, unmerged, merged, into)


@register_method
class ToMe(InBlockMethod):
    name = "tome"
    roles = ("learned", "merging")
    family = ""
    description = (
        "Token Merging (ToMe): bipartite soft matching on the keys merges r tokens in every block, by size-weighted "
        "average, with proportional attention (log size)"
    )
    input_dependent = True
    learns_parameters = False
    params = {
        "r": Param(
            None,
            "tokens merged per block: an int, or a list per block (padded with 0); None: the constant r whose "
            "analytic GMACs are closest to the staged schedule's at the keep ratio",
            types=(int, list),
            nullable=True,
            minimum=0,
            replaces_keep_ratio=True,  # a given r is the budget: one run, not one per keep ratio
        ),
        "inflect": Param(
            0.0,
            "ToMe's (r, inflect) schedule for an int r: 0 constant, -1 the paper's decreasing schedule, +1 increasing",
            types=(float, int),
            minimum=-1.0,
        ),
        "prop_attn": Param(True, "proportional attention: + log(size) on the attention logits", types=(bool,)),
    }

    reads = ("keys",)

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        r, inflect = self.config["r"], self.config["inflect"]
        if inflect > 1:
            raise UsageError(f"method 'tome': parameter 'inflect' must be in [-1, 1], got {inflect!r}")
        if isinstance(r, list):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in r):
                raise UsageError(f"method 'tome': parameter 'r' must list non-negative ints, got {r!r}")
            if inflect != 0:
                raise UsageError("method 'tome': parameter 'inflect' applies to an int r, not a list")
        #: what the last model seen merges: {"r": the r given or derived, "r_per_block": merged per block}
        self.chosen: dict[str, Any] = {}
        self._plan: list[int] = []

    # -- the schedule -------------------------------------------------------------------------
    def schedule(self, model: nn.Module) -> list[int]:
        """Tokens merged in each block of ``model`` (r capped per block at half the non-prefix tokens)."""
        depth, prefix, tokens = len(model.blocks), int(model.num_prefix_tokens), num_tokens(model)
        r = self.config["r"]
        if r is None:
            r = self.matched_r(model)
        plan = merged_counts(parse_r(depth, r, self.config["inflect"]), tokens, prefix)
        self.chosen = {"r": r, "r_per_block": plan}
        return plan

    def matched_r(self, model: nn.Module) -> int:
        """The r (with ``inflect``) whose analytic block GMACs are closest to the staged schedule's at the keep
        ratio (ties: the smaller r); 0 at keep ratio 1.0."""
        if self.keep_ratio >= 1.0:
            return 0
        depth, prefix, n = len(model.blocks), int(model.num_prefix_tokens), num_patches(model)
        stages = dict(zip(default_stage_blocks(depth), stage_keep_counts(n, self.keep_ratio, 3)))
        staged, current = [], n
        for i in range(depth):
            current = stages.get(i, current)
            staged.append(prefix + current)
        target = blocks_macs(model, staged, staged)
        best, best_gap = 0, math.inf
        for r in range(n + 1):
            merges = merged_counts(parse_r(depth, r, self.config["inflect"]), prefix + n, prefix)
            entering = _entering(prefix + n, merges)
            leaving = [t - m for t, m in zip(entering, merges)]
            gap = abs(blocks_macs(model, entering, leaving) - target)
            if gap < best_gap:
                best, best_gap = r, gap
        return best

    def token_schedule(self, model: nn.Module) -> list[int]:
        return _entering(num_tokens(model), self.schedule(model))

    def reduction_blocks(self, model: nn.Module) -> list[int]:
        self._plan = self.schedule(model)
        merging = [i for i, r in enumerate(self._plan) if r > 0]
        if not merging:
            return []
        if self.config["prop_attn"]:  # every block after the first merge takes log(size)
            return list(range(merging[0], len(self._plan)))
        return merging

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.chosen}

    def train_metrics(self) -> dict[str, Any]:
        return dict(self.chosen)

    # -- the forward --------------------------------------------------------------------------
    def attention_bias(self, model: nn.Module, index: int) -> torch.Tensor | None:
        if self.config["prop_attn"] and self.state.size is not None:
            return log_size_bias(self.state.size)
        return None

    def start_forward(self, x: torch.Tensor, prefix: int) -> None:
        if self.record_kept:
            B, t, _ = x.shape
            self.state.extra["adjacency"] = torch.eye(t, dtype=x.dtype, device=x.device).expand(B, t, t)

    def reduce(self, model: nn.Module, view: BlockView) -> torch.Tensor:
        matching = bipartite_soft_matching(view.keys, self._plan[view.index], view.prefix)
        if matching is None:
            return view.x
        size = self.sizes(view.x)
        x = matching.merge(view.x * size, "sum")
        size = matching.merge(size, "sum")
        self.state.size = size
        if self.record_kept:
            self._record(matching, view.prefix)
        return x / size

    def _record(self, matching: Matching, prefix: int) -> None:
        """Per merge, for the gallery: the current patch token each original patch is in (``last_groups``) and
        each current patch token's first original patch (``last_kept``)."""
        adjacency = matching.merge(self.state.extra["adjacency"], "amax")
        self.state.extra["adjacency"] = adjacency
        patches = adjacency[:, prefix:, prefix:]  # (B, current patch tokens, original patches)
        self.state.source = patches.argmax(dim=1)
        self.last_groups.append(self.state.source.detach().cpu())
        self.last_kept.append(patches.argmax(dim=2).detach().cpu())


def _entering(tokens: int, merges: list[int]) -> list[int]:
    out = []
    for r in merges:
        out.append(tokens)
        tokens -= r
    return out


__all__ = ["Matching", "ToMe", "bipartite_soft_matching", "block_macs", "merged_counts", "parse_r"]
