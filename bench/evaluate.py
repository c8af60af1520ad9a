"""Accuracy on the val split and the tokens that actually enter each block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from bench.runtime import Runtime
from bench.train.loaders import eval_loader


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    images: int
    tokens_per_block: list[float]  # mean tokens entering each block (prefix tokens included)

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens_per_block) / max(1, len(self.tokens_per_block))


class TokenCounter:
    """Forward pre-hooks on every block that average the token count seen (after any pruning hook)."""

    def __init__(self, model: nn.Module):
        self.blocks = list(model.blocks)
        self.sums = [0.0] * len(self.blocks)
        self.images = [0] * len(self.blocks)
        self._handles = [b.register_forward_pre_hook(self._hook(i)) for i, b in enumerate(self.blocks)]

    def _hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            self.sums[i] += float(x.shape[1]) * x.shape[0]
            self.images[i] += x.shape[0]

        return hook

    def per_block(self) -> list[float]:
        return [s / max(1, n) for s, n in zip(self.sums, self.images)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    val_ds: Dataset,
    *,
    device: torch.device,
    batch_size: int = 256,
    max_images: int | None = None,
    runtime: Runtime | None = None,
) -> EvalResult:
    """Top-1/top-5 and tokens per block over the val split, loaded with the runtime's workers."""
    if max_images is not None and max_images < len(val_ds):
        val_ds = Subset(val_ds, range(max_images))
    was_training = model.training
    model.eval().to(device)
    counter = TokenCounter(model)
    correct1 = correct5 = total = 0
    try:
        for images, targets in eval_loader(val_ds, batch_size, runtime or Runtime()):
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            logits = model(images)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(targets.unsqueeze(1))
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            total += targets.numel()
    finally:
        counter.remove()
        model.train(was_training)
    return EvalResult(
        top1=100.0 * correct1 / max(1, total),
        top5=100.0 * correct5 / max(1, total),
        images=total,
        tokens_per_block=counter.per_block(),
    )
