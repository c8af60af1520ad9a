"""The pipeline's timing step: every evaluated run of one backbone timed against its dense run, in one job.

evaluate (runs/<id>/run.json, accuracy and FLOPs) -> timing (timing/<backbone>.json) -> collect.

Each run's inference model (what its evaluation scored) is loaded into one process on one device and timed
interleaved with the dense reference (:mod:`bench.measure.paired`), so a speed-up never divides figures from
two jobs, two times or two devices. The whole backbone group is timed again when any of its runs changes: a
speed-up is only paired with the reference timed in the same job. Each entry names the run record it timed
(its ``created_at``); ``collect`` drops an entry whose run has been evaluated again since.

A failed run never blocks the others: what is evaluated is timed, and every run left out is listed under
``not_timed`` with the reason (its failure record's step and error, or not evaluated yet). Each timed model's
batch-1 latency and the memory of one forward at its headline batch are measured too
(:mod:`bench.measure.latency`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.config import Suite
from bench.errors import UsageError, clip
from bench.io import atomic_write_json, read_text
from bench.measure.latency import latency_and_memory
from bench.measure.paired import (
    TimingProtocol,
    device_fingerprint,
    device_key,
    fused_attention,
    resolve_batch_sizes,
    time_paired,
)
from bench.provenance import pick_device, provenance
from bench.results.timing_columns import TIMING_DIR
from bench.runtime import Runtime

REFERENCE_METHOD = "dense"


def timing_path(suite: Suite, backbone: str, root: str | Path = "results") -> Path:
    return suite.results_dir(root) / TIMING_DIR / f"{backbone}.json"


def protocol_for(suite: Suite, device: torch.device, runtime: Runtime | None = None) -> TimingProtocol:
    """The suite's ``evaluate.throughput`` protocol on this device, with the profile's runtime settings."""
    cfg = suite.evaluate["throughput"]
    runtime = runtime or Runtime()
    precision = runtime.timing_precision or cfg["precision"]
    return TimingProtocol(
        batch_sizes=resolve_batch_sizes(cfg["batch_sizes"], device),
        precision=precision,
        warmup=int(cfg["warmup"]),
        rounds=int(cfg["repeats"]),
        min_time_s=float(cfg["min_time_s"]),
        noise_threshold=float(cfg["noise_threshold"]),
        max_attempts=int(cfg["max_attempts"]),
        channels_last=runtime.channels_last,
        compile=runtime.compile,
    )


def _record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(read_text(path))  # a planted link: UnsafeArtifact (bench.io)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status", "ok") == "ok" else None


def _why_not_timed(folder: Path) -> str:
    """Why a run without an ok run record is left out: its failure record's step and error, or no record yet."""
    from bench.runner import FAILURE_FILE

    try:
        failure = json.loads(read_text(folder / FAILURE_FILE))
    except (OSError, ValueError):
        failure = None
    if isinstance(failure, dict):
        return f"failed ({failure.get('failed_step') or 'unknown step'}): {clip(failure.get('error') or 'no message')}"
    return "not evaluated yet (no run record when its backbone was timed)"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_backbone(
    suite: Suite,
    backbone: str,
    *,
    root: str | Path = "results",
    device: str | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Time every evaluated run of ``backbone`` against its dense run; writes timing/<backbone>.json."""
    from bench import runner

    dev = pick_device(device)
    runtime = runtime or Runtime()
    runs = [r for r in suite.runs if r.backbone == backbone]
    if not runs:
        known = sorted({r.backbone for r in suite.runs})
        raise UsageError(f"suite {suite.name!r} has no runs on backbone {backbone!r} (backbones: {', '.join(known)})")
    protocol = protocol_for(suite, dev, runtime)
    protocol.check(dev)
    evaluated, skipped = [], {}
    for run in runs:
        folder = runner.run_dir(suite, run, root)
        rec = _record(folder / runner.RECORD_FILE)
        if rec:
            evaluated.append((run, rec))
        else:
            skipped[run.run_id] = _why_not_timed(folder)
    if not evaluated:
        raise UsageError(f"no evaluated run of {backbone} to time (run the evaluate steps first)")
    dense = sorted(
        (r for r, _ in evaluated if r.method_name == REFERENCE_METHOD and r.keep_ratio == 1.0),
        key=lambda r: (r.seed, r.run_id),
    )
    reference = dense[0].run_id if dense else None
    for run_id, why in skipped.items():
        _log(f"bench: timing {backbone}: {run_id} not timed: {why}")
    if reference is None:
        _log(f"bench: timing {backbone}: no evaluated dense run at keep ratio 1.0; img/s only, no speed-ups")
    bundle = runner._data(suite, root)
    models, entries = {}, {}
    for run, rec in evaluated:
        _, model, method = runner._trained_model(suite, run, bundle, root)
        models[run.run_id] = model
        entries[run.run_id] = {
            "run_id": run.run_id,
            "method": run.method,
            "keep_ratio": run.keep_ratio,
            "seed": run.seed,
            "run_record_created_at": rec.get("created_at"),
            "fused_attention": fused_attention(model),
        }
    first = next(iter(models.values()))
    t0 = time.time()
    rows = time_paired(
        models,
        reference,
        image_size=int(first.patch_embed.img_size[0]),
        in_chans=int(first.patch_embed.proj.in_channels),
        device=dev,
        protocol=protocol,
        log=lambda m: _log(f"bench: timing {backbone}: {m}"),
    )
    for row in rows:
        entries[row.pop("label")].setdefault("sweep", []).append(row)
    # batch-1 latency and the memory of one forward at the headline batch (the largest the sweep timed)
    extra = latency_and_memory(
        models,
        image_size=int(first.patch_embed.img_size[0]),
        in_chans=int(first.patch_embed.proj.in_channels),
        device=dev,
        protocol=protocol,
        memory_batch={k: max(r["batch_size"] for r in e.get("sweep", [{"batch_size": 1}])) for k, e in entries.items()},
    )
    for run_id, figures in extra.items():
        entries[run_id].update(figures)
    fingerprint = device_fingerprint(dev)
    result = {
        "suite": suite.name,
        "backbone": backbone,
        "reference_run_id": reference,
        "protocol": protocol.record(),
        "device_fingerprint": fingerprint,
        "device_key": device_key(fingerprint),
        "runtime": {
            "threads": torch.get_num_threads(),
            "channels_last": runtime.channels_last,
            "compile": runtime.compile,
            "precision": protocol.precision,
        },
        "what": "model forward only, random inputs already on the device, torch.inference_mode, eval mode",
        "not_timed": skipped,
        "timing_wall_s": time.time() - t0,
        "status": "ok",
        "runs": entries,
        **provenance(dev),
    }
    atomic_write_json(timing_path(suite, backbone, root), result)
    return result


def time_backbone_once(suite: Suite, backbone: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`time_backbone` by one writer at a time (a second waits for the first, then times again: a timing
    is cheap, and the waiting one may have newer runs)."""
    from bench.outputs import multi_process, single_writer

    if multi_process():
        raise UsageError(
            "the timing step times every run on one device in one process: give its rule one task "
            "(set-resources timing: gpus 1, tasks 1)"
        )
    with single_writer(timing_path(suite, backbone, kwargs.get("root", "results")).parent, f"timing {backbone}"):
        return time_backbone(suite, backbone, **kwargs)
