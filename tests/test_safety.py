"""Nothing runs code it should not, nothing is lost: planted pickles, one writer per folder, kept results,
damaged files, a full disk."""

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main

SUITE = """name: safe
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense, static, {name: dynamicvit, label: shelf, finetune: none, weights: WEIGHTS}]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: INIT, recipe: {epochs: 0}}
finetune: {epochs: 2, batch_size: 64, max_steps_per_epoch: 1}
evaluate: {max_val_images: 32, flops_images: 2, throughput: {batch_sizes: [2], repeats: 1, warmup: 0, min_time_s: 0.01}}
"""
STATIC = "static__tb_vit_pico_patch4_32__k0.50__s0"
BACKBONE = "tb_vit_pico_patch4_32"


class Evil:
    """Unpickled, creates a file: what a planted checkpoint in a shared results folder could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(1)}, "meta": Evil(marker)}, path)


def _suite(tmp: Path, init: str = "scratch", weights: Path | None = None) -> Path:
    weights = weights or tmp / "weights.pth"
    if not weights.exists():  # the shelf method's trained weights (validate --build matches them to its model)
        from bench.methods import create_method
        from bench.models import build_backbone

        model = build_backbone(BACKBONE, num_classes=10, in_chans=1)
        create_method("dynamicvit", 0.5, 0).apply(model)
        torch.save({"model": model.state_dict()}, weights)
    p = tmp / "safe.yaml"
    p.write_text(SUITE.replace("INIT", init).replace("WEIGHTS", str(weights)))
    return p


def _bench(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_a_planted_pickle_in_any_artifact_is_refused_and_never_runs(tmp_path, capsys, monkeypatch):
    """Each file the harness loads holds a pickle that would create a file: loading refuses it in one line
    naming the file (exit 2), and no file is created."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    results = tmp_path / "results"
    runs, pre = results / "safe" / "runs", results / "safe" / "pretrain" / BACKBONE

    # 1. the backbone's init checkpoint, read by the pretrain step
    init = tmp_path / "init.pth"
    _plant(init, marker)
    code, err = _bench(capsys, "train", _suite(tmp_path, init=str(init)), "--pretrain", BACKBONE, "--results", results)
    assert (code, len(err)) == (2, 1) and str(init) in err[0] and "refused" in err[0], err

    # a real pretrained backbone for the rest
    suite = _suite(tmp_path)
    assert _bench(capsys, "train", suite, "--pretrain", BACKBONE, "--results", results)[0] == 0

    # 2. a run's epoch checkpoint, read when the fine-tune resumes
    _plant(runs / STATIC / "train_state.pth", marker)
    code, err = _bench(capsys, "train", suite, "--run", STATIC, "--results", results)
    assert code == 2 and "train_state.pth" in err[-1] and "refused" in err[-1], err
    (runs / STATIC / "train_state.pth").unlink()

    # 3. a run's fine-tuned model, read by the evaluation
    _plant(runs / STATIC / "model.pth", marker)
    code, err = _bench(capsys, "evaluate", suite, STATIC, "--results", results)
    assert code == 2 and f"{runs / STATIC / 'model.pth'}: refused" in err[-1], err

    # 4. a method's given trained weights (finetune: none)
    weights = tmp_path / "planted_weights.pth"
    _plant(weights, marker)
    code, err = _bench(
        capsys,
        "evaluate",
        _suite(tmp_path, weights=weights),
        "shelf__tb_vit_pico_patch4_32__k0.50__s0",
        "--results",
        results,
    )
    assert code == 2 and f"{weights}: refused" in err[-1], err

    # 5. the pretrained backbone, read by every fine-tune
    shutil.rmtree(runs / STATIC)
    _plant(pre / "model.pth", marker)
    code, err = _bench(capsys, "train", _suite(tmp_path), "--run", STATIC, "--results", results)
    assert code == 2 and f"{pre / 'model.pth'}: refused" in err[-1], err

    assert not marker.exists()


def test_one_writer_per_folder_the_second_waits_and_finds_the_result(tmp_path):
    """A second writer of a run folder (a restarted Snakemake beside a job its predecessor left running)
    waits for the first and then takes its result: nothing is computed twice."""
    from bench.outputs import StepOutput, run_step

    out = StepOutput(tmp_path / "run" / "run.json", key="k1", run_id="r")
    made = []

    def make(tag):
        def f():
            time.sleep(0.6)
            made.append(tag)
            from bench.io import atomic_write_json

            atomic_write_json(out.output, {"status": "ok", "run_id": "r", "by": tag})
            return tag

        return f

    first = threading.Thread(target=run_step, args=(out, "evaluate r", make("first")))
    first.start()
    time.sleep(0.2)
    logs = []
    assert run_step(out, "evaluate r", make("second"), log=logs.append) is None
    first.join()
    assert made == ["first"] and json.loads(out.output.read_text())["by"] == "first"
    assert any("being written by another process" in m for m in logs) and "already done" in logs[-1]
    outcomes = [json.loads(ln)["outcome"] for ln in (out.kept.parent / "attempts.jsonl").read_text().splitlines()]
    assert outcomes == ["made", "already done"]


def test_a_result_deleted_as_incomplete_is_restored_only_for_the_same_spec_and_inputs(tmp_path):
    from bench.outputs import StepOutput, run_step

    def write(path):
        def f():
            from bench.io import atomic_write_json

            atomic_write_json(path, {"status": "ok", "run_id": "r"})
            return "made"

        return f

    out = StepOutput(tmp_path / "run" / "run.json", key="spec-a", run_id="r")
    assert run_step(out, "evaluate r", write(out.output)) == "made"
    out.output.unlink()  # what a restarted Snakemake does to an output it saw as incomplete
    assert run_step(out, "evaluate r", write(out.output)) is None and out.output.exists()
    other = StepOutput(out.output, key="spec-b", run_id="r")  # the suite changed meanwhile
    out.output.unlink()
    assert run_step(other, "evaluate r", write(out.output)) == "made"


def test_damaged_results_are_named_and_moved_aside(tmp_path, capsys):
    from bench.artifacts import problem, quarantine_damaged

    good = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.ones(3)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-40])
    record = tmp_path / "run.json"
    record.write_text('{"status": "ok", "run_id": "r", "top1"')
    other = tmp_path / "other.json"
    other.write_text('{"status": "ok", "run_id": "q"}')
    assert problem(good) is None
    assert "truncated" in problem(cut) and "truncated" in problem(record) and "another run" in problem(other, "r")
    moved = quarantine_damaged([(good, None), (cut, None), (record, "r"), (other, "q"), (tmp_path / "gone.pth", None)])
    assert moved == [tmp_path / "cut.pth.corrupt", tmp_path / "run.json.corrupt"]
    assert good.exists() and not cut.exists() and other.exists()
    assert "cut.pth is truncated or corrupt" in capsys.readouterr().err


def test_a_damaged_epoch_checkpoint_restarts_training_and_a_pickle_is_refused(tmp_path, tiny_vit):
    from bench.errors import UnsafeArtifact
    from bench.train.checkpoint import read_state
    from bench.train.loop import STATE_FILE

    state = tmp_path / STATE_FILE
    state.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    logs = []
    assert read_state(state, None, logs.append) is None
    assert not state.exists() and (tmp_path / (STATE_FILE + ".corrupt")).exists() and "starts again" in logs[0]
    _plant(state, tmp_path / "PWNED")
    with pytest.raises(UnsafeArtifact):
        read_state(state, None, logs.append)
    assert not (tmp_path / "PWNED").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real file system that fills up: a 9 MB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_records_the_failure(
    tmp_path, small_disk, capsys, monkeypatch
):
    """Epoch 1's checkpoint fits, epoch 2's does not (the old one is still there while the new one is written)."""
    monkeypatch.chdir(tmp_path)
    suite = _suite(tmp_path)
    pre = small_disk / "safe" / "pretrain" / BACKBONE
    assert _bench(capsys, "train", suite, "--pretrain", BACKBONE, "--results", tmp_path / "r")[0] == 0
    pre.mkdir(parents=True)
    shutil.copy(tmp_path / "r" / "safe" / "pretrain" / BACKBONE / "model.pth", pre / "model.pth")
    code, err = _bench(capsys, "train", suite, "--run", STATIC, "--results", small_disk)
    run = small_disk / "safe" / "runs" / STATIC
    assert code == 1 and err[-1].startswith("bench: run failed: ")
    assert f"no space left on the device writing {run / 'train_state.pth'} (needs about" in err[-1], err
    state = torch.load(run / "train_state.pth", weights_only=True)  # the previous checkpoint, whole
    assert state["epoch"] == 0
    assert json.loads((run / "failure.json").read_text())["error"].startswith("DiskFull: no space left")
    assert not list(run.glob(".*.tmp"))
