"""`bench flops`, `bench throughput` and `bench time`: the measurement commands (registered on :data:`bench.cli.cli`)."""

from __future__ import annotations

import click

from bench.cli import DEVICE, RESULTS, RUNTIME, THREADS, cli, set_torch_threads
from bench.errors import UsageError
from bench.runtime import from_cli as runtime_from_cli


@cli.command("time")
@click.argument("suite")
@click.argument("backbone")
@RESULTS
@DEVICE
@THREADS
@RUNTIME
def time_(suite: str, backbone: str, root: str, device: str | None, threads: int | None, **runtime_args) -> None:
    """Time every evaluated run of BACKBONE against its dense run, interleaved, in this one process.

    Writes timing/BACKBONE.json: img/s per batch size (median, IQR, CV) and each run's paired speed-up over
    dense with its confidence interval; noisy ones are re-timed, then marked unreliable."""
    from bench.config import load_suite
    from bench.measure.repeats import img_per_s_text
    from bench.provenance import pick_device
    from bench.results.timing_columns import headline
    from bench.timing import time_backbone_once, timing_path

    runtime = runtime_from_cli(**runtime_args)
    if pick_device(device).type == "cpu":
        # one thread unless the profile says otherwise: a timing that spans every core is at the mercy of any other
        # process on the machine (on 2 cores, one busy core slowed the smoke suite's dense model 10x)
        threads = runtime.timing_threads or 1
    set_torch_threads(threads)
    # the verdict of the suite's checks, cached per suite content, code and versions (the pipeline's parse made
    # it): a compute step never rebuilds every run of the suite again
    s = load_suite(suite, reuse_checks=True)
    result = time_backbone_once(s, backbone, root=root, device=device, runtime=runtime)
    click.echo(f"{timing_path(s, backbone, root)}: {len(result['runs'])} runs on {result['device_key']}")
    for entry in result["runs"].values():
        head = headline(entry["sweep"])
        speed = (
            ""
            if head["speedup"] is None
            else (
                f"  x{head['speedup']:.3f} [{head['speedup_ci_low']:.3f}, {head['speedup_ci_high']:.3f}]"
                + ("  UNRELIABLE" if head["speedup_unreliable"] else "")
            )
        )
        click.echo(
            f"  {entry['run_id']}: {img_per_s_text(head['img_per_s_median'])} img/s "
            f"(CV {head['img_per_s_cv']:.1%}, batch {head['batch_size']}){speed}"
        )


def _model_options(f):
    for opt in reversed(
        [
            click.argument("backbone"),
            click.option("--method", default="dense", show_default=True),
            click.option("--keep-ratio", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
            click.option("--param", multiple=True, help="Method parameter KEY=VALUE (repeatable)."),
            click.option("--image-size", type=click.IntRange(min=8, max=4096), default=None),
            click.option("--in-chans", type=click.IntRange(min=1), default=None),
            click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True),
        ]
    ):
        f = opt(f)
    return f


@cli.command()
@_model_options
def flops(backbone, method, keep_ratio, param, image_size, in_chans, num_classes) -> None:
    """GMACs (fvcore: 1 multiply-add = 1 flop) and parameters of BACKBONE patched by a method.

    The run record's measurement (bench.measure.cost.measure_cost) on 8 seeded random images for an
    input-dependent method, 1 otherwise; the method's own modules are counted by the work they execute."""
    import torch

    from bench.measure.cost import measure_cost
    from bench.measure.standalone import standalone_model

    model, m = standalone_model(backbone, method, keep_ratio, image_size, num_classes, in_chans, param)
    size, chans = int(model.patch_embed.img_size[0]), int(model.patch_embed.proj.in_channels)
    x = torch.randn(8 if m.input_dependent else 1, chans, size, size, generator=torch.Generator().manual_seed(0))
    cost = measure_cost(model, m, x, batch_size=4)
    click.echo(
        f"{backbone} {method} keep={keep_ratio:g}: {cost['gmacs_fvcore_1mac_eq_1flop']:.4f} GMACs (fvcore, "
        f"1 MAC = 1 flop) per {size}x{size} image (of which the method's own "
        f"{cost['method_gmacs_fvcore_1mac_eq_1flop']:.4f}), {cost['params_m']:.3f} M params; "
        f"tokens per block {m.token_schedule(model)}"
    )
    if m.weight_sparse:
        click.echo(
            f"theoretical, nonzero weights only: "
            f"{cost['theoretical_gmacs_nonzero_weights_fvcore_1mac_eq_1flop']:.4f} GMACs"
        )
    click.echo(
        f"operators without a cost ({cost['flops_skipped_op_count']} calls): {cost['flops_skipped_ops'] or 'none'}"
    )


@cli.command()
@_model_options
@click.option("--batch-sizes", default="1,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1, max=1000), default=10, show_default=True)
@click.option(
    "--min-time",
    type=click.FloatRange(min=0),
    default=0.25,
    show_default=True,
    help="Seconds each repeat runs forward passes for (its iteration count is calibrated to it).",
)
@DEVICE
@THREADS
def throughput(
    backbone,
    method,
    keep_ratio,
    param,
    image_size,
    in_chans,
    num_classes,
    batch_sizes,
    precision,
    repeats,
    min_time,
    device,
    threads,
) -> None:
    """Model-only throughput (img/s) of BACKBONE patched by a method on random inputs (one model alone; the
    pipeline's speed-ups come from `bench time`, which pairs every run with dense)."""
    from bench.measure import measure_throughput
    from bench.measure.repeats import img_per_s_text
    from bench.provenance import pick_device

    set_torch_threads(threads)
    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes {batch_sizes!r} is not a comma-separated list of integers") from None
    from bench.measure.standalone import standalone_model

    model, _ = standalone_model(backbone, method, keep_ratio, image_size, num_classes, in_chans, param)
    from bench.suite_values import oversized_batch

    size, chans = int(model.patch_embed.img_size[0]), int(model.patch_embed.proj.in_channels)
    for b in sizes:  # an allocation bounded before it is tried (bench.suite_values)
        if b > 0 and oversized_batch(b, size, chans):
            raise UsageError(f"--batch-sizes {b}: {oversized_batch(b, size, chans)}")
    dev = pick_device(device)
    rep = measure_throughput(
        model.to(dev),
        image_size=int(model.patch_embed.img_size[0]),
        in_chans=int(model.patch_embed.proj.in_channels),
        device=dev,
        batch_sizes=sizes,
        precision=precision,
        repeats=repeats,
        min_time_s=min_time,
    )
    click.echo(
        f"{backbone} {method} keep={keep_ratio:g} on {rep.device_name} ({precision}, {rep.num_threads} threads):"
    )
    for row in rep.rows:
        click.echo(
            f"  batch {row['batch_size']:4d}: {img_per_s_text(row['img_per_s_median']):>10s} img/s "
            f"(IQR {img_per_s_text(row['img_per_s_iqr'])}, CV {row['img_per_s_cv']:.1%}; {repeats} repeats x "
            f"{row['iters_per_repeat']} passes), {row['latency_ms_median']:.2f} ms/batch, "
            f"peak mem {row['peak_mem_mb']:.0f} MB"
        )
