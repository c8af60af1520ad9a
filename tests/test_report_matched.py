"""Matched-budget comparison and learned-vs-control ablation on small synthetic tables: compared at matched
measured GMACs, paired by seed, t-intervals from three seeds on and ranges at two, each with its n."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.intervals import interval_cell, intervals_caption
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


def _noisy(n_seeds: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return build_table(
        [
            _row(m, k, s, g, t + rng.normal(0, 1.0))
            for m, pts in CURVES.items()
            for k, (g, t) in pts.items()
            for s in range(n_seeds)
        ]
    )


def test_t_interval_over_seeds_from_three_seeds_range_at_two() -> None:
    """Intervals are two-sided 95 % t-intervals over seeds (scipy's), only from n = 3 on; n = 2 carries its
    range (min, max) and no interval, n = 1 neither."""
    noisy = _noisy(5)
    df = matched_budget(noisy, budgets=[2.5]).dropna(subset=["top1_mean"])
    learned = noisy[noisy["method"] == "learned"].sort_values(["seed", "gmacs_fvcore_1mac_eq_1flop"])
    per_seed = learned.groupby("seed").apply(
        lambda r: np.interp(2.5, r["gmacs_fvcore_1mac_eq_1flop"], r["top1"]), include_groups=False
    )
    want = stats.t.interval(0.95, len(per_seed) - 1, loc=per_seed.mean(), scale=stats.sem(per_seed))
    row = _at(df, "learned", 2.5)
    assert row["n_seeds"] == 5 and row["top1_mean"] == pytest.approx(per_seed.mean())
    assert (row["top1_ci_low"], row["top1_ci_high"]) == pytest.approx(want)
    assert (row["top1_min"], row["top1_max"]) == pytest.approx((per_seed.min(), per_seed.max()))
    # the paired gap to the best: the t-interval of the per-seed differences
    static = _at(df, "static", 2.5)
    st = noisy[noisy["method"] == "static"].sort_values(["seed", "gmacs_fvcore_1mac_eq_1flop"])
    st_seed = st.groupby("seed").apply(
        lambda r: np.interp(2.5, r["gmacs_fvcore_1mac_eq_1flop"], r["top1"]), include_groups=False
    )
    best = per_seed if row["best_method"] == "learned" else st_seed
    d = st_seed - best
    assert static["n_pairs"] == 5 and static["diff_to_best"] == pytest.approx(d.mean())
    if d.std() > 0:
        want = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
        assert (static["diff_ci_low"], static["diff_ci_high"]) == pytest.approx(want)
    # n = 3, by hand: mean ± t(0.975, 2) s / sqrt(3), t(0.975, 2) = 4.302653
    three = _noisy(3)
    row = _at(matched_budget(three, budgets=[3.0]), "static", 3.0)
    y = three[(three["method"] == "static") & (three["keep_ratio"] == 0.7)].sort_values("seed")["top1"].to_numpy()
    half = 4.302653 * y.std(ddof=1) / np.sqrt(3)
    assert row["n_seeds"] == 3 and (row["top1_ci_low"], row["top1_ci_high"]) == pytest.approx(
        (y.mean() - half, y.mean() + half), rel=1e-6
    )
    two = matched_budget(_noisy(2), budgets=[2.5]).dropna(subset=["top1_mean"])
    assert (two["n_seeds"] == 2).all() and two[["top1_ci_low", "top1_ci_high"]].isna().all().all()
    assert (two["top1_min"] < two["top1_max"]).all()
    one = matched_budget(_table(seeds=(0,)), budgets=[2.5])
    assert one[["top1_ci_low", "top1_ci_high", "diff_ci_low", "diff_ci_high"]].isna().all().all()
    assert one["top1_mean"].notna().sum() == 3


def test_results_are_deterministic() -> None:
    noisy = _noisy(5, seed=2)
    pd.testing.assert_frame_equal(matched_budget(noisy), matched_budget(noisy))
    pd.testing.assert_frame_equal(ablation(noisy), ablation(noisy))


#: EViT-like: at each keep ratio 12 % more GMACs than static (a fused token, pruning inside the block)
EVIT_LIKE = {
    "evit": {0.5: (2.24, 75.0), 0.7: (3.36, 77.6)},
    "static": {0.5: (2.0, 73.0), 0.7: (3.0, 76.0), 0.9: (4.0, 78.0)},
}


def test_ablation_compares_at_matched_gmacs_not_at_equal_keep_ratio() -> None:
    """The learned method at keep 0.7 (3.36 GMACs) is compared with static read at 3.36 GMACs (between its keep
    0.7 and 0.9), not with static at keep 0.7 (3.0 GMACs): the latter would credit evit with +1.6 pp, the
    matched difference is 77.6 - 76.72 = +0.88 pp."""
    roles = {**ROLES, "evit": "learned"}
    rows = [
        {**_row(m, k, s, g, t + 0.5 * s), **{f"role_{r}": roles[m] == r for r in ("reference", "control", "learned")}}
        for m, pts in EVIT_LIKE.items()
        for k, (g, t) in pts.items()
        for s in range(3)
    ]
    df = ablation(build_table(rows))
    mine = df[df["anchor"] == "learned"].set_index("keep_ratio")
    assert set(mine.index) == {0.5, 0.7} and (mine["control"] == "static").all()
    for k, (g, t) in EVIT_LIKE["evit"].items():
        r = mine.loc[k]
        control = np.interp(g, [2.0, 3.0, 4.0], [73.0, 76.0, 78.0])  # per seed + 0.5 s on both sides: cancels
        assert r["n_pairs"] == 3 and r["anchor_gmacs"] == pytest.approx(g)
        assert r["learned_gmacs"] == pytest.approx(g)
        assert abs(r["control_gmacs"] - r["learned_gmacs"]) <= 0.02 * r["learned_gmacs"]  # compared GMACs within 2 %
        assert r["diff_mean"] == pytest.approx(t - control)
        assert r["control_top1_mean"] == pytest.approx(control + 0.5)
        assert r["diff_mean"] != pytest.approx(t - EVIT_LIKE["static"][k][1])  # not the equal-keep-ratio gap
    assert mine.loc[0.7, "diff_mean"] == pytest.approx(77.6 - 76.72)
    # static's own settings as anchors: evit read at 3.0 GMACs (between its 2.24 and 3.36); 2.0 and 4.0 are
    # outside evit's measured GMACs: stated, not extrapolated
    theirs = df[df["anchor"] == "control"].set_index("keep_ratio")
    assert theirs.loc[0.7, "diff_mean"] == pytest.approx(np.interp(3.0, [2.24, 3.36], [75.0, 77.6]) - 76.0)
    for k in (0.5, 0.9):
        assert theirs.loc[k, "n_pairs"] == 0 and np.isnan(theirs.loc[k, "diff_mean"])
        assert (theirs.loc[k, "other_gmacs_min"], theirs.loc[k, "other_gmacs_max"]) == pytest.approx((2.24, 3.36))
    assert theirs.loc[0.9, "anchor_top1_mean"] == pytest.approx(78.5)  # its own top-1 still shown
    paired = df[df["n_pairs"] > 0]
    assert np.allclose(paired["learned_gmacs"], paired["control_gmacs"], rtol=0.02)
    text = ablation_markdown(df)
    assert "evit keep 0.7" in text and "+0.88" in text and "+1.60" not in text
    assert "not compared: evit measured at 2.24–3.36 GMACs only" in text
    assert "| static keep 0.9 | 4.00 | — | 78.50 | — |" in text


def test_ablation_pairs_by_seed() -> None:
    """Differences pair runs of one seed: a seed only one side has drops out (n_pairs), and a seed effect shared
    by both sides cancels (zero spread), where unpaired means would not."""
    offsets = {0: 0.0, 1: 3.0, 2: -2.0, 3: 5.0}
    rows = [
        _row(m, k, s, g, t + offsets[s])
        for m, seeds in (("learned", (0, 1, 2)), ("static", (1, 2, 3)))
        for k, (g, t) in CURVES[m].items()
        for s in seeds
    ]
    df = ablation(build_table(rows))
    r = df[(df["anchor"] == "learned") & (df["keep_ratio"] == 0.7)].iloc[0]
    assert r["n_pairs"] == 2 and r["diff_mean"] == pytest.approx(2.0)
    assert (r["diff_min"], r["diff_max"]) == pytest.approx((2.0, 2.0))
    assert np.isnan(r["diff_ci_low"])  # two pairs: a range, no interval


def test_ablation_defaults_and_holes() -> None:
    df = ablation(_table())
    assert list(df.columns) == ABLATION_COLUMNS
    assert "dense" not in set(df["learned"]) | set(df["control"])
    assert set(df["learned"]) == {"learned"} and set(df["control"]) == {"static", "random"}
    row = df[(df["anchor"] == "learned") & (df["keep_ratio"] == 0.5) & (df["control"] == "static")].iloc[0]
    assert row["n_pairs"] == 3 and row["diff_mean"] == pytest.approx(2.0)
    assert row["diff_ci_low"] == pytest.approx(2.0) and row["diff_ci_high"] == pytest.approx(2.0)
    vs_random = df[(df["anchor"] == "learned") & (df["control"] == "random")].set_index("keep_ratio")["diff_mean"]
    assert vs_random[0.5] == pytest.approx(4.0) and vs_random[0.7] == pytest.approx(3.0)
    assert np.isnan(vs_random[0.9])  # random stops at 3 GMACs: a stated hole, not a crash or an extrapolation
    # a control setting at the very GMACs of a learned one is the same comparison: one row
    assert not (df["anchor"] == "control").any()
    only = ablation(_table(), learned=["learned"], controls=("static",))
    assert set(only["learned"]) == {"learned"} and set(only["control"]) == {"static"}


def test_markdown_states_n_and_names_the_interval() -> None:
    text = matched_markdown(matched_budget(_table(), budgets=[2.0, 3.5]))
    caption, table = text.split("\n\n", 1)
    lines = table.splitlines()
    assert lines[0].startswith("| Backbone") and set(lines[1]) <= set("|:-")
    assert "95 % t-interval" in caption and "paired by seed" in caption
    assert "learned (best)" in text and "—" in text and "[" in text and "74.50" in text and "(n = 3)" in text
    assert "95" not in table  # the caption names the level; headers say "interval"
    text = ablation_markdown(ablation(_table()))
    assert "+2.00" in text and "[+2.00, +2.00] (n = 3)" in text and "matched measured GMACs" in text
    # two seeds: no 95 % claim anywhere, each cell "n = 2, range [a, b]"
    noisy = _noisy(2)
    for text in (matched_markdown(matched_budget(noisy, budgets=[2.5])), ablation_markdown(ablation(noisy))):
        assert "95" not in text and "t-interval" not in text and "CI" not in text
        assert "n = 2, range [" in text and "Intervals: n = 2: the range" in text
    assert interval_cell(2, np.nan, np.nan, 73.5, 74.0) == "n = 2, range [73.50, 74.00]"
    assert interval_cell(1, np.nan, np.nan, 74.0, 74.0) == "n = 1"
    assert interval_cell(3, 1.0, 2.0, 1.2, 1.8, signed=True) == "[+1.00, +2.00] (n = 3)"
    assert intervals_caption([1, 2, 4]).count("n = ") == 2 and "95 % t-interval" in intervals_caption([4])
    assert matched_markdown(matched_budget(pd.DataFrame())).startswith("_No")
    assert ablation_markdown(ablation(pd.DataFrame())).startswith("_No")


def _capture(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[dict[str, Any]]:
    """Record every figure's title, legend texts and panels (x label, lines) as ``module`` saves it."""
    seen: list[dict[str, Any]] = []
    real = module.save_figure

    def save(fig: Any, *paths: Any) -> Any:
        panels = [
            {
                "xlabel": ax.get_xlabel(),
                "title": ax.get_title(),
                "lines": {ln.get_label(): np.asarray(ln.get_xdata(), dtype=float) for ln in ax.lines},
                "bars": [seg for c in ax.collections for seg in getattr(c, "get_segments", list)()],
            }
            for ax in fig.axes
        ]
        legends = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        seen.append({"title": fig._suptitle.get_text() if fig._suptitle else "", "legend": legends, "axes": panels})
        return real(fig, *paths)

    monkeypatch.setattr(module, "save_figure", save)
    return seen


def test_figures_name_their_bars_and_claim_no_95_at_two_seeds(tmp_path: Path, monkeypatch) -> None:
    import bench.report.matched_render as render

    seen = _capture(monkeypatch, render)
    plot_matched(matched_budget(_noisy(2)), tmp_path)
    plot_ablation(ablation(_noisy(2)), tmp_path)
    plot_ablation(ablation(_noisy(4)), tmp_path / "four")
    two_matched, two_ablation, four = seen
    for fig in (two_matched, two_ablation):
        assert "95" not in fig["title"] + " ".join(fig["legend"])
        assert "bars over seeds (n = 2): range" in fig["legend"]
    assert "bars over seeds (n = 4): 95 % t-interval" in four["legend"]
    # the ablation: a panel per backbone and control, Δ drawn at the GMACs both sides were read at
    abl = ablation(_noisy(2))
    panels = {ax["title"]: ax for ax in two_ablation["axes"]}
    assert set(panels) == {f"{BB}\nvs static", f"{BB}\nvs random"}
    for control, ax in ((c, panels[f"{BB}\nvs {c}"]) for c in ("static", "random")):
        rows = abl[(abl["control"] == control) & (abl["n_pairs"] > 0)].sort_values("learned_gmacs")
        xs = [x for label, x in ax["lines"].items() if len(x) == len(rows) and len(x) > 1]
        assert any(np.allclose(x, rows["learned_gmacs"]) for x in xs)
        # range bars at n = 2: from the pair's min to its max difference
        ends = sorted((round(seg[0][1], 6), round(seg[1][1], 6)) for seg in ax["bars"])
        want = sorted((round(a, 6), round(b, 6)) for a, b in zip(rows["diff_min"], rows["diff_max"]) if b > a)
        assert ends == want


def test_paper_pruning_ablation_draws_against_gmacs_and_no_merging_method_on_a_keep_ratio_axis(
    tmp_path: Path, monkeypatch
) -> None:
    """A merging method (ToMe: its keep ratio maps to r) has no keep-ratio axis: no paper figure draws it on one,
    and the ablation figure puts every method at its measured GMACs."""
    import bench.report.figures as figures
    from bench.report.figures import FigureContext, build_figures, load_published
    from bench.report.style import method_styles
    from bench.report.summary import summarize

    curves = {**CURVES, "merger": {0.5: (2.3, 73.0), 0.7: (3.4, 76.0)}}
    roles = {**ROLES, "merger": "learned"}
    rows = [
        {
            **_row(m, k, s, g, t + 0.5 * s),
            **{f"role_{r}": roles[m] == r for r in ("reference", "control", "learned")},
            "role_merging": m == "merger",
        }
        for m, pts in curves.items()
        for k, (g, t) in pts.items()
        for s in range(2)
    ]
    table = build_table(rows)
    summary = summarize(table)
    seen = _capture(monkeypatch, figures)
    ctx = FigureContext(table, summary, tmp_path, method_styles(table), load_published())
    drawn = build_figures(ctx)
    assert drawn["pruning_ablation"], "the ablation figure draws for learned and control methods"
    keep_axes = [ax for fig in seen for ax in fig["axes"] if "keep" in ax["xlabel"].lower()]
    assert not any("merger" in ax["lines"] for ax in keep_axes)
    fig = next(f for f in seen if f["title"].startswith("Learned vs control"))
    assert "95" not in fig["title"] and any(t.startswith("bars: ± 1 std over seeds (n = 2)") for t in fig["legend"])
    for ax in fig["axes"]:
        assert "GMACs" in ax["xlabel"]
        for method, xs in ax["lines"].items():
            want = summary[summary["method"] == method].sort_values("gmacs")["gmacs"]
            assert np.allclose(np.sort(xs), want), method


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
    assert ablation(lone).empty  # no control to compare with
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
    assert len(a) == 4 * 2 * (23 * 10 * 2)  # every learned and every control setting against the other side
    assert a["n_pairs"].gt(0).mean() > 0.8  # seeds' GMACs differ by 1 %: a few end settings fall outside a curve
    assert elapsed < 10.0, f"matched_budget + ablation took {elapsed:.2f} s on 10,000 runs"
