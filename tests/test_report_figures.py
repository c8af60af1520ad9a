"""Paper figures, gallery and index: drawn from the results table alone, byte-stable, never crashing on holes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.cli import main
from bench.measure.kept_tokens import record_kept_tokens
from bench.methods import create_method
from bench.report.build import build_report
from bench.report.figures import FIGURES, FigureContext, _published, build_figures, load_published
from bench.report.gallery import plot_gallery
from bench.report.plots import pareto_front
from bench.report.style import method_styles
from bench.report.summary import summarize
from bench.results.collect import TABLE_PARQUET

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from report_10k import synthetic_table  # noqa: E402


@pytest.fixture(scope="module")
def table():
    return synthetic_table(600)


def ctx_for(table, out_dir):
    return FigureContext(table, summarize(table), out_dir, method_styles(table), load_published())


def test_every_paper_figure_draws_for_a_suite_with_its_methods(table, tmp_path):
    drawn = build_figures(ctx_for(table, tmp_path))
    assert set(drawn) == set(FIGURES.names())
    assert all(files and all(p.stat().st_size > 0 for p in files) for files in drawn.values()), drawn
    again = build_figures(ctx_for(table, tmp_path / "again"))
    for name, files in drawn.items():
        for a, b in zip(files, again[name]):
            assert a.read_bytes() == b.read_bytes(), f"{a.name} is not byte-stable"


def test_figures_with_nothing_to_draw_return_nothing(table, tmp_path):
    dense_only = table[table["method"] == "dense"]
    assert all(
        files == []
        for name, files in build_figures(ctx_for(dense_only, tmp_path)).items()
        if name != "dynamicvit_tradeoff"
    )


def test_published_points_only_where_backbone_and_dataset_match(table):
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ctx = ctx_for(table, Path("."))
    assert _published(ax, ctx, "deit_small_patch16_224", {"dynamicvit"}, "gmacs")  # README: 79.32 at 2.9 GMACs
    assert not _published(ax, ctx, "vit_small_patch16_224", {"dynamicvit"}, "gmacs")
    other = ctx_for(table.assign(dataset="canvas-digits"), Path("."))
    assert not _published(ax, other, "deit_small_patch16_224", {"dynamicvit"}, "gmacs")


def test_published_sheet_is_sourced_and_uses_registry_names_where_it_plots(table):
    from bench.methods import list_methods

    pub = load_published()
    assert pub["source"].notna().all() and (pub["source"].str.strip() != "").all()
    for column in ("keep_ratio", "top1", "top5", "gmacs", "params_m", "throughput_img_s", "weight_sparsity_pct"):
        assert pub[column].dtype.kind == "f", f"{column} holds non-numbers"
    assert ((pub["top1"].dropna() > 0) & (pub["top1"].dropna() < 100)).all()
    # rows on the harness's backbones and with a plottable x name registry methods, so they land on the
    # matching curves (descriptive names, e.g. ablation variants, are reference-only)
    registry = set(list_methods())
    plotted = pub[
        pub["backbone"].str.startswith("deit_")
        & ~pub["backbone"].str.contains(" ")
        & pub["top1"].notna()
        & pub["method"].isin(registry)
    ]
    assert {"dense", "dynamicvit", "static", "random", "svite", "s2vite", "svite_plus"} <= set(plotted["method"])
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ctx = ctx_for(table, Path("."))
    assert _published(ax, ctx, "deit_small_patch16_224", {"static", "random"}, "keep_ratio")  # Table 4, rho 0.7
    assert _published(ax, ctx, "deit_base_patch16_224", {"svite", "s2vite"}, "weight_sparsity_pct")
    assert not _published(ax, ctx, "deit_tiny_patch16_224", {"svite"}, "weight_sparsity_pct")


def test_keep_ratio_labels_merge_points_that_would_overlap():
    import pandas as pd

    from bench.report.plots import tradeoff_figure

    rows = [("dense", 1.0, 4.6, 80.0)] + [
        (m, 0.7, g, a) for m, g, a in [("a", 2.90, 79.0), ("b", 2.91, 78.0), ("c", 2.95, 77.5)]
    ]
    rows += [("a", 0.5, 2.2, 77.0), ("b", 0.5, 3.6, 76.0)]  # one ratio, far apart: two labels
    summary = pd.DataFrame(
        [
            {
                "backbone": "deit_small_patch16_224",
                "method": m,
                "keep_ratio": k,
                "gmacs": g,
                "top1_mean": a,
                "top1_std": 0.2,
                "n_ok": 2,
                "throughput": 1.0,
            }
            for m, k, g, a in rows
        ]
    )
    fig = tradeoff_figure(summary, "t")
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == ["keep 0.5", "keep 0.5", "keep 0.7"]  # none for keep 1.0 (dense)


def test_pareto_front():
    import pandas as pd

    x = pd.Series([1.0, 2.0, 3.0, 2.5])
    y = pd.Series([70.0, 75.0, 74.0, 76.0])
    assert list(pareto_front(x, y, larger_x_better=False)) == [0, 1, 3]
    assert list(pareto_front(x, y, larger_x_better=True)) == [2, 3]


@pytest.mark.slow  # ~12 s: two whole reports of 600 runs; fast loop: test_collect_report.py::test_report
def test_full_report_on_a_large_table_with_holes(table, tmp_path):
    suite = tmp_path / "big"
    suite.mkdir()
    table.to_parquet(suite / TABLE_PARQUET)
    paths = build_report(suite, paper_figures=True)
    assert {
        "index.md",
        "report.md",
        "results.tex",
        "paper_svite_sparsity.png",
        "paper_token_pooling_curves.png",
        "paper_dynamicvit_tradeoff.png",
        "paper_pruning_ablation.png",
    } <= set(paths)
    assert "failed or missing run(s)" in paths["index.md"].read_text()
    serial = build_report(suite, tmp_path / "serial", workers=1, paper_figures=True)
    for name in ("tradeoff_top1_vs_gmacs.png", "paper_svite_sparsity.pdf", "results.tex"):
        assert paths[name].read_bytes() == serial[name].read_bytes()


def test_gallery_from_recorded_kept_tokens(tiny_vit, tmp_path):
    entries = []
    for name in ("token_pooling", "grid_pool", "static"):
        model = tiny_vit(8)
        method = create_method(name, 0.5)
        method.apply(model)
        path = record_kept_tokens(model.eval(), method, torch.randn(3, 1, 32, 32), tmp_path / f"{name}.npz")
        data = np.load(path)
        assert data["masks"].shape == (3, 3, 8, 8) and data["images"].dtype == np.uint8
        assert ("groups" in data.files) == (name != "static")  # pooling methods record their merged groups
        entries.append((name, path))
    out = plot_gallery(entries, tmp_path / "gallery.png")
    assert out.stat().st_size > 0
    assert plot_gallery(entries, tmp_path / "again.png").read_bytes() == out.read_bytes()


def test_figures_cli(table, tmp_path, capsys):
    assert main(["figures", "--list"]) == 0
    assert "svite_sparsity" in capsys.readouterr().out
    suite = tmp_path / "results" / "synthetic"
    suite.mkdir(parents=True)
    table.to_parquet(suite / TABLE_PARQUET)
    root = str(tmp_path / "results")
    assert main(["figures", "synthetic", "--results", root, "--only", "svite_sparsty"]) == 2
    assert "did you mean 'svite_sparsity'" in capsys.readouterr().err
    assert main(["figures", "synthetic", "--results", root, "--only", "svite_sparsity"]) == 0
    assert (suite / "report" / "paper_svite_sparsity.png").is_file()


# ------------------------------------------------------------------ the plotted data, read back from the artists
BACKBONES = ("deit_small_patch16_224", "vit_tiny_patch16_224")
#: label -> (role, keep ratios, seeds); gamma has one seed (no error bar), delta only failed runs (not drawn)
SPECS = {
    "dense": ("reference", [1.0], 3),
    "alpha": ("learned", [0.5, 0.7], 3),
    "beta": ("control", [0.5, 0.7], 3),
    "gamma": ("learned", [0.6], 1),
    "delta": ("control", [0.5], 2),
}


def runs_table():
    """Runs with values distinct in every column a figure could read by mistake (top-5, EMA, throughput,
    speed-up differ from top-1 and GMACs), seeds that spread, a failed run among good ones, and a method whose
    runs all failed."""
    import pandas as pd

    from bench.roles import ROLES, role_column

    rows = []
    for bi, backbone in enumerate(BACKBONES):
        for mi, (method, (role, ratios, seeds)) in enumerate(SPECS.items()):
            for k in ratios:
                gmacs = round((1 + 2 * bi) * (0.35 + k * (0.9 + 0.13 * mi)), 4)
                for s in range(seeds):
                    failed = method == "delta" or (method == "alpha" and k == 0.5 and s == 2 and bi == 0)
                    top1 = 55 + 9 * bi + 2.7 * mi + 17 * k + (-0.6, 0.2, 1.3)[s] * (1 + 0.4 * mi)
                    speedup = 1.0 if method == "dense" else round(1 / k + 0.07 * mi + 0.01 * s, 4)
                    rows.append(
                        {
                            "suite": "figs",
                            "run_id": f"{method}__{backbone}__k{k:.2f}__s{s}",
                            "method": method,
                            "method_name": method,
                            "backbone": backbone,
                            "keep_ratio": k,
                            "seed": s,
                            "dataset": "canvas-digits",
                            "status": "failed" if failed else "ok",
                            **{role_column(r): r == role for r in ROLES},
                            "top1": None if failed else top1,
                            "top5": None if failed else top1 + 13.1,
                            "top1_ema": None if failed else top1 - 4.2,
                            "gmacs_fvcore_1mac_eq_1flop": None if failed else gmacs,
                            "throughput_img_s": None if failed else round(3000 / gmacs + 11 * s + 5 * mi, 3),
                            "speedup_vs_dense": None if failed else speedup,
                            "speedup_ci_low": None if failed else speedup - 0.05 - 0.01 * mi,
                            "speedup_ci_high": None if failed else speedup + 0.08 + 0.01 * mi,
                            "speedup_unreliable": method == "beta" and k == 0.7 and bi == 1,
                        }
                    )
    return pd.DataFrame(rows)


def _rgba(c):
    from matplotlib.colors import to_rgba

    return tuple(round(v, 6) for v in to_rgba(c))


def _legend_styles(fig):
    """Method -> (colour, marker) as the figure's legend shows them (the reference labelled '... (reference)')."""
    legend = fig.legends[0]
    return {
        t.get_text().removesuffix(" (reference)"): (_rgba(h.get_color()), h.get_marker())
        for t, h in zip(legend.get_texts(), legend.legend_handles)
        if t.get_text() != "Pareto front" and "unreliable" not in t.get_text() and " bars: " not in t.get_text()
    }


def _segments(ax, vertical: bool):
    """Line-collection segments of a panel as ((x0, y0, x1, y1), colour), vertical or horizontal ones."""
    from matplotlib.collections import LineCollection

    out = []
    for coll in ax.collections:
        if not isinstance(coll, LineCollection):
            continue
        colors = coll.get_colors()
        for i, seg in enumerate(coll.get_segments()):
            (x0, y0), (x1, y1) = seg
            if (x0 == x1) == vertical and (y0 == y1) != vertical:
                out.append(((round(x0, 6), round(y0, 6), round(x1, 6), round(y1, 6)), _rgba(colors[i % len(colors)])))
    return sorted(out)


def _panel(fig, backbone):
    return next(ax for ax in fig.axes if ax.get_title() == backbone)


def test_summary_is_the_seed_statistics_of_the_runs_top1():
    """What the figures plot as y and error bars: mean and sample std over a group's successful seeds."""
    table = runs_table()
    summary = summarize(table).set_index(["backbone", "method", "keep_ratio"])
    ok = table[table["status"] == "ok"].groupby(["backbone", "method", "keep_ratio"])["top1"]
    expected = ok.agg(["mean", "std", "count"])
    got = summary.loc[expected.index]
    assert np.allclose(got["top1_mean"], expected["mean"])
    assert np.allclose(got["top1_std"].fillna(-1), expected["std"].fillna(-1))  # one seed: no std
    assert (got["n_ok"] == expected["count"]).all()
    assert summary.loc[(BACKBONES[0], "alpha", 0.5), "n_runs"] == 3  # the failed seed counts as a run only
    assert (summary.xs("delta", level="method")["n_ok"] == 0).all()


@pytest.mark.parametrize("x", ["gmacs", "throughput", "speedup"])
def test_tradeoff_figure_plots_every_method_at_its_x_and_mean_top1_with_seed_std_bars(x):
    """Read back from the artists of each backbone's panel: every method of the summary that has successful runs is
    one line (identified by its legend colour and marker) through (its x column, its top1_mean) sorted by x; every
    point with two or more seeds has a vertical bar of +-top1_std in its colour, one seed none; the reference has a
    dotted line at its top-1; the grey step line is the Pareto front; speed-ups carry their CI as horizontal bars,
    and points whose timing is unreliable get a red ring."""
    from bench.report.plots import AXES, UNRELIABLE_FLAGS, tradeoff_figure

    summary = summarize(runs_table())
    column = AXES[x][0]
    fig = tradeoff_figure(summary, "t", x=x)
    styles = _legend_styles(fig)
    drawn = summary[(summary["n_ok"] > 0) & summary[column].notna() & summary["top1_mean"].notna()]
    assert set(styles) == set(drawn["method"]) == set(SPECS) - {"delta"}  # all-failed methods are not drawn
    assert len({s for s in styles.values()}) == len(styles)  # one look per method
    # the legend says what the bars are, with n: top-1 std over seeds, and on the speed-up axis its interval
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    ns = sorted({int(n) for n in drawn["n_ok"] if n > 1})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    assert f"top-1 bars: ± 1 std over seeds ({n_text})" in texts
    assert any(t.startswith("speed-up bars: ") for t in texts) == (x == "speedup")
    assert not any("95" in t for t in texts) or (drawn.get("speedup_interval") == "t95").any()
    for backbone in BACKBONES:
        ax, data = _panel(fig, backbone), drawn[drawn["backbone"] == backbone]
        for method, rows in data.groupby("method"):
            color, marker = styles[method]
            lines = [ln for ln in ax.lines if ln.get_marker() == marker and _rgba(ln.get_color()) == color]
            assert len(lines) == 1, (backbone, method, len(lines))
            rows = rows.sort_values(column, kind="stable")
            assert np.allclose(lines[0].get_xdata(), rows[column]), (backbone, method)
            assert np.allclose(lines[0].get_ydata(), rows["top1_mean"]), (backbone, method)
        bars = _segments(ax, vertical=True)
        expected = sorted(
            (
                (
                    round(r[column], 6),
                    round(r.top1_mean - r.top1_std, 6),
                    round(r[column], 6),
                    round(r.top1_mean + r.top1_std, 6),
                ),
                styles[r.method][0],
            )
            for _, r in data.iterrows()
            if r.n_ok > 1 and r.top1_std > 0
        )
        assert len(bars) == len(expected) and all(
            np.allclose(a[0], b[0], atol=1e-5) and a[1] == b[1] for a, b in zip(bars, expected)
        ), (bars, expected)
        reference = data[data["method"] == "dense"]["top1_mean"].tolist()
        hlines = [ln for ln in ax.lines if ln.get_marker() in (None, "None", "") and ln.get_linestyle() == ":"]
        assert [ln.get_ydata()[0] for ln in hlines] == pytest.approx(reference)
        # the Pareto front: exactly the drawn points no other point beats on both axes
        front = [ln for ln in ax.lines if ln.get_drawstyle() == "steps-post"]
        larger_better = AXES[x][2]
        pts = list(zip(data[column], data["top1_mean"]))

        def beaten(p, pts=pts, larger_better=larger_better):
            return any(
                (q[0] > p[0] if larger_better else q[0] < p[0]) and q[1] >= p[1] or q[0] == p[0] and q[1] > p[1]
                for q in pts
            )

        assert sorted(zip(front[0].get_xdata(), front[0].get_ydata())) == sorted(p for p in pts if not beaten(p))
        # the speed-up's confidence interval, horizontal at the point's top-1
        ci = _segments(ax, vertical=False)
        if x == "speedup":
            want = sorted(
                (r.speedup_ci_low, r.top1_mean, r.speedup_ci_high, r.top1_mean)
                for _, r in data.iterrows()
                if r.speedup_ci_high > r.speedup_ci_low
            )
            assert len(ci) == len(want) > 0 and np.allclose([s[0] for s in ci], want, atol=1e-5)
        else:
            assert ci == []
        rings = [
            ln
            for ln in ax.lines
            if ln.get_markerfacecolor() == "none" and ln.get_marker() == "o" and ln.get_linestyle() in ("None", "none")
        ]
        flagged = (
            data[data[[f for f in UNRELIABLE_FLAGS.get(x, ()) if f in data]].any(axis=1)]
            if x in UNRELIABLE_FLAGS
            else data.iloc[:0]
        )
        assert len(rings) == (0 if flagged.empty else 1)
        if rings:
            assert np.allclose(sorted(zip(*rings[0].get_data())), sorted(zip(flagged[column], flagged["top1_mean"])))
    fig.clear()


@pytest.mark.parametrize("x", ["gmacs", "keep_ratio"])
def test_paper_figure_lines_put_each_method_at_its_x_and_mean_top1(x):
    """The lines every cost-accuracy paper figure draws per panel (bench.report.figures._lines), whichever methods
    a figure selects: one line per method labelled with it, through (x, top1_mean) sorted by x, bars of +-std
    where two or more seeds succeeded."""
    from bench.report.figures import _lines

    summary = summarize(runs_table())
    data = summary[(summary["backbone"] == BACKBONES[1]) & (summary["n_ok"] > 0)]
    styles = method_styles(data)
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _lines(ax, data, x, styles)
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert set(lines) == set(data["method"])
    for method, rows in data.groupby("method"):
        rows = rows.sort_values(x, kind="stable")
        assert np.allclose(lines[method].get_xdata(), rows[x]) and np.allclose(
            lines[method].get_ydata(), rows["top1_mean"]
        )
        assert _rgba(lines[method].get_color()) == _rgba(styles[method]["color"])
    bars = sorted(s[0] for s in _segments(ax, vertical=True))
    expected = sorted(
        (r[x], r.top1_mean - r.top1_std, r[x], r.top1_mean + r.top1_std)
        for _, r in data.iterrows()
        if r.n_ok > 1 and r.top1_std > 0
    )
    assert np.allclose(bars, expected, atol=1e-5)


def test_merging_methods_get_no_keep_ratio_label():
    """A merging method's keep ratio is a setting mapped to its r, not a share of tokens kept: the GMACs figure
    labels the clusters of token-keeping methods with "keep r" and never a merging method's points."""
    from bench.report.plots import tradeoff_figure
    from bench.roles import role_column

    table = runs_table()
    labelled = {}
    for merging in (False, True):
        t = table.copy()
        t.loc[t["method"] == "alpha", role_column("merging")] = merging
        t.loc[t["method"] == "alpha", role_column("learned")] = not merging
        t = t[t["method"].isin(["dense", "alpha"])]
        fig = tradeoff_figure(summarize(t), "t", x="gmacs")
        labelled[merging] = [a.get_text() for ax in fig.axes for a in ax.texts if a.get_text().startswith("keep")]
    assert labelled[False] and not labelled[True]
