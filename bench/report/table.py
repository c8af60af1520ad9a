"""The results table rendered three ways: Markdown (report), LaTeX (booktabs, ready to ``\\input``) and CSV.

Everything here reads the seed summary (:mod:`bench.report.summary`) and the runs table only. Failed and
missing runs are listed, never fatal. Output is deterministic: same table, same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.cells import DASH, UNRELIABLE_MARK, cell_text, finite, latency, mean_std, sig3, speedup
from bench.report.summary import INTERVALS, missing_runs, value_text
from bench.results.collect import TABLE_PARQUET, parse_created_at
from bench.results.record import BY_NAME, COLUMNS, displayed

GMACS_HEADER = BY_NAME["gmacs_fvcore_1mac_eq_1flop"].label
_MAX_ERROR_CHARS = 300


def uniq(values: pd.Series) -> list[str]:
    """Sorted distinct non-missing values as strings (for 'batch 256 @ cuda' style cells)."""
    # distinct first: a 10,000-run column has a handful of values
    return sorted({value_text(v) for v in values.dropna().unique()})


def _cell(value: Any) -> str:
    """Markdown-safe single-line cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[Any]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _has(summary: pd.DataFrame, column: str) -> bool:
    """Some row has a value ("" is none: a text column joined over no values)."""
    return column in summary and bool((summary[column].notna() & (summary[column].astype(str) != "")).any())


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
    header = ["Backbone", "Method", "Keep ratio", "Seeds ok", "Seeds timed"] + [
        _memory_header(summary) if c.cell == "mem" else c.label for c, _ in columns
    ]
    align = "llrrr" + "".join("l" if c.cell in ("batch_device", "text") else "r" for c, _ in columns)
    rows = [
        [
            r.backbone,
            r.method,
            str(round(r.keep_ratio, 6)),
            f"{r.n_ok}/{r.n_runs}",
            f"{r.n_timed}/{r.n_ok}",
            *(cell_text(c.cell, r, name) for c, name in columns),
        ]
        for r in summary.itertuples(index=False)
    ]
    return header, rows, align


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
    return (
        out.replace("±", r"$\pm$")
        .replace("×", r"$\times$")
        .replace("—", "--")
        .replace("–", "--")
        .replace("≥", r"$\geq$")
        .replace("†", r"$^\dagger$")
    )


def _memory_kind(summary: pd.DataFrame) -> str:
    kinds = set(uniq(summary["peak_mem_kind"])) - {""} if "peak_mem_kind" in summary else set()
    return kinds.pop() if len(kinds) == 1 else "mixed" if kinds else ""


def _memory_header(summary: pd.DataFrame) -> str:
    kind = _memory_kind(summary)
    if kind == "cpu_rss_growth":
        return "RSS growth in one forward (MiB, CPU)"
    if kind == "cuda_max_memory_allocated":
        return "Peak inference memory (MiB, CUDA allocator)"
    return BY_NAME["peak_inference_mem_mib"].label


def statistics_note(summary: pd.DataFrame) -> str:
    """The caption line naming how every figure of the table was made (the tests and intervals used)."""
    batches = ", ".join(b for b in uniq(summary["peak_mem_batch"]) if b) if "peak_mem_batch" in summary else ""
    reps = uniq(summary.loc[summary["speedup_interval"] == "repeats", "speedup_ci_n"])
    repeats = f"{'/'.join(reps)} " if reps else ""
    at = f" at batch {batches}" if batches else " at the largest batch timed"
    memory = {
        "cpu_rss_growth": f"growth of the process's RSS during one forward{at} (CPU; weights not included, "
        "memory the allocator reuses not counted: a lower bound)",
        "cuda_max_memory_allocated": f"the CUDA allocator's peak during one forward{at} (after a reset), "
        "weights and input included",
    }.get(_memory_kind(summary), "CUDA allocator peak or, on a CPU, RSS growth of one forward (see results.csv)")
    return (
        "n: ok seeds. Top-1: mean ± sample std over the n seeds (n = 1: no std). Speed-up: each seed's median paired ratio to the "
        "reference (exactly 1 by definition, no interval), averaged over the timed seeds (all n unless marked "
        f"k/n seeds); [a, b]: {INTERVALS['t95']} interval over n ≥ 3 seeds or, with one seed, the distribution-free "
        f"(order-statistic) CI of the median over its {repeats}paired repeats (level in results.csv); "
        "(a–b): with two seeds, their range, no interval; "
        f"{UNRELIABLE_MARK}: spread above the noise threshold after the retries. Latency: batch 1, median over "
        f"repeats. Memory: {memory}."
    )


#: the paper table: (header, unit line, cell of a summary row, alignment); everything else is in results.csv
PAPER_COLUMNS: list[tuple[str, str, Any, str]] = [
    ("Method", "", lambda r: r.method, "l"),
    ("Keep", "ratio", lambda r: f"{r.keep_ratio:g}", "r"),
    ("Top-1", "(%, n)", lambda r: mean_std(r.top1_mean, r.top1_std) + (f" ({r.n_ok})" if r.n_ok else ""), "r"),
    ("GMACs", "", lambda r: sig3(r.gmacs), "r"),
    ("Params", "(M)", lambda r: cell_text("num2", r, "params_m"), "r"),
    ("Speed-up", "(×)", lambda r: speedup(r, r.role_reference is True and r.keep_ratio == 1.0, compact=True), "r"),
    ("Latency", "bs 1 (ms)", lambda r: latency(r, with_spread=False), "r"),
    ("Memory", "(MiB)", lambda r: cell_text("mem", r, "peak_mem"), "r"),
]


def render_latex(summary: pd.DataFrame, caption: str) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``) that a paper can ``\\input`` at one column width:
    the columns of :data:`PAPER_COLUMNS`, one block per backbone, and the caption line naming the statistics."""
    header = [h for h, _, _, _ in PAPER_COLUMNS]
    units = [u for _, u, _, _ in PAPER_COLUMNS]
    cells = [cell for _, _, cell, _ in PAPER_COLUMNS]
    if _memory_kind(summary) == "cpu_rss_growth":
        header[-1], units[-1] = "RSS growth", "(MiB, CPU)"
    seeds = set(summary.loc[summary["n_ok"] > 0, "n_ok"].astype(int))
    if len(seeds) == 1:  # every row has the same n: stated once, in the header, beside the unit
        top1 = header.index("Top-1")
        units[top1] = f"(%, n = {seeds.pop()})"
        cells[top1] = lambda r: mean_std(r.top1_mean, r.top1_std)
    align = "".join(a for _, _, _, a in PAPER_COLUMNS)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\footnotesize",
        r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{{_latex(caption.rstrip() + ' ' + statistics_note(summary))}}}",
        rf"\begin{{tabular}}{{@{{}}{align}@{{}}}}",
        r"\toprule",
        " & ".join(_latex(h) for h in header) + r" \\",
        " & ".join(_latex(u) for u in units) + r" \\",
        r"\midrule",
    ]
    previous = None
    for r in summary.itertuples(index=False):
        if r.backbone != previous:  # one block per backbone, named in a row of its own
            if previous is not None:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{len(PAPER_COLUMNS)}}}{{@{{}}l}}{{\textit{{{_latex(r.backbone)}}}}} \\")
        previous = r.backbone
        lines.append(" & ".join(_latex(cell(r)) for cell in cells) + r" \\")
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
                str(round(r.keep_ratio, 6)) if finite(r.keep_ratio) else DASH,
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
    parts.append(untimed_section(table))
    return "\n\n".join(p for p in parts if p)


def untimed_section(table: pd.DataFrame) -> str:
    """Evaluated runs without a timing of their own (``timing_status``), and why: no speed-up, latency or
    memory is shown for them, and their rows say how many seeds were timed."""
    if "timing_status" not in table:
        return ""
    ok = table[(table["status"] == "ok") & table["timing_status"].notna() & (table["timing_status"] != "timed")]
    if ok.empty:
        return "Every evaluated run was timed."
    rows = [
        [
            r.run_id,
            r.method,
            r.backbone,
            f"{r.keep_ratio:g}",
            value_text(r.seed),
            r.timing_status.removeprefix("untimed: "),
        ]
        for r in ok.itertuples(index=False)
    ]
    return f"{len(rows)} evaluated run(s) without a timing of their own (no speed-up shown for them):\n\n" + md_table(
        ["Run id", "Method", "Backbone", "Keep ratio", "Seed", "Why untimed"], rows, "lllrrl"
    )


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
    if "data_index_unreadable_skipped" in table:  # skip_unreadable: what the data left out is part of the result
        skipped = pd.to_numeric(table["data_index_unreadable_skipped"], errors="coerce").dropna()
        if len(skipped) and skipped.max() > 0:
            items.append(
                ("Images left out as unreadable (skip_unreadable)", _values(table, "data_index_unreadable_skipped"))
            )
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
        "Top-5 and EMA top-1 as top-1. "
        "GMACs: per image, counted by fvcore, where one multiply-add counts as one flop. "
        "Theoretical GMACs count only nonzero weights (what sparse kernels could at best run). "
        "Throughput: model-only img/s at the largest batch size timed, median over seeds of each run's median "
        "over repeats, with its IQR and coefficient of variation. "
        "Speed-up: paired ratios to the reference method (dense) on the same backbone, timed interleaved with it "
        "in one job on one device (see *What was timed*). Seeds timed: ok seeds with a timing of their own "
        "(a seed evaluated again since is untimed and listed under *Failed or missing runs*). "
        + statistics_note(summary)
        + " Latency (IQR): spread over repeats. "
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
