"""`bench`: the command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys

import click

from bench.errors import RunFailed, UsageError, one_line
from bench.runtime import MAX_THREADS
from bench.runtime import from_cli as runtime_from_cli


def _results_path(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Empty, a symlink loop, read-only, or a character a shell would change: one line naming it."""
    from bench.workflow import check_results_path

    return check_results_path(value, "--results")


RESULTS = click.option(
    "--results",
    "root",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    callback=_results_path,
    help="Results root folder.",
)
DEVICE = click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
THREADS = click.option(
    "--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None, help="CPU threads for torch."
)
FORCE = click.option(
    "--force",
    is_flag=True,
    help="Redo the step even if its result is there (the old result is replaced only on success).",
)


def RUNTIME(f):  # noqa: N802 (a decorator, like the options above)
    from bench.runtime import click_options

    return click_options(f)


def set_torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tokenbench")
def cli() -> None:
    """Benchmark token-sparsification methods for vision transformers on one protocol."""


@cli.command("ls")
@click.argument("what", type=click.Choice(["methods", "backbones", "suites", "columns"]))
def ls(what: str) -> None:
    """List registered methods (with their roles and where they come from), tested backbones, suites, or the run
    record's columns (dtype, unit, how seeds aggregate).

    Answers without importing torch: methods are read from their declarations (bench.methods.catalog)."""
    if what == "methods":
        from bench.methods.catalog import catalog

        for name, info in catalog().items():
            params = ", ".join(f"{k}={p.default!r}" for k, p in info.params.items())
            roles = ",".join(sorted(info.roles)) or "-"
            click.echo(
                f"{name:14s} [{roles}] {info.description}" + (f"  [{params}]" if params else "") + f"  ({info.origin})"
            )
    elif what == "columns":
        from bench.results.row import schema_rows

        for row in schema_rows():
            unit = f" [{row['unit']}]" if row["unit"] else ""
            agg = f" (seeds: {row['aggregation']})" if row["aggregation"] else ""
            click.echo(f"{row['column']:58s} {row['dtype']:12s}{unit}{agg} {row['doc']}")
    elif what == "backbones":
        from bench.models.names import list_backbones

        click.echo("\n".join(list_backbones()))
        click.echo("(any other timm ViT name works too: timm.list_models('*vit*'))")
    else:
        from bench.config import list_suites

        click.echo("\n".join(list_suites()))


@cli.command()
@click.argument("suite")
@click.option(
    "--runs",
    "show_runs",
    is_flag=True,
    help="Also list every run id, with how its batch runs (devices x accumulated micro-batches).",
)
@click.option(
    "--build",
    is_flag=True,
    help="Also check backbone names and build every run's method on its backbone (imports torch and timm).",
)
@click.option(
    "--recipe",
    "show_recipe",
    is_flag=True,
    help="Print the resolved training recipe of every run with where each value came from.",
)
@click.option(
    "--profile", default=None, help="Snakemake profile whose GPUs and device_batch cap --runs applies (e.g. slurm)."
)
def validate(suite: str, show_runs: bool, show_recipe: bool, profile: str | None, build: bool) -> None:
    """Validate SUITE (a name under suites/ or a YAML path) and show its grid.

    Without torch by default (schema, data keys, method names and parameters, files); --build also checks backbone
    names and builds every run's method on its backbone, as the pipeline does before it runs anything, and that
    init: hub weights are in the local cache or the hub answers (HF_HUB_OFFLINE, no network: one line)."""
    from bench.config import load_suite
    from bench.workflow import batch_plan_line, read_profile

    s = load_suite(suite, build=build, check_hub=build)
    resources, config, where = read_profile(profile) if profile else ({}, {}, None)
    methods = sorted({r.method for r in s.runs})
    click.echo(
        f"{s.path}: ok: {len(s.runs)} runs ({len(methods)} methods x {len(s.backbones)} backbones "
        f"x keep ratios x {len(s.raw['seeds'])} seeds) on {s.data.get('name') or s.data.get('path') or s.data.get('source')}"
        + ("" if build else "; static checks only (--build: every run built on its backbone)")
    )
    if show_runs:
        gpus = int((resources.get("finetune") or {}).get("gpus", 0))
        cap = config.get("device_batch")
        if where:
            click.echo(f"profile {where}: finetune on {gpus} GPU(s) per job, device_batch {cap or 'none'}")
        for r in s.runs:
            plan = batch_plan_line(int(r.finetune["batch_size"]), gpus, cap) if r.finetune else "not fine-tuned"
            click.echo(f"{r.run_id}  [{plan}]")
    if show_recipe:
        _print_recipes(s)


def _print_recipes(s) -> None:
    """Runs that share a resolved recipe (values and sources) are printed once, under their ids."""
    blocks = {"pretrain": (s.pretrain_recipe, s.pretrain_sources, [])}
    for r in s.runs:
        key = json.dumps([r.finetune, r.finetune_sources], sort_keys=True, default=str)
        blocks.setdefault(key, (r.finetune, r.finetune_sources, []))[2].append(r.run_id)
    for recipe, sources, ids in blocks.values():
        click.echo("")
        click.echo(f"{len(ids)} run(s): {', '.join(ids)}" if ids else "pretrain (every backbone)")
        if recipe is None:
            click.echo("  finetune: none (the pretrained backbone is evaluated with the method applied)")
            continue
        width = max(len(k) for k in recipe)
        for k in recipe:
            click.echo(f"  {k:<{width}} = {json.dumps(recipe[k])}  [{sources.get(k, 'default')}]")


@cli.command()
@click.argument("suite")
@RESULTS
def index(suite: str, root: str) -> None:
    """List SUITE's local image folder once into results/<suite>/data/index.parquet (the pipeline's index step).

    Rebuilt only when files were added or removed since (every directory's mtime is compared, nothing listed).
    """
    from bench import runner
    from bench.config import load_suite
    from bench.data.sources import refresh_index

    s = load_suite(suite, check_names=False)
    path = runner.index_path(s, root)
    if path is None:
        raise UsageError(
            f"suite {s.name!r} reads {s.data.get('source', 'embedded')!r} data, which has no folder "
            f"index (only source: imagefolder)"
        )
    click.echo(refresh_index(s.data, path))


@cli.command()
@click.argument("suite")
@click.option("--run", "run_id", help="Fine-tune this run (see `bench validate SUITE --runs`).")
@click.option("--pretrain", "backbone", help="Pretrain this backbone instead.")
@RESULTS
@DEVICE
@THREADS
@FORCE
@RUNTIME
def train(
    suite: str,
    run_id: str | None,
    backbone: str | None,
    root: str,
    device: str | None,
    threads: int | None,
    force: bool,
    **runtime_args,
) -> None:
    """Pretrain a backbone or fine-tune one run of SUITE (resumes from its last checkpoint)."""
    from bench import runner
    from bench.config import load_suite
    from bench.outputs import run_step
    from bench.provenance import pick_device

    if (run_id is None) == (backbone is None):
        raise UsageError("give exactly one of --run RUN_ID or --pretrain BACKBONE")
    runtime = runtime_from_cli(**runtime_args)
    pick_device(device)  # a device this machine lacks is bad input, before anything is read or written
    set_torch_threads(threads)
    # the verdict of the suite's checks, cached per suite content, code and versions (the pipeline's parse made
    # it): a compute step never rebuilds every run of the suite again
    s = load_suite(suite, reuse_checks=True)
    if backbone:
        s.backbone(backbone)
        out = runner.pretrain_output(s, backbone, root)
        run_step(
            out,
            f"pretrain {backbone}",
            lambda: runner.pretrain(s, backbone, root=root, device=device, runtime=runtime),
            force=force,
        )
        click.echo(out.output)
        return
    run = s.run(run_id)
    out = runner.step_output(s, run, "finetune", root)
    run_step(
        out,
        f"finetune {run_id}",
        lambda: _recorded(
            s, run, "finetune", root, lambda: runner.finetune(s, run, root=root, device=device, runtime=runtime)
        ),
        force=force,
    )
    click.echo(out.output)


@cli.command()
@click.argument("suite")
@click.argument("run_id")
@RESULTS
@DEVICE
@THREADS
@FORCE
@RUNTIME
def evaluate(
    suite: str, run_id: str, root: str, device: str | None, threads: int | None, force: bool, **runtime_args
) -> None:
    """Accuracy, tokens and FLOPs of one fine-tuned run; writes its run.json (throughput: `bench time`)."""
    from bench import runner
    from bench.config import load_suite
    from bench.outputs import run_step
    from bench.provenance import pick_device

    runtime = runtime_from_cli(**runtime_args)
    pick_device(device)
    set_torch_threads(threads)
    # the verdict of the suite's checks, cached per suite content, code and versions (the pipeline's parse made
    # it): a compute step never rebuilds every run of the suite again
    s = load_suite(suite, reuse_checks=True)
    run = s.run(run_id)
    rec = run_step(
        runner.step_output(s, run, "evaluate", root),
        f"evaluate {run_id}",
        lambda: _recorded(
            s, run, "evaluate", root, lambda: runner.evaluate_run(s, run, root=root, device=device, runtime=runtime)
        ),
        force=force,
    )
    if rec is None:
        return
    click.echo(
        f"{run_id}: top-1 {rec['top1']:.2f}%  GMACs {rec['gmacs_fvcore_1mac_eq_1flop']:.4f} "
        f"(fvcore, 1 MAC = 1 flop) on {rec['device']}"
    )


def _recorded(suite, run, step: str, root: str, fn):
    """Run a step; on failure write failure.json, say so in one line and exit 1."""
    from bench import runner
    from bench.errors import DiskFull

    try:
        return fn()
    except Exception as e:  # any crash of a run is recorded, never cached as success
        try:
            path = runner.record_failure(suite, run, step, e, root=root)
        except DiskFull:
            if isinstance(e, DiskFull):
                raise RunFailed(f"{run.run_id}: {step} failed: {e} (no room for its failure record either)") from e
            raise
        if isinstance(e, UsageError):
            raise
        hint = "" if isinstance(e, RunFailed) else f" (traceback in {path})"
        raise RunFailed(
            f"{run.run_id}: {step} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{hint}"
        ) from e


from bench import cli_measure as _measure_commands  # noqa: E402,F401  (registers flops, throughput, time)
from bench import cli_report as _report_commands  # noqa: E402,F401  (registers collect, report, figures)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="bench", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("bench: aborted", err=True)
        return 130
    except click.UsageError as e:
        click.echo(f"bench: error: {one_line(e.format_message())}", err=True)
        return 2
    except UsageError as e:
        click.echo(f"bench: error: {one_line(e)}", err=True)
        return 2
    except RunFailed as e:
        click.echo(f"bench: run failed: {e}", err=True)
        return 1
    except Exception as e:  # a bug, not bad input: still one line unless asked for the traceback
        import os

        from bench.io import disk_full_message, is_disk_full

        if os.environ.get("TOKENBENCH_DEBUG"):
            raise
        if is_disk_full(e):
            click.echo(f"bench: error: {disk_full_message(getattr(e, 'filename', None) or '.', 0)}", err=True)
            return 1
        click.echo(
            f"bench: internal error: {type(e).__name__}: {one_line(e)} (TOKENBENCH_DEBUG=1 shows the traceback)",
            err=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
