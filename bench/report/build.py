"""``bench report``: every table and figure of a suite, from ``results/<suite>/table.parquet`` alone.

Writes into ``results/<suite>/report/``: the results table (Markdown inside ``report.md``, LaTeX
``results.tex``, CSV ``results.csv``), the two trade-off figures (top-1 vs GMACs, top-1 vs throughput),
the matched-budget comparison and the learned-vs-control ablation (tables and figures), the paper
figures, the kept-token gallery, and ``index.md`` linking all of it with the provenance block and the
list of failed or missing runs. Same input, same bytes; missing or failed runs are holes, never errors.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io import atomic_write_text, open_artifact
from bench.report.figures import FIGURES, FigureContext, build_figures, load_published
from bench.report.gallery import plot_gallery
from bench.report.plots import plot_tradeoff, timing_setup
from bench.report.style import method_styles
from bench.report.summary import methods_with_role, summarize
from bench.report.table import (
    holes_section,
    provenance_section,
    render_csv,
    render_latex,
    render_markdown,
    suite_and_dataset,
)
from bench.results.collect import KEPT_NPZ, TABLE_PARQUET, collect

REPORT_MD = "report.md"
INDEX_MD = "index.md"
GALLERY_PNG = "kept_tokens_gallery.png"


def _load(suite_dir: Path) -> pd.DataFrame:
    if not (suite_dir / TABLE_PARQUET).is_file():
        collect(suite_dir)  # raises UsageError when the suite dir does not exist
    with open_artifact(suite_dir / TABLE_PARQUET) as f:  # a planted link: refused (bench.io)
        return pd.read_parquet(f)


def _gallery(table: pd.DataFrame, suite_dir: Path, out_dir: Path) -> list[Path]:
    """One row per token-reducing method at its lowest keep ratio (first seed), from the runs' npz records."""
    ok = table[(table["status"] == "ok") & table["run_id"].notna() & (table["keep_ratio"] < 1.0)]
    first = ok.sort_values(["backbone", "method", "keep_ratio", "seed"]).drop_duplicates(["backbone", "method"])
    # a merging method's keep ratio is a setting (mapped to its r), not a share of tokens kept
    merging = set(methods_with_role(first, "merging"))
    entries = [
        (
            f"{r.method}\n{'setting' if r.method in merging else 'keep'} {r.keep_ratio:g}",
            suite_dir / "runs" / r.run_id / KEPT_NPZ,
        )
        for r in first.itertuples(index=False)
    ]
    entries = [(label, path) for label, path in entries if path.is_file()]
    return [plot_gallery(entries, out_dir / GALLERY_PNG)] if entries else []


def _paper_figure(ctx: FigureContext, name: str) -> list[Path]:
    return build_figures(ctx, [name])[name]


def _call(task: tuple[Callable[..., Any], tuple, dict]) -> list[Path]:
    fn, args, kwargs = task
    out = fn(*args, **kwargs)
    return list(out.values()) if isinstance(out, dict) else list(out)


def _warm_fonts() -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, "warm-up ±×")
    for fmt in ("png", "pdf"):
        fig.savefig(io.BytesIO(), format=fmt)


class _Renderer:
    """Draws figures while the caller goes on computing: in forked worker processes when there are cores
    for it (figure drawing dominates a large report, each figure is independent, and byte-stable whichever
    process draws it), else in line. Results come back in submission order."""

    def __init__(self, workers: int | None, n_tasks: int) -> None:
        workers = workers or int(os.environ.get("TOKENBENCH_REPORT_WORKERS", os.cpu_count() or 1))
        self._pool = None
        if workers > 1 and n_tasks > 1 and "fork" in multiprocessing.get_all_start_methods():
            _warm_fonts()  # once here, not once per forked worker
            self._pool = multiprocessing.get_context("fork").Pool(min(workers, n_tasks))
        self._pending: list[Any] = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        task = (fn, args, kwargs)
        self._pending.append(self._pool.apply_async(_call, (task,)) if self._pool else _call(task))

    def results(self) -> list[Path]:
        done = [r.get() if self._pool else r for r in self._pending]
        return [p for paths in done for p in paths]

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._pool:  # on an error, stop drawing at once; else let the workers finish their last figure
            self._pool.terminate() if exc_type else self._pool.close()
            self._pool.join()


def _write_tables(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    matched: pd.DataFrame,
    abl: pd.DataFrame,
    suite: str,
    dataset: str,
    out_dir: Path,
) -> tuple[dict[str, Path], str, str, str]:
    """Write the LaTeX and CSV tables; return their paths, the report text (written last, once the figures it
    links exist) and the holes and provenance sections (shared with the index)."""
    from bench.report.matched_render import ablation_markdown, matched_markdown

    # a paper's caption names the dataset, not its build options (those are in results.csv and the provenance)
    names = ", ".join(sorted({d.split("(", 1)[0].strip() for d in dataset.split(", ")})) or dataset
    caption = (
        f"Results of suite {suite} on {names}: top-1 mean ± std over seeds; GMACs counted by fvcore "
        f"(1 multiply-add = 1 flop); speed-up measured against dense."
    )
    paths = {
        "results.tex": atomic_write_text(out_dir / "results.tex", render_latex(summary, caption)),
        "results.csv": atomic_write_text(out_dir / "results.csv", render_csv(summary)),
        "matched_budget.csv": atomic_write_text(
            out_dir / "matched_budget.csv", matched.to_csv(index=False, float_format="%.6g")
        ),
        "ablation.csv": atomic_write_text(out_dir / "ablation.csv", abl.to_csv(index=False, float_format="%.6g")),
    }
    from bench.report.timing_section import speedup_by_batch_markdown, what_was_timed_markdown

    figures = [
        ("top-1 vs GMACs", "tradeoff_top1_vs_gmacs.png"),
        ("top-1 vs throughput", "tradeoff_top1_vs_throughput.png"),
        ("top-1 vs paired speed-up over dense", "tradeoff_top1_vs_speedup.png"),
    ]
    extra = [
        "## What was timed",
        what_was_timed_markdown(table),
        "## Speed-up by batch size",
        speedup_by_batch_markdown(table, summary),
        "## Matched-budget comparison",
        matched_markdown(matched),
        "![matched budgets](matched_budget.png)",
        "## Ablation: learned vs control token selection at matched GMACs",
        ablation_markdown(abl),
        "![ablation](ablation.png)",
    ]
    holes, provenance = holes_section(table), provenance_section(table)
    report_md = render_markdown(table, summary, suite, dataset, figures, extra, holes=holes, provenance=provenance)
    return paths, report_md, holes, provenance


def build_report(
    suite_dir: Path, out_dir: Path | None = None, workers: int | None = None, paper_figures: bool = False
) -> dict[str, Path]:
    """Write the report; returns {file name: path}. ``workers``: processes drawing figures (default: the
    CPU count, or ``TOKENBENCH_REPORT_WORKERS``). Paper figures are ``bench figures``' job (the pipeline runs
    it first) unless ``paper_figures``; the index links whichever are in the folder."""
    from bench.report.matched import ablation, matched_budget
    from bench.report.matched_render import plot_ablation, plot_matched

    suite_dir = Path(suite_dir)
    out_dir = Path(out_dir) if out_dir is not None else suite_dir / "report"
    table = _load(suite_dir)
    summary = summarize(table)
    suite, dataset = suite_and_dataset(table, suite_dir)
    styles = method_styles(table)  # one look per method, for every figure below and the paper figures
    timed = timing_setup(table)  # titles stay short: what was measured where, not the suite's options
    names = FIGURES.names() if paper_figures else []
    # Figures are submitted as soon as their data exists, so workers draw while this process computes.
    with _Renderer(workers, 6 + len(names)) as renderer:
        renderer.submit(plot_tradeoff, summary, "Top-1 vs GMACs", out_dir, styles=styles)
        renderer.submit(
            plot_tradeoff,
            summary,
            f"Top-1 vs throughput\n{timed}",
            out_dir,
            stem="tradeoff_top1_vs_throughput",
            x="throughput",
            styles=styles,
        )
        renderer.submit(
            plot_tradeoff,
            summary,
            f"Top-1 vs paired speed-up over dense\n{timed}",
            out_dir,
            stem="tradeoff_top1_vs_speedup",
            x="speedup",
            styles=styles,
        )
        renderer.submit(_gallery, table, suite_dir, out_dir)
        matched = matched_budget(table)
        renderer.submit(plot_matched, matched, out_dir, styles=styles)
        abl = ablation(table)  # learned vs controls, as the methods' roles say
        renderer.submit(plot_ablation, abl, out_dir, styles=styles)
        if names:
            ctx = FigureContext(table, summary, out_dir, styles, load_published())
            for name in names:
                renderer.submit(_paper_figure, ctx, name)
        paths, report_md, holes, provenance = _write_tables(table, summary, matched, abl, suite, dataset, out_dir)
        paths.update({p.name: p for p in renderer.results()})
    # paper figures drawn earlier by `bench figures` into this folder are part of the report too
    paths.update({p.name: p for p in sorted(out_dir.glob("paper_*.p*")) if p.name not in paths})
    paths[REPORT_MD] = atomic_write_text(out_dir / REPORT_MD, report_md)
    paths[INDEX_MD] = atomic_write_text(
        out_dir / INDEX_MD, render_index(table, suite, dataset, paths, holes=holes, provenance=provenance)
    )
    return dict(sorted(paths.items()))


def render_index(
    table: pd.DataFrame,
    suite: str,
    dataset: str,
    paths: dict[str, Path],
    *,
    holes: str | None = None,
    provenance: str | None = None,
) -> str:
    """One page linking every table and figure, with provenance and the runs that are holes (both sections
    are taken from the caller when it has already rendered them)."""
    names = sorted(paths)
    groups = [
        ("Report", [n for n in names if n == REPORT_MD]),
        ("Tables", [n for n in names if n.endswith((".tex", ".csv"))]),
        ("Trade-off figures", [n for n in names if n.startswith("tradeoff_")]),
        (
            "Matched budgets and ablation",
            [n for n in names if n.startswith(("matched_", "ablation")) and not n.endswith(".csv")],
        ),
        ("Paper figures", [n for n in names if n.startswith("paper_")]),
        ("Kept tokens", [n for n in names if n.startswith("kept_tokens")]),
    ]
    lines = [
        f"# Suite `{suite}` ({dataset})",
        "",
        "Everything here is regenerated from `table.parquet` by `bench report` (no training).",
        "",
    ]
    for heading, files in groups:
        if files:
            lines += [f"## {heading}", ""] + [f"- [{n}]({n})" for n in files] + [""]
    registered = ", ".join(f"`{n}`" for n in FIGURES.names())
    lines += [
        f"Paper figures registered: {registered} (each draws only when the suite has its methods).",
        "",
        "## Failed or missing runs",
        "",
        holes_section(table) if holes is None else holes,
        "",
        "## Provenance",
        "",
        provenance_section(table) if provenance is None else provenance,
        "",
    ]
    return "\n".join(lines)
