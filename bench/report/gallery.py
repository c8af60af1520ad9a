"""Kept-token gallery: which patches each method keeps (or merges) at each stage, from results alone.

Evaluation records, next to each run of a token-reducing method, ``kept_tokens.npz``: a few val images
(uint8), per stage the kept-patch masks and, for pooling methods, the cluster each original patch was
pooled into. The report draws the gallery from those files only (no model is loaded): one row per
run, the input then each stage with dropped patches blanked; merged groups are outlined.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.errors import UnsafeArtifact
from bench.io import atomic_write, open_artifact

BLANK = 1.0  # dropped patches are painted white, as in the papers' figures


def _outline(ax, groups: np.ndarray, ph: int, pw: int) -> None:
    """Draw borders between patches pooled into different tokens."""
    rows, cols = groups.shape
    segs = []
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and groups[r, c] != groups[r, c + 1]:
                segs.append([((c + 1) * pw - 0.5, r * ph - 0.5), ((c + 1) * pw - 0.5, (r + 1) * ph - 0.5)])
            if r + 1 < rows and groups[r, c] != groups[r + 1, c]:
                segs.append([(c * pw - 0.5, (r + 1) * ph - 0.5), ((c + 1) * pw - 0.5, (r + 1) * ph - 0.5)])
    if segs:
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segs, colors="#d62728", linewidths=0.8))


def plot_gallery(
    entries: list[tuple[str, Path]], path: str | Path, image_index: int = 0, panel_inches: float = 1.5
) -> Path:
    """One row per (label, kept_tokens.npz): the input, then each stage's kept (or pooled) patches."""
    data = []
    for label, p in entries:
        try:  # allow_pickle stays False: a planted object array is refused; a damaged file costs only its row
            with open_artifact(p) as f, np.load(f) as npz:  # a planted link: refused (bench.io)
                data.append(
                    (
                        label,
                        {k: npz[k] for k in ("images", "masks", "grid") if k in npz.files}
                        | ({"groups": npz["groups"]} if "groups" in npz.files else {}),
                    )
                )
        except UnsafeArtifact:
            raise
        except Exception as e:  # noqa: BLE001
            print(f"bench: report: {p} is unreadable ({type(e).__name__}); left out of the gallery", file=sys.stderr)
    data = [(label, d) for label, d in data if {"images", "masks", "grid"} <= set(d)]
    n_cols = 1 + max((len(d["masks"]) for _, d in data), default=0)
    fig = Figure(figsize=(panel_inches * n_cols + 1.8, panel_inches * max(1, len(data))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(data)), n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if not data:
        axes[0, 0].text(0.5, 0.5, "no kept-token records", ha="center", va="center", transform=axes[0, 0].transAxes)
    for i, (label, d) in enumerate(data):
        picture = d["images"][min(image_index, len(d["images"]) - 1)].astype(np.float32) / 255.0
        rows, cols = (int(v) for v in d["grid"])
        ph, pw = picture.shape[0] // rows, picture.shape[1] // cols
        axes[i, 0].imshow(picture, interpolation="nearest")
        axes[i, 0].set_axis_on()
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        axes[i, 0].set_title("input", fontsize=7)
        for j, masks in enumerate(d["masks"]):
            mask = masks[min(image_index, len(masks) - 1)]
            pixel = np.repeat(np.repeat(mask, ph, 0), pw, 1)[..., None]
            panel = np.where(pixel, picture[: rows * ph, : cols * pw], BLANK)
            ax = axes[i, j + 1]
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(panel, interpolation="nearest")
            if "groups" in d:
                ax.imshow(picture[: rows * ph, : cols * pw], interpolation="nearest")  # pooling drops nothing
                _outline(ax, d["groups"][j][min(image_index, len(d["groups"][j]) - 1)], ph, pw)
                ax.set_title(f"stage {j + 1}: {len(np.unique(d['groups'][j][0]))} tokens", fontsize=7)
            else:
                ax.set_title(f"stage {j + 1}: {int(mask.sum())} kept", fontsize=7)
    fig.tight_layout()
    out = Path(path)
    atomic_write(
        out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None}, facecolor="white")
    )
    fig.clear()
    return out
