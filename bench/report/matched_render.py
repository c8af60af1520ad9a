"""Markdown tables and figures of the matched-compute comparison and the learned-vs-control ablation.

The frames come from ``matched.matched_budget`` and ``matched.ablation``; figures follow ``plots.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.plots import GMACS_LABEL, draw_error_bars, fixed_layout, reference_first, save_figure
from bench.report.style import method_styles, whitegrid
from bench.report.table import DASH, md_table

TOP1_LABEL = "Top-1 accuracy (%)"


def _f(value: Any, signed: bool = False) -> str:
    return DASH if not np.isfinite(value) else f"{value:+.2f}" if signed else f"{value:.2f}"


def _ci(lo: Any, hi: Any, signed: bool = False) -> str:
    return f"[{_f(lo, signed)}, {_f(hi, signed)}]" if np.isfinite(lo) and np.isfinite(hi) else DASH


def _budget(x: float) -> str:
    """2 decimals, but enough significant digits that sub-1-GMAC budgets stay distinct."""
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def matched_markdown(df: pd.DataFrame) -> str:
    """GitHub table of ``matched_budget``; the best method at each budget is marked "(best)"."""
    if df.empty:
        return "_No matched-budget comparison: no successful runs with top-1 and GMACs._"
    rows = [
        [
            r.backbone,
            _budget(r.budget_gmacs),
            f"{r.method} (best)" if r.method == r.best_method else r.method,
            str(r.n_seeds),
            _f(r.top1_mean),
            _ci(r.top1_ci_low, r.top1_ci_high),
            _f(r.diff_to_best, True),
            _ci(r.diff_ci_low, r.diff_ci_high, True),
        ]
        for r in df.itertuples(index=False)
    ]
    return md_table(
        ["Backbone", "Budget (GMACs)", "Method", "Seeds", "Top-1 (%)", "95% CI", "Δ vs best (pp)", "95% CI"],
        rows,
        "lrlrrrrr",
    )


def ablation_markdown(df: pd.DataFrame) -> str:
    """GitHub table of ``ablation``; the top method per backbone x keep ratio is marked "(best)"."""
    if df.empty:
        return "_No ablation: no successful runs of learned or control methods._"
    top = df.sort_values("top1_mean", ascending=False, kind="mergesort").dropna(subset=["top1_mean"])
    best = set(
        top.drop_duplicates(["backbone", "keep_ratio"])[["backbone", "keep_ratio", "method"]].itertuples(
            index=False, name=None
        )
    )
    rows = [
        [
            r.backbone,
            f"{r.keep_ratio:g}",
            f"{r.method} (best)" if (r.backbone, r.keep_ratio, r.method) in best else r.method,
            r.role,
            str(r.n_seeds),
            _f(r.top1_mean),
            _ci(r.top1_ci_low, r.top1_ci_high),
            r.control if r.control is not None else DASH,
            str(r.n_pairs),
            _f(r.diff_mean, True),
            _ci(r.diff_ci_low, r.diff_ci_high, True),
        ]
        for r in df.itertuples(index=False)
    ]
    return md_table(
        [
            "Backbone",
            "Keep ratio",
            "Method",
            "Role",
            "Seeds",
            "Top-1 (%)",
            "95% CI",
            "vs control",
            "Pairs",
            "Δ top-1 (pp)",
            "95% CI",
        ],
        rows,
        "lrllrrrlrrr",
    )


def _ci_bars(ax: Any, x: np.ndarray, rows: pd.DataFrame, color: Any) -> None:
    """The seeds' bootstrap CI of top-1 as vertical bars at ``x``."""
    low, high = rows["top1_ci_low"].to_numpy(dtype=float), rows["top1_ci_high"].to_numpy(dtype=float)
    draw_error_bars(ax, x, low, high, [color] * len(rows))


def _ordered(methods: Any, styles: dict[str, dict[str, Any]]) -> list[str]:
    return reference_first(styles, methods)


def _plot(
    df: pd.DataFrame,
    title: str,
    draw: Any,
    handles: Any,
    xlabel: str,
    out_dir: Path,
    stem: str,
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """One panel per backbone, legend right of the panels (never on data), or a "no data" panel; saved
    as PNG + PDF by ``plots.save_figure`` (atomic, build metadata stripped, so byte-stable)."""
    data = df[np.isfinite(df["top1_mean"].to_numpy(dtype=float))] if len(df) else df
    backbones = sorted(data["backbone"].unique()) if len(data) else []
    n_panels = max(len(backbones), 1)
    with whitegrid(**{"font.size": 10, "axes.titlesize": 11}):
        fig = Figure(figsize=(5.2 * n_panels + 1.6, 4.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n_panels, squeeze=False)[0]
        if not backbones:
            axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes, fontsize=12)
            axes[0].set(xticks=[], yticks=[])
        else:
            styles = styles or method_styles(data)  # callers pass the report's: this is for a frame on its own
            for ax, backbone in zip(axes, backbones):
                draw(ax, data[data["backbone"] == backbone], styles)
                ax.set_title(backbone)
            fig.legend(
                handles=handles(data, styles),
                title="method",
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                frameon=False,
            )
        for ax in axes:
            ax.set(xlabel=xlabel, ylabel=TOP1_LABEL)
        fig.suptitle(title)
        fixed_layout(fig)
    paths = save_figure(fig, Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf")
    fig.clear()
    return paths


def _draw_matched(ax: Any, data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> None:
    """Methods dodged around each budget so their CI bars do not overlap; best points ringed."""
    xs = np.unique(data["budget_gmacs"].to_numpy(dtype=float))
    gap = np.diff(xs).min() if len(xs) > 1 else max(abs(xs[0]), 1e-9)
    methods = _ordered(data["method"], styles)
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
        for m in _ordered(data["method"], styles)
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
        )
    ]


def plot_matched(
    df: pd.DataFrame,
    out_dir: Path,
    stem: str = "matched_budget",
    *,
    title: str = "Top-1 at matched compute (mean over seeds, 95% bootstrap CI)",
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Save the matched-budget figure (PNG + PDF, byte-stable); returns {file name: path}. Pass the report's
    ``styles`` so a method keeps its colour across figures."""
    return _plot(df, title, _draw_matched, _matched_handles, GMACS_LABEL, out_dir, stem, styles)


def _ablation_methods(data: pd.DataFrame) -> list[str]:  # controls first: the baseline the eye compares to
    roles = data.drop_duplicates("method").set_index("method")["role"]
    return sorted(roles.index, key=lambda m: (roles[m] != "control", m))


def _draw_ablation(ax: Any, data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> None:
    """Dodged points with CI bars per keep ratio (controls hollow): cheaper to draw than bars, and an
    accuracy axis need not start at 0."""
    data = data.drop_duplicates(["keep_ratio", "method"])
    ratios = np.unique(data["keep_ratio"].to_numpy(dtype=float))
    methods = _ablation_methods(data)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        rows = data[data["method"] == method]
        x = np.searchsorted(ratios, rows["keep_ratio"].to_numpy(dtype=float)) + (i - (len(methods) - 1) / 2) * width
        control = rows["role"].iloc[0] == "control"
        style = styles[method]
        _ci_bars(ax, x, rows, style["color"])
        ax.plot(
            x,
            rows["top1_mean"].to_numpy(dtype=float),
            color=style["color"],
            marker=style["marker"],
            markersize=7,
            linestyle="none",
            markerfacecolor="white" if control else style["color"],
            zorder=3,
        )
    ax.set_xticks(np.arange(len(ratios)), [f"keep {r:g}" for r in ratios])
    ax.margins(y=0.12)


def _ablation_handles(data: pd.DataFrame, styles: dict[str, dict[str, Any]]) -> list[Any]:
    roles = data.drop_duplicates("method").set_index("method")["role"]
    return [
        Line2D(
            [],
            [],
            color=styles[m]["color"],
            marker=styles[m]["marker"],
            linestyle="none",
            markersize=7,
            markerfacecolor="white" if roles[m] == "control" else styles[m]["color"],
            label=f"{m} (control, hollow)" if roles[m] == "control" else m,
        )
        for m in _ablation_methods(data)
    ]


def plot_ablation(
    df: pd.DataFrame,
    out_dir: Path,
    stem: str = "ablation",
    *,
    title: str = "Learned vs control token selection (mean over seeds, 95% bootstrap CI)",
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Save the per-keep-ratio comparison (PNG + PDF, byte-stable); returns {file name: path}."""
    return _plot(df, title, _draw_ablation, _ablation_handles, "Keep ratio", out_dir, stem, styles)
