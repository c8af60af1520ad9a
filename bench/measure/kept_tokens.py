"""Kept-token capture: one evaluation forward of a token-reducing model, saved beside its run (``bench.results.collect.KEPT_NPZ``).

Per stage, the mask of patches still kept and, for methods that merge tokens, the group each original patch was
pooled into; plus the input images (uint8) to draw them on. The report's gallery draws from these files alone
(``bench.report.gallery``), so it never loads a model or imports torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.io import atomic_write


@torch.no_grad()
def kept_masks(
    model: nn.Module, method: Any, images: torch.Tensor, grid: tuple[int, int] | None = None
) -> list[torch.Tensor]:
    """Per stage, a (B, rows, cols) bool mask of the patches still kept, from one evaluation forward."""
    rows, cols = grid or tuple(model.patch_embed.grid_size)
    was_training, was_recording = model.training, method.record_kept
    model.eval()
    method.record_kept = True
    try:
        model(images)
        kept = [k.clone() for k in method.last_kept]
    finally:
        model.train(was_training)
        method.record_kept = was_recording
    masks = []
    for positions in kept:
        # -1 pads a row with fewer patches of its own than the others (e.g. EViT's fused token): it lands in a
        # spare last column that is dropped
        pos = positions.long()
        mask = torch.zeros(pos.shape[0], rows * cols + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(pos < 0, rows * cols, pos), True)
        masks.append(mask[:, :-1].reshape(-1, rows, cols))
    return masks


def displayable(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """(B, C, H, W) model inputs -> (B, H, W, 3) in [0, 1]."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:  # unknown normalisation: stretch each image to the full range
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].clamp(0, 1).permute(0, 2, 3, 1)


def record_kept_tokens(
    model: nn.Module,
    method: Any,
    images: torch.Tensor,
    path: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Run one evaluation forward and save images, per-stage kept masks and pooling groups atomically."""
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    masks = kept_masks(model, method, images, grid)
    groups = [g.numpy().astype(np.int32) for g in getattr(method, "last_groups", [])]
    pictures = (displayable(images, mean, std).numpy() * 255).round().astype(np.uint8)
    payload = {
        "images": pictures,
        "grid": np.array(grid, dtype=np.int32),
        "masks": np.stack([m.numpy() for m in masks])
        if masks
        else np.zeros((0,) + pictures.shape[:1] + grid, dtype=bool),
    }
    if groups and len(groups) == len(masks):
        payload["groups"] = np.stack([g.reshape(g.shape[0], *grid) for g in groups])
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    out = Path(path)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    return out
