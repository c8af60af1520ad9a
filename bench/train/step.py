"""The forward and backward of one optimiser step, over micro-batches when the per-device batch exceeds the
runtime's ``device_batch`` cap.

Accumulating k micro-batches gives the gradient of the one big batch: each term that is a mean over the
batch's images is weighted by its micro-batch's share of the images; a term a method normalises over the whole
batch (:class:`~bench.methods.base.BatchSum`, e.g. DynamicViT's token distillation over the batch's kept
tokens) is divided by the count of the whole per-device batch, known only after the last micro-batch's
forward. So its gradient on the earlier micro-batches is kept apart (a second backward of that term alone,
through ``torch.autograd.grad``) and added, divided by the final count, before the last backward. Mixup has
already mixed the whole per-device batch, so pairs and lambda are those of the big batch. Under DDP the
earlier micro-batches run under ``no_sync`` and the last backward averages the accumulated gradients.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.errors import RunFailed
from bench.methods.base import BatchSum, Method, TrainContext
from bench.train import distributed as D


def forward_backward(
    net: nn.Module,
    model: nn.Module,
    method: Method,
    teacher: nn.Module | None,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    micro_batches: int,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    world: int,
    where: str,
) -> tuple[float, dict[str, float]]:
    """Accumulate the step's (scaled) gradients into ``.grad``; returns the loss and its terms (means over
    ranks). Raises RunFailed, on every rank before the last backward, when the loss is not finite."""
    n = images.shape[0]
    xs, ys = images.tensor_split(micro_batches), targets.tensor_split(micro_batches)
    params = [p for p in model.parameters() if p.requires_grad]
    means: dict[str, torch.Tensor] = {}
    sums: dict[str, list[torch.Tensor]] = {}  # name -> [total, count] over the micro-batches so far
    held: dict[str, list[torch.Tensor | None]] = {}  # name -> its gradient on the earlier micro-batches
    order: list[str] = []
    for j, (x, y) in enumerate(zip(xs, ys)):
        last = j == len(xs) - 1
        sync = net.no_sync() if world > 1 and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = net(x)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                terms: dict[str, Any] = {"ce": task_loss(logits.float(), y)}
                terms.update(method.extra_losses(model, TrainContext(x, y, logits, teacher_logits)))
            share = x.shape[0] / n
            local = sum(share * v for v in terms.values() if not isinstance(v, BatchSum))
            coupled = {k: v for k, v in terms.items() if isinstance(v, BatchSum)}
            for k, v in terms.items():
                if k not in order:
                    order.append(k)
                if isinstance(v, BatchSum):
                    acc = sums.setdefault(k, [torch.zeros((), device=x.device), torch.zeros((), device=x.device)])
                    acc[0] = acc[0] + v.total.detach().float()
                    acc[1] = acc[1] + v.count.detach().float()
                else:
                    means[k] = means.get(k, 0.0) + share * v.detach().float()
            if not last:
                for k, term in coupled.items():
                    grads = torch.autograd.grad(scaler.scale(term.total), params, retain_graph=True, allow_unused=True)
                    prev = held.get(k)
                    held[k] = (
                        list(grads)
                        if prev is None
                        else [g if a is None else a if g is None else a + g for a, g in zip(prev, grads)]
                    )
                scaler.scale(local).backward()
                continue
            counts = {k: acc[1].clamp_min(1.0) for k, acc in sums.items()}
            values = {k: means[k] if k in means else sums[k][0] / counts[k] for k in order}
            # reduced before the last backward, so a non-finite value on any rank stops every rank at this step
            stats = torch.stack([sum(values.values()), *values.values()])
            loss_value, *term_values = D.all_reduce_mean(stats).tolist()
            if not math.isfinite(loss_value):
                mean = f" (mean over {world} processes)" if world > 1 else ""
                raise RunFailed(
                    f"non-finite loss ({loss_value}) at {where}{mean}; "
                    f"terms: {', '.join(f'{k}={v:.4g}' for k, v in zip(order, term_values))}"
                )
            for k, grads in held.items():
                for p, g in zip(params, grads):
                    if g is not None:
                        g = g / counts[k]
                        p.grad = g if p.grad is None else p.grad.add_(g)
            loss = local + sum(term.total / counts[k] for k, term in coupled.items())
            scaler.scale(loss).backward()
    return loss_value, dict(zip(order, term_values))
