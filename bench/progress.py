"""Progress of running pipeline steps, seen from the terminal that runs ``snakemake``.

Each compute step has a small JSON record beside its log, ``logs/<step>/<id>.progress.json``:

- the Snakefile's ``run_logged`` writes it when it starts the step (``step_started``) and when the step ends
  (``step_finished``), and passes its path to the step in ``$TOKENBENCH_PROGRESS``;
- a training step adds epoch, step, loss, img/s and ETA while it runs (``TrainProgress``), at most every
  ``WRITE_EVERY_S`` seconds, and puts a line in its log at most every ``LOG_EVERY_S`` seconds;
- under a launcher, ``bench.launch`` keeps the job's scheduler state in ``<job folder>/job_state.json``, from the
  states it polls anyway (no extra sacct call).

``Monitor`` runs as a daemon thread in the main snakemake process (started by the Snakefile's ``onstart``) and
prints one line per running step to stderr when something changed, at most every few seconds, plus
queued/running/done counts under a launcher. All of it is best-effort: a progress file that cannot be written
or read never fails a step. Torch-free: the monitor runs in the snakemake process, the job state writer in
``bench.launch``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.errors import UsageError

ENV = "TOKENBENCH_PROGRESS"  # the step's progress record, set by run_logged
SUFFIX = ".progress.json"
JOB_STATE_FILE = "job_state.json"  # in a launcher's job folder
WRITE_EVERY_S = 2.0  # a training step rewrites its record at most this often
LOG_EVERY_S = 30.0  # ... and adds a line to its log at most this often
SHOW_EVERY_S = 5.0  # the terminal gets a status block at most this often, when something changed
HEARTBEAT_S = 60.0  # ... or this often when nothing did (elapsed times still move)
MAX_LINES = 8  # running steps shown one per line; the rest are counted
#: scheduler states of a job that has not started running (submitit's UNKNOWN: sacct does not know it yet)
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "UNKNOWN", ""}


def default_every_s(stream: IO[str] | None = None) -> float:
    """Seconds between status blocks: ``SHOW_EVERY_S`` on a terminal, ``HEARTBEAT_S`` when stderr goes to a file
    (``snakemake > run.log 2>&1``), which a block every few seconds would flood."""
    stream = sys.stderr if stream is None else stream
    try:
        return SHOW_EVERY_S if stream.isatty() else HEARTBEAT_S
    except (AttributeError, ValueError):
        return HEARTBEAT_S


class Throttle:
    """True at most once per ``every_s`` seconds of ``clock``; the first call is ready at once, or only after
    ``every_s`` with ``first_now=False``."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic, first_now: bool = True):
        self.every_s, self.clock = float(every_s), clock
        self.last: float | None = None if first_now else clock()

    def ready(self) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        return True


def progress_path(log: str | os.PathLike) -> Path:
    """``logs/finetune/<id>.log`` -> ``logs/finetune/<id>.progress.json``."""
    log = Path(log)
    return log.with_name(log.stem + SUFFIX) if log.suffix == ".log" else log.with_name(log.name + SUFFIX)


def read(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        from bench.io import read_text

        record = json.loads(read_text(path))
    except (OSError, ValueError, UsageError):  # a planted link is not followed: no record, as a torn one
        return None
    return record if isinstance(record, dict) else None


def write(path: str | os.PathLike, record: dict[str, Any]) -> bool:
    """Replace the record atomically (a reader sees the old one or the new one); False, and nothing raised,
    when it cannot be written. No fsync: progress is not a result."""
    try:
        from bench.io import atomic_write

        text = json.dumps(record, sort_keys=True, default=str)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return True
    except Exception:  # best-effort: a full disk or an unwritable folder must not stop a step
        return False


def step_started(
    path: str | os.PathLike,
    *,
    step: str,
    key: str,
    log: str | os.PathLike | None = None,
    job_folder: str | os.PathLike | None = None,
    wall: Callable[[], float] = time.time,
) -> None:
    """The record a step starts with (any older one of the same step is replaced)."""
    now = wall()
    record: dict[str, Any] = {"step": step, "id": key, "state": "running", "started": now, "updated": now}
    if log is not None:
        record["log"] = str(log)
    if job_folder is not None:
        record["job_folder"] = os.path.abspath(job_folder)
    write(path, record)


def step_finished(path: str | os.PathLike, code: int, wall: Callable[[], float] = time.time) -> None:
    """Mark the step done (exit code 0) or failed, keeping how far it got."""
    record = read(path)
    if record is None:
        return
    now = wall()
    record.update(state="done" if code == 0 else "failed", code=int(code), updated=now, ended=now)
    write(path, record)


class TrainProgress:
    """Rank 0's progress in the training loop: ``update`` after every optimiser step is cheap (one clock read);
    the record is rewritten at most every ``write_every_s`` and ``log`` gets a line at most every
    ``log_every_s`` (the first only after that long, so a short run adds nothing to its log)."""

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        epochs: int,
        steps_per_epoch: int,
        batch_size: int,
        log: Callable[[str], None] | None = None,
        write_every_s: float = WRITE_EVERY_S,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.path = Path(path) if path else None
        self.epochs, self.steps_per_epoch, self.batch_size = int(epochs), int(steps_per_epoch), int(batch_size)
        self.log, self.clock, self.wall = log, clock, wall
        self._write = Throttle(write_every_s, clock)
        self._log = Throttle(log_every_s, clock, first_now=False)
        self._first: tuple[float, int] | None = None  # (clock, global step) of the first update of this process
        self._latest: tuple[float, int, int, int, float] | None = None  # (clock, epoch, batch, step, loss)
        # the fields run_logged wrote (step, id, started, job folder) are kept in every rewrite
        self.base = (read(self.path) or {}) if self.path else {}

    @classmethod
    def from_env(cls, **kwargs: Any) -> TrainProgress:
        """Writing to ``$TOKENBENCH_PROGRESS`` when a pipeline step set it; else only the throttled log lines."""
        return cls(os.environ.get(ENV) or None, **kwargs)

    def update(self, *, epoch: int, batch: int, global_step: int, loss: float) -> None:
        """After optimiser step ``global_step`` (1-based, over all epochs), batch ``batch`` of epoch ``epoch``
        (both 1-based); ``loss`` is the epoch's mean so far."""
        now = self.clock()
        if self._first is None:  # the rate leaves out the first step (warm-up, compilation)
            self._first = (now, global_step)
        self._latest = (now, epoch, batch, global_step, loss)
        write_now, log_now = self.path is not None and self._write.ready(), self.log is not None and self._log.ready()
        if write_now:
            self._save()
        if log_now:
            self.log(f"progress: {describe(self.record())}")

    def record(self, phase: str = "train") -> dict[str, Any]:
        """How far training is, as of the last update."""
        if self._latest is None or self._first is None:
            return {}
        now, epoch, batch, global_step, loss = self._latest
        total = self.epochs * self.steps_per_epoch
        t0, s0 = self._first
        done, spent = global_step - s0, now - t0
        rate = done / spent if spent > 0 and done > 0 else None  # steps/s since this process started
        return {
            "phase": phase,
            "epoch": epoch,
            "epochs": self.epochs,
            "batch": batch,
            "batches": self.steps_per_epoch,
            "global_step": global_step,
            "total_steps": total,
            "loss": loss if math.isfinite(loss) else None,
            "img_s": round(rate * self.batch_size, 1) if rate else None,
            "eta_s": round((total - global_step) / rate, 1) if rate and phase == "train" else None,
        }

    def finish(self) -> None:
        """Training is over (the step may still evaluate and save)."""
        if self.path is not None:
            self._save("trained")

    def _save(self, phase: str = "train") -> None:
        write(self.path, {"state": "running", **self.base, **self.record(phase), "updated": self.wall()})


def duration(seconds: float | None) -> str:
    """45s, 1m20s, 2h05m."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def describe(record: dict[str, Any]) -> str:
    """How far a training record is: ``epoch 2/5 step 40/120 loss 1.234 812 img/s ETA 1m20s``."""
    parts = [f"epoch {record.get('epoch')}/{record.get('epochs')}"]
    if record.get("phase") == "trained":
        return f"trained ({parts[0]}), finishing"
    parts.append(f"step {record.get('batch')}/{record.get('batches')}")
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.3f}")
    if record.get("img_s"):
        parts.append(f"{record['img_s']:.0f} img/s")
    if record.get("eta_s") is not None:
        parts.append(f"ETA {duration(record['eta_s'])}")
    return " ".join(parts)


def _last_log_line(path: str | os.PathLike | None, limit: int = 70) -> str | None:
    """The log's last line, clipped at a word boundary: how far a step without epochs (evaluate, timing) is."""
    if not path:
        return None
    try:
        from bench.io import open_artifact

        with open_artifact(path) as f:  # no link followed inside results
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except (OSError, UsageError):
        return None
    if not lines:
        return None
    from bench.errors import clip

    return clip(lines[-1], limit)


def job_state(job_folder: str | os.PathLike | None, since: float) -> dict[str, Any] | None:
    """The scheduler state bench.launch last saw for this step's job, if written since ``since``."""
    if not job_folder:
        return None
    record = read(Path(job_folder) / JOB_STATE_FILE)
    if record is None or float(record.get("at", 0)) < since:
        return None
    return record


def _job_log(job_folder: str | os.PathLike | None) -> str | None:
    """Under a launcher the step's log holds the launcher's lines; the step's own output is the job's stderr."""
    if not job_folder:
        return None
    return (read(Path(job_folder) / "launch.json") or {}).get("stderr")  # bench.launch.LAUNCH_RECORD


def write_job_state(folder: str | os.PathLike, job_id: str, state: str, wall: Callable[[], float] = time.time) -> None:
    write(Path(folder) / JOB_STATE_FILE, {"job_id": str(job_id), "state": str(state).upper(), "at": wall()})


def status_line(record: dict[str, Any], now: float) -> str:
    """One running step: ``finetune <id>: epoch 2/5 step 40/120 loss 1.234 ETA 1m20s``, or for a step without
    epochs ``evaluate <id>: running 45s | <the last line of its log>``."""
    name = f"{record.get('step', '?')} {record.get('id', '')}".rstrip()
    elapsed = duration(now - float(record.get("started", now)))
    if record.get("phase") in ("train", "trained"):
        return f"{name}: {describe(record)}"
    tail = _last_log_line(_job_log(record.get("job_folder")) or record.get("log"))
    return f"{name}: running {elapsed}" + (f" | {tail}" if tail else "")


_MOVING = re.compile(r"ETA \S+|\d+ img/s|\b\d+(h\d\dm|m\d\ds|s)\b")


def _signature(line: str) -> str:
    """A line without what moves by itself (elapsed time, ETA, speed): a change in the rest is news."""
    return _MOVING.sub("", line)


class Monitor:
    """Status lines for the steps this snakemake started, read from their progress records."""

    def __init__(
        self,
        logs: str | os.PathLike,
        *,
        launcher: str = "none",
        every_s: float = SHOW_EVERY_S,
        heartbeat_s: float = HEARTBEAT_S,
        max_lines: int = MAX_LINES,
        out: IO[str] | None = None,
        wall: Callable[[], float] = time.time,
    ):
        self.logs, self.launcher = Path(logs), launcher
        self.every_s, self.heartbeat_s, self.max_lines = float(every_s), float(heartbeat_s), int(max_lines)
        self.out, self.wall = out, wall
        self.since = wall()
        self._shown: tuple[str, ...] = ()
        self._shown_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def records(self) -> list[dict[str, Any]]:
        """Records of steps started since this monitor started (older ones belong to an earlier run)."""
        found = []
        for path in sorted([*self.logs.glob(f"*{SUFFIX}"), *self.logs.glob(f"*/*{SUFFIX}")]):
            try:
                # a cheap first cut; generous, as a shared file system's clock may differ from this one's
                if path.stat().st_mtime < self.since - 600:
                    continue
            except OSError:
                continue
            record = read(path)
            if record is not None and float(record.get("started", 0)) >= self.since - 1:
                found.append(record)
        return found

    def lines(self, now: float | None = None) -> list[str]:
        """The status block now: one line per running step (at most ``max_lines``), and counts."""
        now = self.wall() if now is None else now
        records = self.records()
        running, queued, lines = [], 0, []
        for record in records:
            if record.get("state") != "running":
                continue
            job = job_state(record.get("job_folder"), float(record.get("started", 0)) - 1)
            if record.get("job_folder") and (job is None or job.get("state", "") in QUEUED_STATES):
                queued += 1
                continue
            running.append(status_line(record, now))
        lines = [f"[progress] {line}" for line in running[: self.max_lines]]
        if len(running) > self.max_lines:
            lines.append(f"[progress] ... and {len(running) - self.max_lines} more running")
        if not running and not queued:
            return []  # nothing to report (Snakemake prints what finished)
        if self.launcher != "none":
            done = sum(r.get("state") == "done" for r in records)
            failed = sum(r.get("state") == "failed" for r in records)
            lines.append(
                f"[progress] {self.launcher} jobs: {queued} queued, {len(running)} running, {done} done"
                + (f", {failed} failed" if failed else "")
            )
        return lines

    def poll(self, now: float | None = None) -> list[str]:
        """The block to print now, or [] (nothing running, or nothing new within the throttle)."""
        now = self.wall() if now is None else now
        if now - self._shown_at < self.every_s:
            return []
        lines = self.lines(now)
        signature = tuple(_signature(line) for line in lines)
        changed = signature != self._shown
        if not lines or not (changed or now - self._shown_at >= self.heartbeat_s):
            return []
        self._shown, self._shown_at = signature, now
        return lines

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            try:
                lines = self.poll()
                if lines:
                    print("\n".join(lines), file=self.out or sys.stderr, flush=True)
            except Exception:  # best-effort: a glitch reading a record must not end the monitor's output for good
                continue

    def start(self) -> Monitor:
        """Start printing (once; a no-op when ``every_s`` is 0)."""
        if self._thread is None and self.every_s > 0:
            self.since = self.wall()
            self._thread = threading.Thread(target=self._run, name="tokenbench-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
