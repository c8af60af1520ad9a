"""Run one pipeline step as a submitit job: on SLURM on a cluster, in a local subprocess elsewhere.

Snakemake calls ``python -m bench.launch [resources] -- <bench CLI args>`` for every compute job when
a profile sets ``launcher``. This process submits the step, records the job id in the step's folder,
waits for it and exits with its outcome, so Snakemake sees an ordinary local job. Restarted after a
crash, it re-attaches to a job that is still pending or running instead of submitting it twice.

submitit's job folder (the pickled step the job unpickles, the sbatch script, the logs) is private: mode 0700
under ``$TOKENBENCH_JOBS_DIR`` or ~/.cache/tokenbench/jobs (bench.launch_jobs.private_folder), never in the
results, which a group may write. The step's folder in the results gets JSON records, the kept outputs and,
when the job ends, copies of its logs.

This module stays light (no torch import): hundreds of these wait on a login node.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from bench.errors import UsageError, clip
from bench.launch_jobs import (
    ACTIVE_STATES,
    _last_error_line,
    _now,
    job_folder_for,
    job_state,
    plain_results,
    private_folder,
    queued_job_named,
    record_job_failure,
    sacct_state,
    squeue_state,
    wait,
)
from bench.progress import ENV as PROGRESS_ENV
from bench.progress import write_job_state
from bench.requeue import RequeueRefused, read_progress, requeue_refusal, slurm_restarts, train_log_path

LAUNCH_RECORD = "launch.json"
SUBMITIT_MAX_TIMEOUTS = 10_000


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
        progress_file: str | None = None,
    ):
        self.argv = list(argv)
        self.threads = threads
        self.outputs = list(outputs)
        self.folder = folder
        self.time_min = time_min
        self.max_requeues = max_requeues  # None: the budget follows from the run's measured epoch time
        self.signal_delay_s = signal_delay_s
        self._attempt: tuple[float, int] | None = None  # (start time, epochs done) of this attempt
        # the pipeline's progress record of this step, carried explicitly: a cluster may not export the environment
        self.progress_file = progress_file

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
        if getattr(self, "progress_file", None):  # absent from a job pickled before it existed
            os.environ[PROGRESS_ENV] = self.progress_file
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
        from bench.io import check_no_link, safe_mkdir

        safe_mkdir(Path(out).parent)  # inside results: a planted link to a folder is refused (bench.io)
        os.link(kept, check_no_link(out))
    return True


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("bench.launch: error: give the bench command after `--`")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m bench.launch", description=__doc__.splitlines()[0])
    p.add_argument("--launcher", choices=["slurm", "local"], required=True)
    p.add_argument(
        "--folder",
        required=True,
        type=Path,
        help="the step's folder in the results (launch.json, kept outputs, copies of the job's logs); submitit's "
        "own folder (pickles, logs) is private: $TOKENBENCH_JOBS_DIR or ~/.cache/tokenbench/jobs",
    )
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
        folder=args.job_folder,
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
        from bench.io import read_text

        return json.loads(read_text(folder / LAUNCH_RECORD))  # a planted link: UnsafeArtifact (bench.io)
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
            "job_folder": str(args.job_folder),  # private; the logs are copied beside this record at the end
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
        },
    )


def attach_or_submit(args: argparse.Namespace, cmd: list[str], log=print) -> submitit.Job:
    """Re-attach to this step's SLURM job if it is still queued/running or finished well; else submit."""
    args.folder.mkdir(parents=True, exist_ok=True)
    args.job_folder = private_folder(job_folder_for(args.folder, args.name))  # UsageError: not private
    old = _read_record(args.folder)
    if old and args.launcher == "slurm" and old.get("cmd") == cmd and old.get("launcher") == "slurm":
        job = submitit.SlurmJob(
            folder=args.job_folder, job_id=str(old["job_id"]), tasks=tuple(range(old.get("tasks", 1)))
        )
        state = squeue_state(job.job_id) or sacct_state(job.job_id)
        finished = state == "COMPLETED" and job.paths.result_pickle.exists()
        if state in ACTIVE_STATES or (finished and restore_outputs(args.folder, args.output)):
            log(f"bench.launch: re-attaching to SLURM job {job.job_id} ({state}) instead of submitting again")
            return job
        log(f"bench.launch: earlier SLURM job {job.job_id} ended {state}; submitting again")
    elif old is None and args.launcher == "slurm":
        # killed between sbatch and writing the record: the job is in the queue under this step's unique name
        job_id = queued_job_named(args.name)
        if job_id is not None:
            job = submitit.SlurmJob(folder=args.job_folder, job_id=job_id, tasks=tuple(range(n_tasks(args))))
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
            progress_file=os.environ.get(PROGRESS_ENV) or None,
        )
    )
    _record_submission(args, cmd, job)
    log(
        f"bench.launch: submitted {args.launcher} job {job.job_id} ({args.name}); logs in {job.paths.folder} "
        f"(private), copied to {args.folder} when it ends"
    )
    return job


def copy_logs(job: submitit.Job, folder: Path) -> None:
    """Copies of the job's logs (every task's) beside its record in the results, for whoever reads them there.
    Written atomically (a rename replaces a planted link, never writes through it); best-effort."""
    import shutil

    from bench.io import atomic_write

    for log in sorted(Path(job.paths.folder).glob(f"{job.job_id}_*_log.*")):
        try:
            atomic_write(folder / log.name, lambda tmp, src=log: shutil.copyfile(src, tmp))
        except Exception as e:  # a log copy never changes the step's outcome
            print(f"bench.launch: could not copy {log} to {folder}: {clip(e, 200)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args, cmd = _parse(sys.argv[1:] if argv is None else argv)
    if "--results" in cmd[:-1]:  # the step's results root: below it no symlink is followed here either (bench.io)
        from bench.io import results_root

        results_root(cmd[cmd.index("--results") + 1])
    t0 = time.time()
    try:
        job = attach_or_submit(args, cmd, log=lambda s: print(s, file=sys.stderr, flush=True))
    except UsageError as e:  # a job folder others could write: nothing submitted
        print(f"bench.launch: error: {e}", file=sys.stderr)
        return 2
    except submitit.core.utils.FailedJobError as e:  # sbatch refused the job (bad partition, account, ...)
        print(f"bench.launch: error: submission failed: {clip(str(e).strip().splitlines()[-1], 300)}", file=sys.stderr)
        return 2
    submitted_at = (_read_record(args.folder) or {}).get("submitted_at", _now())
    try:
        # the job's state as polled anyway, for the pipeline's queued/running counts (bench.progress)
        wait(job, args.poll_s, on_state=lambda state: write_job_state(args.folder, job.job_id, state))
        with plain_results():
            try:
                job.results()
            finally:
                copy_logs(job, args.folder)
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
            try:
                record_job_failure(args.failure_record, job, reason, submitted_at)
            except UsageError as refused:  # a planted link at the record: named, never written through
                print(f"bench.launch: error: {refused}", file=sys.stderr)
        print(f"bench.launch: {reason}; stderr log: {job.paths.stderr}", file=sys.stderr)
        return 1
    print(f"bench.launch: job {job.job_id} done in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
