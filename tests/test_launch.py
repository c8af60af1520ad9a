"""bench.launch: what it submits (the sbatch script and the pickled step of a SLURM job, against stand-in
scheduler commands), when it re-attaches instead of submitting again, how a step requeues, and jobs run for real
with submitit's local and debug executors: the command run, its threads, its outputs kept and restored."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import submitit
from PIL import Image

from bench.launch import (
    LAUNCH_RECORD,
    BenchStep,
    _extra_params,
    _last_error_line,
    _parse,
    attach_or_submit,
    keep_outputs,
    plain_results,
    restore_outputs,
)
from bench.launch_jobs import job_folder_for
from bench.requeue import RequeueRefused


@pytest.fixture(autouse=True)
def private_jobs_dir(tmp_path, monkeypatch):
    """submitit's job folders (pickles, logs) in this test's own private folder, not in ~/.cache."""
    monkeypatch.setenv("TOKENBENCH_JOBS_DIR", str(tmp_path / "private-jobs"))


def launch(tmp_path, *cmd, failure=True, extra=()):
    folder = tmp_path / "job"
    args = [sys.executable, "-m", "bench.launch", "--launcher", "local", "--folder", str(folder), "--name", "t", *extra]
    if failure:
        args += ["--failure-record", str(tmp_path / "failure.json")]
    return folder, subprocess.run([*args, "--", *cmd], capture_output=True, text=True, timeout=120)


def imagefolder_suite(tmp_path):
    root = tmp_path / "pets"
    for split, cls in [("train", "a"), ("train", "b"), ("validation", "a"), ("validation", "b")]:
        (root / split / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / cls / "0.png")  # the index step decodes every image
    suite = tmp_path / "s.yaml"
    suite.write_text(
        textwrap.dedent(f"""
        name: s
        data: {{source: imagefolder, path: {root}}}
        backbones: [tb_vit_pico_patch4_32]
        methods: [dense]
        keep_ratios: [1.0]
        seeds: [0]
        """)
    )
    return suite


def test_local_job_runs_records_its_id_and_keeps_its_outputs_for_a_restart(tmp_path):
    """`python -m bench.launch --launcher local` runs the step in a submitit job and exits 0; the record names the
    job; the step's output is hard-linked into the job folder, so deleted (Snakemake drops the outputs of a job it
    was killed during) it is put back from there; a step that left nothing cannot be restored."""
    suite, results = imagefolder_suite(tmp_path), tmp_path / "results"
    output = results / "s" / "data" / "index.parquet"
    folder, p = launch(tmp_path, "index", str(suite), "--results", str(results), extra=["--output", str(output)])
    assert p.returncode == 0, p.stderr
    rec = json.loads((folder / LAUNCH_RECORD).read_text())
    assert rec["cmd"] == ["index", str(suite), "--results", str(results)] and rec["launcher"] == "local"
    assert str(output) in (folder / f"{rec['job_id']}_0_log.out").read_text()  # the step ran in the job (log copied)
    assert rec["job_folder"] == str(job_folder_for(folder, "t")) and not list(folder.glob("*.pkl"))
    assert f"job {rec['job_id']} done" in p.stderr
    assert not (tmp_path / "failure.json").exists()
    kept = folder / "outputs" / "0_index.parquet"
    assert output.is_file() and kept.stat().st_ino == output.stat().st_ino  # one file, two names
    output.unlink()
    assert restore_outputs(folder, [str(output)]) and output.stat().st_ino == kept.stat().st_ino
    never = str(tmp_path / "never_written.pth")
    assert not restore_outputs(folder, [str(output), never])
    keep_outputs(folder, [never])  # nothing to keep: no error, nothing kept
    assert not (folder / "outputs" / "0_never_written.pth").exists()


def test_failed_job_is_recorded_with_job_id_state_and_log(tmp_path):
    folder, p = launch(tmp_path, "ls", "nothing")
    assert p.returncode == 1
    rec = json.loads((tmp_path / "failure.json").read_text())
    job_id = json.loads((folder / LAUNCH_RECORD).read_text())["job_id"]
    assert rec["status"] == "failed" and rec["job_id"] == job_id
    assert rec["job_stderr"].endswith(f"{job_id}_0_log.err")
    assert "exited with code 2" in rec["error"]


def test_bad_launcher_arguments_are_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "bench.launch", "--launcher", "local", "--folder", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "after `--`" in p.stderr and "Traceback" not in p.stderr


def test_extra_sbatch_options_and_error_lines():
    assert _extra_params("--exclusive --reservation=mine --gres-flags=enforce-binding") == {
        "exclusive": True,
        "reservation": "mine",
        "gres_flags": "enforce-binding",
    }
    e = RuntimeError(
        "Job failed:\n----\nTraceback\n  File x\nValueError: boom\n----\nYou can check full logs at:\n - a"
    )
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


@pytest.mark.slow  # trains twice (pretrain, then a 2-process fine-tune); the DDP contract is in test_distributed.py
def test_two_task_job_trains_with_ddp_over_gloo(tmp_path):
    import torch

    suite = tmp_path / "t.yaml"
    suite.write_text(TINY)
    results = tmp_path / "results"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "train",
            str(suite),
            "--pretrain",
            "tb_vit_pico_patch4_32",
            "--results",
            str(results),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    run_id = "dense__tb_vit_pico_patch4_32__k1.00__s0"
    model = results / "t" / "runs" / run_id / "model.pth"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.launch",
            "--launcher",
            "local",
            "--tasks",
            "2",
            "--folder",
            str(tmp_path / "job"),
            "--output",
            str(model),
            "--",
            "train",
            str(suite),
            "--run",
            run_id,
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    meta = torch.load(model, weights_only=True)["meta"]
    assert (meta["world_size"], meta["per_device_batch_size"], meta["global_batch_size"]) == (2, 32, 64)
    assert (tmp_path / "job" / "outputs" / "0_model.pth").exists()  # kept for a re-attach after a crash


def test_job_results_are_read_without_running_code(tmp_path):
    """A result pickle planted in a shared job folder is refused by the launcher, not executed."""
    import pickle

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


# ------------------------------------------------------------------ SLURM submission, against stand-in commands
FAKE_SLURM = r"""#!{python}
# Stand-in for sbatch/squeue/sacct/srun: keeps each sbatch script, answers squeue/sacct from files in $FAKE_SLURM_DIR.
import json, os, shutil, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
cmd, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(d / "calls.jsonl", "a") as f:
    f.write(json.dumps([cmd, *args]) + "\n")
def read(name, default=""):
    p = d / name
    return p.read_text().strip() if p.exists() else default
if cmd == "sbatch":
    n = len(list(d.glob("sbatch_*.sh")))
    shutil.copy(args[-1], d / f"sbatch_{{n}}.sh")
    print(f"Submitted batch job {{4242 + n}}")
elif cmd == "squeue" and "-j" in args:
    print(read("squeue_state"))
elif cmd == "squeue" and "-n" in args:
    print(read("queued_id"))
elif cmd == "sacct":
    ids = args[args.index("-j") + 1].split(",")
    print("JobID|State|NodeList")
    for i in ids:
        print(f"{{i}}|{{read('sacct_state', 'PENDING')}}|node1")
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, squeue, sacct and srun on PATH as stand-ins; returns their state folder (sbatch_N.sh, calls.jsonl)."""
    state, bin_dir = tmp_path / "fake_slurm", tmp_path / "fake_bin"
    state.mkdir()
    bin_dir.mkdir()
    script = bin_dir / "fake_slurm.py"
    script.write_text(FAKE_SLURM.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    for name in ("sbatch", "squeue", "sacct", "srun"):
        (bin_dir / name).symlink_to(script)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return state


def calls(state: Path, cmd: str) -> list[list[str]]:
    lines = (state / "calls.jsonl").read_text().splitlines() if (state / "calls.jsonl").exists() else []
    return [c for c in map(json.loads, lines) if c[0] == cmd]


def sbatch_lines(script: Path) -> set[str]:
    return {ln.strip() for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")}


SLURM_ARGS = [
    "--launcher",
    "slurm",
    "--name",
    "ft-dense-s0",
    "--gpus",
    "2",
    "--cpus",
    "4",
    "--mem-mb",
    "2048",
    "--time-min",
    "30",
    "--partition",
    "gpu",
    "--account",
    "acc",
    "--qos",
    "high",
    "--constraint",
    "a100",
    "--extra",
    "--exclusive --reservation=mine",
    "--signal-delay-s",
    "120",
    "--max-requeues",
    "5",
]
CMD = ["train", "suites/smoke.yaml", "--run", "dense__x__k1.00__s0"]


def test_slurm_job_asks_for_the_profile_resources_and_runs_the_step(tmp_path, fake_slurm):
    args, cmd = _parse(
        [*SLURM_ARGS, "--folder", str(tmp_path / "job"), "--output", str(tmp_path / "model.pth"), "--", *CMD]
    )
    job = attach_or_submit(args, cmd, log=lambda s: None)
    assert job.job_id == "4242" and len(calls(fake_slurm, "sbatch")) == 1
    lines = sbatch_lines(fake_slurm / "sbatch_0.sh")
    assert {
        "#SBATCH --job-name=ft-dense-s0",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=2048M",
        "#SBATCH --time=30",
        "#SBATCH --nodes=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=acc",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "#SBATCH --reservation=mine",
        "#SBATCH --signal=USR2@120",  # the requeue warning
        "#SBATCH --open-mode=append",  # a requeued attempt appends to the same logs
    } <= lines, sorted(lines)
    script = (fake_slurm / "sbatch_0.sh").read_text()
    private = job_folder_for(tmp_path / "job", "ft-dense-s0")
    assert "srun" in script and f"-m submitit.core._submit {private}" in script
    # the record a restarted launcher re-attaches by
    rec = json.loads((tmp_path / "job" / LAUNCH_RECORD).read_text())
    assert (rec["job_id"], rec["launcher"], rec["cmd"], rec["tasks"], rec["name"]) == (
        "4242",
        "slurm",
        CMD,
        2,
        "ft-dense-s0",
    )
    assert rec["stderr"] == str(private / "4242_0_log.err")
    # the pickled payload the job runs, in the private job folder: this step with the budget and the warning
    assert not list((tmp_path / "job").glob("*.pkl"))
    step = submitit.core.utils.pickle_load(private / "4242_submitted.pkl").function
    assert isinstance(step, BenchStep)
    assert (
        step.argv,
        step.threads,
        step.outputs,
        step.folder,
        step.time_min,
        step.max_requeues,
        step.signal_delay_s,
    ) == (CMD, 4, [str(tmp_path / "model.pth")], str(tmp_path / "job"), 30, 5, 120)


def test_tasks_and_defaults_of_a_cpu_job(tmp_path, fake_slurm):
    args, cmd = _parse(
        ["--launcher", "slurm", "--folder", str(tmp_path / "job"), "--tasks", "3", "--", "evaluate", "s.yaml"]
    )
    attach_or_submit(args, cmd, log=lambda s: None)
    lines = sbatch_lines(fake_slurm / "sbatch_0.sh")
    assert {
        "#SBATCH --ntasks-per-node=3",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=60",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --job-name=tokenbench",
    } <= lines
    assert not any(ln.startswith(("#SBATCH --gpus", "#SBATCH --mem", "#SBATCH --partition")) for ln in lines)
    step = submitit.core.utils.pickle_load(job_folder_for(tmp_path / "job") / "4242_submitted.pkl").function
    assert step.max_requeues is None  # 'auto': the budget follows the run's measured epochs


def test_restarted_launcher_reattaches_to_its_queued_job_and_resubmits_a_failed_one(tmp_path, fake_slurm):
    argv = [*SLURM_ARGS, "--folder", str(tmp_path / "job"), "--", *CMD]
    logs: list[str] = []
    first = attach_or_submit(*_parse(argv), log=logs.append)
    (fake_slurm / "squeue_state").write_text("RUNNING")
    again = attach_or_submit(*_parse(argv), log=logs.append)
    assert again.job_id == first.job_id == "4242" and len(calls(fake_slurm, "sbatch")) == 1
    assert "re-attaching to SLURM job 4242 (RUNNING)" in logs[-1]
    # the job ended without a result (out of the queue, sacct: FAILED): submitted again
    (fake_slurm / "squeue_state").write_text("")
    (fake_slurm / "sacct_state").write_text("FAILED")
    third = attach_or_submit(*_parse(argv), log=logs.append)
    assert third.job_id == "4243" and "earlier SLURM job 4242 ended FAILED; submitting again" in logs[-2]
    assert json.loads((tmp_path / "job" / LAUNCH_RECORD).read_text())["job_id"] == "4243"
    # a different command in the same folder is a new job, never the running one of the old command
    (fake_slurm / "squeue_state").write_text("RUNNING")
    other = attach_or_submit(*_parse([*argv[: -len(CMD)], "evaluate", "s.yaml"]), log=logs.append)
    assert other.job_id == "4244" and len(calls(fake_slurm, "sbatch")) == 3


def test_job_state_is_asked_afresh_from_sacct(fake_slurm):
    # submitit's watcher is shared by the process and keeps the states of jobs it saw finish: a job id met
    # earlier (another launch, another test) answered from that cache and a FAILED job was re-attached to
    from bench.launch_jobs import sacct_state

    (fake_slurm / "sacct_state").write_text("COMPLETED")
    assert sacct_state("5151") == "COMPLETED"
    (fake_slurm / "sacct_state").write_text("CANCELLED by 0")
    assert sacct_state("5151") == "CANCELLED"
    assert calls(fake_slurm, "sacct")[-1][:3] == ["sacct", "-j", "5151"]


def test_killed_between_sbatch_and_the_record_reattaches_by_job_name(tmp_path, fake_slurm):
    (fake_slurm / "queued_id").write_text("777")
    args, cmd = _parse([*SLURM_ARGS, "--folder", str(tmp_path / "job"), "--", *CMD])
    job = attach_or_submit(args, cmd, log=lambda s: None)
    assert job.job_id == "777" and calls(fake_slurm, "sbatch") == []
    assert ["-n", "ft-dense-s0"] == calls(fake_slurm, "squeue")[0][4:6]
    assert json.loads((tmp_path / "job" / LAUNCH_RECORD).read_text())["job_id"] == "777"


# ------------------------------------------------------------------ requeue: BenchStep.checkpoint
def test_checkpoint_requeues_the_same_step_within_budget_and_refuses_past_it(monkeypatch):
    step = BenchStep(CMD, threads=4, outputs=["m.pth"], time_min=30, max_requeues=2, signal_delay_s=120)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = step.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is step and (again.args, again.kwargs) == ((), {})
    # what submitit pickles for the requeued attempt runs the same command with the same budget
    import cloudpickle

    back = cloudpickle.loads(cloudpickle.dumps(again)).function
    assert (back.argv, back.threads, back.outputs, back.max_requeues) == (CMD, 4, ["m.pth"], 2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(RequeueRefused, match="requeued 2 times, the budget .*is 2"):
        step.checkpoint()


# ------------------------------------------------------------------ jobs run for real (local and debug executors)
def test_debug_executor_runs_the_bench_command_in_process(tmp_path, capsys):
    ex = submitit.DebugExecutor(folder=tmp_path / "debug")
    job = ex.submit(BenchStep(["ls", "methods"], threads=3))
    assert job.results() == [0]
    out = capsys.readouterr().out
    assert "dynamicvit" in out and "token_pooling" in out


def test_step_gives_train_evaluate_time_the_jobs_cpus_as_threads(tmp_path, monkeypatch):
    """Run in a job's environment (as submitit's debug executor sets it), the step adds the job's CPUs as --threads
    to train/evaluate/time (never twice, never to other commands), torch takes them, and a failure names the command
    that ran."""
    import torch

    monkeypatch.setenv("SUBMITIT_DEBUG_JOB_ID", "1")
    missing = tmp_path / "missing.yaml"
    try:
        with pytest.raises(RuntimeError, match=f"`bench train {missing} --run x --threads 3` exited with code 2"):
            BenchStep(["train", str(missing), "--run", "x"], threads=3)()
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError, match=f"`bench evaluate {missing} x --threads 2` exited with code 2"):
            BenchStep(["evaluate", str(missing), "x", "--threads", "2"], threads=3)()
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match=r"`bench validate \S+missing.yaml` exited with code 2"):
            BenchStep(["validate", str(missing)], threads=3)()
    finally:
        torch.set_num_threads(1)
