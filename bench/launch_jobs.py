"""A submitted step seen from the launcher (bench.launch): the private folder submitit keeps it in, its state in
the scheduler, waiting for its end, reading its result back safely, and the failure record written when it dies.

Torch-free, like bench.launch, which re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from bench.errors import UsageError, clip

#: where submitit's job folders live (pickles, sbatch script, logs); unset: ~/.cache/tokenbench/jobs
JOBS_DIR_ENV = "TOKENBENCH_JOBS_DIR"

ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "PREEMPTED",
    "UNKNOWN",
    "READY",
    "SIGNALING",
    "STAGE_OUT",
}


class _PlainUnpickler(pickle.Unpickler):
    """Plain values only (a job's result is its exit code or its traceback text): a result file planted in a
    shared job folder cannot run code in this launcher when it is read back."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


@contextmanager
def plain_results() -> Iterator[None]:
    """Make submitit read job results with :class:`_PlainUnpickler` (it reads them with ``pickle.load``)."""
    original = submitit.core.utils.pickle_load

    def load(filename: str | Path) -> Any:
        with open(filename, "rb") as f:
            try:
                return _PlainUnpickler(f).load()
            except pickle.UnpicklingError as e:
                raise RuntimeError(f"{filename}: refused: {e} (a job result holds only plain values)") from None

    submitit.core.utils.pickle_load = load
    try:
        yield
    finally:
        submitit.core.utils.pickle_load = original


def jobs_root() -> Path:
    """``$TOKENBENCH_JOBS_DIR``, else ``$XDG_CACHE_HOME`` (or ~/.cache) / tokenbench / jobs: on the home
    filesystem, which the compute nodes mount, and writable by this user only."""
    env = os.environ.get(JOBS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache).expanduser().absolute() / "tokenbench" / "jobs"


_LABEL_CHARS = 80


def job_folder_for(step_folder: str | os.PathLike, name: str = "tokenbench") -> Path:
    """The private job folder of the step whose results-side folder is ``step_folder``: its name and a hash of
    that folder's absolute path, so a restarted launcher finds its job again and two steps never share one."""
    digest = hashlib.sha256(os.path.abspath(step_folder).encode()).hexdigest()[:16]
    # the job name, bounded so that label and digest fit a file name (255 bytes)
    label = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:_LABEL_CHARS].strip(".") or "job"
    return jobs_root() / f"{label}-{digest}"


def private_folder(path: Path) -> Path:
    """Create ``path`` (and the jobs root, its parent) with mode 0700, or check the existing ones: a real folder
    (not a symlink), owned by this user, writable by nobody else. Every folder above them must be writable by
    nobody else either (or sticky, like /tmp): whoever can rename a folder on the way can swap what a queued
    job unpickles. Raises UsageError naming the folder."""
    parent = path.parent  # the jobs root, made 0700 too
    try:
        parent.parent.mkdir(parents=True, exist_ok=True)  # e.g. ~/.cache: the default mode
    except OSError as e:
        raise UsageError(
            f"job folder {path}: cannot create {parent.parent} ({e.strerror}); set {JOBS_DIR_ENV}"
        ) from None
    _check_above(parent.parent)
    for p in (parent, path):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise UsageError(f"job folder {p}: cannot create it ({e.strerror}); set {JOBS_DIR_ENV}") from None
        check_private(p)
    return Path(os.path.realpath(path))  # the folders above were checked resolved: the job uses that path


def check_private(p: Path) -> None:
    """One line naming ``p`` unless it is a folder of this user's that nobody else can write (a job's pickles)."""
    try:
        st = os.lstat(p)
    except OSError as e:
        raise UsageError(f"job folder {p}: {e.strerror}") from None
    why = (
        "is a symlink"
        if stat.S_ISLNK(st.st_mode)
        else "is not a folder"
        if not stat.S_ISDIR(st.st_mode)
        else f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
        if st.st_uid != os.geteuid()
        else f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
        if st.st_mode & 0o022
        else ""
    )
    if why:
        raise UsageError(
            f"job folder {p} {why}: a job's pickles must be where only you can write "
            f"(remove it, or set {JOBS_DIR_ENV} to a private folder the compute nodes see)"
        )


def _check_above(folder: Path) -> None:
    """The folders a job folder is reached through (symlinks resolved): none writable by another user, unless
    sticky (then nobody else can rename or replace what is ours in it)."""
    real = Path(os.path.realpath(folder))
    for p in [real, *real.parents]:
        st = os.stat(p)
        if st.st_uid not in (0, os.geteuid()) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise UsageError(
                f"job folder {folder}: {p} can be changed by other users (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):o}), so they could swap a queued job's pickles; set {JOBS_DIR_ENV} "
                "to a private folder the compute nodes see"
            )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def queued_job_named(name: str) -> str | None:
    """The id of this user's one pending or running job of that name, if SLURM holds exactly one."""
    import getpass
    import subprocess

    try:
        out = subprocess.run(
            ["squeue", "-h", "-u", getpass.getuser(), "-n", name, "-o", "%i"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if len(out) == 1 else None


def squeue_state(job_id: str) -> str | None:
    """The job's state while SLURM still holds it (pending, running, requeued), else None."""
    import subprocess

    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].upper() if out else None


def sacct_state(job_id: str) -> str:
    """The job's state in SLURM's accounting, asked afresh (submitit's watcher caches the states of jobs it
    saw finish, and a job id met earlier in the same process would answer from that cache)."""
    import subprocess

    try:
        lines = subprocess.run(
            ["sacct", "-j", str(job_id), "-o", "JobID,State", "--parsable2"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"
    header = lines[0].split("|") if lines else []
    for line in lines[1:]:
        row = dict(zip(header, line.split("|")))
        if row.get("JobID") == str(job_id):
            return (row.get("State", "").split() or ["UNKNOWN"])[0].upper()  # "CANCELLED by 0" -> CANCELLED
    return "UNKNOWN"


def wait(job: submitit.Job, poll_s: float = 0.5, on_state: Callable[[str], None] | None = None) -> None:
    """Block until the job ends. The result file is checked often (cheap); the scheduler, rarely.

    A requeued job (preemption, time limit, `scontrol requeue`) briefly looks finished in sacct
    before it runs again, so an end without a result is confirmed with squeue. ``on_state`` is called
    with the job's state whenever it changes, as last polled (for the pipeline's queued/running counts).
    """
    start, last_force, seen = time.time(), time.time(), None
    while True:
        force = isinstance(job, submitit.SlurmJob) and time.time() - last_force > min(
            60.0, 5.0 + (time.time() - start) / 10
        )
        if force:
            last_force = time.time()
        finished = job.done(force_check=force)
        if on_state is not None:
            state = _cached_state(job)
            if state != seen:
                seen = state
                on_state(state)
        if finished:
            if job.paths.result_pickle.exists() or not isinstance(job, submitit.SlurmJob):
                return
            time.sleep(2.0)  # let a requeue reach the queue
            if squeue_state(job.job_id) not in ACTIVE_STATES and not job.paths.result_pickle.exists():
                return
        time.sleep(poll_s)


def _cached_state(job: submitit.Job) -> str:
    """The state ``job.done`` just polled, without asking the scheduler again."""
    try:
        if isinstance(job, submitit.SlurmJob):
            return str(job.watcher.get_state(job.job_id, mode="cache"))
        return str(job.state)  # a local job: a poll of its process
    except Exception:
        return "UNKNOWN"


def job_state(job: submitit.Job) -> str:
    try:
        return sacct_state(job.job_id) if isinstance(job, submitit.SlurmJob) else str(job.state)
    except Exception as e:  # the scheduler may be unreachable; the failure record still gets written
        return f"UNKNOWN ({type(e).__name__})"


def record_job_failure(path: Path, job: submitit.Job, reason: str, submitted_at: str) -> None:
    """Write or complete failure.json with what the scheduler knows; the step's own record is kept."""
    from bench.io import atomic_write_json, read_text

    record: dict[str, Any] = {}
    if path.exists():
        try:
            record = json.loads(read_text(path))  # a planted link: UnsafeArtifact (bench.io), never read
        except ValueError:
            record = {}
        if str(record.get("created_at", "")) < submitted_at:
            record = {}  # left over from an earlier attempt
    record.setdefault("run_id", path.parent.name)
    record.setdefault("error", reason)
    record.update(
        {
            "status": "failed",
            "job_id": str(job.job_id),
            "job_state": job_state(job),
            "job_stdout": str(job.paths.stdout),
            "job_stderr": str(job.paths.stderr),
        }
    )
    record.setdefault("created_at", _now())
    atomic_write_json(path, record)


def _last_error_line(e: BaseException) -> str:
    """The exception line of the job's traceback, not submitit's boilerplate around it."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = lines[: next((i for i, ln in enumerate(lines) if ln.startswith("You can check")), len(lines))]
    lines = [ln for ln in lines if not set(ln) <= set("-")]
    return clip(lines[-1], 300) if lines else type(e).__name__
