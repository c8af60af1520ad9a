"""A real one-node SLURM cluster on localhost for the tests in this folder (see cluster.sh).

`slurm_cluster` (session scope) starts it once with `cluster.sh start`, or reuses one this harness
already started. Concurrent pytest sessions (a colleague's, a second terminal) share it: each holds a
shared lock on `$SLURMTEST_DIR/.lease` while it runs, and at the end the last session out stops the
cluster if a pytest session started it. A cluster started by hand (`cluster.sh start`) is left running.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
PARTITION = "debug"
START_TIMEOUT_S = 900  # apt-get install on a slow mirror, then ~6 s of daemon start
LEASE_TIMEOUT_S = 120  # another session's stop takes ~7 s (longer with jobs to cancel)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs the real one-node SLURM cluster of tests/slurm/cluster.sh (root, apt)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slurm)


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    base: Path  # $SLURMTEST_DIR: config, state, logs of the cluster
    env: dict[str, str]  # os.environ plus SLURM_CONF, for subprocesses (sbatch, sacct, snakemake)
    partition: str
    cpus: int  # CPUs of the one node, as `slurmd -C` found them on this machine
    started: bool  # whether this session started it (False: reused a running one)


def base_dir() -> Path:
    # same default as cluster.sh: ${SLURMTEST_DIR:-${TMPDIR:-/tmp}/tokenbench-slurm}
    tmp = os.environ.get("TMPDIR") or "/tmp"
    return Path(os.environ.get("SLURMTEST_DIR") or os.path.join(tmp, "tokenbench-slurm"))


def _start_error(proc: subprocess.CompletedProcess) -> str:
    """The part of cluster.sh's output that says why it failed."""
    err = proc.stderr
    at = err.rfind("cluster.sh: ERROR:")
    if at >= 0:
        reason = err[at + len("cluster.sh: ERROR:") :].strip()
    else:
        tail = (proc.stdout + err).strip().splitlines()[-10:]
        reason = f"cluster.sh start exited {proc.returncode}: " + "\n".join(tail)
    return reason[-3000:]


def _take_lease(base: Path):
    """Shared lock held for the whole session: tells other sessions the cluster is in use."""
    lease = open(base / ".lease", "a+")
    deadline = time.monotonic() + LEASE_TIMEOUT_S
    while True:
        try:
            fcntl.flock(lease, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return lease
        except BlockingIOError:  # another session is stopping the cluster right now
            if time.monotonic() > deadline:
                lease.close()
                pytest.skip(f"SLURM cluster: {base}/.lease stayed locked by another session's stop")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip(f"SLURM cluster: not root (uid {os.geteuid()}); cluster.sh starts the daemons as root")
    base = base_dir()
    base.mkdir(parents=True, exist_ok=True)
    lease = _take_lease(base)
    env = {**os.environ, "SLURMTEST_DIR": str(base)}
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SH), "start"], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        lease.close()
        pytest.skip(f"SLURM cluster: `{CLUSTER_SH} start` did not finish within {START_TIMEOUT_S} s")
    if proc.returncode != 0:
        lease.close()
        pytest.skip(f"SLURM cluster could not be started: {_start_error(proc)}")
    started = "slurm ready: started" in proc.stdout
    marker = base / "run" / "started-by-pytest"
    if started:
        marker.write_text(f"pid {os.getpid()}\n")

    conf = str(base / "etc" / "slurm.conf")
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # submitit runs sbatch/sacct/scancel with os.environ
    env = {**os.environ, "SLURM_CONF": conf}
    cpus = subprocess.run(
        ["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%c"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    try:
        yield SlurmCluster(base=base, env=env, partition=PARTITION, cpus=int(cpus), started=started)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        try:
            # Exclusive only if no other session holds its shared lease: then we are the last user.
            fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            last = True
        except BlockingIOError:
            last = False
        if last and marker.exists():
            subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, capture_output=True, text=True, timeout=300)
        lease.close()


@pytest.fixture
def submitit_folder(tmp_path: Path) -> Path:
    """A fresh submitit folder for each test. Job ids restart at 1 after every fresh cluster start, so
    result files left in a reused folder would make new jobs look finished at once."""
    folder = tmp_path / "submitit"
    folder.mkdir()
    return folder


@pytest.fixture
def slurm_executor(slurm_cluster: SlurmCluster, submitit_folder: Path):
    """Factory of submitit executors on the test cluster, in this test's fresh folder."""
    import submitit

    def make(**params):
        executor = submitit.AutoExecutor(folder=submitit_folder, cluster="slurm")
        # timeout_min >= 2: submitit asks for --signal=USR2@90, so with 1 min the signal comes at once
        defaults = {"timeout_min": 2, "slurm_partition": slurm_cluster.partition, "cpus_per_task": 1}
        executor.update_parameters(**{**defaults, **params})
        return executor

    return make
