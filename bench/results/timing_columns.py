"""The timing step's figures (``timing/<backbone>.json``) as columns of the runs they timed.

A run's throughput and speed-up come only from the timing of its backbone, never from its own evaluate job:
img/s figures from separate jobs are not comparable. An entry is taken only for the very record it timed (the
run record's ``created_at``): a run evaluated again since has no throughput until its backbone is re-timed.
The headline is the largest batch size measured; the whole sweep is kept in ``throughput_sweep``. Every row says
in ``timing_status`` whether it was timed and, if not, why: no hole is silent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.results.row import flatten

TIMING_DIR = "timing"
#: figures a run record of an older harness carried from its own evaluate job: never mixed with paired ones
LEGACY_KEYS = (
    "throughput_img_s",
    "throughput_img_s_iqr",
    "throughput_batch_size",
    "throughput_latency_ms",
    "throughput_device",
    "precision",
    "peak_mem_mb",
    "throughput_sweep",
)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        from bench.io import read_text

        data = json.loads(read_text(path))  # a planted link: UnsafeArtifact (bench.io)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("runs"), dict) else None


def headline(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The row a run's table columns show: the largest batch size timed."""
    return max(sweep, key=lambda r: r["batch_size"])


def _columns(timing: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    head = headline(entry["sweep"])
    protocol, runtime = timing.get("protocol", {}), timing.get("runtime", {})
    return {
        "throughput_img_s": head["img_per_s_median"],
        "throughput_img_s_iqr": head["img_per_s_iqr"],
        "throughput_img_s_cv": head["img_per_s_cv"],
        "throughput_unreliable": head["img_per_s_unreliable"],
        "throughput_batch_size": head["batch_size"],
        "throughput_batch_size_requested": head["batch_size_requested"],
        "throughput_latency_ms": head["latency_ms_median"],
        "throughput_device": timing.get("device_fingerprint", {}).get("device_name"),
        "throughput_device_key": timing.get("device_key"),
        "precision": runtime.get("precision"),
        "peak_mem_mb": head.get("peak_mem_mb"),
        "speedup_vs_dense": head["speedup"],
        "speedup_ci_low": head["speedup_ci_low"],
        "speedup_ci_high": head["speedup_ci_high"],
        "speedup_ci_level": head["speedup_ci_level"],
        "speedup_rel_iqr": head["speedup_rel_iqr"],
        "speedup_unreliable": head["speedup_unreliable"],
        "timing_attempts": head["attempts"],
        "timing_repeats": head["repeats"],
        "timing_iters_per_repeat": head["iters_per_repeat"],
        "timing_min_time_s": protocol.get("min_time_s"),
        "timing_noise_threshold": protocol.get("noise_threshold"),
        "timing_max_attempts": protocol.get("max_attempts"),
        "timing_warmup": protocol.get("warmup"),
        "timing_threads": runtime.get("threads"),
        "timing_channels_last": runtime.get("channels_last"),
        "timing_compile": str(runtime.get("compile")),
        "fused_attention": entry.get("fused_attention"),
        "timing_reference_run": timing.get("reference_run_id"),
        "timing_created_at": timing.get("created_at"),
        **{k: entry.get(k) for k in LATENCY_MEMORY_KEYS},
        "throughput_sweep": [{k: v for k, v in sorted(r.items()) if k != "ratios"} for r in entry["sweep"]],
    }


TIMED = "timed"
LATENCY_MEMORY_KEYS = (
    "latency_bs1_ms",
    "latency_bs1_ms_iqr",
    "latency_bs1_repeats",
    "peak_inference_mem_mib",
    "peak_inference_mem_kind",
    "peak_inference_mem_batch",
)


def _untimed(
    row: dict[str, Any],
    found: tuple[dict[str, Any], dict[str, Any]] | None,
    left_out: dict[str, tuple[dict[str, Any], str]],
    timed_backbones: dict[str, dict[str, Any]],
) -> str:
    """Why an ok run has no timing figures (``timing_status``)."""
    if found is not None:
        return (
            f"untimed: evaluated again ({row.get('created_at')}) after its backbone was timed "
            f"({found[0].get('created_at')}); re-run its timing step "
            f"(snakemake, or bench time SUITE {row.get('backbone')})"
        )
    if row.get("run_id") in left_out:
        timing, why = left_out[row["run_id"]]
        return f"untimed: left out of its backbone's timing ({timing.get('created_at')}): {why}"
    if row.get("backbone") in timed_backbones:
        return f"untimed: not in its backbone's timing ({timed_backbones[row['backbone']].get('created_at')})"
    return "untimed: its backbone has not been timed yet"


def merge_timing(rows: list[dict[str, Any]], suite_dir: Path) -> None:
    """Fill the timing columns of ``rows`` (in place) from ``suite_dir/timing/*.json``; ``timing_status`` of
    each row says ``timed`` or why not."""
    entries: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    left_out: dict[str, tuple[dict[str, Any], str]] = {}
    timed_backbones: dict[str, dict[str, Any]] = {}
    folder = Path(suite_dir) / TIMING_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        timing = _read(path)
        if timing is None:
            continue
        timed_backbones[str(timing.get("backbone", path.stem))] = timing
        not_timed = timing.get("not_timed") or {}
        for run_id in not_timed:  # older timings listed ids only
            left_out[run_id] = (timing, not_timed[run_id] if isinstance(not_timed, dict) else "not evaluated then")
        for run_id, entry in timing["runs"].items():
            if isinstance(entry, dict) and entry.get("sweep"):
                entries[run_id] = (timing, entry)
    for row in rows:
        for key in LEGACY_KEYS:
            row.pop(key, None)
        if row.get("status") != "ok":
            row["timing_status"] = f"untimed: the run {row.get('status') or 'failed'}"
            continue
        found = entries.get(row.get("run_id", ""))
        if found is None or found[1].get("run_record_created_at") != row.get("created_at"):
            # never another record's figures: timed before the run was evaluated again, it stays stale (and says
            # so) until its backbone is re-timed
            row["timing_status"] = _untimed(row, found, left_out, timed_backbones)
            continue
        row.update(flatten(_columns(*found), row.get("run_id")))
        row["timing_status"] = TIMED
