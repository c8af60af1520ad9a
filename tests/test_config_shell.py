"""No config value reaches a shell: Snakemake spawns each job as ``sh -c "... --config key=<repr(value)>"``, so the
workflow refuses, in its first process and in one line naming the key, every value whose quoting a shell would
expand or Snakemake's repr would change; every other value reaches the job unchanged. Runtime keys are typed
(integers are integers), the results path is one that can be written, and profiles are checked like suites."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_interface_executor_plugins.utils import format_cli_arg

from bench.cli import main
from bench.errors import UsageError
from bench.runtime import COMPILE_BACKENDS, Runtime
from bench.workflow import check_config, check_results_path, read_profile, unsafe_char, workflow_schema

REPO = Path(__file__).resolve().parents[1]
SUITE = """name: tiny
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense]
keep_ratios: [1.0]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}
"""


def snakemake(tmp: Path, *config: str, dry: bool = True) -> subprocess.CompletedProcess:
    (tmp / "suite.yaml").write_text(SUITE)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp)]
    cmd += [*(["-n"] if dry else []), "--workflow-profile", "none", "--cores", "1", "--config"]
    cmd += [f"suite={tmp / 'suite.yaml'}", f"results={tmp / 'results'}", *config]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env, timeout=300)


@pytest.mark.parametrize(
    "value, key, named",
    [
        ("compile=x'$(touch {tmp}/FILE)'", "compile", "single quote"),
        ("suite={tmp}/it's$(touch {tmp}/FILE).yaml", "suite", "single quote"),
        ("results={tmp}/a\\b", "results", "backslash"),
        ("results={tmp}/a\x7fb$(touch {tmp}/FILE)", "results", "U+007F"),  # (a newline, Snakemake's YAML folds)
        ("results={tmp}/a\x1b[2Jb", "results", "U+001B"),
        ("prefetch_factor=4.0", "prefetch_factor", "an integer"),
        ("loader_workers=1e9", "loader_workers", "an integer"),
        ("progress_s=nan", "progress_s", "finite"),
        ("compile=inductorr", "compile", "inductor"),
        ("device_batch=True", "device_batch", "an integer"),
    ],
)
def test_a_config_value_a_shell_or_snakemake_would_change_is_refused_before_any_job(tmp_path, value, key, named):
    """Through a real `snakemake -n`: exit 2, one line naming the key, and the planted command never ran."""
    p = snakemake(tmp_path, value.replace("{tmp}", str(tmp_path)))
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("Using ")]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"config {key}" in lines[0] and named in lines[0], lines[0]
    assert not (tmp_path / "FILE").exists() and not (tmp_path / "results").exists()


def test_a_real_run_with_shell_syntax_in_the_results_path_runs_nothing(tmp_path):
    """Not a dry run: a results folder named to break out of the quoting is refused in the first process, so no
    job process is ever spawned through sh (were it let through, the first job would create FILE)."""
    p = snakemake(tmp_path, f"results={tmp_path}/r'$(touch {tmp_path}/FILE)'", dry=False)
    assert p.returncode == 2 and "config results" in p.stderr and "single quote" in p.stderr, p.stderr
    assert not (tmp_path / "FILE").exists() and not list(tmp_path.glob("r*"))


def test_every_character_the_check_lets_through_reaches_a_job_unchanged(tmp_path):
    """Snakemake's own formatting of --config for a spawned job, run by sh: a value that passes ``unsafe_char``
    arrives byte for byte; each character refused is one sh or repr would change."""
    chars = [chr(i) for i in range(1, 256)] + ["€", "é", "\u2028", "\u200b", "😀"]
    values = [f"results=/tmp/a{c}b$(touch {tmp_path}/FILE)`touch {tmp_path}/FILE`" for c in chars]
    passed = [v for v in values if unsafe_char(v) is None]
    script = f"printf '%s\\0' {format_cli_arg('--config', passed)}"
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout.decode()
    assert out.split("\0")[:-1] == ["--config", *passed]
    assert not (tmp_path / "FILE").exists()
    refused = {c for c, v in zip(chars, values) if unsafe_char(v)}
    assert {"'", "\\", "\n", "\t", "\x00" if False else "\x01", "\x7f", "\u2028", "\u200b"} <= refused
    assert not refused & set('$`" ();&|<>*?~#!{}[]%é€😀')
    for c in refused:  # each one, alone, would be changed by the quoting
        text = f"results=a{c}b"
        shown = format_cli_arg("--config", [text]).split(" ", 1)[1]
        assert shown != f"'{text}'"


def test_the_bench_options_are_bounded_as_the_schema_bounds_the_config():
    from bench import runtime

    props = workflow_schema()["properties"]

    def maximum(key):
        return next(b["maximum"] for b in props[key].get("anyOf", [props[key]]) if b.get("type") == "integer")

    assert maximum("loader_workers") == runtime.MAX_WORKERS
    assert maximum("prefetch_factor") == runtime.MAX_PREFETCH_FACTOR
    assert maximum("device_batch") == runtime.MAX_DEVICE_BATCH
    assert maximum("timing_threads") == runtime.MAX_THREADS
    with pytest.raises(UsageError, match="loader_workers"):
        runtime.parse_workers(str(runtime.MAX_WORKERS + 1))
    assert runtime.parse_workers(str(runtime.MAX_WORKERS)) == runtime.MAX_WORKERS


def test_runtime_keys_are_typed_bounded_and_named():
    ok = check_config({"loader_workers": "auto", "prefetch_factor": 2, "device_batch": None, "compile": "on"})
    assert ok["compile"] is True
    assert check_config({"compile": "inductor", "progress_s": 0.5, "timing_threads": 4})["progress_s"] == 0.5
    bad = [
        ({"prefetch_factor": 4.0}, "prefetch_factor=4.0"),
        ({"prefetch_factor": True}, "prefetch_factor=True"),
        ({"prefetch_factor": 10**9}, "<= 1024"),
        ({"loader_workers": 2.5}, "loader_workers"),
        ({"loader_workers": "many"}, "loader_workers"),
        ({"device_batch": 0}, "device_batch"),
        ({"timing_threads": -1}, "timing_threads"),
        ({"progress_s": math.inf}, "progress_s=inf"),
        ({"progress_s": -1}, "progress_s"),
        ({"channels_last": "maybe"}, "channels_last"),
        ({"compile": "x; rm -rf ~"}, "compile"),
        ({"compile": 1}, "compile=1"),
        ({"launcher": "slurm "}, "launcher"),
        ({"timing_precision": "fp8"}, "timing_precision"),
        ({"suite": ""}, "config suite is empty"),
        ({"suite": ["a", "b"]}, "suite"),
        ({"results": None}, "config results is empty"),
        ({"results": "a\nb"}, "holds a newline"),  # from a configfile (Snakemake folds it on its command line)
        ({"results'": 1}, "unknown config key"),
    ]
    for config, named in bad:
        with pytest.raises(UsageError, match=None) as e:
            check_config(config)
        assert named in str(e.value) and "\n" not in str(e.value), (config, str(e.value))
    # the schema's backends are the CLI's and the runtime's
    compile_ = workflow_schema()["properties"]["compile"]["anyOf"][1]["enum"]
    assert tuple(compile_) == COMPILE_BACKENDS
    with pytest.raises(UsageError, match="compile must be on, off or one of"):
        Runtime(compile="nonsense")


def test_a_results_path_that_cannot_hold_results_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    assert check_results_path(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checked, nothing made
    for path, named in [
        ("", "is empty"),
        ("afile", "afile is a file, not a folder"),
        ("afile/sub", "a part of it is a file"),
        ("loop", "symlink loop"),
        ("loop/sub", "symlink loop"),
        ("a\nb", "newline"),
    ]:
        with pytest.raises(UsageError, match=None) as e:
            check_results_path(path, "--results")
        assert named in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert main(["collect", "smoke", "--results", path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bench: error: ") and "--results" in err[0], err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() != 0:  # root writes anyway: then a read-only mount stands in for it
        with pytest.raises(UsageError, match="is read-only"):
            check_results_path(str(ro / "results"))
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK) or os.geteuid() == 0:
        with pytest.raises(UsageError, match="is read-only: cannot write in /sys"):
            check_results_path("/sys/tokenbench-results")


def write_profile(tmp: Path, config_yaml: str, launcher_yaml: str | None = None) -> str:
    folder = tmp / "prof"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(config_yaml)
    if launcher_yaml is not None:
        (folder / "launcher.yaml").write_text(launcher_yaml)
    return str(folder)


@pytest.mark.parametrize(
    "config_yaml, launcher_yaml, named",
    [
        ("jobs: [1\n", None, "not valid YAML at line 2"),
        ("- jobs\n", None, "must be a mapping"),
        ("set-resources: [finetune]\n", None, "set-resources must be a mapping"),
        ("set-resources:\n  finetun: {gpus: 1}\n", None, "no rule 'finetun'; did you mean 'finetune'"),
        ("set-resources:\n  finetune: {gpu: 1}\n", None, "unknown resource 'gpu'; did you mean 'gpus'?"),
        ("set-resources:\n  finetune: {gpus: 1.5}\n", None, "finetune.gpus=1.5: not allowed"),
        ("set-resources:\n  pretrain: {runtime: '60'}\n", None, "pretrain.runtime='60'"),
        ('set-resources:\n  timing: {slurm_extra: "--x\\n#SBATCH --y"}\n', None, "timing.slurm_extra"),
        ("configfile: {dir}/launcher.yaml\n", "prefetch_factor: 4.0\n", "config prefetch_factor=4.0"),
        ("configfile: {dir}/launcher.yaml\n", "launcher: slurmm\n", "launcher.yaml: config launcher"),
        ("configfile: {dir}/launcher.yaml\n", "compile: \"x'$(id)'\"\n", "single quote"),
        ("configfile: {dir}/missing.yaml\n", None, "missing.yaml: cannot be read"),
    ],
)
def test_a_broken_profile_is_one_line_naming_its_file(tmp_path, monkeypatch, capsys, config_yaml, launcher_yaml, named):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(SUITE)
    folder = write_profile(tmp_path, config_yaml.replace("{dir}", str(tmp_path / "prof")), launcher_yaml)
    with pytest.raises(UsageError, match=None) as e:
        read_profile(folder)
    assert named in str(e.value) and str(tmp_path / "prof") in str(e.value), str(e.value)
    assert main(["validate", "suite.yaml", "--profile", folder]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_the_shipped_profiles_pass():
    resources, config, where = read_profile(str(REPO / "slurm"))
    assert config["launcher"] == "slurm" and resources["finetune"]["gpus"] == 1
    assert read_profile(str(REPO / "profiles" / "default"))[0] == {}


def test_snakemake_names_an_unknown_set_resources_rule_or_resource(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n"]
    cmd += ["--workflow-profile", "none", "--cores", "1", "--set-resources", "finetune:gpu=1", "--config"]
    cmd += [f"suite={tmp_path / 'suite.yaml'}", f"results={tmp_path / 'results'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("Using ")]
    assert p.returncode == 2 and len(lines) == 1 and "unknown resource 'gpu'; did you mean 'gpus'?" in lines[0], lines
