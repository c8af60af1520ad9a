"""The requeue budget of a SLURM step: how many time-limit requeues a training run may take, from its epochs
and measured epoch time against the job's time limit, and when to stop requeuing (an attempt that finished
no epoch). Torch-free, like ``bench.launch``, which calls it from the job's checkpoint signal handler.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class RequeueRefused(RuntimeError):
    """The step would not finish within its requeue budget."""


TRAIN_LOG = "train_log.jsonl"  # bench.train.loop.LOG_FILE, not imported: this module stays free of torch
#: requeues beyond the estimate, for slower epochs (a cold page cache, a busy file system) and a preemption
REQUEUE_SLACK = 2
#: without a training log (evaluation, or no epoch done yet) a time-limited step is requeued this often
REQUEUES_WITHOUT_LOG = 3


def train_log_path(argv: Sequence[str], outputs: Sequence[str] = ()) -> Path | None:
    """Where a ``bench train`` step logs its epochs: next to its output, else where the runner puts it
    (RESULTS/<suite name>/runs/<run> or .../pretrain/<backbone>); None for other steps."""
    if argv[:1] != ["train"] or len(argv) < 2:  # evaluation leaves no log of its own
        return None
    if outputs:
        return Path(outputs[0]).parent / TRAIN_LOG
    args = list(argv)

    def value(flag: str, default: str | None = None) -> str | None:
        return args[args.index(flag) + 1] if flag in args[:-1] else default

    try:
        import yaml

        name = yaml.safe_load(Path(args[1]).read_text())["name"]
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return None
    root = Path(value("--results", "results") or "results") / str(name)
    if value("--run"):
        return root / "runs" / str(value("--run")) / TRAIN_LOG
    if value("--pretrain"):
        return root / "pretrain" / str(value("--pretrain")) / TRAIN_LOG
    return None


def slurm_restarts() -> int:
    """How many times SLURM requeued this job (time limit or preemption) before this attempt."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
    return int(value) if value.isdigit() else 0


def requeue_budget(epochs: int, epoch_s: float, time_min: int, signal_delay_s: int = 0) -> int:
    """Requeues a run of ``epochs`` epochs of ``epoch_s`` seconds needs under a time limit of ``time_min``
    minutes, warned ``signal_delay_s`` ahead (each attempt loses the epoch it was in), plus slack."""
    usable_s = max(epoch_s, time_min * 60 - signal_delay_s)
    per_attempt = max(1, int(usable_s // max(epoch_s, 1e-3)) - 1)
    return -(-epochs // per_attempt) - 1 + REQUEUE_SLACK


def requeue_refusal(step: Any, restarts: int) -> str | None:
    """Why the step should not be requeued now, or None. A time-limited attempt that finished no epoch
    cannot finish by requeuing; otherwise the budget is the explicit ``max_requeues`` or the estimate from
    the measured epoch time (``requeue_budget``)."""
    progress = step.progress()
    started, done_at_start = step._attempt or (time.time(), 0)
    timed_out = step.time_min is not None and time.time() - started > 0.5 * step.time_min * 60
    if step.max_requeues is not None:
        budget, how = step.max_requeues, "the profile's max_requeues"
    elif progress and progress.get("epochs_total"):
        times = sorted(t for t in progress["epoch_s_all"] if t)
        epoch_s = times[len(times) // 2] if times else 0.0
        budget = requeue_budget(int(progress["epochs_total"]), epoch_s, step.time_min or 60, step.signal_delay_s)
        how = (
            f"{progress['epochs_total']} epochs x {epoch_s:.0f} s per epoch under a {step.time_min}-minute limit, "
            f"+{REQUEUE_SLACK}"
        )
    else:
        budget, how = REQUEUES_WITHOUT_LOG, "no training log"
    if timed_out and progress is not None and int(progress.get("epoch", 0)) <= done_at_start:
        return (
            f"no epoch finished within the job's {step.time_min}-minute time limit (still at epoch "
            f"{done_at_start}); raise runtime for this step in the profile or give it more GPUs"
        )
    if restarts >= budget:
        return f"requeued {restarts} times, the budget ({how}) is {budget}; raise runtime in the profile"
    return None


def read_progress(log: Path | None) -> dict[str, Any] | None:
    """The last record of a training log, with every epoch's time as ``epoch_s_all``; None without one. A torn
    line is left out (the training step drops it from the log with a warning when it next writes it)."""
    from bench.errors import ArtifactError
    from bench.io import read_text

    if log is None:
        return None
    try:
        lines = read_text(log, errors="replace").splitlines()  # a planted link is not followed
    except (OSError, ArtifactError):
        return None
    records = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if not records:
        return None
    return records[-1] | {"epoch_s_all": [r.get("epoch_s") for r in records]}
