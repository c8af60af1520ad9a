"""Matched-compute comparison and learned-vs-control ablation, with t-intervals over seeds.

A trade-off curve compares methods at their own keep ratios, which hides who wins at a given compute
budget: EViT at keep 0.7 runs about 12 % more GMACs than static at keep 0.7. Here each seed's (GMACs,
top-1) curve is interpolated at common GMACs (never extrapolated), and differences are paired by seed
so seed noise shared by two methods cancels. Intervals are ``summary.t_half_width``'s t-intervals over
seeds; every frame carries n and the seeds' min and max (the range a table
shows at n = 2). Everything is vectorised over runs; ``matched_render.py`` draws the tables and figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from bench.report.summary import methods_with_role, t_half_width

GMACS = "gmacs_fvcore_1mac_eq_1flop"
TOKENS = "mean_tokens"
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
    "top1_min",
    "top1_max",
    "best_method",
    "n_pairs",
    "diff_to_best",
    "diff_ci_low",
    "diff_ci_high",
    "diff_min",
    "diff_max",
]
#: one row per measured setting of one side (the anchor) x a method of the other side: both are read at the
#: anchor's measured GMACs, seed by seed (the other side interpolated along its own curve, never extrapolated)
ABLATION_COLUMNS = [
    "backbone",
    "learned",
    "control",
    "anchor",  # "learned" or "control": whose measured setting sets the GMACs
    "keep_ratio",  # the anchor's setting (a merging method's keep ratio maps to its merge schedule)
    "anchor_merging",
    "anchor_n_seeds",
    "anchor_gmacs",  # the anchor's GMACs, mean over its seeds
    "anchor_mean_tokens",
    "anchor_top1_mean",  # the anchor's own top-1, mean over all its seeds (paired or not)
    "other_gmacs_min",  # the GMACs range all seeds of the other side reach: where it can be read
    "other_gmacs_max",
    "n_pairs",
    "learned_gmacs",  # the GMACs each side's top-1 was taken at, mean over the paired seeds
    "control_gmacs",
    "learned_top1_mean",
    "control_top1_mean",
    "diff_mean",  # learned - control, points, mean over the paired seeds
    "diff_ci_low",
    "diff_ci_high",
    "diff_min",
    "diff_max",
]
_CURVE = ["backbone", "method", "seed"]
_TOP1 = ("n_seeds", "top1_mean", "top1_ci_low", "top1_ci_high", "top1_min", "top1_max")
_DIFF = ("n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "diff_min", "diff_max")


def _ok_points(table: pd.DataFrame | None) -> pd.DataFrame:
    """ok runs with finite top-1, GMACs and seed; anything else cannot be placed on a curve."""
    cols = ["backbone", "method", "seed", "keep_ratio", "gmacs", "top1", "tokens"]
    need = ["status", "backbone", "method", "seed", "top1", GMACS]
    if table is None or len(table) == 0 or any(c not in table.columns for c in need):
        return pd.DataFrame({c: pd.Series(dtype=float if c in cols[3:] else object) for c in cols})
    num = {
        c: pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        for c in ("seed", "top1", GMACS)
    }
    ratio, tokens = (
        pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if c in table.columns
        else np.full(len(table), np.nan)
        for c in ("keep_ratio", TOKENS)
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
            "tokens": tokens[keep],
        }
    )


def _seed_stats(df: pd.DataFrame, keys: list[str], value: str, names: Sequence[str] = _TOP1) -> pd.DataFrame:
    """Per group of ``keys``: n, mean, the t-interval of the mean (``t_half_width``: NaN below its minimum n),
    min and max (the range: what a table shows at n = 2), in columns named ``names``."""
    if df.empty:
        return pd.DataFrame(columns=[*keys, *names])
    out = df.groupby(keys, sort=True)[value].agg(n="size", mean="mean", sd="std", lo="min", hi="max").reset_index()
    half = t_half_width(out["n"], out["sd"])
    mean = out["mean"].to_numpy(dtype=float)
    out = out.assign(ci_low=mean - half, ci_high=mean + half).drop(columns="sd")
    return out[[*keys, "n", "mean", "ci_low", "ci_high", "lo", "hi"]].set_axis([*keys, *names], axis=1)


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
    table: pd.DataFrame, budgets: Sequence[float] | Mapping[str, Sequence[float]] | None = None
) -> pd.DataFrame:
    """Top-1 of every method at common GMACs budgets per backbone, with the best and paired gaps to it.

    ``budgets``: one list for all backbones, a {backbone: list} mapping, or None for N_BUDGETS
    evenly spaced over the GMACs range all multi-point methods reach (their union if none is
    shared). Each seed's curve is interpolated, never extrapolated. Columns: MATCHED_COLUMNS;
    every method appears at every budget (n_seeds 0, NaN stats where it cannot reach it). The gap
    to the best is paired by seed (n_pairs: the seeds both reach).
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
    rows = queries[keys].drop_duplicates().merge(_seed_stats(interp, keys, "top1"), on=keys, how="left")
    ranked = rows.dropna(subset=["top1_mean"]).sort_values(
        ["backbone", "budget_gmacs", "top1_mean", "method"], ascending=[True, True, False, True], kind="mergesort"
    )
    best = ranked.drop_duplicates(["backbone", "budget_gmacs"])[keys].rename(columns={"method": "best_method"})
    best_vals = interp.merge(best, left_on=keys, right_on=["backbone", "budget_gmacs", "best_method"])
    pairs = interp.merge(  # pairs by seed: a seed that only one of the two reaches drops out
        best_vals[["backbone", "budget_gmacs", "seed", "top1"]],
        on=["backbone", "budget_gmacs", "seed"],
        suffixes=("", "_best"),
    )
    diff = _seed_stats(pairs.assign(diff=pairs["top1"] - pairs["top1_best"]), keys, "diff", _DIFF)
    out = rows.merge(best, on=["backbone", "budget_gmacs"], how="left").merge(
        diff.rename(columns={"diff_mean": "diff_to_best"}), on=keys, how="left"
    )
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    out["n_pairs"] = out["n_pairs"].fillna(0).astype(int)
    out = out.assign(_neg=-out["top1_mean"]).sort_values(
        ["backbone", "budget_gmacs", "_neg", "method"], na_position="last", kind="mergesort"
    )
    return out[MATCHED_COLUMNS].reset_index(drop=True)


def ablation(
    table: pd.DataFrame, learned: Sequence[str] | None = None, controls: Sequence[str] | None = None
) -> pd.DataFrame:
    """Learned selectors against the controls (content-blind token selection) at matched measured GMACs.

    Equal keep ratios are not equal compute (EViT fuses a token and prunes inside the block; a merging
    method's keep ratio only sets its schedule), so every measured setting of either side is an anchor:
    per seed, the anchor's own top-1 at its measured GMACs against the other method's same-seed curve
    interpolated at those GMACs (never extrapolated: outside the other's range, n_pairs 0 and NaN). One row
    per backbone x anchor setting x method of the other side (ABLATION_COLUMNS); diff is learned - control
    in points, paired by seed. ``learned`` defaults to the methods declaring the "learned" role that run below
    keep ratio 1.0, ``controls`` to those declaring "control". Sorted by backbone, learned, control, GMACs
    (high first), anchor.
    """
    controls = list(dict.fromkeys(methods_with_role(table, "control") if controls is None else controls))
    pts = _ok_points(table).dropna(subset=["keep_ratio"])
    if learned is None:
        # which tokens are kept: methods run only at keep 1.0 (weight budgets, the reference) stay out
        reducing = set(pts.loc[pts["keep_ratio"] < 1.0, "method"]) if len(pts) else set()
        learned = [m for m in methods_with_role(table, "learned") if m in reducing]
    learned = [m for m in dict.fromkeys(learned) if m not in controls]
    pts = pts[pts["method"].isin(learned + controls)]
    if pts.empty or not set(pts["method"]) & set(learned) or not set(pts["method"]) & set(controls):
        return pd.DataFrame(columns=ABLATION_COLUMNS)
    setting = ["backbone", "method", "keep_ratio"]
    seeds = pts.groupby([*setting, "seed"], sort=True, as_index=False)[["gmacs", "top1", "tokens"]].mean()
    seeds["role"] = np.where(seeds["method"].isin(controls), "control", "learned")
    curve_pts = seeds.groupby([*_CURVE, "gmacs"], sort=True, as_index=False)["top1"].mean()
    curve_pts["cid"] = curve_pts.groupby(_CURVE, sort=True).ngroup().to_numpy()
    curves = curve_pts.groupby([*_CURVE, "cid"], sort=True).agg(xmin=("gmacs", "min"), xmax=("gmacs", "max"))
    curves = curves.reset_index().rename(columns={"method": "other"})
    curves["other_role"] = np.where(curves["other"].isin(controls), "control", "learned")
    # every seed of every setting against the same seed's curve of each method of the other side
    q = seeds.merge(curves, on=["backbone", "seed"])
    q = q[q["role"] != q["other_role"]].assign(budget_gmacs=lambda d: d["gmacs"])
    read = _interp(curve_pts, q) if len(q) else np.empty(0)
    is_learned = (q["role"] == "learned").to_numpy()
    q = q.assign(
        learned=np.where(is_learned, q["method"], q["other"]),
        control=np.where(is_learned, q["other"], q["method"]),
        anchor=q["role"],
        learned_top1=np.where(is_learned, q["top1"], read),
        control_top1=np.where(is_learned, read, q["top1"]),
        # the anchor is read at its own GMACs; the other side at the budget it was interpolated at
        learned_gmacs=np.where(is_learned, q["gmacs"], q["budget_gmacs"]),
        control_gmacs=np.where(is_learned, q["budget_gmacs"], q["gmacs"]),
    )
    pairs = q[np.isfinite(read)]
    keys = ["backbone", "learned", "control", "anchor", "keep_ratio"]
    diff = _seed_stats(pairs.assign(diff=pairs["learned_top1"] - pairs["control_top1"]), keys, "diff", _DIFF)
    sides = pairs.groupby(keys, sort=True)[["learned_gmacs", "control_gmacs", "learned_top1", "control_top1"]].mean()
    sides = sides.rename(columns={"learned_top1": "learned_top1_mean", "control_top1": "control_top1_mean"})
    anchors = seeds.groupby([*setting, "role"], sort=True).agg(
        anchor_n_seeds=("seed", "size"),
        anchor_gmacs=("gmacs", "mean"),
        anchor_mean_tokens=("tokens", "mean"),
        anchor_top1_mean=("top1", "mean"),
    )
    # the other side's reach: the GMACs every one of its seeds covers
    reach = curves.groupby(["backbone", "other", "other_role"], sort=True).agg(
        other_gmacs_min=("xmin", "max"), other_gmacs_max=("xmax", "min")
    )
    rows = anchors.reset_index().merge(reach.reset_index(), on="backbone")
    rows = rows[rows["role"] != rows["other_role"]]
    is_learned = (rows["role"] == "learned").to_numpy()
    rows = rows.assign(
        learned=np.where(is_learned, rows["method"], rows["other"]),
        control=np.where(is_learned, rows["other"], rows["method"]),
        anchor=rows["role"],
        anchor_merging=rows["method"].isin(set(methods_with_role(table, "merging"))),
    )
    out = rows.merge(diff, on=keys, how="left").merge(sides.reset_index(), on=keys, how="left")
    # a control setting at the very GMACs of a learned one repeats that comparison: keep one row
    pair = ["backbone", "learned", "control"]
    twin = (
        out[["anchor", "anchor_gmacs", *pair]]
        .reset_index()
        .merge(out.loc[out["anchor"] == "learned", [*pair, "anchor_gmacs"]], on=pair, suffixes=("", "_learned"))
    )
    twin = twin[
        (twin["anchor"] == "control") & np.isclose(twin["anchor_gmacs"], twin["anchor_gmacs_learned"], MATCH_RTOL, 0)
    ]
    out = out.drop(index=twin["index"].unique())
    out["n_pairs"] = out["n_pairs"].fillna(0).astype(int)
    out["anchor_n_seeds"] = out["anchor_n_seeds"].astype(int)
    out = out.assign(_g=-out["anchor_gmacs"]).sort_values(
        ["backbone", "learned", "control", "_g", "anchor"], kind="mergesort"
    )
    return out[ABLATION_COLUMNS].reset_index(drop=True)
