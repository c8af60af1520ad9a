"""Staged token pruning shared by every method that keeps a subset of patch tokens.

Pruning happens where DynamicViT prunes: before a few blocks (3, 6, 9 of 12 by default), stage k keeping
``int(num_patches * rho**k)`` of the *original* patch tokens. The ``every_block`` schedule instead
reduces before every block from block 1 on, geometrically, reaching the same final count
(``rho**num_stages``) before the last block: the per-layer budgets of PoWER-BERT and Token Pooling.
Prefix tokens (class, registers) are always kept. Kept tokens stay in their original order so position-dependent heads see a stable layout.
The pruning is a forward pre-hook on the block, so the model's code and state_dict are untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.methods.base import Method, Param, check_vit, num_patches


def default_stage_blocks(depth: int, num_stages: int = 3) -> list[int]:
    """Blocks before which stages prune: 3, 6, 9 for depth 12, proportional otherwise."""
    blocks = [max(1, math.floor(depth * k / (num_stages + 1) + 0.5)) for k in range(1, num_stages + 1)]
    if len(set(blocks)) != len(blocks) or blocks[-1] >= depth:
        raise UsageError(f"cannot place {num_stages} pruning stages in a {depth}-block model")
    return blocks


def stage_keep_counts(n_patches: int, rho: float, num_stages: int) -> list[int]:
    # the small epsilon keeps int() from flooring 0.7*100=69.99999 to 69
    return [max(1, int(n_patches * rho ** (k + 1) + 1e-6)) for k in range(num_stages)]


class StagedPruning(Method):
    """Base for methods that score patch tokens and keep the top ones at each stage."""

    params = {
        "stage_blocks": Param(
            None,
            "blocks before which tokens are pruned (default: 3/6/9 of 12, proportional)",
            types=(list,),
            nullable=True,
        ),
        "num_stages": Param(3, "number of pruning stages when stage_blocks is not given", types=(int,), minimum=1),
        "schedule": Param(
            "stages",
            "'stages': reduce before stage_blocks keeping rho^k (DynamicViT); 'every_block': "
            "reduce before every block from 1 on, geometrically down to rho^num_stages",
            types=(str,),
            choices=("stages", "every_block"),
        ),
    }

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        #: kept original patch positions per stage from the last forward (for visualisation)
        self.record_kept = False
        self.last_kept: list[torch.Tensor] = []
        #: for methods that merge tokens: per stage, (B, num_patches) index of the token each original patch
        #: ended up in (see record_groups)
        self.last_groups: list[torch.Tensor] = []
        self._positions: torch.Tensor | None = None
        self._owner: torch.Tensor | None = None

    # -- schedule -----------------------------------------------------------------------------
    def stages(self, model: nn.Module) -> list[tuple[int, int]]:
        """(block index, patch tokens kept from that block on) per stage."""
        depth = len(model.blocks)
        if self.config.get("schedule", "stages") == "every_block":
            return self._every_block_stages(model)
        blocks = self.config["stage_blocks"]
        if blocks is None:
            blocks = default_stage_blocks(depth, self.config["num_stages"])
        if sorted(blocks) != list(blocks) or any(not isinstance(b, int) or not 0 < b < depth for b in blocks):
            raise UsageError(
                f"method {self.name!r}: stage_blocks must be increasing block indices in 1..{depth - 1}, got {blocks}"
            )
        keeps = stage_keep_counts(num_patches(model), self.keep_ratio, len(blocks))
        return list(zip(blocks, keeps))

    def _every_block_stages(self, model: nn.Module) -> list[tuple[int, int]]:
        depth, n = len(model.blocks), num_patches(model)
        if self.config["stage_blocks"] is not None:
            raise UsageError(f"method {self.name!r}: stage_blocks cannot be combined with schedule 'every_block'")
        if depth < 2:
            raise UsageError(f"method {self.name!r}: schedule 'every_block' needs at least 2 blocks")
        stages, current = [], n
        for b in range(1, depth):
            keep = max(1, int(n * self.keep_ratio ** (self.config["num_stages"] * b / (depth - 1)) + 1e-6))
            if keep < current:  # a block whose budget equals the previous one reduces nothing
                stages.append((b, keep))
                current = keep
        return stages

    def token_schedule(self, model: nn.Module) -> list[int]:
        prefix = int(model.num_prefix_tokens)
        schedule, current = [], num_patches(model)
        stages = dict(self.stages(model))
        for i in range(len(model.blocks)):
            current = stages.get(i, current)
            schedule.append(prefix + current)
        return schedule

    # -- patching -----------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        check_vit(model, self.name)
        self.attach_learned(model)
        if self.keep_ratio >= 1.0 and not self.prunes_at_full_ratio():
            return model  # nothing to drop: the model must compute exactly what the dense one does
        self._handles.append(model.blocks[0].register_forward_pre_hook(self._reset_hook))
        prefix = int(model.num_prefix_tokens)
        for stage, (block, keep) in enumerate(self.stages(model)):
            hook = self._make_stage_hook(model, stage, keep, prefix)
            self._handles.append(model.blocks[block].register_forward_pre_hook(hook))
        return model

    def attach_learned(self, model: nn.Module) -> None:
        """Learned methods attach their modules to the model here."""

    def prunes_at_full_ratio(self) -> bool:
        return False

    def _reset_hook(self, module: nn.Module, args: tuple) -> None:
        self._positions = None
        self.last_kept = []
        self._owner = None
        self.last_groups = []
        self.on_forward_start(args[0])

    def record_groups(self, assignment: torch.Tensor, positions: torch.Tensor) -> None:
        """Merging methods call this from ``reduce`` when ``record_kept``: ``assignment`` (B, N) is the new
        token each current token goes into; composed over stages into ``last_groups``."""
        owner = self._owner if self._owner is not None else positions  # first stage: every patch, in order
        self._owner = torch.gather(assignment, 1, owner)
        self.last_groups.append(self._owner.detach().cpu())

    def on_forward_start(self, x: torch.Tensor) -> None:
        """Called before the first block of every forward."""

    def _make_stage_hook(self, model: nn.Module, stage: int, keep: int, prefix: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            B, N, _ = x.shape
            patches = x[:, prefix:]
            if self._positions is None:
                self._positions = torch.arange(N - prefix, device=x.device).unsqueeze(0).expand(B, -1)
            kept, self._positions = self.reduce(model, stage, patches, self._positions, min(keep, patches.shape[1]))
            if self.record_kept:
                self.last_kept.append(self._positions.detach().cpu())
            return (torch.cat([x[:, :prefix], kept], dim=1),) + tuple(args[1:])

        return hook

    def reduce(
        self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, keep, C) tokens that replace ``patches`` and the original patch position each stands for."""
        scores = self.score(model, stage, patches, positions)
        # keep the top-k, then restore their original order
        idx = torch.topk(scores, keep, dim=1, sorted=False).indices.sort(dim=1).values
        kept = torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return kept, torch.gather(positions, 1, idx)

    def score(self, model: nn.Module, stage: int, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, N) scores of the current patch tokens; higher is kept."""
        raise UsageError(f"method {self.name!r} does not define how to score tokens")
