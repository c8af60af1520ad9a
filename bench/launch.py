"""Run one pipeline step as a submitit job: on SLURM on a cluster, in a local subprocess elsewhere.

Snakemake calls ``python -m bench.launch [resources] -- <bench CLI args>`` for every compute job when
a profile sets ``launcher``. This process submits the step, records the job id in the step's folder,
waits for it and exits with its outcome, so Snakemake sees an ordinary local job. Restarted after a
crash, it re-attaches to a job that is still pending or running instead of submitting it twice.

This module stays light (no torch import): hundreds of these wait on a login node.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from bench.requeue import RequeueRefused, read_progress, requeue_refusal, slurm_restarts, train_log_path

LAUNCH_RECORD = "launch.json"
SUBMITIT_MAX_TIMEOUTS = 10_000
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


class BenchStep(submitit.helpers.Checkpointable):
    """The job's payload: the `bench` CLI, in the job's process.

    Checkpointable: on preemption or an approaching time limit submitit calls ``checkpoint`` and
    requeues the same step; training then resumes from its last per-epoch checkpoint by itself.
    """

    def __init__(
        self,
        argv: Sequence[str],
        threads: int | None = None,
        outputs: Sequence[str] = (),
        folder: str | None = None,
        time_min: int | None = None,
        max_requeues: int | None = None,
        signal_delay_s: int = 0,
    ):
        self.argv = list(argv)
        self.threads = threads
        self.outputs = list(outputs)
        self.folder = folder
        self.time_min = time_min
        self.max_requeues = max_requeues  # None: the budget follows from the run's measured epoch time
        self.signal_delay_s = signal_delay_s
        self._attempt: tuple[float, int] | None = None  # (start time, epochs done) of this attempt

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the time-limit warning (and on preemption): requeue unless the budget says no."""
        reason = requeue_refusal(self, slurm_restarts())
        if reason:
            print(f"bench.launch: not requeuing: {reason}", file=sys.stderr, flush=True)
            raise RequeueRefused(reason)  # ends the step as failed, with this reason in its failure record
        return super().checkpoint(*args, **kwargs)

    def progress(self) -> dict[str, Any] | None:
        """The last record of the step's training log (epochs done, epochs in all, epoch time), if it trains."""
        return read_progress(train_log_path(self.argv, self.outputs))

    def __call__(self) -> int:
        # every task of a multi-task job runs the step: the training code sets up torch.distributed
        # from this job environment, and only rank 0 writes outputs
        env = submitit.JobEnvironment()
        done = (self.progress() or {}).get("epoch", 0)
        self._attempt = (time.time(), int(done))
        argv = list(self.argv)
        if self.threads and "--threads" not in argv and argv and argv[0] in ("train", "evaluate", "time"):
            argv += ["--threads", str(self.threads)]
        from bench.cli import main

        try:
            code = main(argv)
        finally:
            from bench.train.distributed import cleanup

            cleanup()
        if code != 0:
            raise RuntimeError(f"`bench {shlex.join(argv)}` exited with code {code} (see the job's stderr log)")
        if env.global_rank == 0 and self.folder:
            keep_outputs(Path(self.folder), self.outputs)
        return code


def _kept(folder: Path, i: int, output: str) -> Path:
    return folder / "outputs" / f"{i}_{Path(output).name}"


def keep_outputs(folder: Path, outputs: Sequence[str]) -> None:
    """Hard-link the step's outputs into its job folder.

    If Snakemake is killed while the job runs, it deletes the job's outputs as incomplete when it
    starts again; the re-attached launcher then restores them from here instead of re-running.
    """
    for i, out in enumerate(outputs):
        kept = _kept(folder, i, out)
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.unlink(missing_ok=True)
        try:
            os.link(out, kept)
        except OSError:  # no hard links on this filesystem: restoring is then not possible
            return


def restore_outputs(folder: Path, outputs: Sequence[str]) -> bool:
    """Put back outputs of a finished job; False when one of them cannot be restored."""
    for i, out in enumerate(outputs):
        if os.path.exists(out):
            continue
        kept = _kept(folder, i, out)
        if not kept.exists():
            return False
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        os.link(kept, out)
    return True


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("bench.launch: error: give the bench command after `--`")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m bench.launch", description=__doc__.splitlines()[0])
    p.add_argument("--launcher", choices=["slurm", "local"], required=True)
    p.add_argument("--folder", required=True, type=Path, help="submitit folder (job logs, pickles, launch.json)")
    p.add_argument("--name", default="tokenbench")
    p.add_argument("--gpus", type=int, default=0, help="GPUs; N > 1 starts N tasks (DDP)")
    p.add_argument("--tasks", type=int, default=0, help="tasks (DDP processes); default one per GPU, at least 1")
    p.add_argument("--cpus", type=int, default=1, help="CPUs per task (also torch threads)")
    p.add_argument("--mem-mb", type=int, default=0)
    p.add_argument("--time-min", type=int, default=60)
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--qos", default="")
    p.add_argument("--constraint", default="")
    p.add_argument("--extra", default="", help="extra sbatch options, e.g. '--exclusive --reservation=x'")
    p.add_argument("--signal-delay-s", type=int, default=90, help="warning before the time limit (requeue)")
    p.add_argument(
        "--max-requeues",
        default="auto",
        help="requeues before the step counts as failed: 'auto' (from the run's epochs and measured "
        "epoch time against --time-min) or a number",
    )
    p.add_argument(
        "--failure-record",
        type=Path,
        default=None,
        help="failure.json to write when the job dies without recording its own failure",
    )
    p.add_argument("--output", action="append", default=[], help="a file the step writes (repeatable)")
    p.add_argument("--poll-s", type=float, default=0.5)
    args = p.parse_args(argv[:split])
    if args.max_requeues == "auto":
        args.max_requeues = None
    else:
        try:
            args.max_requeues = int(args.max_requeues)
        except ValueError:
            p.error(f"--max-requeues: 'auto' or a number, got {args.max_requeues!r}")
    cmd = argv[split + 1 :]
    if not cmd:
        p.error("no bench command after `--`")
    return args, cmd


def _extra_params(extra: str) -> dict[str, Any]:
    """'--exclusive --reservation=x' -> {'exclusive': True, 'reservation': 'x'} for submitit."""
    out: dict[str, Any] = {}
    for tok in shlex.split(extra):
        key, _, value = tok.lstrip("-").partition("=")
        if not key:
            raise SystemExit(f"bench.launch: error: cannot read sbatch option {tok!r} in --extra")
        out[key.replace("-", "_")] = value if value else True
    return out


def n_tasks(args: argparse.Namespace) -> int:
    return args.tasks if args.tasks > 0 else max(1, args.gpus)


def make_executor(args: argparse.Namespace) -> submitit.Executor:
    tasks = n_tasks(args)
    slurm = args.launcher == "slurm"
    # submitit's own count is a backstop far above any budget: BenchStep.checkpoint decides
    ex = submitit.AutoExecutor(
        folder=args.folder,
        cluster="slurm" if slurm else "local",
        **({"slurm_max_num_timeout": SUBMITIT_MAX_TIMEOUTS} if slurm else {}),
    )
    params: dict[str, Any] = dict(
        name=args.name, timeout_min=args.time_min, cpus_per_task=args.cpus, tasks_per_node=tasks, nodes=1
    )
    if args.launcher == "slurm":
        params.update(slurm_signal_delay_s=args.signal_delay_s)
        if args.gpus:
            params["gpus_per_node"] = args.gpus
        if args.mem_mb:
            params["slurm_mem"] = f"{args.mem_mb}M"
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(args, key):
                params[f"slurm_{key}"] = getattr(args, key)
        if args.extra:
            params["slurm_additional_parameters"] = _extra_params(args.extra)
    try:
        ex.update_parameters(**params)
    except (NameError, ValueError, TypeError) as e:  # submitit names the bad parameter
        raise SystemExit(f"bench.launch: error: {str(e).splitlines()[0]}") from None
    return ex


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / LAUNCH_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    from bench.io import atomic_write_json

    atomic_write_json(folder / LAUNCH_RECORD, record)


def _record_submission(args: argparse.Namespace, cmd: list[str], job: submitit.Job) -> None:
    _write_record(
        args.folder,
        {
            "job_id": job.job_id,
            "launcher": args.launcher,
            "cmd": cmd,
            "name": args.name,
            "tasks": n_tasks(args),
            "submitted_at": _now(),
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
        },
    )


def attach_or_submit(args: argparse.Namespace, cmd: list[str], log=print) -> submitit.Job:
    """Re-attach to this step's SLURM job if it is still queued/running or finished well; else submit."""
    args.folder.mkdir(parents=True, exist_ok=True)
    old = _read_record(args.folder)
    if old and args.launcher == "slurm" and old.get("cmd") == cmd and old.get("launcher") == "slurm":
        job = submitit.SlurmJob(folder=args.folder, job_id=str(old["job_id"]), tasks=tuple(range(old.get("tasks", 1))))
        state = squeue_state(job.job_id) or job.watcher.get_state(job.job_id, mode="force").upper()
        finished = state == "COMPLETED" and job.paths.result_pickle.exists()
        if state in ACTIVE_STATES or (finished and restore_outputs(args.folder, args.output)):
            log(f"bench.launch: re-attaching to SLURM job {job.job_id} ({state}) instead of submitting again")
            return job
        log(f"bench.launch: earlier SLURM job {job.job_id} ended {state}; submitting again")
    elif old is None and args.launcher == "slurm":
        # killed between sbatch and writing the record: the job is in the queue under this step's unique name
        job_id = queued_job_named(args.name)
        if job_id is not None:
            job = submitit.SlurmJob(folder=args.folder, job_id=job_id, tasks=tuple(range(n_tasks(args))))
            _record_submission(args, cmd, job)
            log(f"bench.launch: re-attaching to SLURM job {job_id} (queued as {args.name}, no record of it)")
            return job
    ex = make_executor(args)
    job = ex.submit(
        BenchStep(
            cmd,
            threads=args.cpus,
            outputs=args.output,
            folder=str(args.folder),
            time_min=args.time_min,
            max_requeues=args.max_requeues,
            signal_delay_s=args.signal_delay_s if args.launcher == "slurm" else 0,
        )
    )
    _record_submission(args, cmd, job)
    log(f"bench.launch: submitted {args.launcher} job {job.job_id} ({args.name}); logs in {job.paths.folder}")
    return job


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


def wait(job: submitit.Job, poll_s: float = 0.5) -> None:
    """Block until the job ends. The result file is checked often (cheap); the scheduler, rarely.

    A requeued job (preemption, time limit, `scontrol requeue`) briefly looks finished in sacct
    before it runs again, so an end without a result is confirmed with squeue.
    """
    start, last_force = time.time(), time.time()
    while True:
        force = isinstance(job, submitit.SlurmJob) and time.time() - last_force > min(
            60.0, 5.0 + (time.time() - start) / 10
        )
        if force:
            last_force = time.time()
        if job.done(force_check=force):
            if job.paths.result_pickle.exists() or not isinstance(job, submitit.SlurmJob):
                return
            time.sleep(2.0)  # let a requeue reach the queue
            if squeue_state(job.job_id) not in ACTIVE_STATES and not job.paths.result_pickle.exists():
                return
        time.sleep(poll_s)


def job_state(job: submitit.Job) -> str:
    try:
        return (
            str(job.watcher.get_state(job.job_id, mode="force"))
            if isinstance(job, submitit.SlurmJob)
            else str(job.state)
        )
    except Exception as e:  # the scheduler may be unreachable; the failure record still gets written
        return f"UNKNOWN ({type(e).__name__})"


def record_job_failure(path: Path, job: submitit.Job, reason: str, submitted_at: str) -> None:
    """Write or complete failure.json with what the scheduler knows; the step's own record is kept."""
    from bench.io import atomic_write_json

    record: dict[str, Any] = {}
    if path.exists():
        try:
            record = json.loads(path.read_text())
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
    return (lines[-1] if lines else type(e).__name__)[:300]


def main(argv: Sequence[str] | None = None) -> int:
    args, cmd = _parse(sys.argv[1:] if argv is None else argv)
    t0 = time.time()
    try:
        job = attach_or_submit(args, cmd, log=lambda s: print(s, file=sys.stderr, flush=True))
    except submitit.core.utils.FailedJobError as e:  # sbatch refused the job (bad partition, account, ...)
        print(f"bench.launch: error: submission failed: {str(e).strip().splitlines()[-1][:300]}", file=sys.stderr)
        return 2
    submitted_at = (_read_record(args.folder) or {}).get("submitted_at", _now())
    try:
        wait(job, args.poll_s)
        with plain_results():
            job.results()
        if not restore_outputs(args.folder, args.output):
            raise RuntimeError(f"the job finished but did not leave {', '.join(args.output)}")
    except KeyboardInterrupt:
        # Snakemake stopping: the job keeps running and the next launch re-attaches to it
        print(f"bench.launch: interrupted; job {job.job_id} left running", file=sys.stderr)
        return 130
    except Exception as e:  # the job failed, was cancelled, timed out or ran out of memory
        state = job_state(job)
        reason = f"{args.launcher} job {job.job_id} ended {state}: {_last_error_line(e)}"
        if args.failure_record is not None:
            record_job_failure(args.failure_record, job, reason, submitted_at)
        print(f"bench.launch: {reason}; stderr log: {job.paths.stderr}", file=sys.stderr)
        return 1
    print(f"bench.launch: job {job.job_id} done in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
