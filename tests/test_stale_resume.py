"""A checkpoint knows what it is for: a fine-tune (or a pretrain) killed after an epoch checkpoint and run again
after an edit of its spec or of what it reads ends with exactly the weights of a clean run of the edited suite;
never a continuation of the old state. A resume under an unchanged spec is still bit-identical. Through the CLI
steps the pipeline runs (``bench train``), on the embedded data and the pico ViT."""

import json
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.train import loop

SUITE = """name: stale
data: {source: embedded, name: canvas-digits, options: {train_placements: 1, val_placements: 1}}
backbones: [tb_vit_pico_patch4_32]
methods: [random]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 2, lr: 1.0e-3, batch_size: 32, max_steps_per_epoch: 2}}
finetune: {epochs: 2, lr: 1.0e-3, batch_size: 32, max_steps_per_epoch: 2}
evaluate: {max_val_images: 32, flops_images: 2, throughput: {batch_sizes: [2], repeats: 1, warmup: 0, min_time_s: 0.01}}
"""
BACKBONE = "tb_vit_pico_patch4_32"
RUN = "random__tb_vit_pico_patch4_32__k0.50__s0"

#: one edit of each kind: the fine-tune's recipe (lr, epochs: the schedule depends on both), the backbone's
#: pretraining recipe (a new pretrained model: an input of the fine-tune), the data (another spec for both steps)
EDITS = {
    "finetune lr": ("finetune: {epochs: 2, lr: 1.0e-3", "finetune: {epochs: 2, lr: 3.0e-3"),
    "finetune epochs": ("finetune: {epochs: 2,", "finetune: {epochs: 3,"),
    "pretrain recipe": ("recipe: {epochs: 2, lr: 1.0e-3", "recipe: {epochs: 2, lr: 2.0e-3"),
    "data": ("train_placements: 1,", "train_placements: 1, seed: 1,"),
}


class Killed(BaseException):
    """The process dying (a BaseException, as a signal: nothing in the harness catches it)."""


def _bench(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _train(capsys, suite: Path, root: Path, step: str) -> str:
    """``bench train`` of the pretrain or of the run; its stderr."""
    target = ["--pretrain", BACKBONE] if step == "pretrain" else ["--run", RUN]
    code, err = _bench(capsys, "train", suite, *target, "--results", root)
    assert code == 0, err
    return err


def _killed_after_first_checkpoint(capsys, monkeypatch, suite: Path, root: Path, step: str) -> None:
    """``bench train`` killed the moment epoch 1's train_state.pth is whole (before epoch 2 starts)."""
    real = loop.atomic_torch_save

    def save(path, obj, *args, **kwargs):
        real(path, obj, *args, **kwargs)
        if Path(path).name == loop.STATE_FILE:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(loop, "atomic_torch_save", save)
        with pytest.raises(Killed):
            _train(capsys, suite, root, step)
    assert torch.load(_folder(root, step) / loop.STATE_FILE, weights_only=True)["epoch"] == 0


def _folder(root: Path, step: str) -> Path:
    return root / "stale" / ("pretrain" if step == "pretrain" else "runs") / (BACKBONE if step == "pretrain" else RUN)


def _weights(root: Path, step: str = "finetune") -> dict:
    """The step's model.pth: {"model": weights, "meta": ...}."""
    return torch.load(_folder(root, step) / "model.pth", weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the clean run, e.g. {differ[:3]}"


def _clean(capsys, tmp_path: Path, text: str) -> dict:
    """A clean run of ``text`` in a fresh results folder: the fine-tuned model.pth."""
    suite = tmp_path / "clean.yaml"
    suite.write_text(text)
    root = tmp_path / "clean"
    _train(capsys, suite, root, "pretrain")
    _train(capsys, suite, root, "finetune")
    return _weights(root)


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_killed_fine_tune_rerun_after_an_edit_equals_a_clean_run_of_the_edited_suite(
    capsys, monkeypatch, tmp_path, edit
):
    old, new = EDITS[edit]
    assert SUITE.count(old) == 1
    suite, root = tmp_path / "stale.yaml", tmp_path / "results"
    suite.write_text(SUITE)
    _train(capsys, suite, root, "pretrain")
    _killed_after_first_checkpoint(capsys, monkeypatch, suite, root, "finetune")

    suite.write_text(SUITE.replace(old, new))
    _train(capsys, suite, root, "pretrain")  # done already, or made anew for the edited recipe or data
    err = _train(capsys, suite, root, "finetune")
    run = _folder(root, "finetune")
    assert "resuming from the checkpoint" not in err
    said = [ln for ln in err.splitlines() if "was made for another spec" in ln]
    assert len(said) == 1 and said[0].endswith("moved to train_state.pth.stale, starting from epoch 0"), err
    what = {
        "finetune lr": "recipe.lr",
        "finetune epochs": "recipe.epochs",
        "pretrain recipe": f"input {BACKBONE}/model.pth",
        "data": "data.options.seed",
    }[edit]
    assert what in said[0]
    assert (run / "train_state.pth.stale").exists() and not (run / loop.STATE_FILE).exists()
    # the fresh start's log is its own: the old epoch-1 line was moved aside with its checkpoint
    epochs = [json.loads(ln)["epoch"] for ln in (run / loop.LOG_FILE).read_text().splitlines()]
    assert epochs == list(range(1, 1 + (3 if edit == "finetune epochs" else 2)))
    assert (run / (loop.LOG_FILE + ".stale")).exists()
    edited = _weights(root)
    assert edited["meta"]["resumed_from_epoch"] is None
    _same(edited["model"], _clean(capsys, tmp_path, SUITE.replace(old, new))["model"])


def test_a_killed_pretrain_rerun_after_a_recipe_edit_equals_a_clean_pretrain(capsys, monkeypatch, tmp_path):
    old, new = EDITS["pretrain recipe"]
    suite, root = tmp_path / "stale.yaml", tmp_path / "results"
    suite.write_text(SUITE)
    _killed_after_first_checkpoint(capsys, monkeypatch, suite, root, "pretrain")
    suite.write_text(SUITE.replace(old, new))
    err = _train(capsys, suite, root, "pretrain")
    assert "resuming from" not in err and "was made for another spec (recipe.lr)" in err
    clean_suite, clean = tmp_path / "clean.yaml", tmp_path / "clean"
    clean_suite.write_text(SUITE.replace(old, new))
    _train(capsys, clean_suite, clean, "pretrain")
    _same(_weights(root, "pretrain")["model"], _weights(clean, "pretrain")["model"])


def test_a_finished_run_edited_and_killed_never_leaves_the_old_result_taken_as_the_new(capsys, monkeypatch, tmp_path):
    """The old spec's model.pth goes when the edited step starts: killed before the new one is whole, the next
    attempt resumes the edited spec's checkpoint instead of taking the old file as "exists"."""
    old, new = EDITS["finetune lr"]
    suite, root = tmp_path / "stale.yaml", tmp_path / "results"
    suite.write_text(SUITE)
    _train(capsys, suite, root, "pretrain")
    _train(capsys, suite, root, "finetune")
    suite.write_text(SUITE.replace(old, new))
    _killed_after_first_checkpoint(capsys, monkeypatch, suite, root, "finetune")
    assert not (_folder(root, "finetune") / "model.pth").exists()
    err = _train(capsys, suite, root, "finetune")
    assert "exists" not in err and "resuming from the checkpoint of epoch" in err
    _same(_weights(root)["model"], _clean(capsys, tmp_path, SUITE.replace(old, new))["model"])


def test_a_resume_under_an_unchanged_spec_is_still_bit_identical(capsys, monkeypatch, tmp_path):
    suite, root = tmp_path / "stale.yaml", tmp_path / "results"
    suite.write_text(SUITE)
    _train(capsys, suite, root, "pretrain")
    _killed_after_first_checkpoint(capsys, monkeypatch, suite, root, "finetune")
    err = _train(capsys, suite, root, "finetune")
    assert "resuming from the checkpoint of epoch" in err and "another spec" not in err
    resumed = _weights(root)
    assert resumed["meta"]["resumed_from_epoch"] == 1
    _same(resumed["model"], _clean(capsys, tmp_path, SUITE)["model"])


def test_a_torn_line_in_the_training_log_is_dropped_with_a_warning(capsys, monkeypatch, tmp_path):
    """A half-written line in train_log.jsonl (another tool, a full disk) never fails the run: it is dropped with
    one warning and the resume goes on, the log whole again after the next epoch."""
    suite, root = tmp_path / "stale.yaml", tmp_path / "results"
    suite.write_text(SUITE)
    _train(capsys, suite, root, "pretrain")
    _killed_after_first_checkpoint(capsys, monkeypatch, suite, root, "finetune")
    log = _folder(root, "finetune") / loop.LOG_FILE
    log.write_text(log.read_text() + '{"epoch": 2, "step": 4, "lo')
    err = _train(capsys, suite, root, "finetune")
    assert "resuming from the checkpoint of epoch" in err
    warned = [ln for ln in err.splitlines() if "is torn" in ln]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {log}: line 2 is torn"), err
    assert [json.loads(ln)["epoch"] for ln in log.read_text().splitlines()] == [1, 2]
    _same(_weights(root)["model"], _clean(capsys, tmp_path, SUITE)["model"])


def test_the_requeue_budget_reads_a_log_with_a_torn_line(tmp_path):
    """The launcher's reader of the same log (the requeue budget) skips a torn line instead of losing the log."""
    from bench.requeue import read_progress

    log = tmp_path / loop.LOG_FILE
    log.write_text(
        '{"epoch": 1, "epoch_s": 2.0, "epochs_total": 3}\n{"epoch": 2, "epoch_s": 3.0, "epochs_total": 3}\n{"ep'
    )
    progress = read_progress(log)
    assert progress is not None and progress["epoch"] == 2 and progress["epoch_s_all"] == [2.0, 3.0]
    log.write_text('{"ep')
    assert read_progress(log) is None
