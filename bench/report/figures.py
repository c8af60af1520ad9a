"""Paper figures, regenerated from the results table alone (``bench figures``); nothing here trains.

Each figure is a registered function ``(ctx) -> list[Path]`` that returns [] when the suite has nothing
it can draw, so one command serves every suite:

* ``dynamicvit_tradeoff``: DynamicViT-style top-1 vs GMACs across keep ratios (learned, static, random, dense).
* ``pruning_ablation``: the learned / static / random ablation, top-1 against measured GMACs (equal keep
  ratios are not equal compute, and a merging method has no keep-ratio axis).
* ``token_pooling_curves``: Token Pooling-style cost-accuracy curves of the pooling variants and baselines.
* ``svite_sparsity``: SViTE-style top-1 against sparsity (1 - density), measured and theoretical GMACs.

Published numbers (``bench/reference/published.csv``) are drawn as hollow markers where the suite's
backbone and dataset match theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.registry import Registry
from bench.report.plots import (
    GMACS_LABEL,
    draw_error_bars,
    fixed_layout,
    is_reference,
    method_legend,
    reference_first,
    save_figure,
)
from bench.report.style import whitegrid
from bench.report.summary import methods_with_role

PUBLISHED_DATASET = "imagenet-1k"


@dataclass
class FigureContext:
    table: pd.DataFrame  # one row per run (bench collect)
    summary: pd.DataFrame  # one row per backbone x method x keep ratio (bench.report.summary)
    out_dir: Path
    styles: dict[str, dict[str, Any]]
    published: pd.DataFrame


FigureFn = Callable[[FigureContext], list[Path]]


@dataclass(frozen=True)
class PaperFigure:
    description: str
    fn: FigureFn
    #: the methods it features: those declaring this ``Method.family`` ("" = selected by role only)
    family: str = ""


FIGURES: Registry[PaperFigure] = Registry("figure")


def register_figure(name: str, description: str, family: str = "") -> Callable[[FigureFn], FigureFn]:
    def wrap(fn: FigureFn) -> FigureFn:
        FIGURES.add(name, PaperFigure(description, fn, family))
        return fn

    return wrap


def load_published() -> pd.DataFrame:
    with resources.files("bench").joinpath("reference/published.csv").open() as f:
        return pd.read_csv(f)


def _registry_names(ctx: FigureContext) -> dict[str, str]:
    """Suite label -> registry method name (labels like tp_kmeans are token_pooling runs)."""
    t = ctx.table.dropna(subset=["method"])
    names = t["method_name"] if "method_name" in t else t["method"]
    return dict(zip(t["method"], names.fillna(t["method"])))


def _family(ctx: FigureContext, family: str) -> list[str]:
    """Labels of the methods declaring ``family`` (the run record's ``method_family``)."""
    t = ctx.table
    if "method_family" not in t:
        return []
    return sorted(t.loc[t["method_family"] == family, "method"].dropna().unique())


def _role(ctx: FigureContext, *roles: str) -> list[str]:
    return sorted({label for role in roles for label in methods_with_role(ctx.table, role)})


def _names(ctx: FigureContext, labels: list[str]) -> set[str]:
    """Registry names of these labels: what published.csv's ``method`` column holds."""
    names = _registry_names(ctx)
    return {names.get(label, label) for label in labels}


def _param(ctx: FigureContext, param: str) -> dict[str, float]:
    """Label -> a method parameter's value (the record holds every parameter, defaults filled)."""
    column = f"param_{param}"
    if column not in ctx.table:
        return {}
    t = ctx.table.dropna(subset=["method", column])
    return {label: float(v) for label, v in zip(t["method"], t[column])}


def _ok(summary: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    return summary[summary["method"].isin(labels) & (summary["n_ok"] > 0) & summary["top1_mean"].notna()]


def _figure(n_panels: int) -> tuple[Figure, Any]:
    fig = Figure(figsize=(5.0 * n_panels + 2.0, 4.2))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def _lines(ax: Any, data: pd.DataFrame, x: str, styles: dict[str, dict[str, Any]]) -> None:
    for method in reference_first(styles, data["method"].unique()):
        rows = data[data["method"] == method].sort_values(x)
        st = styles[method]  # the report's look of every method of the table
        xs, ys = rows[x].to_numpy(dtype=float), rows["top1_mean"].to_numpy(dtype=float)
        err = rows["top1_std"].where(rows["n_ok"] > 1).to_numpy(dtype=float)
        draw_error_bars(ax, xs, ys - err, ys + err, [st["color"]] * len(rows))
        ax.plot(
            xs,
            ys,
            color=st["color"],
            marker=st["marker"],
            markersize=st["markersize"],
            linestyle=st["linestyle"] if len(rows) > 1 else "none",
            label=method,
            markeredgecolor="black" if is_reference(styles, method) else "white",
            markeredgewidth=0.6,
        )


def _published(
    ax: Any, ctx: FigureContext, backbone: str, methods: set[str], x: str, colors: dict[str, Any] | None = None
) -> bool:
    """Hollow markers for published points of these registry methods on this backbone (ImageNet-1k only).
    ``x``: a column of published.csv (gmacs, keep_ratio, weight_sparsity_pct); ``colors`` overrides the
    report's per-method colours (figures that colour by method family)."""
    # the hub's current repository is ILSVRC/imagenet-1k; a local copy says name: imagenet-1k
    datasets = {str(d).rsplit("/", 1)[-1] for d in ctx.table.loc[ctx.table["backbone"] == backbone, "dataset"].dropna()}
    if PUBLISHED_DATASET not in datasets or x not in ctx.published:
        return False
    pub = ctx.published
    pub = pub[(pub["backbone"] == backbone) & pub["method"].isin(methods) & pub["top1"].notna() & pub[x].notna()]
    for r in pub.itertuples(index=False):
        # the look of the suite's label for this registry method (svite_d50 for svite), else a black circle
        labels = sorted(label for label, name in _registry_names(ctx).items() if name == r.method)
        st = ctx.styles.get(r.method) or (ctx.styles[labels[0]] if labels else {"color": "black", "marker": "o"})
        color = (colors or {}).get(r.method, st["color"])
        ax.plot(
            [getattr(r, x)],
            [r.top1],
            linestyle="none",
            marker=st.get("marker", "o"),
            markersize=9,
            markerfacecolor="none",
            markeredgecolor=color,
            markeredgewidth=1.5,
            zorder=5,
        )
    return not pub.empty


def _std_bars(data: pd.DataFrame) -> str:
    """Legend text naming the bars ``_lines`` draws (± std over seeds where two or more succeeded), n stated."""
    ns = sorted({int(n) for n in data["n_ok"] if n > 1})
    if not ns:
        return ""
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    return f"bars: ± 1 std over seeds ({n_text}{'; none at n = 1' if (data['n_ok'] == 1).any() else ''})"


def _finish(
    fig: Figure, axes: Any, ctx: FigureContext, stem: str, title: str, published: bool, bars: str = ""
) -> list[Path]:
    """Legend right of the panels (with a line naming the error bars, ``bars``), title, save."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if published:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgecolor="black",
                label="published (hollow)",
            )
        )
        labels.append("published (hollow)")
    if bars:
        handles.append(Line2D([], [], color="0.4", marker="|", markersize=12, linestyle="none", label=bars))
        labels.append(bars)
    method_legend(fig, handles, labels)
    fig.suptitle(title)
    fixed_layout(fig, rows=fig.axes[0].get_gridspec().nrows if fig.axes else 1)
    paths = save_figure(fig, ctx.out_dir / f"{stem}.png", ctx.out_dir / f"{stem}.pdf")
    fig.clear()
    return list(paths.values())


def _cost_accuracy(
    ctx: FigureContext, labels: list[str], published_methods: set[str], stem: str, title: str, xlabel: str
) -> list[Path]:
    """Top-1 vs GMACs, a panel per backbone, published points of ``published_methods`` as hollow markers."""
    data = _ok(ctx.summary, labels)
    backbones = sorted(data["backbone"].unique())
    if not backbones:
        return []
    with whitegrid(**{"font.size": 10}):
        fig, axes = _figure(len(backbones))
        published = False
        for ax, backbone in zip(axes, backbones):
            _lines(ax, data[data["backbone"] == backbone], "gmacs", ctx.styles)
            published |= _published(
                ax, ctx, backbone, published_methods | _names(ctx, _role(ctx, "reference")), "gmacs"
            )
            ax.set(title=backbone, xlabel=xlabel, ylabel="Top-1 accuracy (%)")
        return _finish(fig, axes, ctx, stem, title, published, _std_bars(data))


@register_figure(
    "dynamicvit_tradeoff",
    "DynamicViT-style top-1 vs GMACs across keep ratios (learned, controls, reference)",
    family="dynamicvit",
)
def dynamicvit_tradeoff(ctx: FigureContext) -> list[Path]:
    labels = _family(ctx, "dynamicvit")
    if not labels:
        return []
    return _cost_accuracy(
        ctx,
        labels + _role(ctx, "control", "reference"),
        _names(ctx, labels),
        "paper_dynamicvit_tradeoff",
        "Top-1 vs GMACs (DynamicViT, Fig. 1 style)",
        GMACS_LABEL,
    )


@register_figure("pruning_ablation", "learned vs control token selection: top-1 against measured GMACs")
def pruning_ablation(ctx: FigureContext) -> list[Path]:
    controls, learned = _role(ctx, "control"), _role(ctx, "learned")
    if not controls or not learned:
        return []
    # GMACs, not the keep ratio: EViT at keep 0.7 runs ~12 % more GMACs than static at 0.7, and a merging
    # method's keep ratio only sets its merge schedule (it keeps no fraction of tokens per stage)
    return _cost_accuracy(
        ctx,
        learned + controls + _role(ctx, "reference"),
        _names(ctx, learned + controls),  # e.g. DynamicViT's Table 4 static/random rows at rho 0.7's 2.9 GMACs
        "paper_pruning_ablation",
        "Learned vs control token selection",
        GMACS_LABEL,
    )


@register_figure(
    "token_pooling_curves",
    "Token Pooling-style cost-accuracy curves of the pooling variants and baselines",
    family="token_pooling",
)
def token_pooling_curves(ctx: FigureContext) -> list[Path]:
    pooling = _family(ctx, "token_pooling")
    if not pooling:
        return []
    labels = sorted(
        set(pooling) | set(_role(ctx, "learned", "control", "reference")) - set(_role(ctx, "weight_budget"))
    )
    return _cost_accuracy(
        ctx,
        labels,
        _names(ctx, pooling),
        "paper_token_pooling_curves",
        "Cost-accuracy of token downsampling (Token Pooling style)",
        GMACS_LABEL + ", clustering included",
    )


@register_figure(
    "svite_sparsity", "SViTE-style top-1 against sparsity, with measured and theoretical GMACs", family="svite"
)
def svite_sparsity(ctx: FigureContext) -> list[Path]:
    sparse = _family(ctx, "svite")
    if not sparse:
        return []
    references = _role(ctx, "reference")
    density = {**_param(ctx, "density"), **dict.fromkeys(references, 1.0)}
    data = _ok(ctx.summary, sparse + references).copy()
    data["sparsity_pct"] = [100.0 * (1.0 - density.get(m, float("nan"))) for m in data["method"]]
    data = data[data["sparsity_pct"].notna()]
    # one line per registry method across its density labels (svite_d50, svite_d70 -> svite)
    names = _registry_names(ctx)
    data["family"] = [names.get(m, m) for m in data["method"]]
    backbones = sorted(data["backbone"].unique())
    with whitegrid(**{"font.size": 10}):
        fig = Figure(figsize=(10.5, 4.0 * len(backbones)))
        FigureCanvasAgg(fig)
        grid = fig.subplots(len(backbones), 2, squeeze=False)
        # a line per registry method in the colour of its first label (its labels share a colour group); each
        # point in its own label's look (svite_d50, svite_d70: one hue, two markers)
        palette = {
            family: ctx.styles[sorted(labels)[0]]["color"] for family, labels in data.groupby("family")["method"]
        }
        published = False
        for (ax_s, ax_g), backbone in zip(grid, backbones):
            panel = data[data["backbone"] == backbone]
            for family, rows in panel.groupby("family", sort=True):
                rows = rows.sort_values(["sparsity_pct", "keep_ratio"])
                c = palette[family]
                xs, ys = rows["sparsity_pct"].to_numpy(dtype=float), rows["top1_mean"].to_numpy(dtype=float)
                err = rows["top1_std"].to_numpy(dtype=float)
                draw_error_bars(ax_s, xs, ys - err, ys + err, [c] * len(rows))
                ax_s.plot(xs, ys, color=c, linewidth=1.4)
                ax_g.plot(rows["gmacs"], ys, color=c, linewidth=1.4)
                theoretical = rows["theoretical_gmacs"].notna().any()
                if theoretical:
                    ax_g.plot(rows["theoretical_gmacs"], ys, color=c, linewidth=1.2, linestyle="--")
                for method, pts in rows.groupby("method", sort=True):
                    st = ctx.styles[method]
                    look = {
                        "color": st["color"],
                        "marker": st["marker"],
                        "markersize": st["markersize"],
                        "linestyle": "none",
                        "markeredgewidth": 0.6,
                        "zorder": 3,
                    }
                    ax_s.plot(pts["sparsity_pct"], pts["top1_mean"], label=method, markeredgecolor="white", **look)
                    ax_g.plot(pts["gmacs"], pts["top1_mean"], markeredgecolor="white", **look)
                    if theoretical:
                        ax_g.plot(pts["theoretical_gmacs"], pts["top1_mean"], markerfacecolor="none", **look)
                for r in rows[rows["keep_ratio"] < 1.0].itertuples(index=False):
                    ax_s.annotate(
                        f"keep {r.keep_ratio:g}",
                        (r.sparsity_pct, r.top1_mean),
                        textcoords="offset points",
                        xytext=(6, 0),
                        fontsize=7,
                        color="0.3",
                        va="center",
                    )
            published |= _published(ax_s, ctx, backbone, _names(ctx, sparse), "weight_sparsity_pct", colors=palette)
            ax_s.set(
                title=backbone, xlabel="sparsity (% of weights, heads or neurons removed)", ylabel="Top-1 accuracy (%)"
            )
            ax_g.set(title=backbone, xlabel=GMACS_LABEL, ylabel="Top-1 accuracy (%)")
        return _finish(
            fig,
            grid.flat,
            ctx,
            "paper_svite_sparsity",
            "Top-1 vs sparsity (SViTE style)\nright: GMACs measured (filled, solid) and nonzero-only (hollow, dashed)",
            published,
            _std_bars(data),
        )


def build_figures(ctx: FigureContext, only: list[str] | None = None) -> dict[str, list[Path]]:
    """Run the registered figures (all, or ``only``); figures with nothing to draw return []."""
    names = only or FIGURES.names()
    out = {}
    for name in names:
        out[name] = FIGURES.get(name).fn(ctx)
    return out
