"""A real one-node SLURM cluster on localhost for the tests in this folder (see cluster.sh).

`slurm_cluster` (session scope) starts it once with `cluster.sh start`, or reuses one this harness
already started. Concurrent pytest sessions (a colleague's, a second terminal) share it: each holds a
shared lock on `$SLURMTEST_DIR/.lease` while it runs, and at the end the last session out stops the
cluster if a pytest session started it. A cluster started by hand (`cluster.sh start`) is left running.

Stopping is by PID, never by name: the session that starts the cluster records each daemon's PID and
start time in `run/started-by-pytest`, and the teardown stops those processes only (`cluster.sh stop`,
then any recorded one still alive). The teardown runs when the session ends normally, when it is
interrupted (Ctrl-C; SIGTERM and SIGHUP are turned into the same KeyboardInterrupt, so pytest unwinds its
fixtures) and, as a last resort, at interpreter exit (atexit). A start interrupted half-way stops the
daemons that start had launched. (The marker `slurm` is set on every test here by tests/conftest.py.)
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
PARTITION = "debug"
START_TIMEOUT_S = 900  # apt-get install on a slow mirror, then ~6 s of daemon start
STOP_TIMEOUT_S = 300
LEASE_TIMEOUT_S = 120  # another session's stop takes ~7 s (longer with jobs to cancel)
MARKER = "started-by-pytest"  # under $SLURMTEST_DIR/run: JSON {"pytest_pid", "daemons": {name: [pid, start time]}}
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # as cluster.sh's DAEMONS
#: `cluster.sh start` prints "<daemon> up (pid N)" as each daemon comes up and "pids: name=N ..." at the end
_PID_LINE = re.compile(r"\b(munged|mariadbd|slurmdbd|slurmctld|slurmd) up \(pid (\d+)\)")
_PIDS_LINE = re.compile(r"\b(munged|mariadbd|slurmdbd|slurmctld|slurmd)=(\d+)")
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


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


# ------------------------------------------------------------------------------------ processes by PID
def process_identity(pid: int) -> tuple[str, int] | None:
    """(command name, start time in clock ticks since boot) of a live, non-zombie process; None if there is none.
    The pair tells a process apart from a later one that reuses its PID."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):
        return None
    return comm, int(fields[19])


def record_processes(pids: dict[str, int]) -> dict[str, list]:
    """{name: [pid, start time]} of the named processes that run now and are that program."""
    out: dict[str, list] = {}
    for name, pid in pids.items():
        ident = process_identity(pid)
        if ident is not None and ident[0] == name[:15]:  # /proc comm is cut at 15 characters
            out[name] = [pid, ident[1]]
    return out


def still_running(recorded: dict[str, list]) -> dict[str, list]:
    """The recorded processes that are still the same process (PID, name and start time all match)."""
    return {
        name: [pid, start] for name, (pid, start) in recorded.items() if process_identity(pid) == (name[:15], start)
    }


def stop_recorded(recorded: dict[str, list], grace_s: float = 10.0) -> list[str]:
    """SIGTERM the recorded processes that still run, SIGKILL the ones still there after ``grace_s``.

    Only processes whose PID, name and start time all match the record are signalled: a PID reused by
    another program since, or a daemon someone else started, is never touched. Returns what was signalled.
    """
    alive = still_running(recorded)
    for pid, _ in alive.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while still_running(alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, _ in still_running(alive).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5.0
    while still_running(alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(f"{name}:{pid}" for name, (pid, _) in alive.items())


def _recorded_pid_files(base: Path) -> dict[str, int]:
    """The daemons' PID files of cluster.sh, as they are now."""
    out = {}
    for name in DAEMONS:
        try:
            out[name] = int((base / "run" / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def _pids_in_output(text: str) -> dict[str, int]:
    pids = {name: int(pid) for name, pid in _PID_LINE.findall(text)}
    for line in text.splitlines():
        if line.startswith("pids:"):
            pids.update({name: int(pid) for name, pid in _PIDS_LINE.findall(line)})
    return pids


def _cluster_sh(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`cluster.sh stop|start` in a session of its own: a second Ctrl-C at the terminal does not cut a stop in
    half; an interrupted start is stopped by :func:`_start` itself."""
    return subprocess.run(
        ["bash", str(CLUSTER_SH), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


# ------------------------------------------------------------------------------------ teardown
class Teardown:
    """Everything the session must undo, done once: restore SLURM_CONF, and if this is the last session out of
    a cluster a pytest session started, stop it by its recorded PIDs; then drop the lease.

    Runs from the fixture's ``finally`` (normal end and KeyboardInterrupt), and from ``atexit`` if the fixture
    never got to it. While it runs, SIGINT/SIGTERM/SIGHUP are only noted, so a second Ctrl-C cannot leave the
    daemons half-stopped."""

    def __init__(self, base: Path, env: dict[str, str]):
        self.base = base
        self.env = env
        self.marker = base / "run" / MARKER
        self.lease: Any = None
        self.old_conf: str | None = None
        self.conf_set = False
        self.running = False
        self.done = False
        self.signals_during_teardown: list[int] = []
        self._old_handlers: dict[int, Any] = {}

    # --- signals: SIGTERM/SIGHUP become KeyboardInterrupt, so pytest unwinds and the fixture's finally runs
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.running or self.done:
            self.signals_during_teardown.append(signum)
            return
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: stopping the SLURM test cluster")

    def install(self) -> None:
        atexit.register(self)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still covers the exit
        for sig in SIGNALS:
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except (OSError, ValueError):
                pass

    def _uninstall(self) -> None:
        atexit.unregister(self)
        if threading.current_thread() is threading.main_thread():
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old_handlers.clear()

    def set_conf(self, conf: str) -> None:
        self.old_conf = os.environ.get("SLURM_CONF")
        self.conf_set = True
        os.environ["SLURM_CONF"] = conf  # submitit runs sbatch/sacct/scancel with os.environ

    def owned_cluster(self) -> dict[str, list] | None:
        """The daemons a pytest session started (from the marker), if the cluster running now is that one;
        None when the marker is missing, or the PID files now name other processes (restarted by hand)."""
        try:
            text = self.marker.read_text()
        except OSError:
            return None
        try:
            record = json.loads(text)
            daemons = {str(k): [int(v[0]), int(v[1])] for k, v in record["daemons"].items()}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return {}  # a marker of an older harness ("pid N"): cluster.sh stop alone, by its PID files
        now = _recorded_pid_files(self.base)
        if any(name in now and now[name] != pid for name, (pid, _) in daemons.items()):
            return None  # another start replaced them: not ours to stop
        return daemons

    def __call__(self) -> None:
        if self.running or self.done:
            return
        self.running = True
        try:
            if self.conf_set:
                if self.old_conf is None:
                    os.environ.pop("SLURM_CONF", None)
                else:
                    os.environ["SLURM_CONF"] = self.old_conf
            if self.lease is not None:
                try:
                    # Exclusive only if no other session holds its shared lease: then we are the last user.
                    fcntl.flock(self.lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True
                except BlockingIOError:
                    last = False
                daemons = self.owned_cluster() if last else None
                if daemons is not None:
                    try:
                        _cluster_sh("stop", self.env, STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        pass
                    stop_recorded(daemons)  # whatever `cluster.sh stop` did not stop, by PID and start time
                    self.marker.unlink(missing_ok=True)
                self.lease.close()
                self.lease = None
        finally:
            self.done = True
            self.running = False
            self._uninstall()


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


def _start(env: dict[str, str], base: Path) -> subprocess.CompletedProcess:
    """`cluster.sh start`, interruptible: on KeyboardInterrupt (or a timeout) the start's process group is
    terminated and the daemons it had launched are stopped by PID before the exception goes on. (cluster.sh's
    own EXIT trap does not stop them: bash reports status 0 to an EXIT trap run on SIGINT/SIGTERM.)"""
    proc = subprocess.Popen(
        ["bash", str(CLUSTER_SH), "start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=START_TIMEOUT_S)
    except BaseException:
        began = _holds_start_lock(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        if "slurm ready: already up" not in out and (began or "[cluster.sh +" in out):
            # this start was bringing daemons up: stop the ones it logged and the ones in PID files it wrote
            launched = {**_recorded_pid_files(base), **_pids_in_output(out)}
            stop_recorded(record_processes(launched))
            for name in DAEMONS:
                (base / "run" / f"{name}.pid").unlink(missing_ok=True)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _holds_start_lock(pgid: int) -> bool:
    """Whether the start in process group ``pgid`` got past cluster.sh's lock (its `locked-start` runs)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            if b"locked-start" in (entry / "cmdline").read_bytes():
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip(f"SLURM cluster: not root (uid {os.geteuid()}); cluster.sh starts the daemons as root")
    base = base_dir()
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLURMTEST_DIR": str(base)}
    teardown = Teardown(base, env)
    teardown.install()  # from here on an interruption or exit stops what this session starts
    try:
        teardown.lease = _take_lease(base)
        try:
            proc = _start(env, base)
        except subprocess.TimeoutExpired:
            pytest.skip(f"SLURM cluster: `{CLUSTER_SH} start` did not finish within {START_TIMEOUT_S} s")
        if proc.returncode != 0:
            pytest.skip(f"SLURM cluster could not be started: {_start_error(proc)}")
        started = "slurm ready: started" in proc.stdout
        if started:
            daemons = record_processes(_pids_in_output(proc.stdout) or _recorded_pid_files(base))
            teardown.marker.write_text(json.dumps({"pytest_pid": os.getpid(), "daemons": daemons}) + "\n")

        conf = str(base / "etc" / "slurm.conf")
        teardown.set_conf(conf)
        env = {**os.environ, "SLURM_CONF": conf}
        teardown.env = env
        cpus = subprocess.run(
            ["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%c"], env=env, capture_output=True, text=True, check=True
        ).stdout.split()[0]
        yield SlurmCluster(base=base, env=env, partition=PARTITION, cpus=int(cpus), started=started)
    finally:
        teardown()


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
