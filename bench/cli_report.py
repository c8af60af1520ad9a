"""`bench collect`, `bench report` and `bench figures`: the results commands (registered on :data:`bench.cli.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli import RESULTS, cli
from bench.errors import UsageError


@cli.command()
@click.argument("suite")
@RESULTS
def collect(suite: str, root: str) -> None:
    """Gather SUITE's run records into results/SUITE/table.parquet and table.csv."""
    from bench.results import collect as collect_runs

    suite_dir, expected = _suite_results(suite, root)
    df = collect_runs(suite_dir, expected)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    click.echo(
        f"{suite_dir}/table.parquet: {len(df)} runs ("
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("ok", "failed", "missing"))
        + ")"
    )


@cli.command()
@click.argument("suite")
@RESULTS
@click.option(
    "--out", type=click.Path(file_okay=False), default=None, help="Output folder (default results/SUITE/report)."
)
@click.option("--paper-figures", is_flag=True, help="Also draw the paper figures (else: `bench figures`).")
def report(suite: str, root: str, out: str | None, paper_figures: bool) -> None:
    """Every table (Markdown, LaTeX, CSV) and figure of SUITE's results, linked from report/index.md."""
    from bench.report import build_report

    suite_dir, _ = _suite_results(suite, root)
    paths = build_report(suite_dir, Path(out) if out else None, paper_figures=paper_figures)
    for p in sorted(paths.values()):
        click.echo(p)


@cli.command()
@click.argument("suite", required=False)
@RESULTS
@click.option(
    "--out", type=click.Path(file_okay=False), default=None, help="Output folder (default results/SUITE/report)."
)
@click.option("--only", multiple=True, help="Draw only this registered figure (repeatable).")
@click.option("--list", "list_", is_flag=True, help="List the registered paper figures and exit.")
def figures(suite: str | None, root: str, out: str | None, only: tuple[str, ...], list_: bool) -> None:
    """Regenerate the seed papers' figures from SUITE's results table (never trains)."""
    import pandas as pd

    from bench.report.figures import FIGURES, FigureContext, build_figures, load_published
    from bench.report.style import method_styles
    from bench.report.summary import summarize
    from bench.results.collect import TABLE_PARQUET, collect

    if list_:
        for name in FIGURES.names():
            click.echo(f"{name:<22} {FIGURES.get(name).description}")
        return
    if not suite:
        raise UsageError("bench figures needs a SUITE (or --list)")
    for name in only:
        FIGURES.get(name)  # unknown names fail with a suggestion before anything is drawn
    suite_dir, _ = _suite_results(suite, root)
    if not (suite_dir / TABLE_PARQUET).is_file():
        collect(suite_dir)
    from bench.io import open_artifact

    with open_artifact(suite_dir / TABLE_PARQUET) as f:
        table = pd.read_parquet(f)
    out_dir = Path(out) if out else suite_dir / "report"
    # the looks `bench report` gives the same methods: one function, from the whole table
    ctx = FigureContext(table, summarize(table), out_dir, method_styles(table), load_published())
    drawn = build_figures(ctx, list(only) or None)
    for name, files in drawn.items():
        click.echo(f"{name}: " + (", ".join(str(p) for p in files) if files else "nothing to draw for this suite"))


def _suite_results(suite: str, root: str) -> tuple[Path, list[dict] | None]:
    """The suite's results folder and its expected runs (None when only results, no suite file, exist)."""
    from bench.config import load_suite, run_identity

    try:
        s = load_suite(suite, check_names=False)
        d, expected = s.results_dir(root), [run_identity(s, r, "") | {"dataset": None} for r in s.runs]
    except UsageError:
        from bench.io import results_root

        d, expected = results_root(root) / Path(suite).stem, None
    if not (d / "runs").is_dir() and not (d / "table.parquet").exists():
        raise UsageError(
            f"no results for suite {suite!r} in {d} (run the suite first: snakemake --config suite={suite})"
        )
    return d, expected
