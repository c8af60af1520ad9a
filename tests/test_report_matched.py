"""Matched-budget comparison and learned-vs-control ablation on small synthetic tables."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.report.matched import ABLATION_COLUMNS, MATCHED_COLUMNS, ablation, matched_budget
from bench.report.matched_render import ablation_markdown, matched_markdown, plot_ablation, plot_matched
from bench.results.collect import build_table

BB = "deit_tiny"
# method -> {keep_ratio: (gmacs, top1 at seed 0)}; every seed adds 0.5 * seed to top-1.
CURVES = {
    "dense": {1.0: (5.0, 80.0)},
    "learned": {0.5: (2.0, 74.0), 0.7: (3.0, 77.0), 0.9: (4.0, 79.0)},
    "static": {0.5: (2.0, 72.0), 0.7: (3.0, 75.0), 0.9: (4.0, 78.0)},
    "random": {0.5: (2.0, 70.0), 0.7: (3.0, 74.0)},
}


#: the roles the methods' records carry (the report selects by role, never by name)
ROLES = {"dense": "reference", "learned": "learned", "static": "control", "random": "control"}


def _row(method: str, ratio: float, seed: int, gmacs: float | None, top1: float | None, **over: Any) -> dict[str, Any]:
    row = {
        "suite": "t",
        "run_id": f"{method}-{ratio}-{seed}-{over.get('backbone', BB)}",
        "method": method,
        **{f"role_{r}": ROLES.get(method) == r for r in ("reference", "control", "learned")},
        "backbone": BB,
        "keep_ratio": ratio,
        "seed": seed,
        "dataset": "synthetic",
        "top1": top1,
        "gmacs_fvcore_1mac_eq_1flop": gmacs,
        "status": "ok",
    }
    row.update(over)
    return row


def _table(seeds: tuple[int, ...] = (0, 1, 2), curves: dict = CURVES, extra: list | None = None) -> pd.DataFrame:
    rows = [_row(m, k, s, g, t + 0.5 * s) for m, pts in curves.items() for k, (g, t) in pts.items() for s in seeds]
    return build_table(rows + (extra or []))


def _at(df: pd.DataFrame, method: str, budget: float) -> pd.Series:
    hit = df[(df["method"] == method) & np.isclose(df["budget_gmacs"], budget)]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_interpolates_between_keep_ratios() -> None:
    df = matched_budget(_table(), budgets=[2.5, 3.25])
    assert list(df.columns) == MATCHED_COLUMNS
    # seed s: learned 74 + s/2 at 2 GMACs, 77 + s/2 at 3 -> 75.5 + s/2 at 2.5; mean over seeds 0..2 adds 0.5.
    assert _at(df, "learned", 2.5)["top1_mean"] == pytest.approx(76.0)
    assert _at(df, "learned", 3.25)["top1_mean"] == pytest.approx(
        np.mean([np.interp(3.25, [3, 4], [77, 79]) + 0.5 * s for s in range(3)])
    )
    assert _at(df, "learned", 2.5)["n_seeds"] == 3


def test_no_extrapolation_and_single_point_match() -> None:
    df = matched_budget(_table(), budgets=[1.0, 3.5, 5.0 * (1 + 1e-12), 6.0])
    assert np.isnan(_at(df, "learned", 1.0)["top1_mean"]) and _at(df, "learned", 1.0)["n_seeds"] == 0
    assert np.isnan(_at(df, "random", 3.5)["top1_mean"])  # random stops at 3 GMACs
    assert _at(df, "dense", 5.0)["top1_mean"] == pytest.approx(80.5)  # one point, matched within 1e-9 relative
    assert np.isnan(_at(df, "dense", 3.5)["top1_mean"])
    assert df[np.isclose(df["budget_gmacs"], 6.0)]["top1_mean"].isna().all()
    assert df[np.isclose(df["budget_gmacs"], 6.0)]["best_method"].isna().all()


def test_default_budgets_span_the_overlap() -> None:
    df = matched_budget(_table())
    # Multi-point methods: learned/static reach [2, 4], random [2, 3]; dense (one point) does not count.
    assert np.allclose(sorted(df["budget_gmacs"].unique()), np.linspace(2.0, 3.0, 5))
    disjoint = {"a": {0.5: (1.0, 60.0), 0.7: (2.0, 65.0)}, "b": {0.5: (3.0, 70.0), 0.7: (4.0, 72.0)}}
    df = matched_budget(_table(curves=disjoint))
    assert np.allclose(sorted(df["budget_gmacs"].unique()), np.linspace(1.0, 4.0, 5))  # no overlap: union


def test_best_method_and_paired_difference() -> None:
    df = matched_budget(_table(), budgets=[2.0, 3.0])
    for budget, gap in ((2.0, -2.0), (3.0, -2.0)):
        assert (df[np.isclose(df["budget_gmacs"], budget)]["best_method"] == "learned").all()
        assert _at(df, "learned", budget)["diff_to_best"] == 0.0
        static = _at(df, "static", budget)
        # Same seed offsets cancel in the paired difference: exactly the gap, and a zero-width CI.
        assert static["diff_to_best"] == pytest.approx(gap)
        assert static["diff_ci_low"] == pytest.approx(gap) and static["diff_ci_high"] == pytest.approx(gap)
    first = df[np.isclose(df["budget_gmacs"], 2.0)]
    assert list(first["method"]) == ["learned", "static", "random", "dense"]  # -top1, NaN (dense) last
    assert (first["diff_to_best"].dropna() <= 0).all()


def test_ci_contains_mean_and_is_nan_for_one_seed() -> None:
    rng = np.random.default_rng(1)
    noisy = build_table(
        [
            _row(m, k, s, g, t + rng.normal(0, 1.0))
            for m, pts in CURVES.items()
            for k, (g, t) in pts.items()
            for s in range(6)
        ]
    )
    df = matched_budget(noisy, budgets=[2.5]).dropna(subset=["top1_mean"])
    assert (df["top1_ci_low"] <= df["top1_mean"]).all() and (df["top1_mean"] <= df["top1_ci_high"]).all()
    assert (df["top1_ci_low"] < df["top1_ci_high"]).all()
    one = matched_budget(_table(seeds=(0,)), budgets=[2.5])
    assert one[["top1_ci_low", "top1_ci_high", "diff_ci_low", "diff_ci_high"]].isna().all().all()
    assert one["top1_mean"].notna().sum() == 3


def test_bootstrap_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    noisy = build_table(
        [
            _row(m, k, s, g, t + rng.normal(0, 1.0))
            for m, pts in CURVES.items()
            for k, (g, t) in pts.items()
            for s in range(5)
        ]
    )
    pd.testing.assert_frame_equal(matched_budget(noisy, seed=3), matched_budget(noisy, seed=3))
    pd.testing.assert_frame_equal(ablation(noisy, seed=3), ablation(noisy, seed=3))
    assert not matched_budget(noisy, seed=3)["top1_ci_low"].equals(matched_budget(noisy, seed=4)["top1_ci_low"])


def test_ablation_paired_differences() -> None:
    df = ablation(_table())
    assert list(df.columns) == ABLATION_COLUMNS
    assert "dense" not in set(df["method"])
    row = df[(df["method"] == "learned") & (df["keep_ratio"] == 0.5) & (df["control"] == "static")].iloc[0]
    assert row["role"] == "learned" and row["n_pairs"] == 3
    assert row["diff_mean"] == pytest.approx(2.0)
    assert row["diff_ci_low"] == pytest.approx(2.0) and row["diff_ci_high"] == pytest.approx(2.0)
    vs_random = df[(df["method"] == "learned") & (df["control"] == "random")].set_index("keep_ratio")["diff_mean"]
    assert vs_random[0.5] == pytest.approx(4.0) and vs_random[0.7] == pytest.approx(3.0)
    assert np.isnan(vs_random[0.9])  # random was not run at 0.9: a hole, not a crash
    ctrl = df[df["role"] == "control"]
    assert set(ctrl["method"]) == {"static", "random"} and ctrl["control"].isna().all()
    assert list(df["keep_ratio"].unique()) == [0.9, 0.7, 0.5]
    only = ablation(_table(), learned=["learned"], controls=("static",))
    assert set(only["method"]) == {"learned", "static"} and set(only["control"].dropna()) == {"static"}


def test_markdown_renderers() -> None:
    text = matched_markdown(matched_budget(_table(), budgets=[2.0, 3.5]))
    lines = text.splitlines()
    assert lines[0].startswith("| Backbone") and set(lines[1]) <= set("|:-")
    assert "learned (best)" in text and "—" in text and "[" in text and "74.50" in text
    text = ablation_markdown(ablation(_table()))
    assert text.startswith("| Backbone") and "(best)" in text and "+2.00" in text and "[+2.00, +2.00]" in text
    assert matched_markdown(matched_budget(pd.DataFrame())).startswith("_No")
    assert ablation_markdown(ablation(pd.DataFrame())).startswith("_No")


def test_figures_written_and_byte_stable(tmp_path: Path) -> None:
    table = _table(
        extra=[
            _row(m, k, s, g * 4, t - 3 + 0.5 * s, backbone="deit_small", run_id=f"s{m}{k}{s}")
            for m, pts in CURVES.items()
            for k, (g, t) in pts.items()
            for s in range(3)
        ]
    )
    for plot, df in ((plot_matched, matched_budget(table)), (plot_ablation, ablation(table))):
        first = plot(df, tmp_path / "a")
        again = plot(df, tmp_path / "b")
        assert sorted(first) == sorted(again) and len(first) == 2
        for name, path in first.items():
            assert path.stat().st_size > 1000
            assert path.read_bytes() == again[name].read_bytes(), f"{name} is not byte-stable"


def test_failed_runs_and_empty_tables_do_not_raise(tmp_path: Path) -> None:
    failed = _row("learned", 0.5, 3, None, None, status="failed", error="CUDA OOM")
    assert matched_budget(_table(extra=[failed]), budgets=[2.0]).equals(matched_budget(_table(), budgets=[2.0]))
    for empty in (pd.DataFrame(), build_table([]), build_table([failed])):
        m, a = matched_budget(empty), ablation(empty)
        assert m.empty and list(m.columns) == MATCHED_COLUMNS
        assert a.empty and list(a.columns) == ABLATION_COLUMNS
        assert set(plot_matched(m, tmp_path)) == {"matched_budget.png", "matched_budget.pdf"}
        assert set(plot_ablation(a, tmp_path)) == {"ablation.png", "ablation.pdf"}
    # One method, one seed, one point: still a (CI-less) answer and a figure.
    lone = build_table([_row("learned", 0.5, 0, 2.0, 74.0)])
    m = matched_budget(lone)
    assert list(m["top1_mean"]) == [74.0] and m["top1_ci_low"].isna().all() and m["diff_to_best"].iloc[0] == 0.0
    assert ablation(lone)["control"].isna().all()
    plot_matched(m, tmp_path)
    plot_ablation(ablation(lone), tmp_path)


def test_ten_thousand_runs_are_fast() -> None:
    rng = np.random.default_rng(0)
    bb, meth, kr, sd = np.meshgrid(np.arange(4), np.arange(25), np.linspace(0.3, 0.9, 10), np.arange(10), indexing="ij")
    methods = np.array(["static", "random"] + [f"m{i:02d}" for i in range(23)])
    n = bb.size
    table = pd.DataFrame(
        {
            "backbone": np.array([f"vit{i}" for i in range(4)])[bb.ravel()],
            "method": methods[meth.ravel()],
            "keep_ratio": kr.ravel(),
            "seed": sd.ravel(),
            "status": "ok",
            "gmacs_fvcore_1mac_eq_1flop": (bb.ravel() + 1) * kr.ravel() * (1 + 0.01 * rng.random(n)),
            "top1": 60 + 20 * kr.ravel() + meth.ravel() * 0.1 + rng.normal(0, 0.5, n),
            "role_control": meth.ravel() < 2,
            "role_learned": meth.ravel() >= 2,
        }
    )
    assert len(table) == 10_000
    start = time.perf_counter()
    m, a = matched_budget(table), ablation(table)
    elapsed = time.perf_counter() - start
    assert m["top1_mean"].notna().all() and len(m) == 4 * 5 * 25
    assert len(a) == 4 * 10 * (23 * 2 + 2)
    assert elapsed < 10.0, f"matched_budget + ablation took {elapsed:.2f} s on 10,000 runs"
