"""The results table rendered three ways: Markdown (report), LaTeX (booktabs, ready to ``\\input``) and CSV.

Everything here reads the seed summary (:mod:`bench.report.summary`) and the runs table only. Failed and
missing runs are listed, never fatal. Output is deterministic: same table, same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.summary import missing_runs, value_text
from bench.results.collect import TABLE_PARQUET, parse_created_at
from bench.results.record import BY_NAME, COLUMNS, displayed, img_per_s_text

GMACS_HEADER = BY_NAME["gmacs_fvcore_1mac_eq_1flop"].label
DASH = "—"
_MAX_ERROR_CHARS = 300


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def uniq(values: pd.Series) -> list[str]:
    """Sorted distinct non-missing values as strings (for 'batch 256 @ cuda' style cells)."""
    # distinct first: a 10,000-run column has a handful of values
    return sorted({value_text(v) for v in values.dropna().unique()})


def _num(value: Any, decimals: int) -> str:
    return f"{float(value):.{decimals}f}" if _finite(value) else DASH


def _mean_std(mean: Any, std: Any, decimals: int = 2) -> str:
    if not _finite(mean):
        return DASH
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if _finite(std) else f"{mean:.{decimals}f}"


def _cell(value: Any) -> str:
    """Markdown-safe single-line cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[Any]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return f"{value:.1f} %" if _finite(value) else DASH


def _has(summary: pd.DataFrame, column: str) -> bool:
    """Some row has a value ("" is none: a text column joined over no values)."""
    return column in summary and bool((summary[column].notna() & (summary[column].astype(str) != "")).any())


def _cell_text(kind: str, r: Any, name: str) -> str:
    """One cell of the results table by its renderer (``Column.cell`` in bench.results.record)."""
    if kind == "mean_std":
        return _mean_std(getattr(r, f"{name}_mean"), getattr(r, f"{name}_std"))
    if kind in ("num1", "num2", "num3"):
        return _num(getattr(r, name), int(kind[-1]))
    if kind == "pct":
        return _pct(getattr(r, name))
    if kind == "times":
        value = getattr(r, name)
        return f"{value:.2f}×" if _finite(value) else DASH
    if kind == "throughput":
        return _throughput_cell(r)
    if kind == "speedup":
        return _speedup_cell(r)
    if kind == "batch_device":
        return f"{r.throughput_batch or '?'} @ {r.throughput_device or '?'}" if r.n_ok else DASH
    if kind == "text":
        value = getattr(r, name)
        return DASH if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else str(value)
    raise ValueError(f"unknown cell renderer {kind!r} of column {name!r}")


def table_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, alignment) of the results table: the run record's displayed columns, in its order; an
    optional column appears only when some run has a value."""
    columns = []
    for c in displayed():
        name = c.summary_name
        probe = f"{name}_mean" if c.cell == "mean_std" else name
        if c.optional and not _has(summary, probe):
            continue
        columns.append((c, name))
    header = ["Backbone", "Method", "Keep ratio", "Seeds ok"] + [c.label for c, _ in columns]
    align = "llrr" + "".join("l" if c.cell in ("batch_device", "text") else "r" for c, _ in columns)
    rows = [
        [
            r.backbone,
            r.method,
            str(round(r.keep_ratio, 6)),
            f"{r.n_ok}/{r.n_runs}",
            *(_cell_text(c.cell, r, name) for c, name in columns),
        ]
        for r in summary.itertuples(index=False)
    ]
    return header, rows, align


UNRELIABLE_MARK = "†"


def _throughput_cell(r: Any) -> str:
    """img/s to five significant digits (resolves 0.5 %), its IQR and CV; † when its spread passed the threshold."""
    if not _finite(r.throughput):
        return DASH
    spread = f" ({img_per_s_text(r.throughput_iqr)}; {100 * r.throughput_cv:.1f} %)" if _finite(r.throughput_cv) else ""
    return img_per_s_text(r.throughput) + spread + (f" {UNRELIABLE_MARK}" if r.throughput_unreliable is True else "")


def _speedup_cell(r: Any) -> str:
    if not _finite(r.speedup):
        return DASH
    ci = f" [{r.speedup_ci_low:.3f}, {r.speedup_ci_high:.3f}]" if _finite(r.speedup_ci_low) else ""
    return f"{r.speedup:.3f}×{ci}" + (f" {UNRELIABLE_MARK}" if r.speedup_unreliable is True else "")


def _results_section(summary: pd.DataFrame) -> str:
    header, rows, align = table_rows(summary)
    if not rows:
        return "_No run records with method, backbone and keep ratio._"
    return md_table(header, rows, align)


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("×", r"$\times$").replace("—", "--")


def render_latex(summary: pd.DataFrame, caption: str) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``), ready to ``\\input``."""
    header, rows, align = table_rows(summary)
    drop = header.index(BY_NAME["throughput_batch_size"].label)  # provenance, stated in the caption's source instead
    header = header[:drop] + header[drop + 1 :]
    rows = [r[:drop] + r[drop + 1 :] for r in rows]
    align = align[:drop] + align[drop + 1 :]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{_latex(caption)}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_latex(h) for h in header) + r" \\",
        r"\midrule",
    ]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            lines.append(r"\midrule")  # one block per backbone
        previous = row[0]
        lines.append(" & ".join(_latex(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(summary: pd.DataFrame) -> str:
    """The summary with raw numbers (full precision), under the run record's column names (units in them)."""
    names = {c.summary_name: c.name for c in COLUMNS if c.agg not in (None, "mean_std", "join", "first")}
    return summary.rename(columns=names).to_csv(index=False, float_format="%.6g", lineterminator="\n")


def _short_error(error: Any) -> str:
    """Last non-empty line of the error (a traceback ends with the message), truncated."""
    if not isinstance(error, str) or not error.strip():
        return "(no error message)"
    line = [ln for ln in error.strip().splitlines() if ln.strip()][-1].strip()
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"


def holes_section(table: pd.DataFrame) -> str:
    failed = table[table["status"] != "ok"]
    parts = []
    if failed.empty:
        parts.append("No failed runs.")
    else:
        rows = [
            [
                r.run_id,
                r.status,
                r.method,
                r.backbone,
                str(round(r.keep_ratio, 6)) if _finite(r.keep_ratio) else DASH,
                r.seed if pd.notna(r.seed) else DASH,
                _short_error(r.error),
            ]
            for r in failed.fillna({"method": DASH, "backbone": DASH}).itertuples(index=False)
        ]
        parts.append(
            f"{len(rows)} failed or missing run(s):\n\n"
            + md_table(["Run id", "Status", "Method", "Backbone", "Keep ratio", "Seed", "Error"], rows, "llllrrl")
        )
    missing = missing_runs(table)
    if missing:
        rows = [[b, m, str(k), s] for b, m, k, s in missing]
        parts.append(
            f"{len(rows)} run(s) with no record (grid inferred from the methods, keep ratios, "
            "backbones and seeds present):\n\n" + md_table(["Backbone", "Method", "Keep ratio", "Seed"], rows, "llrr")
        )
    return "\n\n".join(parts)


def _values(table: pd.DataFrame, column: str) -> str:
    vals = uniq(table[column]) if column in table else []
    return ", ".join(f"`{v}`" for v in vals) if vals else DASH


def provenance_section(table: pd.DataFrame) -> str:
    shas = []
    if not table.empty:
        pairs = table[["git_sha", "git_dirty"]].drop_duplicates().dropna(subset=["git_sha"])
        for sha, dirty in sorted(pairs.itertuples(index=False), key=lambda p: (str(p[0]), str(p[1]))):
            flag = "dirty flag unknown" if pd.isna(dirty) else "dirty" if bool(dirty) else "clean"
            shas.append(f"`{sha}` ({flag})")
    stamps = sorted((parse_created_at(v), v) for v in table["created_at"].dropna().unique())
    stamps = [s for s in stamps if s[0].year > 1]
    dates = f"{stamps[0][1]} … {stamps[-1][1]}" if stamps else DASH
    items = [
        ("Git commit(s)", ", ".join(shas) or DASH),
        ("torch", _values(table, "torch_version")),
        ("timm", _values(table, "timm_version")),
        ("Python", _values(table, "python_version")),
        ("Device (train/eval)", _values(table, "device")),
        ("Throughput device", _values(table, "throughput_device_key")),
        ("Precision", _values(table, "precision")),
        ("Throughput batch size", _values(table, "throughput_batch_size")),
        ("CPU threads", _values(table, "cpu_threads")),
        ("Host(s)", _values(table, "hostname")),
        ("Run dates (UTC)", dates),
    ]
    return "\n".join(f"- **{k}:** {v}" for k, v in items)


def suite_and_dataset(table: pd.DataFrame, suite_dir: Path) -> tuple[str, str]:
    suites = uniq(table["suite"]) if not table.empty else []
    datasets = uniq(table["dataset"]) if not table.empty else []
    return (", ".join(suites) or suite_dir.name), (", ".join(datasets) or "unknown dataset")


def render_markdown(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    suite: str,
    dataset: str,
    figures: list[tuple[str, str]] | None = None,
    extra: list[str] | None = None,
    *,
    holes: str | None = None,
    provenance: str | None = None,
) -> str:
    """Full report text: results table, figures, extra sections, holes, provenance (the last two taken from
    the caller when it has already rendered them)."""
    n_ok = int((table["status"] == "ok").sum())
    parts = [
        f"# Report: suite `{suite}`",
        f"Dataset: **{dataset}**. Runs: {n_ok} ok, {len(table) - n_ok} failed or missing (source: `{TABLE_PARQUET}`).",
        "## Results",
        _results_section(summary),
        "Top-1/top-5: mean ± sample std over ok seeds (no ± with a single seed). "
        "GMACs: per image, counted by fvcore, where one multiply-add counts as one flop. "
        "Theoretical GMACs count only nonzero weights (what sparse kernels could at best run). "
        "Throughput: model-only img/s at the largest batch size timed, median over seeds of each run's median "
        "over repeats, with its IQR and coefficient of variation. "
        "Speed-up: median of paired ratios to the reference method (dense) on the same backbone, timed "
        "interleaved with it in one job on one device (see *What was timed*), with a distribution-free 95 % "
        f"confidence interval of the median; {UNRELIABLE_MARK}: its spread (IQR / median) stayed above the noise "
        "threshold after the retries, so treat it as unreliable. "
        "FLOPs-implied speed-up: reference GMACs / GMACs; FLOPs reduction: 1 − GMACs / reference GMACs. "
        "Ops fvcore skipped (if shown): operators fvcore has no count for and that multiply no tensors. "
        "Mean tokens: tokens entering a block, averaged over blocks.",
    ]
    for caption, name in figures or []:
        parts.append(f"![{caption}]({name})")
    parts += list(extra or [])
    parts += [
        "## Failed or missing runs",
        holes_section(table) if holes is None else holes,
        "## Provenance",
        provenance_section(table) if provenance is None else provenance,
    ]
    return "\n\n".join(parts) + "\n"
