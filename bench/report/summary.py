"""Aggregate the runs table over seeds: one row per backbone x method x keep ratio, as the run record declares.

Vectorised (one groupby, no Python loop over runs or groups) so a 10,000-run table summarises in
milliseconds. Failed runs count in ``n_runs`` but not in the statistics; ``n_timed`` counts the ok seeds whose
timing is their own (a seed evaluated again since its backbone's timing is untimed, never shown with another
seed's figure).

The speed-up's interval follows the number of timed seeds n (``speedup_interval`` names it, ``speedup_ci_n`` its
n): n = 1, the distribution-free CI of the median paired ratio over that seed's repeats (order statistics, the
level it reaches in ``speedup_ci_level``); n = 2, the range of the two seeds (no interval reaches 95 % with two
values); n >= 3, a Student-t 95 % interval of the mean over seeds. The reference's speed-up is 1 by definition:
exactly 1, no interval.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from bench.results.record import COLUMNS, GROUP_KEYS
from bench.results.record import DERIVED as DERIVED_COLUMNS
from bench.roles import ROLES, role_column

REFERENCE = role_column("reference")
GMACS = "gmacs_fvcore_1mac_eq_1flop"
THEORY = "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop"
_AGGREGATED = [c for c in COLUMNS if c.agg is not None]
DERIVED = [c.name for c in DERIVED_COLUMNS]


#: how the speed-up's interval was made (``speedup_interval``), by the number of timed seeds
INTERVALS = {"repeats": "paired repeats, order-statistic CI", "range": "range of 2 seeds", "t95": "Student t 95 %"}
LEVEL = 0.95  # two-sided level of every interval over seeds
MIN_N_INTERVAL = 3  # below this, no interval: n = 2 shows its range, n = 1 its value


def t_half_width(n: Any, sd: Any) -> np.ndarray:
    """Half-width of the two-sided LEVEL Student-t interval of a mean over ``n`` seeds with sample std ``sd``
    (arrays); NaN where n < MIN_N_INTERVAL. A t-interval holds at small n for roughly normal seed noise; a
    percentile bootstrap of 2-5 seeds covers far less than its nominal level."""
    n, sd = np.asarray(n, dtype=float), np.asarray(sd, dtype=float)
    half = np.full(n.shape, np.nan)
    ok = n >= MIN_N_INTERVAL
    if ok.any():
        from scipy.special import stdtrit  # Student t quantile (scipy.stats would cost 0.4 s of imports)

        half[ok] = stdtrit(n[ok] - 1, 0.5 + LEVEL / 2) * sd[ok] / np.sqrt(n[ok])
    return half


def _summary_names() -> list[str]:
    names = [*GROUP_KEYS, "n_ok", "n_runs", "n_timed"]
    for c in _AGGREGATED:
        stats = ["mean", "std", "n"] if c.agg == "mean_std" else []
        names += [f"{c.summary_name}_{s}" for s in stats] or [c.summary_name]
    return names + ["speedup_interval", "speedup_ci_n", "speedup_ci_level"] + DERIVED


SUMMARY_COLUMNS = _summary_names()


def _col(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name] if name in table else pd.Series(np.nan, index=table.index)


def _flag(table: pd.DataFrame, name: str) -> pd.Series:
    """A boolean column as 1.0 / 0.0 / NaN, so that a group's max says 'any'."""
    if name not in table:
        return pd.Series(np.nan, index=table.index)
    return table[name].map(lambda v: np.nan if pd.isna(v) else float(bool(v)))


def value_text(v: object) -> str:
    """A cell value as text, whole floats without '.0' (batch 256.0 -> '256')."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _joined(frame: pd.DataFrame, column: str, sep: str = "/") -> pd.Series:
    """Per group of GROUP_KEYS: the distinct non-missing values of ``column`` as text, shortest first.

    One pass over the distinct (group, value) pairs in plain Python: a per-group pandas ``agg`` costs
    ~0.1 ms per group, a quarter of a second on a 10,000-run table."""
    pairs = frame[GROUP_KEYS + [column]].dropna(subset=[column]).drop_duplicates()
    groups: dict[tuple, set[str]] = {}
    for *key, value in pairs.itertuples(index=False, name=None):
        groups.setdefault(tuple(key), set()).add(value_text(value))
    if not groups:
        return pd.Series(dtype=object)
    index = pd.MultiIndex.from_tuples(list(groups), names=GROUP_KEYS)
    return pd.Series(
        [sep.join(sorted(v, key=lambda s: (len(s), s))) for v in groups.values()], index=index, dtype=object
    )


def check_one_device(table: pd.DataFrame) -> None:
    """Refuse a table whose speed-ups on one backbone were timed on different devices (or software stacks):
    dividing them would compare machines, not methods."""
    if "throughput_device_key" not in table or "speedup_vs_dense" not in table:
        return
    timed = table[
        (table["status"] == "ok") & table["throughput_device_key"].notna() & table["speedup_vs_dense"].notna()
    ]
    for backbone, group in timed.groupby("backbone", sort=True):
        keys = sorted(group["throughput_device_key"].astype(str).unique())
        if len(keys) > 1:
            from bench.errors import UsageError

            runs = {k: group.loc[group["throughput_device_key"] == k, "run_id"].iloc[0] for k in keys}
            raise UsageError(
                f"backbone {backbone}: speed-ups were timed on different devices ("
                + "; ".join(f"{k!r} e.g. {runs[k]}" for k in keys)
                + "); they are never compared across devices: re-run its timing step "
                "(bench time SUITE BACKBONE) so one job times them all"
            )


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone x method x keep ratio, each column aggregated over ok seeds as the run record declares
    (:mod:`bench.results.record`): accuracy as mean and sample std, GMACs as the mean, img/s and the paired speed-up
    as the median over seeds (the speed-up's interval spans the seeds' intervals; unreliable if any seed's is).
    ``flops_implied_speedup`` is the reference's GMACs / GMACs: next to the measured speed-up it says how much of the
    FLOPs saving became wall-clock saving. A backbone whose runs were timed on different devices is refused.
    """
    keyed = table.dropna(subset=GROUP_KEYS).copy()
    if keyed.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    check_one_device(keyed)
    keyed["keep_ratio"] = keyed["keep_ratio"].astype(float).round(6)  # 0.7 and 0.7000000001 are one group
    ok = keyed[keyed["status"] == "ok"]
    numeric = {
        c.name: _flag(ok, c.name) if c.dtype == "bool" else _col(ok, c.name)
        for c in _AGGREGATED
        if c.agg not in ("join", "first")
    }
    frame = pd.DataFrame(numeric, index=ok.index).apply(pd.to_numeric, errors="coerce")
    for k in GROUP_KEYS:
        frame[k] = ok[k]
    g = frame.groupby(GROUP_KEYS, sort=True)
    stats: dict[str, pd.Series] = {}
    for c in _AGGREGATED:
        name = c.summary_name
        if c.agg == "mean_std":
            stats[f"{name}_mean"], stats[f"{name}_std"] = g[c.name].mean(), g[c.name].std(ddof=1)
            stats[f"{name}_n"] = g[c.name].count()
        elif c.agg == "any":
            stats[name] = g[c.name].max()
        elif c.agg in ("mean", "median", "min", "max"):
            stats[name] = getattr(g[c.name], c.agg)()
    stats_frame = pd.DataFrame(stats)
    for c in _AGGREGATED:  # text: distinct values joined; per-method constants: the first
        if c.agg in ("join", "first"):
            text = ok[GROUP_KEYS].assign(value=_col(ok, c.name))
            if c.agg == "join":
                stats_frame[c.summary_name] = _joined(
                    text, "value", sep="," if c.dtype == "int" and c.name == "seed" else "/"
                )
            else:
                stats_frame[c.summary_name] = (
                    keyed.groupby(GROUP_KEYS, sort=True)[c.name].first() if c.name in keyed else None
                )
    counts = pd.DataFrame(
        {"n_runs": keyed.groupby(GROUP_KEYS, sort=True).size(), "n_ok": ok.groupby(GROUP_KEYS, sort=True).size()}
    )
    summary = counts.join(stats_frame, how="left").reset_index()
    summary["n_ok"] = summary["n_ok"].fillna(0).astype(int)
    for c in _AGGREGATED:
        if c.agg == "join":  # text; empty when no run is ok
            summary[c.summary_name] = summary[c.summary_name].astype(object).where(summary[c.summary_name].notna(), "")
        elif c.dtype == "bool" and c.agg == "any":  # NaN (never timed) stays unknown, not False
            summary[c.name] = summary[c.name].map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
        elif c.dtype == "bool":
            summary[c.name] = summary[c.name].map(lambda v: bool(v) if pd.notna(v) else False).astype(bool)
    is_reference = summary[REFERENCE] if REFERENCE in summary else pd.Series(False, index=summary.index)
    reference = summary[is_reference & (summary["keep_ratio"] == 1.0) & (summary["n_ok"] > 0)]
    reference = reference.drop_duplicates("backbone").set_index("backbone")
    _speedup_intervals(summary, ok, is_reference & (summary["keep_ratio"] == 1.0))
    ref_gmacs = summary["backbone"].map(reference["gmacs"])
    summary["flops_reduction_pct"] = 100.0 * (1.0 - summary["gmacs"] / ref_gmacs)
    summary["theoretical_flops_reduction_pct"] = 100.0 * (1.0 - summary["theoretical_gmacs"] / ref_gmacs)
    summary["flops_implied_speedup"] = ref_gmacs / summary["gmacs"]
    # reading order: per backbone, the reference first, then methods by name, high keep ratio first
    summary["_reference_last"] = ~is_reference
    summary = summary.sort_values(
        ["backbone", "_reference_last", "method", "keep_ratio"], ascending=[True, True, True, False], kind="mergesort"
    )
    for col in SUMMARY_COLUMNS:
        if col not in summary:
            summary[col] = np.nan
    return summary.reset_index(drop=True)[SUMMARY_COLUMNS]


def _speedup_intervals(summary: pd.DataFrame, ok: pd.DataFrame, is_reference: pd.Series) -> None:
    """``n_timed`` and the speed-up's interval by the number of timed seeds (see the module doc), in place."""
    # a figure present is the run's own (collect never fills one from another record): that is a timed seed
    timed = ok[_col(ok, "throughput_img_s").notna() | _col(ok, "speedup_vs_dense").notna()]
    frame = pd.DataFrame(
        {k: timed[k] for k in GROUP_KEYS}
        | {
            name: pd.to_numeric(_col(timed, name), errors="coerce")
            for name in ("speedup_vs_dense", "speedup_ci_low", "speedup_ci_high", "speedup_ci_level", "timing_repeats")
        }
    )
    g = frame.groupby(GROUP_KEYS, sort=True)
    s = g["speedup_vs_dense"]
    per = pd.DataFrame(
        {
            "n_timed": g.size(),
            "n": s.count(),
            "mean": s.mean(),
            "sd": s.std(ddof=1),
            "lo": s.min(),
            "hi": s.max(),
            "ci_lo": g["speedup_ci_low"].first(),
            "ci_hi": g["speedup_ci_high"].first(),
            "level": g["speedup_ci_level"].first(),
            "repeats": g["timing_repeats"].first(),
        }
    )
    per = summary[GROUP_KEYS].join(per, on=GROUP_KEYS).set_index(summary.index)
    n = per["n"].fillna(0)
    half = t_half_width(n, per["sd"])
    one, two, many = n == 1, n == 2, n >= MIN_N_INTERVAL
    summary["n_timed"] = per["n_timed"].fillna(0).astype(int)
    summary["speedup"] = per["mean"]
    summary["speedup_ci_low"] = np.select([one, two, many], [per["ci_lo"], per["lo"], per["mean"] - half], np.nan)
    summary["speedup_ci_high"] = np.select([one, two, many], [per["ci_hi"], per["hi"], per["mean"] + half], np.nan)
    summary["speedup_ci_level"] = np.select([one, two, many], [per["level"], np.nan, LEVEL], np.nan)
    summary["speedup_ci_n"] = np.select([one, two, many], [per["repeats"], n, n], np.nan)
    summary["speedup_interval"] = pd.Series(
        np.select([one, two, many], ["repeats", "range", "t95"], ""), index=summary.index, dtype=object
    ).where(n > 0, None)
    # the reference: 1 by definition (its other seeds' ratios to the first are timing noise, not a speed-up)
    ref = is_reference & (n > 0)
    summary.loc[ref, "speedup"] = 1.0
    for name in ("speedup_ci_low", "speedup_ci_high", "speedup_ci_level", "speedup_ci_n"):
        summary.loc[ref, name] = np.nan
    summary.loc[ref, "speedup_interval"] = None
    summary.loc[ref, "speedup_unreliable"] = None


def reference_methods(summary: pd.DataFrame) -> list[str]:
    """Labels of the runs of the reference method (dense) in a summary or runs table."""
    if REFERENCE not in summary:
        return []
    return sorted(summary.loc[summary[REFERENCE].fillna(False).astype(bool), "method"].dropna().unique())


def methods_with_role(frame: pd.DataFrame, role: str) -> list[str]:
    """Labels of the methods declaring ``role`` (a role column of the runs table or summary)."""
    column = role_column(role)
    assert role in ROLES, role
    if column not in frame:
        return []
    return sorted(frame.loc[frame[column].fillna(False).astype(bool), "method"].dropna().unique())


def missing_runs(table: pd.DataFrame) -> list[tuple[str, str, float, int]]:
    """(backbone, method, keep_ratio, seed) with no record at all.

    ``bench collect`` with the suite file already writes expected-but-absent runs as ``missing`` rows;
    without it the grid is inferred: every method x keep ratio seen, on every backbone, for every seed seen.
    """
    keyed = table.dropna(subset=GROUP_KEYS + ["seed"])
    if keyed.empty:
        return []
    seen = set(
        zip(keyed["backbone"], keyed["method"], keyed["keep_ratio"].astype(float).round(6), keyed["seed"].astype(int))
    )
    configs = sorted(set(zip(keyed["method"], keyed["keep_ratio"].astype(float).round(6))))
    backbones = sorted(keyed["backbone"].unique())
    seeds = sorted(int(s) for s in keyed["seed"].unique())
    return [(b, m, k, s) for b, (m, k), s in itertools.product(backbones, configs, seeds) if (b, m, k, s) not in seen]
