"""Markdown tables and figures of the matched-compute comparison and the learned-vs-control ablation.

The frames come from ``matched.matched_budget`` and ``matched.ablation``; figures follow ``plots.py``. Every
interval is shown with its n and named in a caption line (tables) or the legend (figures), as
``intervals.py`` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.cells import DASH, num
from bench.report.intervals import bars_label, interval_bounds, interval_cell, intervals_caption
from bench.report.plots import (
    GMACS_LABEL,
    draw_error_bars,
    fixed_layout,
    method_legend,
    reference_first,
    save_figure,
)
from bench.report.style import method_styles, whitegrid
from bench.report.table import md_table

TOP1_LABEL = "Top-1 accuracy (%)"
DIFF_LABEL = "Δ top-1, learned − control (pp)"


def _budget(x: float) -> str:
    """2 decimals, but enough significant digits that sub-1-GMAC budgets stay distinct."""
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def matched_markdown(df: pd.DataFrame) -> str:
    """GitHub table of ``matched_budget`` under its caption line; the best method at each budget is marked
    "(best)"."""
    if df.empty:
        return "_No matched-budget comparison: no successful runs with top-1 and GMACs._"
    rows = [
        [
            r.backbone,
            _budget(r.budget_gmacs),
            f"{r.method} (best)" if r.method == r.best_method else r.method,
            num(r.top1_mean, 2),
            interval_cell(r.n_seeds, r.top1_ci_low, r.top1_ci_high, r.top1_min, r.top1_max),
            num(r.diff_to_best, 2, True),
            interval_cell(r.n_pairs, r.diff_ci_low, r.diff_ci_high, r.diff_min, r.diff_max, True),
        ]
        for r in df.itertuples(index=False)
    ]
    caption = (
        "Each seed's (GMACs, top-1) curve read at each budget (interpolated, never extrapolated); Δ vs the best "
        "method at that budget, paired by seed. " + intervals_caption([*df["n_seeds"], *df["n_pairs"]])
    )
    return (
        caption
        + "\n\n"
        + md_table(
            ["Backbone", "Budget (GMACs)", "Method", "Top-1 (%)", "Top-1 interval", "Δ vs best (pp)", "Δ interval"],
            rows,
            "lrlrrrr",
        )
    )


def _span(lo: float, hi: float) -> str:
    return _budget(lo) if _budget(lo) == _budget(hi) else f"{_budget(lo)}–{_budget(hi)}"


def _gmacs_cell(r: Any) -> str:
    """Where both sides were read; both GMACs when they differ by more than 0.1 % (seeds of unequal cost)."""
    if not r.n_pairs:
        return _budget(r.anchor_gmacs)
    if abs(r.learned_gmacs - r.control_gmacs) <= 1e-3 * max(abs(r.learned_gmacs), abs(r.control_gmacs)):
        return _budget(r.learned_gmacs)
    return f"{_budget(r.learned_gmacs)} / {_budget(r.control_gmacs)}"


def _anchor_cell(r: Any) -> str:
    """The measured setting both sides are read at: its keep ratio (a merging method's only sets its merge
    schedule, so it is a "setting"), and its mean tokens where recorded."""
    name = r.learned if r.anchor == "learned" else r.control
    setting = f"{name} {'setting' if r.anchor_merging else 'keep'} {r.keep_ratio:g}"
    return f"{setting}, {r.anchor_mean_tokens:.1f} tokens" if np.isfinite(r.anchor_mean_tokens) else setting


def _side(r: Any, side: str) -> str:
    """A side's top-1 over the paired seeds; the anchor's over all its seeds where nothing was paired."""
    if r.anchor == side:
        return num(getattr(r, f"{side}_top1_mean") if r.n_pairs else r.anchor_top1_mean, 2)
    return f"{num(getattr(r, f'{side}_top1_mean'), 2)} (interp.)" if r.n_pairs else DASH


def ablation_markdown(df: pd.DataFrame) -> str:
    """GitHub table of ``ablation`` under its caption line: each row one measured setting (the anchor) and the
    other side read at its GMACs, with the paired difference and its interval."""
    if df.empty:
        return "_No ablation: no successful runs of both learned and control methods._"
    rows = [
        [
            r.backbone,
            r.learned,
            r.control,
            _anchor_cell(r),
            _gmacs_cell(r),
            _side(r, "learned"),
            _side(r, "control"),
            num(r.diff_mean, 2, True),
            interval_cell(r.n_pairs, r.diff_ci_low, r.diff_ci_high, r.diff_min, r.diff_max, True)
            if r.n_pairs
            else f"not compared: {r.control if r.anchor == 'learned' else r.learned} measured at "
            f"{_span(r.other_gmacs_min, r.other_gmacs_max)} GMACs only",
        ]
        for r in df.itertuples(index=False)
    ]
    caption = (
        "Learned vs control at matched measured GMACs, not at equal keep ratio (equal keep ratios can differ in "
        "compute): each row takes one method's measured setting (the anchor) and reads the other method's per-seed "
        "(GMACs, top-1) curve at the same GMACs (interp.: interpolated, never extrapolated). "
        "Δ = learned − control, paired by seed. " + intervals_caption(df["n_pairs"])
    )
    return (
        caption
        + "\n\n"
        + md_table(
            [
                "Backbone",
                "Learned",
                "Control",
                "Anchor (measured setting)",
                "GMACs",
                "Learned top-1 (%)",
                "Control top-1 (%)",
                "Δ top-1 (pp)",
                "Δ interval",
            ],
            rows,
            "llllrrrrr",
        )
    )


def _bars_handle(ns: Any) -> Line2D:
    return Line2D([], [], color="0.4", marker="|", markersize=12, linestyle="none", label=bars_label(ns))


def _ci_bars(ax: Any, x: np.ndarray, rows: pd.DataFrame, color: Any, n: str = "n_seeds", prefix: str = "top1") -> None:
    """The seeds' interval as vertical bars at ``x``: t-interval (n ≥ MIN_N_INTERVAL) or range (n = 2)."""
    low, high = interval_bounds(rows, n, prefix)
    draw_error_bars(ax, x, low, high, [color] * len(rows))


def _plot(
    df: pd.DataFrame,
    title: str,
    draw: Any,
    handles: Any,
    xlabel: str,
    out_dir: Path,
    stem: str,
    styles: dict[str, dict[str, Any]] | None = None,
    *,
    y: str = "top1_mean",
    ylabel: str = TOP1_LABEL,
    panel: tuple[str, ...] = ("backbone",),
) -> dict[str, Path]:
    """One panel per value of the ``panel`` columns (a row per backbone, a column per control where there are
    two), legend right of the panels (never on data), or a "no data" panel; saved as PNG + PDF by
    ``plots.save_figure`` (atomic, build metadata stripped, so byte-stable)."""
    data = df[np.isfinite(df[y].to_numpy(dtype=float))] if len(df) else df
    keys = sorted(set(data[list(panel)].itertuples(index=False, name=None))) if len(data) else []
    rows = sorted({k[0] for k in keys}) if len(panel) > 1 and keys else [None]
    cols = sorted({k[1:] for k in keys}) if len(panel) > 1 else keys
    with whitegrid(**{"font.size": 10, "axes.titlesize": 11}):
        fig = Figure(figsize=(5.2 * max(len(cols), 1) + 1.6, 4.4 * len(rows)))
        FigureCanvasAgg(fig)
        grid = fig.subplots(len(rows), max(len(cols), 1), squeeze=False)
        at = {
            k: grid[rows.index(k[0]), cols.index(k[1:])] if len(panel) > 1 else grid[0, i] for i, k in enumerate(keys)
        }
        for ax in grid.flat[1:] if not keys else set(grid.flat) - set(at.values()):
            ax.remove()  # a backbone without this control: no empty panel
        axes = [at[k] for k in keys] or [grid[0, 0]]
        if not keys:
            axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes, fontsize=12)
            axes[0].set(xticks=[], yticks=[])
        else:
            styles = styles or method_styles(data)  # callers pass the report's: this is for a frame on its own
            for ax, key in zip(axes, keys):
                draw(ax, data[np.logical_and.reduce([data[c].to_numpy() == k for c, k in zip(panel, key)])], styles)
                ax.set_title("\n".join(key[:1] + tuple(f"vs {k}" for k in key[1:])))
            method_legend(fig, handles(data, styles))
        for ax in axes:
            ax.set(xlabel=xlabel, ylabel=ylabel)
        fig.suptitle(title)
        fixed_layout(fig, rows=len(rows))
    paths = save_figure(fig, Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf")
    fig.clear()
    return paths


def _draw_matched(ax: Any, data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> None:
    """Methods dodged around each budget so their CI bars do not overlap; best points ringed."""
    xs = np.unique(data["budget_gmacs"].to_numpy(dtype=float))
    gap = np.diff(xs).min() if len(xs) > 1 else max(abs(xs[0]), 1e-9)
    methods = reference_first(styles, data["method"])
    for i, method in enumerate(methods):
        rows = data[data["method"] == method].sort_values("budget_gmacs")
        x = rows["budget_gmacs"].to_numpy() + (i - (len(methods) - 1) / 2) * 0.3 * gap / max(len(methods), 1)
        style = styles[method]
        y = rows["top1_mean"].to_numpy(dtype=float)
        _ci_bars(ax, x, rows, style["color"])
        ax.plot(
            x,
            y,
            color=style["color"],
            marker=style["marker"],
            markersize=style["markersize"],
            linestyle=style["linestyle"] if len(rows) > 1 else "none",
            linewidth=1.4,
            zorder=3,
        )
        is_best = (rows["method"] == rows["best_method"]).to_numpy()
        ax.scatter(
            x[is_best],
            rows["top1_mean"].to_numpy()[is_best],
            s=230,
            facecolors="none",
            edgecolors="black",
            linewidths=1.4,
            zorder=5,
        )
    if len(xs) <= 8:
        ax.set_xticks(xs, [_budget(x) for x in xs])
    ax.margins(x=0.08, y=0.12)


def _matched_handles(data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> list[Any]:
    return [
        Line2D(
            [],
            [],
            color=styles[m]["color"],
            marker=styles[m]["marker"],
            markersize=styles[m]["markersize"],
            linestyle=styles[m]["linestyle"],
            label=m,
        )
        for m in reference_first(styles, data["method"])
    ] + [
        Line2D(
            [],
            [],
            marker="o",
            markersize=13,
            markerfacecolor="none",
            markeredgecolor="black",
            linestyle="none",
            label="best at budget",
        ),
        _bars_handle(data["n_seeds"]),
    ]


def plot_matched(
    df: pd.DataFrame,
    out_dir: Path,
    stem: str = "matched_budget",
    *,
    title: str = "Top-1 at matched GMACs (mean over seeds)",
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Save the matched-budget figure (PNG + PDF, byte-stable); returns {file name: path}. Pass the report's
    ``styles`` so a method keeps its colour across figures."""
    return _plot(df, title, _draw_matched, _matched_handles, GMACS_LABEL, out_dir, stem, styles)


def _draw_ablation(ax: Any, data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> None:
    """One control's panel: per learned method, the paired Δ top-1 at each matched GMACs with its interval
    bars; the zero line is "no better than the control"."""
    ax.axhline(0.0, color="0.3", linewidth=1.0, zorder=1)
    for method in reference_first(styles, data["learned"].unique()):
        rows = data[data["learned"] == method].sort_values("learned_gmacs", kind="mergesort")
        style = styles[method]
        x = rows["learned_gmacs"].to_numpy(dtype=float)
        _ci_bars(ax, x, rows, style["color"], "n_pairs", "diff")
        ax.plot(
            x,
            rows["diff_mean"].to_numpy(dtype=float),
            color=style["color"],
            marker=style["marker"],
            markersize=style["markersize"],
            linestyle=style.get("linestyle", "-") if len(rows) > 1 else "none",
            linewidth=1.4,
            zorder=3,
        )
    ax.margins(x=0.08, y=0.15)


def _ablation_handles(data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> list[Any]:
    return [
        Line2D(
            [],
            [],
            color=styles[m]["color"],
            marker=styles[m]["marker"],
            markersize=styles[m]["markersize"],
            linestyle=styles[m].get("linestyle", "-"),
            label=m,
        )
        for m in reference_first(styles, data["learned"].unique())
    ] + [_bars_handle(data["n_pairs"])]


def plot_ablation(
    df: pd.DataFrame,
    out_dir: Path,
    stem: str = "ablation",
    *,
    title: str = "Learned vs control token selection at matched GMACs",
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Save the ablation figure (PNG + PDF, byte-stable): a panel per backbone and control, Δ top-1 (learned −
    control, paired by seed) against the GMACs both were read at; returns {file name: path}. Pass the report's
    ``styles`` so a learned method keeps its look across figures."""
    paired = df[df["n_pairs"] > 0] if len(df) else df
    if styles is None and len(paired):
        styles = method_styles(pd.DataFrame({"method": sorted(paired["learned"].unique())}))
    return _plot(
        paired,
        title,
        _draw_ablation,
        _ablation_handles,
        GMACS_LABEL,
        out_dir,
        stem,
        styles,
        y="diff_mean",
        ylabel=DIFF_LABEL,
        panel=("backbone", "control"),
    )
