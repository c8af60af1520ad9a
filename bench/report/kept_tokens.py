"""Which patches a staged-pruning method keeps, drawn as in the DynamicViT paper: per image, the input and
one panel per stage with the dropped patches blanked out.

Works for any :class:`~bench.methods.pruning.StagedPruning` method (it reads ``record_kept``/``last_kept``).
The figure is drawn on an explicit Agg canvas, so no pyplot state or backend is touched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from bench.io import atomic_write
from bench.methods.pruning import StagedPruning

BLANK = 1.0  # dropped patches are painted white, as in the paper's figure


@torch.no_grad()
def kept_masks(model: nn.Module, method: StagedPruning, images: torch.Tensor,
               grid: tuple[int, int] | None = None) -> list[torch.Tensor]:
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
        mask = torch.zeros(positions.shape[0], rows * cols, dtype=torch.bool)
        mask.scatter_(1, positions.long(), True)
        masks.append(mask.view(-1, rows, cols))
    return masks


def _displayable(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
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


def plot_kept_tokens(model: nn.Module, method: StagedPruning, images: torch.Tensor, path: str | Path, *,
                     grid: tuple[int, int] | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, panel_inches: float = 1.8) -> Path:
    """Write a PNG grid: a row per image, the image then the kept patches after each pruning stage."""
    rows, cols = grid or tuple(model.patch_embed.grid_size)
    masks = kept_masks(model, method, images, (rows, cols))
    pictures = _displayable(images, mean, std)
    B, H, W, _ = pictures.shape
    ph, pw = H // rows, W // cols
    n_panels = 1 + len(masks)
    fig = Figure(figsize=(panel_inches * n_panels, panel_inches * B))
    FigureCanvasAgg(fig)
    axes = fig.subplots(B, n_panels, squeeze=False)
    for i in range(B):
        panels = [pictures[i]]
        for mask in masks:
            pixel_mask = mask[i].repeat_interleave(ph, 0).repeat_interleave(pw, 1)[..., None]
            panels.append(torch.where(pixel_mask, pictures[i, : rows * ph, : cols * pw], torch.tensor(BLANK)))
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.imshow(panel.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("input" if j == 0 else f"stage {j} ({int(masks[j - 1][0].sum())} kept)", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None},
                                              facecolor="white"))
    return out
