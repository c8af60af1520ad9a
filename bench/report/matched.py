"""Matched-compute comparison and learned-vs-control ablation, with seed-bootstrap CIs.

A trade-off curve compares methods at their own keep ratios, which hides who wins at a
given compute budget. Here each seed's (GMACs, top-1) curve is interpolated at common
budgets (never extrapolated), and differences are paired by seed so seed noise shared by
two methods cancels. Everything is vectorised over runs; the tables and figures of these
frames are drawn by ``matched_render.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from bench.report.summary import methods_with_role

GMACS = "gmacs_fvcore_1mac_eq_1flop"
N_BUDGETS = 5
MATCH_RTOL = 1e-9
MATCHED_COLUMNS = [
    "backbone",
    "budget_gmacs",
    "method",
    "n_seeds",
    "top1_mean",
    "top1_ci_low",
    "top1_ci_high",
    "best_method",
    "diff_to_best",
    "diff_ci_low",
    "diff_ci_high",
]
ABLATION_COLUMNS = [
    "backbone",
    "keep_ratio",
    "method",
    "role",
    "n_seeds",
    "top1_mean",
    "top1_ci_low",
    "top1_ci_high",
    "control",
    "n_pairs",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
]
_CURVE = ["backbone", "method", "seed"]
_TOP1 = ("n_seeds", "top1_mean", "top1_ci_low", "top1_ci_high")
_BOOT_CELLS = 1 << 22  # groups x resamples per block: bounds bootstrap memory


def _ok_points(table: pd.DataFrame | None) -> pd.DataFrame:
    """ok runs with finite top-1, GMACs and seed; anything else cannot be placed on a curve."""
    cols = ["backbone", "method", "seed", "keep_ratio", "gmacs", "top1"]
    need = ["status", "backbone", "method", "seed", "top1", GMACS]
    if table is None or len(table) == 0 or any(c not in table.columns for c in need):
        return pd.DataFrame({c: pd.Series(dtype=float if c in cols[3:] else object) for c in cols})
    num = {
        c: pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        for c in ("seed", "top1", GMACS)
    }
    ratio = (
        pd.to_numeric(table["keep_ratio"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if "keep_ratio" in table.columns
        else np.full(len(table), np.nan)
    )
    keep = (
        table["status"].astype(object).eq("ok").to_numpy(dtype=bool)
        & table["backbone"].notna().to_numpy()
        & table["method"].notna().to_numpy()
        & np.isfinite(num["seed"])
        & np.isfinite(num["top1"])
        & np.isfinite(num[GMACS])
    )
    return pd.DataFrame(
        {
            "backbone": table["backbone"].astype(str).to_numpy()[keep],
            "method": table["method"].astype(str).to_numpy()[keep],
            "seed": num["seed"][keep].astype(np.int64),
            "keep_ratio": np.round(ratio[keep], 6),
            "gmacs": num[GMACS][keep],
            "top1": num["top1"][keep],
        }
    )


def _boot_stats(
    df: pd.DataFrame, keys: list[str], value: str, n_boot: int, seed: int, names: Sequence[str] = _TOP1
) -> pd.DataFrame:
    """Per group of ``keys``: n, mean and the 95 % percentile bootstrap CI of the mean (NaN for n < 2),
    in columns named ``names``.

    One uniform matrix from ``default_rng(seed)`` serves every group, so a group's CI depends only
    on its own values; resample counts times values is a matrix product, fast for thousands of groups.
    """
    if df.empty:
        return pd.DataFrame(columns=[*keys, *names])
    grouped = df.groupby(keys, sort=True)
    df = df.assign(_g=grouped.ngroup().to_numpy()).sort_values("_g", kind="mergesort")
    out = grouped[value].agg(n="size", mean="mean").reset_index()
    vals, n = df[value].to_numpy(dtype=float), out["n"].to_numpy()
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    lo, hi = np.full(len(out), np.nan), np.full(len(out), np.nan)
    if n_boot >= 1 and (n >= 2).any():
        u = np.random.default_rng(seed).random((n_boot, int(n.max())))
        for size in np.unique(n[n >= 2]):
            idx = np.minimum((u[:, :size] * size).astype(np.int64), size - 1)
            counts = np.bincount((idx + size * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * size).reshape(
                n_boot, size
            )
            which = np.flatnonzero(n == size)
            step = max(1, _BOOT_CELLS // n_boot)
            for i in range(0, len(which), step):
                part = which[i : i + step]
                means = vals[starts[part][:, None] + np.arange(size)] @ counts.T / size
                lo[part], hi[part] = np.percentile(means, [2.5, 97.5], axis=1)
    return out.assign(lo=lo, hi=hi).rename(columns=dict(zip(("n", "mean", "lo", "hi"), names)))


def _budget_grid(curves: pd.DataFrame, budgets: Sequence[float] | Mapping[str, Sequence[float]] | None) -> pd.DataFrame:
    """(backbone, budget_gmacs) rows: given budgets, else N_BUDGETS across the methods' common range."""
    if isinstance(budgets, Mapping):
        rows = [(b, float(x)) for b, xs in budgets.items() for x in xs]
        return pd.DataFrame(rows, columns=["backbone", "budget_gmacs"]).drop_duplicates()
    backbones = pd.Index(sorted(curves["backbone"].unique()), name="backbone")
    if budgets is not None:
        xs = np.unique(np.asarray(budgets, dtype=float))
        return pd.DataFrame(
            {"backbone": np.repeat(backbones.to_numpy(), len(xs)), "budget_gmacs": np.tile(xs, len(backbones))}
        )
    multi = curves[curves["npts"] >= 2]
    # A method's range is what all its seeds reach; the overlap is what every such method reaches.
    method = multi.groupby(["backbone", "method"]).agg(lo=("xmin", "max"), hi=("xmax", "min"))
    overlap = method.groupby("backbone").agg(lo=("lo", "max"), hi=("hi", "min")).reindex(backbones)
    union = (
        multi.groupby("backbone")
        .agg(lo=("xmin", "min"), hi=("xmax", "max"))
        .reindex(backbones)
        .fillna(curves.groupby("backbone").agg(lo=("xmin", "min"), hi=("xmax", "max")))
    )
    shared = (overlap["lo"] <= overlap["hi"]).to_numpy()
    grid = np.linspace(
        np.where(shared, overlap["lo"], union["lo"]), np.where(shared, overlap["hi"], union["hi"]), N_BUDGETS, axis=1
    )
    return pd.DataFrame(
        {"backbone": np.repeat(backbones.to_numpy(), N_BUDGETS), "budget_gmacs": grid.ravel()}
    ).drop_duplicates()


def _interp(points: pd.DataFrame, queries: pd.DataFrame) -> np.ndarray:
    """np.interp per curve, for all curves at once; NaN outside a curve's GMACs range.

    ``points`` (cid, gmacs, top1) sorted by (cid, gmacs) with unique GMACs per curve; ``queries``
    (cid, budget_gmacs, xmin, xmax). Budgets within MATCH_RTOL of an end snap onto it, so a
    one-point curve matches its own GMACs. Ranking GMACs globally turns (curve, GMACs) into one
    exact integer key, so a single searchsorted finds every query's segment.
    """
    x, y, cid = points["gmacs"].to_numpy(), points["top1"].to_numpy(), points["cid"].to_numpy()
    b, xmin, xmax = (queries[c].to_numpy(dtype=float) for c in ("budget_gmacs", "xmin", "xmax"))
    for end in (xmin, xmax):
        b = np.where(np.abs(b - end) <= MATCH_RTOL * np.maximum(np.abs(b), np.abs(end)), end, b)
    inside = (b >= xmin) & (b <= xmax)
    ranks, inv = np.unique(np.concatenate([x, b]), return_inverse=True)
    scale = np.int64(len(ranks) + 1)
    key_p = cid.astype(np.int64) * scale + inv[: len(x)]
    key_q = queries["cid"].to_numpy().astype(np.int64) * scale + inv[len(x) :]
    hi = np.clip(np.searchsorted(key_p, key_q), 0, len(x) - 1)
    lo = np.maximum(hi - 1, 0)
    exact = key_p[hi] == key_q
    span = np.where(exact, 1.0, x[hi] - x[lo])
    frac = np.where(exact, 1.0, (b - x[lo]) / np.where(span == 0, 1.0, span))
    return np.where(inside, y[lo] + frac * (y[hi] - y[lo]), np.nan)


def matched_budget(
    table: pd.DataFrame,
    budgets: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Top-1 of every method at common GMACs budgets per backbone, with the best and paired gaps to it.

    ``budgets``: one list for all backbones, a {backbone: list} mapping, or None for N_BUDGETS
    evenly spaced over the GMACs range all multi-point methods reach (their union if none is
    shared). Each seed's curve is interpolated, never extrapolated. Columns: MATCHED_COLUMNS;
    every method appears at every budget (n_seeds 0, NaN stats where it cannot reach it).
    """
    pts = _ok_points(table).groupby(["backbone", "method", "seed", "gmacs"], sort=True, as_index=False)["top1"].mean()
    if pts.empty:
        return pd.DataFrame(columns=MATCHED_COLUMNS)
    curves = (
        pts.groupby(_CURVE, sort=True)
        .agg(xmin=("gmacs", "min"), xmax=("gmacs", "max"), npts=("gmacs", "size"))
        .reset_index()
    )
    curves["cid"] = np.arange(len(curves))
    pts["cid"] = pts.groupby(_CURVE, sort=True).ngroup().to_numpy()
    queries = curves.merge(_budget_grid(curves, budgets), on="backbone")
    queries["top1"] = _interp(pts, queries) if len(queries) else np.empty(0)
    interp = queries.loc[np.isfinite(queries["top1"]), ["backbone", "budget_gmacs", "method", "seed", "top1"]]
    keys = ["backbone", "budget_gmacs", "method"]
    rows = queries[keys].drop_duplicates().merge(_boot_stats(interp, keys, "top1", n_boot, seed), on=keys, how="left")
    ranked = rows.dropna(subset=["top1_mean"]).sort_values(
        ["backbone", "budget_gmacs", "top1_mean", "method"], ascending=[True, True, False, True], kind="mergesort"
    )
    best = ranked.drop_duplicates(["backbone", "budget_gmacs"])[keys].rename(columns={"method": "best_method"})
    best_vals = interp.merge(best, left_on=keys, right_on=["backbone", "budget_gmacs", "best_method"])
    pairs = interp.merge(
        best_vals[["backbone", "budget_gmacs", "seed", "top1"]],
        on=["backbone", "budget_gmacs", "seed"],
        suffixes=("", "_best"),
    )
    diff = _boot_stats(
        pairs.assign(diff=pairs["top1"] - pairs["top1_best"]),
        keys,
        "diff",
        n_boot,
        seed,
        ("_n", "diff_to_best", "diff_ci_low", "diff_ci_high"),
    ).drop(columns="_n")
    out = rows.merge(best, on=["backbone", "budget_gmacs"], how="left").merge(diff, on=keys, how="left")
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    out = out.assign(_neg=-out["top1_mean"]).sort_values(
        ["backbone", "budget_gmacs", "_neg", "method"], na_position="last", kind="mergesort"
    )
    return out[MATCHED_COLUMNS].reset_index(drop=True)


def ablation(
    table: pd.DataFrame,
    learned: Sequence[str] | None = None,
    controls: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Learned selectors against the controls (content-blind token selection) at the same keep ratio.

    Long format, one row per backbone x keep_ratio x method x control: ``role`` is "learned" or
    "control"; n_seeds/top1_mean/top1_ci_low/top1_ci_high are the method's top-1 over seeds (95 %
    bootstrap CI). Learned rows repeat once per control seen in the table, with ``control`` naming
    it, n_pairs the seeds both share, and diff_mean/diff_ci_* the paired top-1 difference
    (learned − control, points) and its CI; control rows (and learned ones when no control was
    run) have control None, n_pairs 0 and NaN differences. ``learned`` defaults to the methods declaring
    the "learned" role that run below keep ratio 1.0, ``controls`` to those declaring "control". Sorted by backbone, keep ratio (high first), role, method.
    """
    controls = list(dict.fromkeys(methods_with_role(table, "control") if controls is None else controls))
    pts = _ok_points(table).dropna(subset=["keep_ratio"])
    if learned is None:
        # which tokens are kept: methods run only at keep 1.0 (weight budgets, the reference) stay out
        reducing = set(pts.loc[pts["keep_ratio"] < 1.0, "method"]) if len(pts) else set()
        learned = [m for m in methods_with_role(table, "learned") if m in reducing]
    learned = [m for m in dict.fromkeys(learned) if m not in controls]
    pts = pts[pts["method"].isin(learned + controls)]
    if pts.empty:
        return pd.DataFrame(columns=ABLATION_COLUMNS)
    keys = ["backbone", "keep_ratio", "method"]
    per_seed = pts.groupby(keys + ["seed"], sort=True, as_index=False)["top1"].mean()
    stats = _boot_stats(per_seed, keys, "top1", n_boot, seed)
    stats["role"] = np.where(stats["method"].isin(controls), "control", "learned")
    present = [c for c in controls if c in set(per_seed["method"])]
    nan_diff = {"n_pairs": 0, "diff_mean": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan}
    rows = stats[stats["role"] == "learned"]
    if present and len(rows):
        ctrl = per_seed[per_seed["method"].isin(present)].rename(columns={"method": "control", "top1": "top1_ctrl"})
        pairs = per_seed[per_seed["method"].isin(learned)].merge(ctrl, on=["backbone", "keep_ratio", "seed"])
        diff = _boot_stats(
            pairs.assign(diff=pairs["top1"] - pairs["top1_ctrl"]),
            keys + ["control"],
            "diff",
            n_boot,
            seed,
            ("n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high"),
        )
        rows = rows.merge(pd.DataFrame({"control": present}), how="cross").merge(
            diff, on=keys + ["control"], how="left"
        )
        rows["n_pairs"] = rows["n_pairs"].fillna(0)
    else:
        rows = rows.assign(control=None, **nan_diff)
    ctrl_rows = stats[stats["role"] == "control"].assign(control=None, **nan_diff)
    out = pd.concat([df for df in (rows, ctrl_rows) if len(df)], ignore_index=True)
    out["n_pairs"] = out["n_pairs"].astype(int)
    out["control"] = out["control"].astype(object).where(out["control"].notna(), None)
    order = {c: i for i, c in enumerate(present)}
    out = out.assign(_kr=-out["keep_ratio"], _role=out["role"] != "learned", _ctrl=out["control"].map(order).fillna(-1))
    out = out.sort_values(["backbone", "_kr", "_role", "method", "_ctrl"], kind="mergesort")
    return out[ABLATION_COLUMNS].reset_index(drop=True)
