"""The harness runs real SLURM jobs the way the project submits them: through submitit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

# pytest imports this file as `slurm.test_cluster`, which the job's Python cannot import: ship the
# job functions below by value instead of by reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add(a: int, b: int) -> int:
    return a + b


def sleep_long() -> None:
    time.sleep(300)


def rank_and_host() -> tuple[int, int, str]:
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks, env.hostname


def sacct_state(cluster, job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return out.splitlines()[-1] if out else ""


def wait_sacct_state(cluster, job_id: str, wanted: str, timeout_s: float) -> str:
    """Poll sacct until the job's state starts with `wanted` (e.g. "CANCELLED by 0")."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(cluster, job_id)
        if state.startswith(wanted):
            return state
        time.sleep(0.25)
    pytest.fail(f"job {job_id}: sacct state {state!r}, not {wanted} after {timeout_s} s")


def test_submitit_job_returns_result_and_sacct_completed(slurm_cluster, slurm_executor):
    job = slurm_executor().submit(add, 2, 3)
    assert job.result() == 5
    # the accounting record reaches slurmdbd shortly after the result file is written
    wait_sacct_state(slurm_cluster, job.job_id, "COMPLETED", timeout_s=15)


def test_cancel_makes_result_raise_in_bounded_time(slurm_cluster, slurm_executor):
    job = slurm_executor().submit(sleep_long)
    try:
        wait_sacct_state(slurm_cluster, job.job_id, "RUNNING", timeout_s=15)
        job.cancel()
        wait_sacct_state(slurm_cluster, job.job_id, "CANCELLED", timeout_s=10)

        # Without a working sacct this would wait forever: run it in a thread to bound the test.
        outcome: list[BaseException | object] = []
        waiter = threading.Thread(target=lambda: outcome.append(_result_or_error(job)), daemon=True)
        t0 = time.monotonic()
        waiter.start()
        waiter.join(timeout=25)
        assert outcome, "job.result() still waiting 25 s after the job was cancelled"
        assert isinstance(outcome[0], UncompletedJobError), f"job.result() gave {outcome[0]!r}"
        # submitit's own view: done, state from sacct (it polls every few seconds)
        assert job.done()
        assert job.state.startswith("CANCELLED"), job.state
        print(f"result() raised {time.monotonic() - t0:.1f} s after the cancel was seen in sacct")
    finally:
        job.cancel(check=False)


def _result_or_error(job):
    try:
        return job.result()
    except BaseException as exc:  # handed to the test thread, which checks its type
        return exc


def test_two_tasks_return_one_result_each(slurm_cluster, slurm_executor):
    if slurm_cluster.cpus < 2:
        pytest.skip(f"the node has {slurm_cluster.cpus} CPU; two tasks of one CPU each need 2")
    job = slurm_executor(tasks_per_node=2).submit(rank_and_host)
    results = job.results()
    assert sorted(r[0] for r in results) == [0, 1]
    assert all(r[1] == 2 for r in results)
    wait_sacct_state(slurm_cluster, job.job_id, "COMPLETED", timeout_s=15)
