"""Progress of running steps (bench.progress): throttled records and log lines of a training run, the status lines
the snakemake terminal prints from them, queued/running/done counts under a launcher, and a progress file that
cannot be written never failing a step. Clocks are fakes: nothing here depends on how fast the machine is."""

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from bench import progress as P
from bench.config import DEFAULT_RECIPE
from bench.methods import create_method
from bench.train import train_model


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_throttle_is_ready_at_most_once_per_interval():
    clock = Clock()
    t = P.Throttle(2.0, clock)
    seen = []
    for _ in range(25):  # 0.0, 0.5, ..., 12.0 s
        seen.append(t.ready())
        clock.t += 0.5
    assert [i * 0.5 for i, ok in enumerate(seen) if ok] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    late = P.Throttle(30.0, clock, first_now=False)  # the first log line only after a whole interval
    assert not late.ready()
    clock.t += 29.9
    assert not late.ready()
    clock.t += 0.1
    assert late.ready() and not late.ready()


def test_train_progress_writes_and_logs_throttled_with_rate_and_eta(tmp_path):
    clock, wall = Clock(), Clock(5e8)
    path = tmp_path / "logs" / "finetune" / "r.progress.json"
    P.step_started(path, step="finetune", key="r", log=tmp_path / "r.log", wall=wall)
    lines, writes = [], []
    tp = P.TrainProgress(path, epochs=2, steps_per_epoch=10, batch_size=32, log=lines.append, clock=clock, wall=wall)
    real_write = P.write
    try:
        P.write = lambda p, rec: writes.append(dict(rec)) or real_write(p, rec)
        for step in range(1, 21):  # 0.5 s per optimiser step: 10 s in all
            clock.t += 0.5
            tp.update(epoch=(step - 1) // 10 + 1, batch=(step - 1) % 10 + 1, global_step=step, loss=2.0 - step / 20)
    finally:
        P.write = real_write
    # a record at the first step, then at most every 2 s; no log line before 30 s
    assert [w["global_step"] for w in writes] == [1, 5, 9, 13, 17]
    assert lines == []
    rec = P.read(path)
    assert rec["step"] == "finetune" and rec["id"] == "r" and rec["state"] == "running"  # run_logged's fields kept
    assert (rec["epoch"], rec["epochs"], rec["batch"], rec["batches"]) == (2, 2, 7, 10)
    assert rec["img_s"] == pytest.approx(64.0) and rec["eta_s"] == pytest.approx(1.5)  # 2 steps/s, 3 steps left
    assert rec["loss"] == pytest.approx(2.0 - 17 / 20)
    clock.t += 30
    tp.update(epoch=2, batch=10, global_step=20, loss=1.0)
    assert lines == ["progress: epoch 2/2 step 10/10 loss 1.000 15 img/s ETA 0s"]  # 19 steps of 32 in 39.5 s
    tp.finish()
    assert P.read(path)["phase"] == "trained" and P.read(path)["eta_s"] is None
    P.step_finished(path, 0, wall=wall)
    rec = P.read(path)
    assert rec["state"] == "done" and rec["code"] == 0 and rec["epoch"] == 2


def test_status_lines_from_progress_files(tmp_path):
    logs, wall = tmp_path / "logs", Clock(1e9)
    mon = P.Monitor(logs, wall=wall)
    now = wall.t + 100
    (logs / "evaluate").mkdir(parents=True)
    log = logs / "evaluate" / "b.log"
    log.write_text("loading\nbench: evaluated 512 of 1000 images\n\n")
    P.step_started(logs / "finetune" / "a.progress.json", step="finetune", key="a", wall=Clock(wall.t + 10))
    rec = P.read(logs / "finetune" / "a.progress.json")
    rec.update(phase="train", epoch=2, epochs=5, batch=40, batches=120, loss=1.23449, img_s=812.4, eta_s=80)
    P.write(logs / "finetune" / "a.progress.json", rec)
    P.step_started(P.progress_path(log), step="evaluate", key="b", log=log, wall=Clock(wall.t + 55))
    P.step_started(logs / "pretrain" / "old.progress.json", step="pretrain", key="old", wall=Clock(wall.t - 3600))
    P.step_started(logs / "timing" / "t.progress.json", step="timing", key="t", wall=Clock(wall.t + 1))
    P.step_finished(logs / "timing" / "t.progress.json", 0)
    assert mon.lines(now) == [
        "[progress] evaluate b: running 45s | bench: evaluated 512 of 1000 images",
        "[progress] finetune a: epoch 2/5 step 40/120 loss 1.234 812 img/s ETA 1m20s",
    ]  # a step of an earlier snakemake (older than the monitor) and a finished one are not shown
    assert P.progress_path("x/logs/finetune/a.log") == P.progress_path("x/logs/finetune/a.progress.json").parent / (
        "a.progress.json"
    )
    assert [P.duration(s) for s in (0, 59.6, 80, 3599, 7500)] == ["0s", "1m00s", "1m20s", "59m59s", "2h05m"]


def test_a_launcher_shows_queued_running_done_counts(tmp_path):
    logs, wall = tmp_path / "logs", Clock(1e9)
    mon = P.Monitor(logs, launcher="slurm", wall=wall, max_lines=1)
    states = {"a": "PENDING", "b": None, "c": "RUNNING", "d": "RUNNING", "e": "COMPLETED"}
    for key, state in states.items():
        folder = tmp_path / "runs" / key / "slurm"
        path = logs / "finetune" / f"{key}.progress.json"
        P.step_started(path, step="finetune", key=key, job_folder=folder, wall=Clock(wall.t + 1))
        if state:
            P.write_job_state(folder, f"10{key}", state, wall=Clock(wall.t + 2))
    P.step_finished(logs / "finetune" / "e.progress.json", 0)
    # a state written for an earlier job of the same step is not this one's
    P.write_job_state(tmp_path / "runs" / "b" / "slurm", "9", "RUNNING", wall=Clock(wall.t - 10))
    # the step's log holds the launcher's lines; how far it is shows in the job's own stderr
    (tmp_path / "c.err").write_text("bench: timing b: run 3 of 5\n")
    (tmp_path / "runs" / "c" / "slurm" / "launch.json").write_text(json.dumps({"stderr": str(tmp_path / "c.err")}))
    assert mon.lines(wall.t + 61) == [
        "[progress] finetune c: running 1m00s | bench: timing b: run 3 of 5",
        "[progress] ... and 1 more running",
        "[progress] slurm jobs: 2 queued, 2 running, 1 done",
    ]
    P.step_finished(logs / "finetune" / "d.progress.json", 1)
    assert mon.lines(wall.t + 62)[-1] == "[progress] slurm jobs: 2 queued, 1 running, 1 done, 1 failed"
    for key in "abc":
        P.step_finished(logs / "finetune" / f"{key}.progress.json", 0)
    assert mon.lines(wall.t + 62) == []  # nothing queued or running: nothing to say


def test_monitor_prints_when_something_changed_at_most_every_few_seconds(tmp_path):
    logs, wall = tmp_path / "logs", Clock(1e9)
    out = io.StringIO()
    mon = P.Monitor(logs, every_s=5, heartbeat_s=60, wall=wall, out=out)
    assert mon.poll(wall.t + 1) == []  # nothing running: silent
    path = logs / "finetune" / "a.progress.json"
    P.step_started(path, step="finetune", key="a", wall=Clock(wall.t + 1))

    def at(batch):
        rec = P.read(path)
        rec.update(phase="train", epoch=1, epochs=1, batch=batch, batches=9, loss=1.0)
        P.write(path, rec)

    at(1)
    assert mon.poll(wall.t + 2) == ["[progress] finetune a: epoch 1/1 step 1/9 loss 1.000"]
    at(2)
    assert mon.poll(wall.t + 4) == []  # changed, but within 5 s of the last block
    assert mon.poll(wall.t + 7) == ["[progress] finetune a: epoch 1/1 step 2/9 loss 1.000"]
    assert mon.poll(wall.t + 13) == []  # unchanged
    P.step_started(logs / "evaluate" / "b.progress.json", step="evaluate", key="b", wall=Clock(wall.t + 20))
    assert len(mon.poll(wall.t + 21)) == 2
    assert mon.poll(wall.t + 40) == []  # only elapsed time moved ...
    assert len(mon.poll(wall.t + 81)) == 2  # ... shown again after the heartbeat
    assert out.getvalue() == ""  # poll returns the lines; only the thread prints


def test_status_every_few_seconds_on_a_terminal_and_every_minute_into_a_file():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    closed = io.StringIO()
    closed.close()
    assert [P.default_every_s(s) for s in (Terminal(), io.StringIO(), closed)] == [5.0, 60.0, 60.0]


def data(n=48):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


RECIPE = {**DEFAULT_RECIPE, "epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 0}


def test_a_training_run_writes_its_progress_record(tiny_vit, tmp_path, monkeypatch):
    path = tmp_path / "logs" / "finetune" / "run.progress.json"
    P.step_started(path, step="finetune", key="run")
    monkeypatch.setenv(P.ENV, str(path))
    lines = []
    model = tiny_vit()
    train_model(
        model,
        create_method("dense"),
        data(),
        RECIPE,
        seed=0,
        out_dir=tmp_path / "run",
        device=torch.device("cpu"),
        log=lines.append,
    )
    rec = P.read(path)
    assert rec["step"] == "finetune" and rec["id"] == "run" and rec["phase"] == "trained"
    assert (rec["epoch"], rec["epochs"], rec["batch"], rec["batches"], rec["global_step"]) == (2, 2, 3, 3, 6)
    assert 0 < rec["loss"] < 10
    assert not any(line.startswith("progress:") for line in lines)  # a short run adds no progress line to its log


def test_an_unwritable_progress_file_never_fails_training(tiny_vit, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(P.ENV, str(blocker / "logs" / "run.progress.json"))  # its folder cannot be made
    model = tiny_vit()
    res = train_model(
        model,
        create_method("dense"),
        data(),
        RECIPE,
        seed=0,
        out_dir=tmp_path / "run",
        device=torch.device("cpu"),
        log=lambda s: None,
    )
    assert res.steps == 6
    assert not P.write(blocker / "x.progress.json", {"a": 1})
    P.step_started(blocker / "x.progress.json", step="s", key="k")  # no error either
    P.step_finished(blocker / "x.progress.json", 1)


def test_launcher_records_the_job_state_and_carries_the_progress_file(tmp_path):
    folder, record = tmp_path / "job", str(tmp_path / "logs" / "evaluate" / "r.progress.json")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.launch",
            "--launcher",
            "local",
            "--folder",
            str(folder),
            "--name",
            "t",
            "--",
            "ls",
            "nothing",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, P.ENV: record, "TOKENBENCH_JOBS_DIR": str(tmp_path / "private-jobs")},
    )
    assert p.returncode == 1  # `bench ls nothing` fails, after running in the job
    launched = json.loads((folder / "launch.json").read_text())
    job_id = launched["job_id"]
    state = json.loads((folder / P.JOB_STATE_FILE).read_text())
    assert state["job_id"] == job_id and state["state"] == "FINISHED"
    # the pickle is in the private job folder (bench.launch_jobs), written by this test's own launcher
    with open(Path(launched["job_folder"]) / f"{job_id}_submitted.pkl", "rb") as f:
        assert pickle.load(f).function.progress_file == record
