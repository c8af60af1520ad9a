"""One look per method across a whole report: every figure of ``bench report --paper-figures`` and ``bench figures``
is drawn from a realistic table, each figure's artists are read back as it is saved, and a method must look the same
(colour and marker) in all of them, no two methods alike, the reference a black star wherever it is drawn."""

from __future__ import annotations

import colorsys
import os
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from bench.cli import main
from bench.methods.catalog import catalog
from bench.report.build import build_report
from bench.report.style import COLORBLIND, method_styles
from bench.results.collect import TABLE_PARQUET

SUITE = "whole"
DATASET = "imagenet-1k"  # the published points are drawn too (hollow markers)
DEVICE, PRECISION, BATCH = "NVIDIA H100 80GB HBM3", "bf16", 256
BACKBONES = {"deit_small_patch16_224": 4.61, "deit_tiny_patch16_224": 1.26}
#: label -> (registry name, keep ratios, params); the smoke suite's methods plus a second SViTE density
METHODS = {
    "dense": ("dense", [1.0], {}),
    "static": ("static", [0.7, 0.5], {}),
    "random": ("random", [0.7, 0.5], {}),
    "importance": ("importance", [0.7, 0.5], {}),
    "grid_pool": ("grid_pool", [0.7, 0.5], {}),
    "token_pooling": ("token_pooling", [0.7, 0.5], {}),
    "dynamicvit": ("dynamicvit", [0.7, 0.5], {}),
    "evit": ("evit", [0.7, 0.5], {}),
    "tome": ("tome", [0.7, 0.5], {}),
    "svite_d50": ("svite", [1.0], {"density": 0.5}),
    "svite_d70": ("svite", [1.0], {"density": 0.7}),
    "s2vite": ("s2vite", [1.0], {"density": 0.5}),
    "svite_plus": ("svite_plus", [0.9], {"density": 0.5}),
}
SEEDS = (0, 1)


def suite_table() -> pd.DataFrame:
    """The collected runs table of a two-backbone, two-seed suite, timed on one GPU; one run failed."""
    rows = []
    for bi, (backbone, dense_gmacs) in enumerate(BACKBONES.items()):
        for mi, (label, (name, ratios, params)) in enumerate(METHODS.items()):
            for k in ratios:
                gmacs = dense_gmacs * (params.get("density", 1.0) if name.startswith("s") and k == 1.0 else k**1.4)
                gmacs *= 1.12 if name == "evit" else 1.0  # EViT's fused token and in-block reduction: more compute
                for seed in SEEDS:
                    ok = not (label == "evit" and k == 0.5 and seed == 1 and bi == 0)
                    top1 = 72.0 + 7 * bi - 9 * (1 - k) ** 2 - 0.17 * mi + 0.3 * (mi % 3) + 0.2 * seed
                    speedup = 1.0 if name == "dense" else dense_gmacs / gmacs * (0.8 + 0.01 * mi) + 0.01 * seed
                    rows.append(
                        {
                            "suite": SUITE,
                            "run_id": f"{label}__{backbone}__k{k:.2f}__s{seed}",
                            "method": label,
                            "method_name": name,
                            **catalog()[name].record_columns(),
                            **{f"param_{p}": v for p, v in params.items()},
                            "backbone": backbone,
                            "keep_ratio": k,
                            "seed": seed,
                            "dataset": DATASET,
                            "status": "ok" if ok else "failed",
                            "error": None if ok else "RunFailed: loss is nan at step 12",
                            "top1": top1 if ok else np.nan,
                            "top5": top1 + 15 if ok else np.nan,
                            "gmacs_fvcore_1mac_eq_1flop": gmacs if ok else np.nan,
                            "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop": gmacs * params.get("density", 1),
                            "params_m": 22.0,
                            "mean_tokens": 197 * k,
                            "throughput_img_s": 1500 * speedup / (1 + bi) if ok else np.nan,
                            "throughput_img_s_iqr": 5.0 if ok else np.nan,
                            "throughput_batch_size": BATCH if ok else np.nan,
                            "throughput_device": DEVICE if ok else None,
                            "precision": PRECISION if ok else None,
                            "speedup_vs_dense": speedup if ok else np.nan,
                            "speedup_ci_low": speedup * 0.98 if ok else np.nan,
                            "speedup_ci_high": speedup * 1.02 if ok else np.nan,
                            "speedup_unreliable": False,
                            "git_sha": "0" * 40,
                            "git_dirty": False,
                            "device": "cuda",
                            "created_at": "2026-12-01T00:00:00+00:00",
                        }
                    )
    return pd.DataFrame(rows)


def _rgba(color) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in to_rgba(color))


def _hollow(line) -> bool:
    return str(line.get_markerfacecolor()) == "none"


def _read(fig: Figure) -> dict:
    """What a figure shows: its titles, its legend entries (text, colour, marker) and its marked lines."""
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    entries = [
        (t.get_text(), _rgba(h.get_color()), h.get_marker())
        for legend in legends
        for t, h in zip(legend.get_texts(), legend.legend_handles)
        if hasattr(h, "get_marker")
    ]
    lines = [
        (_rgba(ln.get_color()), ln.get_marker(), _hollow(ln))
        for ax in fig.axes
        for ln in ax.lines
        if ln.get_marker() not in (None, "", "None", "none") and len(ln.get_xdata())
    ]
    scatter_faces = [
        _rgba(c)
        for ax in fig.axes
        for coll in ax.collections
        if type(coll).__name__ == "PathCollection"
        for c in coll.get_facecolors()
        if c[3] > 0
    ]
    titles = [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]
    labels = [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel())]
    return {"legend": entries, "lines": lines, "scatter": scatter_faces, "titles": titles, "labels": labels}


@pytest.fixture(scope="module")
def report_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def drawn(report_root) -> dict[str, dict]:
    """Every figure the report and `bench figures` save, read back just before it is written (one process)."""
    root = report_root
    suite = root / SUITE
    suite.mkdir()
    suite_table().to_parquet(suite / TABLE_PARQUET)
    seen: dict[str, dict] = {}
    save = Figure.savefig

    def reading_savefig(self, fname, *args, **kwargs):
        if kwargs.get("format", "png") == "png":
            seen[_stem(fname)] = _read(self)
        return save(self, fname, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(Figure, "savefig", reading_savefig)
    try:
        paths = build_report(suite, workers=1, paper_figures=True)
        report = {name: look for name, look in seen.items()}
        seen.clear()
        assert main(["figures", SUITE, "--results", str(root), "--out", str(root / "figures")]) == 0
        report.update({f"bench figures: {name}": look for name, look in seen.items()})
    finally:
        mp.undo()
    assert {p.name.removesuffix(".png") for p in paths.values() if p.suffix == ".png"} <= set(report)
    return report


def _stem(fname) -> str:
    """The figure's file stem (atomic writes save to a temporary name beside the target: ``.name.png.tmp-*``)."""
    if str(fname).startswith("/proc/self/fd/"):  # bench.io writes a temporary file through its descriptor
        fname = os.readlink(fname)
    name = Path(str(fname)).name.lstrip(".")
    return name.split(".png")[0]


def _method(text: str) -> str | None:
    """The method a legend entry names ("dense (reference)", "static (control, hollow)" -> the label)."""
    label = text.split(" (")[0]
    return label if label in METHODS else None


def test_every_figure_is_read(drawn):
    expected = {
        "tradeoff_top1_vs_gmacs",
        "tradeoff_top1_vs_throughput",
        "tradeoff_top1_vs_speedup",
        "matched_budget",
        "ablation",
        "paper_dynamicvit_tradeoff",
        "paper_pruning_ablation",
        "paper_token_pooling_curves",
        "paper_svite_sparsity",
    }
    assert expected <= set(drawn), sorted(drawn)
    assert {f"bench figures: {n}" for n in expected if n.startswith("paper_")} <= set(drawn)


def test_one_look_per_method_across_every_figure(drawn):
    looks: dict[str, set[tuple]] = {}
    for figure, read in drawn.items():
        shown = {}
        for text, color, marker in read["legend"]:
            if (method := _method(text)) is not None:
                shown[method] = (color, marker)
                looks.setdefault(method, set()).add((color, marker))
        # every filled marker drawn is the look of a method the legend names (none in a look of its own)
        for color, marker, hollow in read["lines"]:
            if not hollow:
                assert (color, marker) in shown.values(), (figure, color, marker, shown)
        assert set(read["scatter"]) <= {c for c, _ in shown.values()}, figure
    assert set(looks) == set(METHODS)  # each method is in some legend
    several = {m: sorted(v) for m, v in looks.items() if len(v) > 1}
    assert not several, f"methods drawn in more than one look: {several}"
    flat = [next(iter(v)) for v in looks.values()]
    assert len(set(flat)) == len(flat), "two methods share a colour and marker"


def test_the_reference_is_the_black_star_wherever_it_is_drawn(drawn):
    star = (_rgba("black"), "*")
    with_reference = set()
    for figure, read in drawn.items():
        entries = [(c, m) for t, c, m in read["legend"] if _method(t) == "dense"]
        if entries:
            with_reference.add(figure.removeprefix("bench figures: "))
            assert entries == [star], figure
            assert (*star, False) in read["lines"], f"{figure}: no black star drawn"
    assert {
        "tradeoff_top1_vs_gmacs",
        "tradeoff_top1_vs_throughput",
        "tradeoff_top1_vs_speedup",
        "paper_dynamicvit_tradeoff",
        "paper_pruning_ablation",
        "paper_token_pooling_curves",
        "paper_svite_sparsity",
    } <= with_reference


def test_titles_are_short_and_speed_figures_say_where_they_were_timed(drawn):
    for figure, read in drawn.items():
        for title in read["titles"]:
            assert DATASET not in title and SUITE not in title, (figure, title)
            assert all(len(line) <= 90 for line in title.splitlines()), (figure, title)
    for figure in ("tradeoff_top1_vs_throughput", "tradeoff_top1_vs_speedup"):
        assert f"{DEVICE}, {PRECISION}, batch {BATCH}" in drawn[figure]["titles"][0]
    assert DEVICE not in drawn["tradeoff_top1_vs_gmacs"]["titles"][0]


# ------------------------------------------------------------------------------ the scheme itself, for 25 methods
def _ten_k_table() -> pd.DataFrame:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from report_10k import synthetic_table

    table = synthetic_table(400)  # 23 labels; with EViT and ToMe, the 25 the issue plans for
    extra = [
        table[table["method"] == "static"].assign(method=name, method_name=name, **catalog()[name].record_columns())
        for name in ("evit", "tome")
    ]
    return pd.concat([table, *extra], ignore_index=True)


def test_25_methods_get_25_looks_hue_by_group():
    table = _ten_k_table()
    styles = method_styles(table)
    assert len(styles) == table["method"].nunique() == 25
    assert len({(_rgba(s["color"]), s["marker"]) for s in styles.values()}) == 25
    assert (styles["dense"]["color"], styles["dense"]["marker"]) == ("black", "*")
    names = dict(zip(table["method"], table["method_name"]))
    by_family: dict[str, list] = {}
    for label, st in styles.items():  # name order within a family, as the markers are given
        if label != "dense":
            family = catalog()[names[label]].record_columns()["method_family"] or st["group"]
            by_family.setdefault(family, []).append(st["color"])
    hues = {f: {round(colorsys.rgb_to_hsv(*to_rgba(c)[:3])[0], 3) for c in cs} for f, cs in by_family.items()}
    assert all(len(h) == 1 for h in hues.values()), hues  # one hue per family (a large one in darker shades)
    assert len({next(iter(h)) for h in hues.values()}) == len(hues)  # ... of its own
    palette = {_rgba(c) for c in COLORBLIND}
    assert {_rgba(cs[0]) for cs in by_family.values()} <= palette  # colour-blind safe
    assert all(len({_rgba(c) for c in cs[:4]}) == 1 for cs in by_family.values())  # up to 4: one colour
    assert _rgba(styles["static"]["color"]) == _rgba(styles["random"]["color"])  # the controls: one colour


def _looks(styles: dict) -> dict:
    return {m: (_rgba(s["color"]), s["marker"], s["linestyle"]) for m, s in styles.items()}


def test_looks_do_not_depend_on_row_order_or_on_other_groups():
    table = _ten_k_table()
    styles = method_styles(table)
    rows = list(table.index)
    random.Random(0).shuffle(rows)
    assert method_styles(table.loc[rows]) == styles
    # a suite without the controls, or with one more learned method: every other method looks the same
    no_controls = table[~table["role_control"]]
    assert _looks(method_styles(no_controls)) == {
        m: s for m, s in _looks(styles).items() if m in set(no_controls["method"])
    }
    extra = table[table["method"] == "dynamicvit"].assign(method="zz_new", method_family="", role_learned=True)
    more = _looks(method_styles(pd.concat([table, extra])))
    assert {m: s for m, s in more.items() if m != "zz_new"} == _looks(styles)
    assert more["zz_new"][:2] not in {s[:2] for s in _looks(styles).values()}


def test_timing_setup_names_what_every_timed_run_shares_or_says_untimed():
    from bench.report.plots import timing_setup

    table = suite_table()
    assert timing_setup(table) == f"{DEVICE}, {PRECISION}, batch {BATCH}"
    untimed = table.assign(throughput_img_s=np.nan)
    assert timing_setup(untimed) == "not timed"
    mixed = table.copy()
    mixed.loc[mixed["backbone"] == "deit_tiny_patch16_224", "throughput_batch_size"] = 64
    assert timing_setup(mixed) == f"{DEVICE}, {PRECISION}, batch 64/256"
    cpu = table.assign(device="cpu", throughput_device="Intel(R) Xeon(R) Processor", precision="fp32", timing_threads=1)
    assert timing_setup(cpu) == "Intel(R) Xeon(R) Processor, fp32, batch 256, 1 thread"


# ------------------------------------------------------------------ what the whole report claims, at n = 2 seeds
NINETY_FIVE = re.compile(r"95\s?%|\bCI\b|confidence")


def _claims_interval(text: str) -> bool:
    """A 95 % or confidence interval claimed; a one-seed run's CI over its own paired timing repeats is one (over
    repeats, not seeds) and says so."""
    return bool(NINETY_FIVE.search(text)) and "repeats" not in text


def test_no_95_percent_interval_is_claimed_at_two_seeds(drawn, report_root):
    """Every method has two seeds (one run failed: n = 1 there), so no table row, legend, title or axis label of the
    report may claim a 95 % (or any confidence) interval over seeds; rows state their n instead."""
    report = report_root / SUITE / "report"
    rows = [ln for ln in (report / "report.md").read_text().splitlines() if ln.startswith("|")]
    assert rows and not [r for r in rows if _claims_interval(r)]
    assert any("n = 2, range [" in r for r in rows) and any("(n = 2)" in r for r in rows)
    tex = (report / "results.tex").read_text()
    body = tex[tex.index("\\begin{tabular}") :]
    assert not NINETY_FIVE.search(body)
    for figure, read in drawn.items():
        texts = [t for t, _, _ in read["legend"]] + read["titles"] + read["labels"]
        assert not [t for t in texts if _claims_interval(t)], figure


def test_the_ablation_compares_at_matched_gmacs_or_says_it_could_not(drawn, report_root):
    """EViT runs 12 % more GMACs than the controls at the same keep ratio: every comparison the ablation makes is at
    GMACs within 2 % of each other, and a setting with no partner in reach is stated, never compared."""
    report = report_root / SUITE / "report"
    abl = pd.read_csv(report / "ablation.csv")
    compared = abl[abl["n_pairs"] > 0]
    assert len(compared) and (abl["learned"] == "evit").any()
    gap = (compared["learned_gmacs"] - compared["control_gmacs"]).abs() / compared["control_gmacs"]
    assert (gap <= 0.02).all(), compared[gap > 0.02]
    evit_own = abl[(abl["learned"] == "evit") & (abl["anchor"] == "learned")]
    assert len(evit_own)
    md = (report / "report.md").read_text()
    for r in abl[abl["n_pairs"] == 0].itertuples():
        assert f"not compared: {r.learned if r.anchor == 'control' else r.control} measured at" in md
