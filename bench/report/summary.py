"""Aggregate the runs table over seeds: one row per backbone x method x keep ratio.

Vectorised (one groupby, no Python loop over runs or groups) so a 10,000-run table summarises in
milliseconds. Failed runs count in ``n_runs`` but not in the statistics.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

GROUP_KEYS = ["backbone", "method", "keep_ratio"]
DENSE_METHOD = "dense"
GMACS = "gmacs_fvcore_1mac_eq_1flop"
THEORY = "theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop"

SUMMARY_COLUMNS = [
    "backbone", "method", "keep_ratio", "n_ok", "n_runs", "seeds_ok", "top1_mean", "top1_std", "top5_mean",
    "top5_std", "top1_ema_mean", "top1_ema_std", "gmacs", "theoretical_gmacs", "method_gmacs", "params_m", "nonzero_params_m", "throughput",
    "throughput_iqr", "throughput_cv", "throughput_unreliable", "throughput_batch", "throughput_device",
    "mean_tokens", "train_peak_mem_mb", "speedup", "speedup_ci_low", "speedup_ci_high", "speedup_unreliable",
    "flops_reduction_pct", "theoretical_flops_reduction_pct", "flops_implied_speedup",
]


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
    return pd.Series([sep.join(sorted(v, key=lambda s: (len(s), s))) for v in groups.values()], index=index,
                     dtype=object)


def check_one_device(table: pd.DataFrame) -> None:
    """Refuse a table whose speed-ups on one backbone were timed on different devices (or software stacks):
    dividing them would compare machines, not methods."""
    if "throughput_device_key" not in table or "speedup_vs_dense" not in table:
        return
    timed = table[(table["status"] == "ok") & table["throughput_device_key"].notna() & table["speedup_vs_dense"].notna()]
    for backbone, group in timed.groupby("backbone", sort=True):
        keys = sorted(group["throughput_device_key"].astype(str).unique())
        if len(keys) > 1:
            from bench.errors import UsageError

            runs = {k: group.loc[group["throughput_device_key"] == k, "run_id"].iloc[0] for k in keys}
            raise UsageError(f"backbone {backbone}: speed-ups were timed on different devices ("
                             + "; ".join(f"{k!r} e.g. {runs[k]}" for k in keys)
                             + "); they are never compared across devices: re-run its timing step "
                             "(bench time SUITE BACKBONE) so one job times them all")


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics (mean, sample std) and deltas to dense on the same backbone.

    Throughput is the median over seeds of each run's median img/s (IQR and CV likewise). ``speedup`` is the
    median over seeds of each run's paired speed-up over dense (timed interleaved in one job, see
    :mod:`bench.measure.paired`); its interval spans the seeds' confidence intervals, and it is unreliable if any
    seed's is. ``flops_implied_speedup`` is dense GMACs / GMACs: the ratio of the two says how much of the FLOPs
    saving became wall-clock saving. A backbone whose runs were timed on different devices is refused.
    """
    keyed = table.dropna(subset=GROUP_KEYS).copy()
    if keyed.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    check_one_device(keyed)
    keyed["keep_ratio"] = keyed["keep_ratio"].astype(float).round(6)  # 0.7 and 0.7000000001 are one group
    ok = keyed[keyed["status"] == "ok"]
    numeric = pd.DataFrame({
        "top1": _col(ok, "top1"), "top5": _col(ok, "top5"), "top1_ema": _col(ok, "top1_ema"), "gmacs": _col(ok, GMACS),
        "theoretical_gmacs": _col(ok, THEORY), "method_gmacs": _col(ok, "method_gmacs_fvcore_1mac_eq_1flop"),
        "params_m": _col(ok, "params_m"), "nonzero_params_m": _col(ok, "nonzero_params_m"),
        "throughput": _col(ok, "throughput_img_s"), "throughput_iqr": _col(ok, "throughput_img_s_iqr"),
        "throughput_cv": _col(ok, "throughput_img_s_cv"), "speedup": _col(ok, "speedup_vs_dense"),
        "speedup_ci_low": _col(ok, "speedup_ci_low"), "speedup_ci_high": _col(ok, "speedup_ci_high"),
        "throughput_unreliable": _flag(ok, "throughput_unreliable"), "speedup_unreliable": _flag(ok, "speedup_unreliable"),
        "mean_tokens": _col(ok, "mean_tokens"), "train_peak_mem_mb": _col(ok, "train_peak_mem_mb"),
    }).apply(pd.to_numeric, errors="coerce")
    for k in GROUP_KEYS:
        numeric[k] = ok[k]
    g = numeric.groupby(GROUP_KEYS, sort=True)
    means = g.mean()
    stats = pd.DataFrame({
        "top1_mean": means["top1"], "top1_std": g["top1"].std(ddof=1),
        "top5_mean": means["top5"], "top5_std": g["top5"].std(ddof=1),
        "top1_ema_mean": means["top1_ema"], "top1_ema_std": g["top1_ema"].std(ddof=1),  # the recipe's EMA weights
        **{c: means[c] for c in ("gmacs", "theoretical_gmacs", "method_gmacs", "params_m", "nonzero_params_m",
                                 "mean_tokens", "train_peak_mem_mb")},
        "throughput": g["throughput"].median(), "throughput_iqr": g["throughput_iqr"].median(),
        "throughput_cv": g["throughput_cv"].median(), "speedup": g["speedup"].median(),
        "speedup_ci_low": g["speedup_ci_low"].min(), "speedup_ci_high": g["speedup_ci_high"].max(),
        "throughput_unreliable": g["throughput_unreliable"].max(), "speedup_unreliable": g["speedup_unreliable"].max(),
    })
    text = ok[GROUP_KEYS].assign(seed=_col(ok, "seed"), batch=_col(ok, "throughput_batch_size"),
                                 device=_col(ok, "throughput_device"))
    stats["seeds_ok"] = _joined(text, "seed", sep=",")
    stats["throughput_batch"] = _joined(text, "batch")
    stats["throughput_device"] = _joined(text, "device")
    counts = pd.DataFrame({"n_runs": keyed.groupby(GROUP_KEYS, sort=True).size(),
                           "n_ok": ok.groupby(GROUP_KEYS, sort=True).size()})
    summary = counts.join(stats, how="left").reset_index()
    summary["n_ok"] = summary["n_ok"].fillna(0).astype(int)
    for col in ("seeds_ok", "throughput_batch", "throughput_device"):  # text; empty when no run is ok
        summary[col] = summary[col].astype(object).where(summary[col].notna(), "")
    dense = summary[(summary["method"] == DENSE_METHOD) & (summary["keep_ratio"] == 1.0) & (summary["n_ok"] > 0)]
    dense = dense.drop_duplicates("backbone").set_index("backbone")
    ref_gmacs = summary["backbone"].map(dense["gmacs"])
    for col in ("throughput_unreliable", "speedup_unreliable"):  # NaN (never timed) stays unknown, not False
        summary[col] = summary[col].map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
    summary["flops_reduction_pct"] = 100.0 * (1.0 - summary["gmacs"] / ref_gmacs)
    summary["theoretical_flops_reduction_pct"] = 100.0 * (1.0 - summary["theoretical_gmacs"] / ref_gmacs)
    summary["flops_implied_speedup"] = ref_gmacs / summary["gmacs"]
    # reading order: per backbone, dense first, then methods by name, high keep ratio first
    summary["_dense_last"] = summary["method"] != DENSE_METHOD
    summary = summary.sort_values(["backbone", "_dense_last", "method", "keep_ratio"],
                                  ascending=[True, True, True, False], kind="mergesort")
    for col in SUMMARY_COLUMNS:
        if col not in summary:
            summary[col] = np.nan
    return summary.reset_index(drop=True)[SUMMARY_COLUMNS]


def missing_runs(table: pd.DataFrame) -> list[tuple[str, str, float, int]]:
    """(backbone, method, keep_ratio, seed) with no record at all.

    ``bench collect`` with the suite file already writes expected-but-absent runs as ``missing`` rows;
    without it the grid is inferred: every method x keep ratio seen, on every backbone, for every seed seen.
    """
    keyed = table.dropna(subset=GROUP_KEYS + ["seed"])
    if keyed.empty:
        return []
    seen = set(zip(keyed["backbone"], keyed["method"], keyed["keep_ratio"].astype(float).round(6),
                   keyed["seed"].astype(int)))
    configs = sorted(set(zip(keyed["method"], keyed["keep_ratio"].astype(float).round(6))))
    backbones = sorted(keyed["backbone"].unique())
    seeds = sorted(int(s) for s in keyed["seed"].unique())
    return [(b, m, k, s) for b, (m, k), s in itertools.product(backbones, configs, seeds)
            if (b, m, k, s) not in seen]
