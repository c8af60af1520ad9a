"""Accuracy/compute trade-off plots (top-1 vs GMACs, top-1 vs throughput), byte-stable for a given table.

Each backbone gets a panel: one line per method across keep ratios, seed std as error bars, dense as
the black-star reference, and the Pareto front (no other point is both cheaper/faster and more
accurate) as a grey step line. A method keeps one look in every figure of a report: styles come from
``style.method_styles`` over the whole table, not from the methods a panel happens to show.

Figures are built with the object API on an explicit Agg canvas: headless, and without
``matplotlib.use`` or pyplot state, so importing this in a notebook leaves its backend
alone. They are saved with timestamps/versions stripped from the metadata so the same
table always gives identical PNG and PDF bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.io import atomic_write
from bench.report.style import method_styles, whitegrid
from bench.report.summary import INTERVALS

PNG_DPI = 150
LABEL_FONTSIZE = 8  # keep-ratio labels next to points
PNG_METADATA: dict[str, Any] = {"Software": None}
PNG_COMPRESSION = {"compress_level": 3}  # zlib level 3: a little larger than 6, encodes several times faster
PDF_METADATA: dict[str, Any] = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
GMACS_LABEL = "GMACs per image (fvcore, 1 MAC = 1 flop)"
THROUGHPUT_LABEL = "Throughput (images/s, median; model only)"
#: x axes a trade-off figure can use: summary column, axis label, whether larger is better
SPEEDUP_LABEL = "Speed-up over dense (paired timing, mean over timed seeds)"
AXES = {
    "gmacs": ("gmacs", GMACS_LABEL, False),
    "throughput": ("throughput", THROUGHPUT_LABEL, True),
    "speedup": ("speedup", SPEEDUP_LABEL, True),
}
#: which flag marks a point's x value unreliable (spread above the noise threshold after the retries)
UNRELIABLE_FLAGS = {"throughput": ("throughput_unreliable", "speedup_unreliable"), "speedup": ("speedup_unreliable",)}
UNRELIABLE_STYLE = {
    "marker": "o",
    "markersize": 15,
    "markerfacecolor": "none",
    "markeredgecolor": "#d62728",
    "markeredgewidth": 1.4,
    "linestyle": "none",
}


def timing_setup(table: pd.DataFrame) -> str:
    """What a speed figure's numbers hold for, for its title: device, precision and batch size of the timed runs
    (e.g. "NVIDIA H100 80GB HBM3, bf16, batch 256"; on a CPU the threads too); several values are joined with "/"."""
    timed = table
    if "throughput_img_s" in table:
        timed = table[table["throughput_img_s"].notna() & (table.get("status", "ok") == "ok")]
    if timed.empty or "throughput_device" not in timed:
        return "not timed"

    def values(column: str) -> list[str]:
        if column not in timed:
            return ["?"]
        v = timed[column].dropna()
        v = v.astype(int).astype(str) if column in ("throughput_batch_size", "timing_threads") else v.astype(str)
        return sorted(set(v), key=lambda x: (len(x), x)) or ["?"]

    device, precision, batch = (values(c) for c in ("throughput_device", "precision", "throughput_batch_size"))
    setup = f"{'/'.join(device)}, {'/'.join(precision)}, batch {'/'.join(batch)}"
    if "device" in timed and (timed["device"] == "cpu").all() and "timing_threads" in timed:  # CPU: threads too
        threads = values("timing_threads")
        setup += f", {'/'.join(threads)} thread{'' if threads == ['1'] else 's'}"
    return setup


def pareto_front(x: pd.Series, y: pd.Series, larger_x_better: bool) -> pd.Index:
    """Index of the points no other point beats on both axes (y larger is better), ordered along x."""
    order = sorted(x.index, key=lambda i: (-x[i] if larger_x_better else x[i], -y[i]))
    front, best = [], float("-inf")
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return pd.Index(front)


def is_reference(styles: dict[str, dict[str, Any]], method: str) -> bool:
    return bool(styles.get(method, {}).get("reference"))


def reference_first(styles: dict[str, dict[str, Any]], methods: Iterable[str]) -> list[str]:
    """Methods in drawing and legend order: the reference first, then colour group by colour group (the order
    ``style.method_styles`` gives them), by name within a group."""
    return sorted(set(methods), key=lambda m: (not is_reference(styles, m), styles.get(m, {}).get("order", (99,)), m))


def draw_error_bars(
    ax: Any,
    x: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    colors: list[Any],
    linewidth: float = 1.4,
    zorder: float = 2.9,
) -> None:
    """A panel's vertical error bars (seaborn style, no caps), every method at once as one line collection:
    ``errorbar()`` per method makes three or four artists each, a fifth of the drawing time of a figure with
    a few dozen methods. Bars with no finite, nonzero extent are skipped."""
    x, low, high = (np.asarray(a, dtype=float) for a in (x, low, high))
    keep = np.flatnonzero(np.isfinite(x) & np.isfinite(low) & np.isfinite(high) & (high > low))
    if len(keep):
        segments = np.stack([np.column_stack([x[keep], low[keep]]), np.column_stack([x[keep], high[keep]])], axis=1)
        ax.add_collection(
            LineCollection(segments, colors=[colors[i] for i in keep], linewidths=linewidth, zorder=zorder)
        )


def _draw_panel(ax: Any, data: pd.DataFrame, styles: dict[str, dict[str, Any]], x: str = "gmacs") -> None:
    """One backbone: a line per method across keep ratios, std-over-seeds error bars, the Pareto front."""
    column, label, larger_better = AXES[x]
    data = data[data[column].notna()]
    front = pareto_front(data[column], data["top1_mean"], larger_better)
    if len(front) > 1:
        pts = data.loc[front]
        ax.step(
            pts[column],
            pts["top1_mean"],
            where="post",
            color="0.55",
            linewidth=5,
            alpha=0.35,
            zorder=1,
            solid_capstyle="round",
        )
    # plain arrays, one pass over the methods: pandas filtering per method dominated large figures
    methods = data["method"].to_numpy(dtype=object)
    xs, ys = data[column].to_numpy(dtype=float), data["top1_mean"].to_numpy(dtype=float)
    errs = np.where(data["n_ok"].to_numpy() > 1, np.nan_to_num(data["top1_std"].to_numpy(dtype=float)), 0.0)
    draw_error_bars(ax, xs, ys - errs, ys + errs, [styles[m]["color"] for m in methods], linewidth=1.6)
    for method in reference_first(styles, methods):
        ref = is_reference(styles, method)
        idx = np.flatnonzero(methods == method)
        idx = idx[np.argsort(xs[idx], kind="stable")]
        style = styles[method]
        ax.plot(
            xs[idx],
            ys[idx],
            color=style["color"],
            marker=style["marker"],
            markersize=style["markersize"],
            linestyle=style["linestyle"] if len(idx) > 1 else "none",
            linewidth=1.6,
            markeredgecolor="black" if ref else "white",
            markeredgewidth=0.6,
            zorder=4 if ref else 3,
        )
        if ref:
            for y in ys[idx]:
                ax.axhline(y, color="black", linestyle=":", linewidth=0.9, alpha=0.5, zorder=1)
    ax.set_xlabel(label)
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.margins(x=0.08, y=0.15)
    if x == "speedup" and "speedup_ci_low" in data:  # horizontal bars: the paired timing's confidence interval
        lo, hi = data["speedup_ci_low"].to_numpy(dtype=float), data["speedup_ci_high"].to_numpy(dtype=float)
        keep = np.flatnonzero(np.isfinite(lo) & np.isfinite(hi) & (hi > lo))
        if len(keep):
            segs = np.stack([np.column_stack([lo[keep], ys[keep]]), np.column_stack([hi[keep], ys[keep]])], axis=1)
            ax.add_collection(
                LineCollection(segs, colors=[styles[methods[i]]["color"] for i in keep], linewidths=1.2, zorder=2.8)
            )
    flagged = unreliable_mask(data, x)
    if flagged.any():
        ax.plot(xs[flagged], ys[flagged], zorder=5, **UNRELIABLE_STYLE)
    if x == "gmacs":
        # a merging method's "keep ratio" is a setting mapped to its r, not a share of tokens kept: no label
        merging = _flags(data, "role_merging")
        not_ref = np.array([not is_reference(styles, m) for m in methods], dtype=bool) & ~merging
        _label_keep_ratios(ax, xs, ys - errs, data["keep_ratio"].to_numpy(dtype=float), not_ref)


def _flags(data: pd.DataFrame, column: str) -> np.ndarray:
    if column not in data:
        return np.zeros(len(data), dtype=bool)
    return data[column].map(lambda v: v is True or v == 1).to_numpy(dtype=bool)


def bar_handles(data: pd.DataFrame, x: str) -> list[Line2D]:
    """Legend lines saying what a trade-off figure's error bars are, with their n: top-1 ± 1 std over seeds
    (vertical), and on the speed-up axis the paired timing's interval of each point (horizontal)."""
    ns = sorted({int(n) for n in data["n_ok"].to_numpy(dtype=float) if np.isfinite(n) and n > 1})
    handles = []
    if ns:
        n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="|",
                markersize=11,
                linestyle="none",
                label=f"top-1 bars: ± 1 std over seeds ({n_text})",
            )
        )
    if x == "speedup" and "speedup_interval" in data:
        kinds = [INTERVALS[k] for k in INTERVALS if (data["speedup_interval"] == k).any()]
        if kinds:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.3",
                    marker="_",
                    markersize=11,
                    linestyle="none",
                    label="speed-up bars: " + "; ".join(kinds),
                )
            )
    return handles


def unreliable_mask(data: pd.DataFrame, x: str) -> np.ndarray:
    """Points whose x value is marked unreliable by the timing step."""
    mask = np.zeros(len(data), dtype=bool)
    for col in UNRELIABLE_FLAGS.get(x, ()):
        if col in data:
            mask |= data[col].map(lambda v: v is True or v == 1).to_numpy(dtype=bool)
    return mask


def _label_keep_ratios(ax: Any, xs: np.ndarray, bottoms: np.ndarray, ratios: np.ndarray, use: np.ndarray) -> None:
    """One "keep r" label under each cluster of points at ratio r (below the lowest error bar).

    Methods at one keep ratio usually have about the same GMACs, so per-point labels would print on top of
    each other: points of one ratio closer than a label's width on screen share one label, centred on them.
    Keep ratio 1.0 is not labelled (dense and weight-sparse runs; the legend names them)."""
    ax.autoscale_view()  # final limits, so screen distances are the ones drawn
    to_points = 72.0 / ax.figure.dpi
    screen_x = ax.transData.transform(np.column_stack([xs, np.zeros_like(xs)]))[:, 0] * to_points
    for ratio in sorted(set(ratios[use & (ratios < 1.0)].tolist())):
        text = f"keep {ratio:g}"
        width = 0.62 * LABEL_FONTSIZE * len(text)  # points; DejaVu Sans averages ~0.6 em per character
        members = np.flatnonzero(use & (ratios == ratio) & np.isfinite(xs) & np.isfinite(bottoms))
        members = members[np.argsort(screen_x[members], kind="stable")]
        cluster: list[int] = []
        for i in [*members, None]:
            if i is not None and (not cluster or screen_x[i] - screen_x[cluster[0]] < width):
                cluster.append(i)
                continue
            if cluster:
                low = min(cluster, key=lambda j: (bottoms[j], j))
                ax.annotate(
                    text,
                    ((xs[cluster[0]] + xs[cluster[-1]]) / 2, bottoms[low]),
                    textcoords="offset points",
                    xytext=(0, -8),
                    ha="center",
                    va="top",
                    fontsize=LABEL_FONTSIZE,
                    color="0.3",
                )
            cluster = [i] if i is not None else []


def _legend_handles(methods: list[str], styles: dict[str, dict[str, Any]]) -> list[Line2D]:
    handles = [Line2D([], [], color="0.55", linewidth=5, alpha=0.35, label="Pareto front")]
    for method in reference_first(styles, methods):
        style, ref = styles[method], is_reference(styles, method)
        label = f"{method} (reference)" if ref else method
        handles.append(
            Line2D(
                [],
                [],
                color=style["color"],
                marker=style["marker"],
                markersize=style["markersize"],
                linestyle="none" if ref else style["linestyle"],
                markeredgecolor="black" if ref else "white",
                markeredgewidth=0.6,
                label=label,
            )
        )
    return handles


def tradeoff_figure(
    summary: pd.DataFrame, title: str, x: str = "gmacs", styles: dict[str, dict[str, Any]] | None = None
) -> Figure:
    """Figure with one panel per backbone; rows of ``summary`` need n_ok > 0 to be drawn.

    ``summary`` columns used: backbone, method, keep_ratio, n_ok, top1_mean, top1_std and the x column.
    """
    column = AXES[x][0]
    data = summary[(summary["n_ok"] > 0) & summary[column].notna() & summary["top1_mean"].notna()]
    backbones = sorted(data["backbone"].unique())
    n_panels = max(len(backbones), 1)
    with whitegrid(**{"font.size": 10, "axes.titlesize": 11}):
        fig = Figure(figsize=(5.2 * n_panels + 1.6, 4.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n_panels, squeeze=False)[0]
        if data.empty:
            ax = axes[0]
            ax.text(
                0.5, 0.5, "no successful runs to plot", ha="center", va="center", transform=ax.transAxes, fontsize=12
            )
            ax.set_xlabel(AXES[x][1])
            ax.set_ylabel("Top-1 accuracy (%)")
        else:
            methods = sorted(data["method"].unique())
            styles = styles or method_styles(summary)  # the whole summary: every method, drawn or not
            for ax, backbone in zip(axes, backbones):
                _draw_panel(ax, data[data["backbone"] == backbone], styles, x)
                ax.set_title(backbone)
            handles = _legend_handles(methods, styles) + bar_handles(data, x)
            if any(unreliable_mask(data[data["backbone"] == b], x).any() for b in backbones):
                handles.append(Line2D([], [], label="unreliable timing\n(spread above threshold)", **UNRELIABLE_STYLE))
            method_legend(fig, handles)
        fig.suptitle(title)
        fixed_layout(fig)
    return fig


def _lines_of(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def fixed_layout(fig: Figure, rows: int = 1) -> None:
    """Spacing without ``tight_layout``: that costs a full draw per call, which dominates large reports.
    Saving with ``bbox_inches="tight"`` then crops to the titles, labels and the outside legend. The space above
    the panels is counted in lines of the title and of the panels' titles (a speed figure's second title line
    names its device), so they never run into each other."""
    panel_title_lines = max((_lines_of(ax.get_title()) for ax in fig.axes), default=0)
    above = 0.25 + 0.24 * _lines_of(fig.get_suptitle()) + 0.2 * panel_title_lines  # inches
    fig.subplots_adjust(
        left=0.08,
        right=0.98,
        bottom=0.14 / rows,
        top=1 - above / fig.get_figheight(),
        wspace=0.28,
        hspace=0.45 if rows > 1 else 0.2,
    )


def method_legend(fig: Figure, handles: list[Any], labels: list[str] | None = None) -> None:
    """Every figure's legend: right of the panels, so it never sits on a data point; one column up to 16 entries,
    then two, so a legend of 25 methods stays within the figure's height."""
    fig.legend(
        handles,
        labels if labels is not None else [h.get_label() for h in handles],
        title="method",
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        ncols=1 if len(handles) <= 16 else 2,
    )


def save_figure(fig: Figure, png_path: Path, pdf_path: Path) -> dict[str, Path]:
    """Write PNG and PDF atomically with metadata that would vary between builds removed.

    The tight bounding box (titles, labels, the legend outside the axes) is computed once and given to
    both saves: ``bbox_inches="tight"`` would redo it with an extra draw per format, the largest single
    cost of a big report."""
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.15)
    save_kw: dict[str, Any] = {"bbox_inches": bbox, "facecolor": "white"}
    atomic_write(
        png_path,
        lambda tmp: fig.savefig(
            tmp, format="png", dpi=PNG_DPI, metadata=PNG_METADATA, pil_kwargs=PNG_COMPRESSION, **save_kw
        ),
    )
    atomic_write(pdf_path, lambda tmp: fig.savefig(tmp, format="pdf", metadata=PDF_METADATA, **save_kw))
    return {png_path.name: png_path, pdf_path.name: pdf_path}


def plot_tradeoff(
    summary: pd.DataFrame,
    title: str,
    out_dir: Path,
    stem: str = "tradeoff_top1_vs_gmacs",
    x: str = "gmacs",
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Draw and save a trade-off figure (x: "gmacs" or "throughput"); returns {file name: path}."""
    fig = tradeoff_figure(summary, title, x, styles)
    paths = save_figure(fig, Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf")
    fig.clear()
    return paths
