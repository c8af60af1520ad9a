"""bench.launch with submitit's local executor: the same code path SLURM jobs take, minus the scheduler."""
import json
import subprocess
import sys

import pytest
import submitit

from bench.launch import LAUNCH_RECORD, BenchStep, _extra_params, _last_error_line


def launch(tmp_path, *cmd, failure=True):
    folder = tmp_path / "job"
    args = [sys.executable, "-m", "bench.launch", "--launcher", "local", "--folder", str(folder), "--name", "t"]
    if failure:
        args += ["--failure-record", str(tmp_path / "failure.json")]
    return folder, subprocess.run([*args, "--", *cmd], capture_output=True, text=True, timeout=120)


def test_local_job_runs_and_records_its_id(tmp_path):
    folder, p = launch(tmp_path, "ls", "methods")
    assert p.returncode == 0, p.stderr
    rec = json.loads((folder / LAUNCH_RECORD).read_text())
    assert rec["cmd"] == ["ls", "methods"] and rec["launcher"] == "local"
    out = (folder / f"{rec['job_id']}_0_log.out").read_text()
    assert "random" in out and "static" in out
    assert not (tmp_path / "failure.json").exists()


def test_failed_job_is_recorded_with_job_id_state_and_log(tmp_path):
    folder, p = launch(tmp_path, "ls", "nothing")
    assert p.returncode == 1
    rec = json.loads((tmp_path / "failure.json").read_text())
    job_id = json.loads((folder / LAUNCH_RECORD).read_text())["job_id"]
    assert rec["status"] == "failed" and rec["job_id"] == job_id
    assert rec["job_stderr"].endswith(f"{job_id}_0_log.err")
    assert "exited with code 2" in rec["error"]


def test_bad_launcher_arguments_are_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.launch", "--launcher", "local", "--folder", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "after `--`" in p.stderr and "Traceback" not in p.stderr


def test_step_is_checkpointable():
    step = BenchStep(["train", "smoke", "--run", "x"], threads=4)
    again = step.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is step


def test_extra_sbatch_options_and_error_lines():
    assert _extra_params("--exclusive --reservation=mine --gres-flags=enforce-binding") == {
        "exclusive": True, "reservation": "mine", "gres_flags": "enforce-binding"}
    e = RuntimeError("Job failed:\n----\nTraceback\n  File x\nValueError: boom\n----\nYou can check full logs at:\n - a")
    assert _last_error_line(e) == "ValueError: boom"


TINY = """
name: t
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}
"""


def test_two_task_job_trains_with_ddp_over_gloo(tmp_path):
    import torch

    suite = tmp_path / "t.yaml"
    suite.write_text(TINY)
    results = tmp_path / "results"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "bench", "train", str(suite), "--pretrain", "tb_vit_pico_patch4_32",
                        "--results", str(results), "--threads", "1"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    run_id = "dense__tb_vit_pico_patch4_32__k1.00__s0"
    model = results / "t" / "runs" / run_id / "model.pth"
    p = subprocess.run([sys.executable, "-m", "bench.launch", "--launcher", "local", "--tasks", "2", "--folder",
                        str(tmp_path / "job"), "--output", str(model), "--", "train", str(suite), "--run", run_id,
                        "--results", str(results)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    meta = torch.load(model, weights_only=True)["meta"]
    assert (meta["world_size"], meta["per_device_batch_size"], meta["global_batch_size"]) == (2, 32, 64)
    assert (tmp_path / "job" / "outputs" / "0_model.pth").exists()  # kept for a re-attach after a crash


def test_job_results_are_read_without_running_code(tmp_path):
    """A result pickle planted in a shared job folder is refused by the launcher, not executed."""
    import pickle

    import submitit

    from bench.launch import plain_results

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "PWNED"), "w"))

    good, bad = tmp_path / "good_result.pkl", tmp_path / "bad_result.pkl"
    good.write_bytes(pickle.dumps(("error", "Traceback ...\nValueError: x")))
    bad.write_bytes(pickle.dumps(("success", Evil())))
    with plain_results():
        assert submitit.core.utils.pickle_load(good) == ("error", "Traceback ...\nValueError: x")
        with pytest.raises(RuntimeError, match="refused"):
            submitit.core.utils.pickle_load(bad)
    assert not (tmp_path / "PWNED").exists()
