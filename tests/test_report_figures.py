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
from bench.methods import create_method
from bench.report.build import build_report
from bench.report.figures import FIGURES, FigureContext, _published, build_figures, load_published
from bench.report.gallery import plot_gallery, record_kept_tokens
from bench.report.plots import method_styles, pareto_front
from bench.report.summary import summarize
from bench.results.collect import TABLE_PARQUET

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from report_10k import synthetic_table  # noqa: E402


@pytest.fixture(scope="module")
def table():
    return synthetic_table(600)


def ctx_for(table, out_dir):
    return FigureContext(table, summarize(table), out_dir, method_styles(sorted(table["method"].unique())),
                         load_published())


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
    assert all(files == [] for name, files in build_figures(ctx_for(dense_only, tmp_path)).items()
               if name != "dynamicvit_tradeoff")


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
    plotted = pub[pub["backbone"].str.startswith("deit_") & ~pub["backbone"].str.contains(" ")
                  & pub["top1"].notna() & pub["method"].isin(registry)]
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

    rows = [("dense", 1.0, 4.6, 80.0)] + [(m, 0.7, g, a) for m, g, a in
                                          [("a", 2.90, 79.0), ("b", 2.91, 78.0), ("c", 2.95, 77.5)]]
    rows += [("a", 0.5, 2.2, 77.0), ("b", 0.5, 3.6, 76.0)]  # one ratio, far apart: two labels
    summary = pd.DataFrame([{"backbone": "deit_small_patch16_224", "method": m, "keep_ratio": k, "gmacs": g,
                             "top1_mean": a, "top1_std": 0.2, "n_ok": 2, "throughput": 1.0} for m, k, g, a in rows])
    fig = tradeoff_figure(summary, "t")
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == ["keep 0.5", "keep 0.5", "keep 0.7"]  # none for keep 1.0 (dense)


def test_report_commands_import_seaborn_without_scipy_stats():
    import subprocess

    code = ("import sys; from bench.cli import _import_seaborn_for_reports as f; f(); "
            "assert 'seaborn' in sys.modules and sys.modules.get('scipy.stats') is None, sorted(sys.modules); "
            "import scipy.stats, seaborn; print(scipy.stats.norm.cdf(0.0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0.5"  # scipy still imports normally afterwards


def test_pareto_front():
    import pandas as pd

    x = pd.Series([1.0, 2.0, 3.0, 2.5])
    y = pd.Series([70.0, 75.0, 74.0, 76.0])
    assert list(pareto_front(x, y, larger_x_better=False)) == [0, 1, 3]
    assert list(pareto_front(x, y, larger_x_better=True)) == [2, 3]


def test_full_report_on_a_large_table_with_holes(table, tmp_path):
    suite = tmp_path / "big"
    suite.mkdir()
    table.to_parquet(suite / TABLE_PARQUET)
    paths = build_report(suite, paper_figures=True)
    assert {"index.md", "report.md", "results.tex", "paper_svite_sparsity.png", "paper_token_pooling_curves.png",
            "paper_dynamicvit_tradeoff.png", "paper_pruning_ablation.png"} <= set(paths)
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
