"""A results folder a group can write never holds anything that runs as its owner: submitit's job folder (the
pickled step the job unpickles, the sbatch script) is private to the submitting user, and a job folder anyone
else could write or swap is refused in one line before anything is submitted."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.errors import UsageError
from bench.launch_jobs import check_private, job_folder_for, private_folder

#: a co-user's process: every pickle it finds under the results folder is replaced by one that writes PWNED when
#: unpickled; the names it saw are listed in <results>/../seen.txt
WATCHER = textwrap.dedent("""
    import os, pickle, sys, time
    results, pwned, seen, stop = sys.argv[1:5]

    class Evil:
        def __reduce__(self):
            return (open, (pwned, "w"))

    payload = pickle.dumps(Evil())
    while not os.path.exists(stop):
        for dirpath, _, files in os.walk(results):
            for name in files:
                if name.endswith(".pkl"):
                    with open(seen, "a") as f:
                        f.write(os.path.join(dirpath, name) + "\\n")
                    try:
                        with open(os.path.join(dirpath, name), "wb") as f:
                            f.write(payload)
                    except OSError:
                        pass
        time.sleep(0.002)
""")


def launch(folder: Path, *cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bench.launch", "--launcher", "local", "--folder", str(folder), "--name", "t"]
    return subprocess.run([*argv, "--", *cmd], capture_output=True, text=True, timeout=120, env=env)


def test_a_co_user_swapping_pickles_in_the_results_never_runs_code_as_the_job(tmp_path, monkeypatch):
    """A watcher that rewrites every pickle it sees under the results folder while a local job runs (it won the
    race on its first try when the job folder was there): the job runs the real step, no pickle ever appears in
    the results, and the malicious one never runs. The job's logs are copied beside its record."""
    results, pwned, seen, stop = tmp_path / "results", tmp_path / "PWNED", tmp_path / "seen.txt", tmp_path / "stop"
    folder = results / "s" / "runs" / "r" / "slurm" / "evaluate"
    folder.mkdir(parents=True)
    monkeypatch.setenv("TOKENBENCH_JOBS_DIR", str(tmp_path / "private-jobs"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(results), str(pwned), str(seen), str(stop)])
    try:
        time.sleep(0.3)  # the watcher is scanning before the job is submitted
        p = launch(folder, "ls", "methods", env=env)
    finally:
        stop.touch()
        watcher.wait(timeout=30)
    assert p.returncode == 0, p.stderr
    assert not pwned.exists()
    assert not seen.exists(), seen.read_text()  # no pickle was ever in the results folder
    assert not list(results.rglob("*.pkl")) and not list(results.rglob("*.sh"))
    record = json.loads((folder / "launch.json").read_text())
    private = Path(record["job_folder"])
    assert private == job_folder_for(folder, "t") and private.stat().st_mode & 0o777 == 0o700
    assert (private / f"{record['job_id']}_submitted.pkl").exists()  # where the job read it from
    assert "dynamicvit" in (folder / f"{record['job_id']}_0_log.out").read_text()  # the log, copied


def test_the_same_step_gets_the_same_private_folder_and_two_steps_never_share_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_JOBS_DIR", str(tmp_path / "jobs"))
    a = job_folder_for(tmp_path / "results/s/runs/a/slurm/finetune", "tb.s.finetune.a")
    assert a == job_folder_for(tmp_path / "results/s/runs/a/slurm/finetune", "tb.s.finetune.a")
    assert a != job_folder_for(tmp_path / "other/s/runs/a/slurm/finetune", "tb.s.finetune.a")
    assert a.parent == tmp_path / "jobs" and a.name.startswith("tb.s.finetune.a-")
    made = private_folder(a)
    assert made == a and (a.stat().st_mode & 0o777, a.parent.stat().st_mode & 0o777) == (0o700, 0o700)
    monkeypatch.delenv("TOKENBENCH_JOBS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert job_folder_for("x").parent == tmp_path / "cache" / "tokenbench" / "jobs"


def test_a_job_folder_others_could_write_or_swap_is_refused_in_one_line(tmp_path):
    """A symlink, a group- or world-writable folder, another user's folder, or a writable folder above it: the
    launcher submits nothing and says which folder, exit 2."""
    folder = tmp_path / "results" / "step"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)  # the jobs root is a planted symlink
    p = launch(folder, "ls", "methods", env={**env, "TOKENBENCH_JOBS_DIR": str(tmp_path / "link")})
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "is a symlink" in lines[0] and str(tmp_path / "link") in lines[0]

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)  # group-writable
    p = launch(folder, "ls", "methods", env={**env, "TOKENBENCH_JOBS_DIR": str(shared)})
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "writable by other users (mode 770)" in lines[0], lines

    above = tmp_path / "group"
    above.mkdir()
    above.chmod(0o775)  # the jobs root itself is private, the folder it sits in is not
    p = launch(folder, "ls", "methods", env={**env, "TOKENBENCH_JOBS_DIR": str(above / "jobs")})
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"{above} can be changed by other users" in lines[0], lines
    assert not list(tmp_path.rglob("*.pkl")) and not (folder / "launch.json").exists()  # nothing submitted

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(theirs, 4321, -1)
        with pytest.raises(UsageError, match="is owned by uid 4321, not by you"):
            check_private(theirs)
    check_private(real)  # a private folder of ours passes
