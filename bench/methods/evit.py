"""EViT (Liang et al., ICLR 2022, "Not All Patches are What You Need"): keep the attentive tokens, fuse the rest.

Inside each of a few blocks (3, 6, 9 of 12 by default: the official ``drop_loc``), after the attention residual
and before the MLP, with N current tokens (prefix tokens included, p of them):

* the model needs a class token: a ViT without one (``class_token=False``, ``global_pool='avg'``, with or
  without registers) is refused in one line, at ``bench validate --build`` and when the method is applied,
  rather than ranking by a register's or a patch's attention (:meth:`Method.check_model`);

* ``left = ceil(rho * (N - p))`` patch tokens are kept (nothing happens when that is all of them);
* the score of a token is the class token's attention to it in *this* block, averaged over heads
  (:attr:`BlockView.cls_attention`, its prefix columns left out);
* the ``left`` most attended are kept, in descending attention order (``torch.topk(sorted=True)``, as the
  official code keeps them: not re-sorted into image order);
* with ``fuse`` the others become ONE extra token, appended after the kept ones: the sum of those tokens, each
  weighted by its raw head-averaged class attention (not renormalised); without it they are dropped.

At a later block the fused token is one more patch token: it may be kept, or fused again. The MLP of a reducing
block and every later block see the reduced set. Nothing is learned: the backbone is fine-tuned with the
reduction in place. In training the keep rate follows the official ``adjust_keep_rate``: 1 before
``shrink_start_epoch``, then a per-iteration cosine from 1 down to the target over ``shrink_epochs`` epochs,
then the target (the official fine-tuning recipe: 0 and 0, the target from the first step; from scratch: 10
and 100). Evaluation always runs at the target keep ratio.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.methods.base import Param, num_tokens, register_method
from bench.methods.inblock import BlockView, InBlockMethod
from bench.methods.pruning import default_stage_blocks


def evit_keep_rate(target: float, it: int, epoch: int, steps_per_epoch: int, start: int, epochs: int) -> float:
    """The official ``helpers.adjust_keep_rate``: the keep rate of training iteration ``it`` (global, counted
    from 0) in ``epoch``; 1 before ``start``, a cosine from 1 to ``target`` over ``epochs`` epochs, then ``target``."""
    if epoch < start:
        return 1.0
    if epoch >= start + epochs:
        return float(target)
    total = steps_per_epoch * epochs
    t = it - steps_per_epoch * start
    return target + (1.0 - target) * (math.cos(t / total * math.pi) + 1.0) * 0.5


def kept_count(rate: float, patches: int) -> int:
    """Patch tokens kept out of ``patches`` (the official ``math.ceil(keep_rate * (N - 1))``, float and all)."""
    return math.ceil(rate * patches)


@register_method
class EViT(InBlockMethod):
    name = "evit"
    roles = ("learned",)
    family = ""
    description = "keeps the tokens the class token attends to most inside a few blocks and fuses the rest into one"
    input_dependent = True
    learns_parameters = False
    reads = ("cls_attention",)
    needs_class_token = True  # the score is the class token's attention: a model without one is refused
    params = {
        "fuse": Param(True, "fuse the inattentive tokens into one token (else drop them)", types=(bool,)),
        "stage_blocks": Param(
            None,
            "0-based blocks that reduce between attention and MLP (default: 3/6/9 of 12, proportional)",
            types=(list,),
            nullable=True,
        ),
        "shrink_start_epoch": Param(
            0, "training epoch where the keep rate starts to fall from 1", types=(int,), minimum=0, maximum=10_000
        ),
        "shrink_epochs": Param(
            0, "epochs of the cosine from keep rate 1 to the target", types=(int,), minimum=0, maximum=10_000
        ),
    }

    def __init__(self, keep_ratio: float = 1.0, seed: int = 0, **params: Any):
        super().__init__(keep_ratio, seed, **params)
        #: the keep rate of training forwards (the schedule's); evaluation uses ``keep_ratio``
        self.train_keep_rate = self.keep_ratio
        self._total_steps = 0
        self._epoch = 0
        self._steps_per_epoch = 1
        self._last_rate = self.keep_ratio

    # -- where and how many -------------------------------------------------------------------
    def stage_blocks(self, model: nn.Module) -> list[int]:
        depth = len(model.blocks)
        blocks = self.config["stage_blocks"]
        if blocks is None:
            return default_stage_blocks(depth, 3)
        if any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < depth for b in blocks) or sorted(
            set(blocks)
        ) != list(blocks):
            raise UsageError(
                f"method {self.name!r}: stage_blocks must be increasing block indices in 0..{depth - 1}, got {blocks}"
            )
        return list(blocks)

    def reduction_blocks(self, model: nn.Module) -> list[int]:
        if self.keep_ratio >= 1.0:
            return []  # nothing to drop: the model computes exactly what the dense one does
        return self.stage_blocks(model)

    def token_schedule(self, model: nn.Module) -> list[int]:
        prefix, n = int(model.num_prefix_tokens), num_tokens(model)
        reducing = set(self.reduction_blocks(model))
        schedule = []
        for i in range(len(model.blocks)):
            schedule.append(n)
            if i in reducing:
                left = kept_count(self.keep_ratio, n - prefix)
                if left < n - prefix:
                    n = prefix + left + int(self.config["fuse"])
        return schedule

    # -- the reduction ------------------------------------------------------------------------
    def reduce(self, model: nn.Module, view: BlockView) -> torch.Tensor:
        x, p = view.x, view.prefix
        B, N, C = x.shape
        n = N - p
        left = kept_count(self.train_keep_rate if model.training else self.keep_ratio, n)
        if left >= n:
            return x
        scores = view.cls_attention[:, p:]  # (B, n): the class token's attention to each non-prefix token
        idx = torch.topk(scores, left, dim=1, largest=True, sorted=True).indices  # most attended first
        patches = x[:, p:]
        parts = [x[:, :p], patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, C))]
        if self.config["fuse"]:
            rest = _complement(idx, n)  # (B, n - left), ascending
            weights = scores.gather(1, rest)  # raw head-averaged attention, not renormalised
            others = patches.gather(1, rest.unsqueeze(-1).expand(-1, -1, C))
            parts.append((others * weights.unsqueeze(-1)).sum(dim=1, keepdim=True))
        if self.record_kept:
            self._record(idx, n, left)
        return torch.cat(parts, dim=1)

    # -- the gallery's records (record_kept only) -----------------------------------------------
    def start_forward(self, x: torch.Tensor, prefix: int) -> None:
        if self.record_kept:
            B, N = x.shape[0], x.shape[1] - prefix
            self.state.extra["positions"] = torch.arange(N, device=x.device).expand(B, -1)
            self.state.source = torch.arange(N, device=x.device).expand(B, -1)

    def _record(self, idx: torch.Tensor, n: int, left: int) -> None:
        """Per reduction, the original patches kept as tokens of their own (``last_kept``) and, with ``fuse``,
        the token each original patch is in (``last_groups``: the fused patches are one group)."""
        positions = self.state.extra["positions"]  # (B, n): original position of each token, -1 for a fused one
        kept = positions.gather(1, idx)
        # the fused token has no patch of its own: its -1 stays, and kept_masks skips it
        self.last_kept.append(kept.detach().cpu())
        if self.config["fuse"]:
            kept = torch.cat([kept, kept.new_full((kept.shape[0], 1), -1)], dim=1)
            order = torch.arange(left, device=idx.device).expand(idx.shape[0], -1)
            assignment = idx.new_full((idx.shape[0], n), left).scatter(1, idx, order)  # rest -> the fused token
            self.state.source = assignment.gather(1, self.state.source)
            self.last_groups.append(self.state.source.detach().cpu())
        self.state.extra["positions"] = kept

    # -- the keep-rate schedule in training -----------------------------------------------------
    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        self._total_steps = int(total_steps)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self._epoch = int(epoch)
        self._steps_per_epoch = max(1, self._total_steps // max(1, int(epochs)))
        self.train_keep_rate = self._rate_at(self._epoch * self._steps_per_epoch)

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        # this step's forward is done: the next one (the official loop's ``it + 1``) runs at the next rate
        self._last_rate = self.train_keep_rate
        self.train_keep_rate = self._rate_at(int(step) + 1)

    def _rate_at(self, it: int) -> float:
        return evit_keep_rate(
            self.keep_ratio,
            it,
            self._epoch,
            self._steps_per_epoch,
            self.config["shrink_start_epoch"],
            self.config["shrink_epochs"],
        )

    def train_metrics(self) -> dict[str, Any]:
        # the keep rate of the epoch's last training step
        return {"evit_keep_rate": self._last_rate}


def _complement(idx: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n - k) indices in ``range(n)`` that are not in ``idx`` (B, k), ascending, without a host sync: mark the
    kept ones, then a stable sort puts the unmarked first, in index order."""
    marked = torch.zeros(idx.shape[0], n, dtype=torch.uint8, device=idx.device).scatter_(1, idx, 1)
    return marked.sort(dim=1, stable=True).indices[:, : n - idx.shape[1]]
