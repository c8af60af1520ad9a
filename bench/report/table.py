"""Suite report: aggregate the collected table over seeds and render Markdown + plots.

The report reads only ``<suite_dir>/table.parquet`` (collecting first if it is absent),
so it reflects exactly what ``bench collect`` saw. Failed and missing runs are listed,
never fatal. Output is deterministic: same table, same bytes.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io import atomic_write_text
from bench.report.plots import DENSE_METHOD, plot_tradeoff
from bench.results.collect import TABLE_PARQUET, collect, parse_created_at

GROUP_KEYS = ["backbone", "method", "keep_ratio"]
GMACS_HEADER = "GMACs (fvcore, 1 MAC = 1 flop)"
REPORT_MD = "report.md"
_DASH = "—"
_MAX_ERROR_CHARS = 300


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _uniq(values: pd.Series) -> list[str]:
    """Sorted distinct non-missing values as strings (for 'batch 256 @ cuda' style cells)."""
    out = set()
    for v in values.dropna():
        out.add(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return sorted(out)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone x method x keep_ratio with seed statistics and dense deltas.

    Throughput is the median over runs of each run's median img/s (IQR likewise), so one
    slow outlier seed does not drag the figure. Std is the sample std (ddof=1), NaN for one seed.
    """
    cols = ["backbone", "method", "keep_ratio", "n_ok", "n_runs", "seeds_ok", "top1_mean", "top1_std",
            "top5_mean", "top5_std", "gmacs", "params_m", "throughput", "throughput_iqr",
            "throughput_batch", "throughput_device", "mean_tokens", "speedup", "flops_reduction_pct"]
    keyed = table.dropna(subset=GROUP_KEYS).copy()
    if keyed.empty:
        return pd.DataFrame(columns=cols)
    # Round so 0.7 and 0.7000000001 land in one group.
    keyed["keep_ratio"] = keyed["keep_ratio"].astype(float).round(6)
    rows = []
    for (backbone, method, ratio), grp in keyed.groupby(GROUP_KEYS, sort=True):
        ok = grp[grp["status"] == "ok"]
        rows.append({
            "backbone": backbone, "method": method, "keep_ratio": float(ratio),
            "n_ok": len(ok), "n_runs": len(grp),
            "seeds_ok": ",".join(_uniq(ok["seed"])),
            "top1_mean": ok["top1"].mean(), "top1_std": ok["top1"].std(ddof=1),
            "top5_mean": ok["top5"].mean(), "top5_std": ok["top5"].std(ddof=1),
            "gmacs": ok["gmacs_fvcore_1mac_eq_1flop"].mean(), "params_m": ok["params_m"].mean(),
            "throughput": ok["throughput_img_s"].median(),
            "throughput_iqr": ok["throughput_img_s_iqr"].median(),
            "throughput_batch": "/".join(_uniq(ok["throughput_batch_size"])),
            "throughput_device": "/".join(_uniq(ok["throughput_device"])),
            "mean_tokens": ok["mean_tokens"].mean(),
        })
    summary = pd.DataFrame(rows)
    dense = summary[(summary["method"] == DENSE_METHOD) & (summary["keep_ratio"] == 1.0) & (summary["n_ok"] > 0)]
    dense = dense.set_index("backbone")
    ref_thr = summary["backbone"].map(dense["throughput"])
    ref_gmacs = summary["backbone"].map(dense["gmacs"])
    summary["speedup"] = summary["throughput"] / ref_thr
    summary["flops_reduction_pct"] = 100.0 * (1.0 - summary["gmacs"] / ref_gmacs)
    # Reading order: per backbone, dense first, then methods by name, high keep ratio first.
    summary["_dense_last"] = summary["method"] != DENSE_METHOD
    summary = summary.sort_values(["backbone", "_dense_last", "method", "keep_ratio"],
                                  ascending=[True, True, True, False], kind="mergesort")
    return summary.drop(columns="_dense_last").reset_index(drop=True)[cols]


def _num(value: Any, decimals: int) -> str:
    return f"{float(value):.{decimals}f}" if _finite(value) else _DASH


def _mean_std(mean: Any, std: Any, decimals: int = 2) -> str:
    if not _finite(mean):
        return _DASH
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if _finite(std) else f"{mean:.{decimals}f}"


def _cell(value: Any) -> str:
    """Markdown-safe single-line cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[Any]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _results_section(summary: pd.DataFrame) -> str:
    header = ["Backbone", "Method", "Keep ratio", "Seeds ok", "Top-1 (%)", "Top-5 (%)", GMACS_HEADER,
              "Params (M)", "Throughput img/s, median (IQR)", "Throughput batch @ device", "Mean tokens",
              "Speed-up vs dense", "FLOPs reduction vs dense"]
    rows = []
    for r in summary.itertuples(index=False):
        thr = f"{r.throughput:.1f} ({r.throughput_iqr:.1f})" if _finite(r.throughput_iqr) else _num(r.throughput, 1)
        setup = f"{r.throughput_batch or '?'} @ {r.throughput_device or '?'}" if r.n_ok else _DASH
        rows.append([
            r.backbone, r.method, str(round(r.keep_ratio, 6)), f"{r.n_ok}/{r.n_runs}",
            _mean_std(r.top1_mean, r.top1_std), _mean_std(r.top5_mean, r.top5_std),
            _num(r.gmacs, 3), _num(r.params_m, 2), thr, setup, _num(r.mean_tokens, 1),
            f"{r.speedup:.2f}×" if _finite(r.speedup) else _DASH,
            f"{r.flops_reduction_pct:.1f} %" if _finite(r.flops_reduction_pct) else _DASH,
        ])
    if not rows:
        return "_No run records with method, backbone and keep ratio._"
    return _md_table(header, rows, "llrrrrrrrlrrr")


def _short_error(error: Any) -> str:
    """Last non-empty line of the error (a traceback ends with the message), truncated."""
    if not isinstance(error, str) or not error.strip():
        return "(no error message)"
    line = [ln for ln in error.strip().splitlines() if ln.strip()][-1].strip()
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"


def missing_runs(table: pd.DataFrame) -> list[tuple[str, str, float, int]]:
    """(backbone, method, keep_ratio, seed) with no record at all.

    The suite file is not available here, so the expected grid is inferred: every
    method x keep_ratio seen, on every backbone seen, for every seed seen.
    """
    keyed = table.dropna(subset=GROUP_KEYS + ["seed"])
    if keyed.empty:
        return []
    seen = {(b, m, round(float(k), 6), int(s)) for b, m, k, s in
            keyed[GROUP_KEYS + ["seed"]].itertuples(index=False)}
    configs = sorted({(m, round(float(k), 6)) for m, k in keyed[["method", "keep_ratio"]].itertuples(index=False)})
    backbones = sorted(keyed["backbone"].unique())
    seeds = sorted(int(s) for s in keyed["seed"].unique())
    return [(b, m, k, s) for b, (m, k), s in itertools.product(backbones, configs, seeds)
            if (b, m, k, s) not in seen]


def _holes_section(table: pd.DataFrame) -> str:
    failed = table[table["status"] != "ok"]
    parts = []
    if failed.empty:
        parts.append("No failed runs.")
    else:
        rows = [[r.run_id, r.status, r.method, r.backbone,
                 str(round(r.keep_ratio, 6)) if _finite(r.keep_ratio) else _DASH,
                 r.seed if pd.notna(r.seed) else _DASH, _short_error(r.error)]
                for r in failed.fillna({"method": _DASH, "backbone": _DASH}).itertuples(index=False)]
        parts.append(f"{len(rows)} failed or missing run(s):\n\n"
                     + _md_table(["Run id", "Status", "Method", "Backbone", "Keep ratio", "Seed", "Error"], rows,
                                 "llllrrl"))
    missing = missing_runs(table)
    if missing:
        rows = [[b, m, str(k), s] for b, m, k, s in missing]
        parts.append(f"{len(rows)} run(s) with no record (grid inferred from the methods, keep ratios, "
                     "backbones and seeds present):\n\n"
                     + _md_table(["Backbone", "Method", "Keep ratio", "Seed"], rows, "llrr"))
    return "\n\n".join(parts)


def _values(table: pd.DataFrame, column: str) -> str:
    vals = _uniq(table[column]) if column in table else []
    return ", ".join(f"`{v}`" for v in vals) if vals else _DASH


def _provenance_section(table: pd.DataFrame) -> str:
    shas = []
    if not table.empty:
        pairs = table[["git_sha", "git_dirty"]].drop_duplicates().dropna(subset=["git_sha"])
        for sha, dirty in sorted(pairs.itertuples(index=False), key=lambda p: (str(p[0]), str(p[1]))):
            flag = "dirty flag unknown" if pd.isna(dirty) else "dirty" if bool(dirty) else "clean"
            shas.append(f"`{sha}` ({flag})")
    stamps = sorted((parse_created_at(v), v) for v in table["created_at"].dropna())
    stamps = [s for s in stamps if s[0].year > 1]
    dates = f"{stamps[0][1]} … {stamps[-1][1]}" if stamps else _DASH
    items = [
        ("Git commit(s)", ", ".join(shas) or _DASH),
        ("torch", _values(table, "torch_version")), ("timm", _values(table, "timm_version")),
        ("Python", _values(table, "python_version")),
        ("Device (train/eval)", _values(table, "device")),
        ("Throughput device", _values(table, "throughput_device")),
        ("Precision", _values(table, "precision")),
        ("Throughput batch size", _values(table, "throughput_batch_size")),
        ("CPU threads", _values(table, "cpu_threads")),
        ("Host(s)", _values(table, "hostname")),
        ("Run dates (UTC)", dates),
    ]
    return "\n".join(f"- **{k}:** {v}" for k, v in items)


def _suite_and_dataset(table: pd.DataFrame, suite_dir: Path) -> tuple[str, str]:
    suites = _uniq(table["suite"]) if not table.empty else []
    datasets = _uniq(table["dataset"]) if not table.empty else []
    return (", ".join(suites) or suite_dir.name), (", ".join(datasets) or "unknown dataset")


def render_markdown(table: pd.DataFrame, summary: pd.DataFrame, suite: str, dataset: str,
                    figure_name: str | None = None) -> str:
    """Full report text: results table, holes, provenance."""
    n_ok = int((table["status"] == "ok").sum())
    parts = [
        f"# Report: suite `{suite}`",
        f"Dataset: **{dataset}**. Runs: {n_ok} ok, {len(table) - n_ok} failed "
        f"(source: `{TABLE_PARQUET}`).",
        "## Results",
        _results_section(summary),
        "Top-1/top-5: mean ± sample std over ok seeds (no ± with a single seed). "
        "GMACs: per image, counted by fvcore, where one multiply-add counts as one flop. "
        "Throughput: median over seeds of each run's median img/s, IQR in parentheses. "
        "Speed-up: throughput / throughput of method `dense` at keep ratio 1.0 on the same backbone; "
        "FLOPs reduction: 1 − GMACs / dense GMACs. Mean tokens: tokens entering a block, averaged over blocks.",
    ]
    if figure_name:
        parts.append(f"![top-1 vs GMACs]({figure_name})")
    parts += ["## Failed or missing runs", _holes_section(table), "## Provenance", _provenance_section(table)]
    return "\n\n".join(parts) + "\n"


def build_report(suite_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write report.md and the trade-off PNG/PDF; returns {file name: path}."""
    suite_dir = Path(suite_dir)
    out_dir = Path(out_dir) if out_dir is not None else suite_dir / "report"
    table_path = suite_dir / TABLE_PARQUET
    if not table_path.is_file():
        collect(suite_dir)  # raises UsageError when the suite dir does not exist
    table = pd.read_parquet(table_path)
    summary = summarize(table)
    suite, dataset = _suite_and_dataset(table, suite_dir)
    paths = plot_tradeoff(summary, f"Suite {suite} — {dataset}: top-1 vs compute", out_dir)
    png_name = next(name for name in paths if name.endswith(".png"))
    text = render_markdown(table, summary, suite, dataset, figure_name=png_name)
    paths[REPORT_MD] = atomic_write_text(out_dir / REPORT_MD, text)
    return paths
