"""No symlink is followed inside a results folder (issue 27, part 3).

A co-user who can write a shared results folder plants a link where a step will write, read or delete, pointing at
a file of the user who runs the step (mode 0600) or at a folder of theirs. The real step (bench train, evaluate,
collect, report on the tiny embedded suite) must refuse it in one line naming the link, exit 2, and leave the
victim's file as it was (content and mode), with nothing of it copied into the results.
"""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from bench.cli import main

SUITE = """name: nolinks
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [static]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 0}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 1}
evaluate: {max_val_images: 32, flops_images: 2, throughput: {batch_sizes: [2], repeats: 1, warmup: 0, min_time_s: 0.01}}
"""
RUN = "static__tb_vit_pico_patch4_32__k0.50__s0"
BACKBONE = "tb_vit_pico_patch4_32"
SECRET = b"VICTIM-SECRET-9f2c"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One pretrained backbone, one fine-tuned and evaluated run: copied (hard links kept) into each test."""
    base = tmp_path_factory.mktemp("trained")
    old = os.environ.get("TOKENBENCH_CACHE")
    os.environ["TOKENBENCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")  # as conftest's fixture
    try:
        suite = base / "nolinks.yaml"
        suite.write_text(SUITE)
        results = base / "results"
        for argv in (["train", "--pretrain", BACKBONE], ["train", "--run", RUN], ["evaluate", RUN]):
            assert main([argv[0], str(suite), *argv[1:], "--results", str(results)]) == 0, argv
        assert main(["collect", str(suite), "--results", str(results)]) == 0
    finally:
        if old is None:
            os.environ.pop("TOKENBENCH_CACHE", None)
        else:
            os.environ["TOKENBENCH_CACHE"] = old
    return suite, results


def _victim_file(home: Path, kind: str) -> Path:
    """A private file (0600) of the user who runs the step; ``torch``: a checkpoint the harness could load."""
    if kind == "torch":
        path = home / "private.pth"
        torch.save({"model": {"w": torch.zeros(1)}, "meta": {"note": SECRET.decode()}}, path)
    elif kind == "json":
        path = home / "private.json"
        path.write_bytes(json.dumps({"status": "ok", "run_id": RUN, "note": SECRET.decode(), "runs": {}}).encode())
    else:
        path = home / "private.txt"
        path.write_bytes(SECRET + b" do not share\n")
    path.chmod(0o600)
    return path


def _victim_folder(home: Path) -> Path:
    """A folder of the victim's, with a model.pth and an attempts log of its own (0600)."""
    folder = home / "project"
    folder.mkdir()
    torch.save({"model": {"w": torch.ones(1)}, "meta": {"note": SECRET.decode()}}, folder / "model.pth")
    (folder / "attempts.jsonl").write_bytes(SECRET + b"\n")
    for p in folder.iterdir():
        p.chmod(0o600)
    return folder


def _snapshot(target: Path) -> dict[str, tuple[bytes, int]]:
    """Names, contents and modes of a file or of every file in a folder."""
    files = sorted(target.rglob("*")) if target.is_dir() else [target]
    snap = {
        str(p.relative_to(target)) if target.is_dir() else p.name: (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode))
        for p in files
    }
    return snap | ({".": (b"", stat.S_IMODE(target.stat().st_mode))} if target.is_dir() else {})


def _copies_of_secret(results: Path) -> list[str]:
    """Regular files under ``results`` (no link followed) that hold the victim's secret."""
    found = []
    for folder, _, names in os.walk(results):
        for name in names:
            p = Path(folder) / name
            if stat.S_ISREG(p.lstat().st_mode) and SECRET in p.read_bytes():
                found.append(str(p))
    return found


def _run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _delete(rel: str):
    return lambda suite_dir: (suite_dir / rel).unlink()


#: (planted path below results/<suite>, what it points at, the step run, preparation before planting)
CASES = {
    "run lock": (f"runs/{RUN}/.writer.lock", "file", ["train", "--run", RUN], None),
    "pretrain lock": (f"pretrain/{BACKBONE}/.writer.lock", "file", ["train", "--pretrain", BACKBONE], None),
    "kept folder": (f"runs/{RUN}/.kept", "folder", ["train", "--run", RUN], None),
    "attempt log": (f"runs/{RUN}/.kept/attempts.jsonl", "file", ["train", "--run", RUN], None),
    # the output deleted by a restarted Snakemake: restoring it from a planted .kept/model.pth would hard-link
    # the victim's checkpoint into the shared folder
    "kept model": (f"runs/{RUN}/.kept/model.pth", "torch", ["train", "--run", RUN], _delete(f"runs/{RUN}/model.pth")),
    "kept key": (f"runs/{RUN}/.kept/model.pth.key", "file", ["train", "--run", RUN], _delete(f"runs/{RUN}/model.pth")),
    "model": (f"runs/{RUN}/model.pth", "torch", ["train", "--run", RUN], None),
    "run record": (f"runs/{RUN}/run.json", "json", ["evaluate", RUN], None),
    "failure record": (f"runs/{RUN}/failure.json", "json", ["collect"], _delete(f"runs/{RUN}/run.json")),
    "epoch checkpoint": (f"runs/{RUN}/train_state.pth", "torch", ["train", "--run", RUN, "--force"], None),
    "train log": (f"runs/{RUN}/train_log.jsonl", "file", ["train", "--run", RUN, "--force"], None),
    "kept tokens": (f"runs/{RUN}/kept_tokens.npz", "file", ["evaluate", RUN, "--force"], None),
    "run folder": (f"runs/{RUN}", "folder", ["evaluate", RUN], None),
    "timing": (f"timing/{BACKBONE}.json", "json", ["collect"], None),
    "table": ("table.parquet", "file", ["collect"], None),
    "table read back": ("table.parquet", "file", ["report"], None),
    "report folder": ("report", "folder", ["report"], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_planted_symlink_is_refused_and_never_followed(case, trained, tmp_path, capsys):
    rel, kind, step, prepare = CASES[case]
    suite, built = trained
    results = tmp_path / "results"
    subprocess.run(["cp", "-a", str(built), str(results)], check=True)  # -a: .kept's hard links stay links
    suite_dir = results / "nolinks"
    if prepare is not None:
        prepare(suite_dir)
    home = tmp_path / "victim"
    home.mkdir()
    target = _victim_folder(home) if kind == "folder" else _victim_file(home, kind)
    before = _snapshot(target)
    link = suite_dir / rel
    if link.is_dir() and not link.is_symlink():
        subprocess.run(["rm", "-r", str(link)], check=True)
    elif os.path.lexists(link):
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)

    code, err = _run(capsys, [step[0], str(suite), *step[1:], "--results", str(results)])

    assert _snapshot(target) == before, "the victim's file was changed through the link"
    assert _copies_of_secret(results) == [], "the victim's content was copied into the results"
    assert link.is_symlink(), "the planted link was moved or replaced instead of refused"
    errors = [ln for ln in err if "error" in ln]
    assert code == 2 and len(errors) == 1 and errors == err[-1:], err
    assert err[-1].startswith(f"bench: error: {link}: refused: a symbolic link inside the results folder"), err


def test_links_above_the_results_root_are_the_users_choice(trained, tmp_path, capsys):
    """The --results folder itself may be a link (a scratch space linked into the home): the step runs."""
    suite, built = trained
    scratch = tmp_path / "scratch"
    subprocess.run(["cp", "-a", str(built), str(scratch)], check=True)
    (tmp_path / "results").symlink_to(scratch)
    code, err = _run(capsys, ["train", str(suite), "--run", RUN, "--results", str(tmp_path / "results")])
    assert code == 0 and "already done" in err[-1], err


def test_a_planted_hard_link_is_never_written_through(tmp_path):
    """A lock file that is a hard link to another file (a co-user's planting where hard links to others' files
    are allowed) is refused before it is truncated."""
    from bench.artifacts import StepLock
    from bench.errors import UnsafeArtifact
    from bench.io import results_root

    root = results_root(tmp_path / "results")
    folder = root / "s" / "runs" / "r"
    folder.mkdir(parents=True)
    victim = _victim_file(tmp_path, "file")
    os.link(victim, folder / ".writer.lock")
    with pytest.raises(UnsafeArtifact, match="hard links"):
        with StepLock(folder, "test"):
            pass
    assert victim.read_bytes().startswith(SECRET) and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_files_are_created_with_the_groups_mode_and_never_chmodded(tmp_path):
    """New files get 0o666 & ~umask (the group shares the results); an existing lock file's mode is kept."""
    from bench.artifacts import StepLock
    from bench.io import atomic_write_text, results_root

    old = os.umask(0o002)
    try:
        root = results_root(tmp_path / "results")
        atomic_write_text(root / "s" / "a.json", "{}")
        assert stat.S_IMODE((root / "s" / "a.json").stat().st_mode) == 0o664
        assert stat.S_IMODE((root / "s").stat().st_mode) == 0o775
        lock = root / "s" / ".writer.lock"
        lock.touch(mode=0o600)
        lock.chmod(0o600)
        with StepLock(root / "s", "test"):
            pass
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_open_nofollow_refuses_a_link_by_itself(tmp_path):
    """O_NOFOLLOW alone (no results root around the path, so no lstat walk): a link is refused, its target untouched
    (the guard that remains when a link is swapped in between the walk and the open)."""
    from bench.errors import UnsafeArtifact
    from bench.io import open_nofollow

    victim = _victim_file(tmp_path, "file")
    link = tmp_path / "elsewhere" / "log"
    link.parent.mkdir()
    link.symlink_to(victim)
    with pytest.raises(UnsafeArtifact, match="symbolic link"):
        open_nofollow(link, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert victim.read_bytes().startswith(SECRET)


@pytest.mark.parametrize("step", ["index", "train"])
def test_a_planted_link_at_the_folder_index_is_refused(step, tmp_path, capsys):
    """results/<suite>/data/index.parquet planted as a link to another user's file: the index step refuses to
    replace it, a training step refuses to read it (it would train on the files it lists)."""
    from PIL import Image

    data = tmp_path / "pets"
    for split, cls in [("train", "a"), ("train", "b"), ("validation", "a"), ("validation", "b")]:
        (data / split / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / split / cls / "0.png")
    suite = tmp_path / "s.yaml"
    suite.write_text(
        f"name: s\ndata: {{source: imagefolder, path: {data}}}\nbackbones: [{BACKBONE}]\nmethods: [dense]\n"
        "keep_ratios: [1.0]\nseeds: [0]\npretrain: {init: scratch, recipe: {epochs: 0}}\n"
    )
    results = tmp_path / "results"
    assert main(["index", str(suite), "--results", str(results)]) == 0
    home = tmp_path / "victim"
    home.mkdir()
    victim = _victim_file(home, "file")
    index = results / "s" / "data" / "index.parquet"
    index.unlink()
    index.symlink_to(victim)
    capsys.readouterr()
    argv = ["index", str(suite)] if step == "index" else ["train", str(suite), "--pretrain", BACKBONE]
    code, err = _run(capsys, [*argv, "--results", str(results)])
    assert victim.read_bytes().startswith(SECRET) and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert _copies_of_secret(results) == [] and index.is_symlink()
    assert code == 2 and err[-1].startswith(f"bench: error: {index}: refused: a symbolic link"), err


def _snakemake(workdir: Path, suite: Path) -> subprocess.CompletedProcess:
    import sys

    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir)]
    cmd += [
        "--cores",
        "1",
        "--workflow-profile",
        "none",
        "--config",
        f"suite={suite}",
        f"results={workdir / 'results'}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


@pytest.mark.parametrize(
    "rel",
    [f"logs/pretrain/{BACKBONE}.log", "logs/pretrain", f"runs/{RUN}/run.json"],
    ids=["log", "log folder", "parse"],
)
def test_snakemake_refuses_a_planted_link_to_a_log_or_a_checked_file(rel, tmp_path):
    """The pipeline's own writes and reads: a step's log (written by the Snakefile's run_logged) and the files
    checked at parse time. The pipeline stops before any compute, the link named, the victim unchanged."""
    suite = tmp_path / "nolinks.yaml"
    suite.write_text(SUITE)
    home = tmp_path / "victim"
    home.mkdir()
    target = _victim_folder(home) if rel == "logs/pretrain" else _victim_file(home, "json")
    before = _snapshot(target)
    link = tmp_path / "results" / "nolinks" / rel
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    p = _snakemake(tmp_path, suite)
    assert _snapshot(target) == before and link.is_symlink()
    assert p.returncode != 0 and f"{link}: refused: a symbolic link inside the results folder" in p.stderr, p.stderr
    assert not (tmp_path / "results" / "nolinks" / "pretrain").exists()  # no compute started


def test_a_temporary_file_swapped_for_a_link_while_it_is_written_is_not_followed(tmp_path):
    """A co-user's watcher sees the atomic write's temporary name in the shared folder and swaps it for a link to
    the victim's file before the writer opens it: the writer still writes the file the harness created (opened
    through /proc/self/fd), the victim is untouched, and the swapped name is refused, not renamed into place."""
    from bench.errors import UnsafeArtifact
    from bench.io import atomic_write, results_root

    root = results_root(tmp_path / "results")
    victim = _victim_file(tmp_path, "file")
    out = root / "s" / "table.csv"

    def write(name: str) -> None:
        (tmp,) = (root / "s").glob(".table.csv.*.tmp")  # what the watcher sees
        tmp.unlink()
        tmp.symlink_to(victim)
        Path(name).write_text("the new table\n")

    with pytest.raises(UnsafeArtifact, match="replaced by another file or a link while it was written"):
        atomic_write(out, write)
    assert victim.read_bytes().startswith(SECRET) and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not os.path.lexists(out)


def test_the_launcher_refuses_a_planted_link_at_a_failure_record(tmp_path, monkeypatch):
    """bench.launch writes a failed job's failure.json into the results: a link planted there is named, and the
    victim's file is neither read into the record nor overwritten."""
    import sys

    monkeypatch.setenv("TOKENBENCH_JOBS_DIR", str(tmp_path / "private-jobs"))
    results = tmp_path / "results"
    run = results / "s" / "runs" / "r"
    run.mkdir(parents=True)
    victim = _victim_file(tmp_path, "json")
    before = _snapshot(victim)
    (run / "failure.json").symlink_to(victim)
    launcher = [sys.executable, "-m", "bench.launch", "--launcher", "local", "--folder", str(run / "slurm"), "--name"]
    launcher += ["t", "--failure-record", str(run / "failure.json"), "--"]
    # a step that fails in its job (an option bench ls does not take): the launcher then records the failure
    p = subprocess.run([*launcher, "ls", "nothing", "--results", str(results)], capture_output=True, text=True)
    assert p.returncode != 0 and f"{run / 'failure.json'}: refused: a symbolic link" in p.stderr, p.stderr
    assert _snapshot(victim) == before and (run / "failure.json").is_symlink()
    assert _copies_of_secret(results) == []
