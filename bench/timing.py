"""The pipeline's timing step: every evaluated run of one backbone timed against its dense run, in one job.

evaluate (runs/<id>/run.json, accuracy and FLOPs) -> timing (timing/<backbone>.json) -> collect.

Each run's inference model (what its evaluation scored) is loaded into one process on one device and timed
interleaved with the dense reference (:mod:`bench.measure.paired`), so a speed-up never divides figures from
two jobs, two times or two devices. The whole backbone group is timed again when any of its runs changes: a
speed-up is only paired with the reference timed in the same job. Each entry names the run record it timed
(its ``created_at``); ``collect`` drops an entry whose run has been evaluated again since.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.config import Suite
from bench.errors import UsageError
from bench.io import atomic_write_json
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
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status", "ok") == "ok" else None


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
    evaluated, skipped = [], []
    for run in runs:
        rec = _record(runner.run_dir(suite, run, root) / runner.RECORD_FILE)
        (evaluated if rec else skipped).append((run, rec))
    if not evaluated:
        raise UsageError(f"no evaluated run of {backbone} to time (run the evaluate steps first)")
    dense = sorted(
        (r for r, _ in evaluated if r.method_name == REFERENCE_METHOD and r.keep_ratio == 1.0),
        key=lambda r: (r.seed, r.run_id),
    )
    reference = dense[0].run_id if dense else None
    if skipped:
        _log(
            f"bench: timing {backbone}: {len(skipped)} run(s) not evaluated yet, not timed: "
            f"{', '.join(r.run_id for r, _ in skipped)}"
        )
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
        "not_timed": [r.run_id for r, _ in skipped],
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
    from bench.outputs import _multi_process, single_writer

    if _multi_process():
        raise UsageError(
            "the timing step times every run on one device in one process: give its rule one task "
            "(set-resources timing: gpus 1, tasks 1)"
        )
    with single_writer(timing_path(suite, backbone, kwargs.get("root", "results")).parent, f"timing {backbone}"):
        return time_backbone(suite, backbone, **kwargs)
