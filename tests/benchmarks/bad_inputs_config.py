"""Bad inputs of one class: the pipeline's config, profiles and the results path (snakemake --config, --profile).

Written as a careless user (a float where an integer goes, a typo, an empty value) and as an attacker (shell
syntax, backslashes and control characters that Snakemake's quoting for its job processes would change)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_kit import BASE, RUN, Case  # noqa: E402

RT, RP, PR = "runtime config", "results path", "profile"


def snake(name: str, expect: str, *config: str, suite: str | None = BASE, setup=None) -> Case:
    return Case(name, expect, suite, list(config), snakemake=True, setup=setup, kind=RT)


def plant(rel: str, what: str = "file") -> Callable[[Path], None]:
    """A setup: <tmp>/<rel> as a file, a symlink to itself (a loop) or a folder nobody may write."""

    def setup(tmp: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if what == "file":
            p.write_text("not a folder\n")
        elif what == "loop":
            p.symlink_to(p.name)
        else:
            p.mkdir()
            p.chmod(0o555)

    return setup


#: a folder this user cannot write: root writes through any mode, so for root a read-only kernel mount
READ_ONLY = "/sys/tokenbench-results" if os.geteuid() == 0 else "{tmp}/ro/results"
READ_ONLY_SETUP = None if os.geteuid() == 0 else plant("ro", "read-only")


def profile(config_yaml: str, launcher_yaml: str | None = None) -> Callable[[Path], None]:
    """A setup: the profile folder <tmp>/prof (config.yaml and, when given, launcher.yaml beside it)."""

    def setup(tmp: Path) -> None:
        (tmp / "prof").mkdir()
        (tmp / "prof" / "config.yaml").write_text(config_yaml.replace("{tmp}", str(tmp)))
        if launcher_yaml is not None:
            (tmp / "prof" / "launcher.yaml").write_text(launcher_yaml)

    return setup


def prof(name: str, expect: str, config_yaml: str, launcher_yaml: str | None = None) -> Case:
    argv = ["validate", "{suite}", "--runs", "--profile", "{tmp}/prof"]
    return Case(name, expect, BASE, argv, setup=profile(config_yaml, launcher_yaml), kind=PR)


LAUNCHER = "configfile: {tmp}/prof/launcher.yaml\n"
#: a billion laughs: 9 levels of 9 aliases, 387 million strings once expanded
BOMB = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
).replace("a8: &a8", "progress_s: &a8")

CASES: list[Case] = [
    # -- runtime config: wrong types, out of range, names not in the list (snakemake --config)
    snake("prefetch_factor an integral float", "prefetch_factor=4.0", "prefetch_factor=4.0"),
    snake("prefetch_factor a word", "prefetch_factor", "prefetch_factor=lots"),
    snake("prefetch_factor beyond any memory", "prefetch_factor", "prefetch_factor=1000000000"),
    snake("loader_workers in scientific notation", "loader_workers", "loader_workers=1e3"),
    snake("loader_workers a million processes", "loader_workers", "loader_workers=1000000"),
    snake("device_batch zero", "device_batch", "device_batch=0"),
    snake("device_batch negative", "device_batch", "device_batch=-64"),
    snake("device_batch True", "device_batch", "device_batch=True"),
    snake("timing_threads a fraction", "timing_threads", "timing_threads=2.5"),
    snake("progress_s nan", "progress_s=nan", "progress_s=nan"),
    snake("progress_s infinite", "progress_s=inf", "progress_s=inf"),
    snake("progress_s a list", "progress_s", "progress_s=[1, 2]"),
    snake("channels_last maybe", "channels_last", "channels_last=maybe"),
    snake("compile a misspelt backend", "compile", "compile=inductorr"),
    snake("compile an integer", "compile=1", "compile=1"),
    snake("launcher in capitals", "launcher", "launcher=SLURM"),
    snake("timing_precision fp64", "timing_precision", "timing_precision=fp64"),
    snake("config key with a dash", "device-batch", "device-batch=64"),
    # -- runtime config: what Snakemake's quoting for its job processes (sh -c, repr) would expand or change
    snake("compile breaking out of the quotes", "compile", "compile=x'$(touch {tmp}/PWNED)'"),
    snake("compile with backticks", "compile", "compile=`touch {tmp}/PWNED`"),
    snake("suite path with a quote and $(...)", "config suite", "suite={tmp}/it's$(touch {tmp}/PWNED).yaml"),
    snake("results path with a backslash", "backslash", "results={tmp}/a\\b"),
    snake("results path with an escape sequence", "U+001B", "results={tmp}/a\x1b[2Jb"),
    snake("results path with a DEL", "U+007F", "results={tmp}/a\x7fb"),
    snake("suite empty", "config suite is empty", "suite="),
    # -- the same settings as bench options: bounded as the schema bounds them, integers all the way
    Case(
        "bench --workers 10**11",
        "loader_workers",
        BASE,
        ["train", "{suite}", "--run", RUN, "--workers", "100000000000"],
        kind=RT,
    ),
    Case(
        "bench --workers 2.0", "loader_workers", BASE, ["train", "{suite}", "--run", RUN, "--workers", "2.0"], kind=RT
    ),
    Case(
        "bench --prefetch-factor 10**9",
        "--prefetch-factor",
        BASE,
        ["evaluate", "{suite}", RUN, "--prefetch-factor", "1000000000"],
        kind=RT,
    ),
    Case(
        "bench --device-batch 2**40",
        "--device-batch",
        BASE,
        ["train", "{suite}", "--run", RUN, "--device-batch", str(2**40)],
        kind=RT,
    ),
    Case(
        "bench --timing-threads 10**6",
        "--timing-threads",
        BASE,
        ["time", "{suite}", "tb_vit_pico_patch4_32", "--timing-threads", "1000000"],
        kind=RT,
    ),
    Case("bench --threads 10**6", "--threads", BASE, ["evaluate", "{suite}", RUN, "--threads", "1000000"], kind=RT),
    # -- the results path: empty, a file, under a file, a symlink loop, read-only (snakemake, then bench)
    Case("results= empty", "config results is empty", BASE, ["results="], snakemake=True, kind=RP),
    Case("results a file", "out is a file", BASE, ["results={tmp}/out"], True, plant("out"), kind=RP),
    Case("results under a file", "part of it is a file", BASE, ["results={tmp}/out/x"], True, plant("out"), kind=RP),
    Case("results a symlink loop", "symlink loop", BASE, ["results={tmp}/loop"], True, plant("loop", "loop"), kind=RP),
    Case("results read-only", "is read-only", BASE, [f"results={READ_ONLY}"], True, READ_ONLY_SETUP, kind=RP),
    Case("bench --results empty", "--results is empty", BASE, ["collect", "{suite}", "--results", ""], kind=RP),
    Case(
        "bench --results a symlink loop",
        "--results",
        BASE,
        ["train", "{suite}", "--run", RUN, "--results", "{tmp}/loop"],
        setup=plant("loop", "loop"),
        kind=RP,
    ),
    Case(
        "bench --results under a file",
        "part of it is a file",
        BASE,
        ["evaluate", "{suite}", RUN, "--results", "{tmp}/out/x"],
        setup=plant("out"),
        kind=RP,
    ),
    Case(
        "bench --results read-only",
        "is read-only",
        BASE,
        ["index", "{suite}", "--results", READ_ONLY],
        setup=READ_ONLY_SETUP,
        kind=RP,
    ),
    Case("bench --results with a newline", "newline", BASE, ["collect", "{suite}", "--results", "{tmp}/a\nb"], kind=RP),
    # -- profiles (bench validate --profile: Snakemake reads a profile before any code of ours runs)
    prof("profile YAML unclosed", "not valid YAML", "set-resources: {finetune: {gpus: 1}\n"),
    prof("profile a list", "must be a mapping of settings", "- jobs: 10\n"),
    prof("profile key twice", "appears twice", "jobs: 10\njobs: 20\n"),
    prof("profile set-resources a list", "set-resources must be a mapping", "set-resources: [finetune]\n"),
    prof("profile set-resources unknown rule", "no rule 'train'", "set-resources:\n  train: {gpus: 1}\n"),
    prof("profile unknown resource", "unknown resource 'gpu'", "set-resources:\n  finetune: {gpu: 1}\n"),
    prof("profile gpus negative", "finetune.gpus=-1", "set-resources:\n  finetune: {gpus: -1}\n"),
    prof("profile mem_mb with a unit", "pretrain.mem_mb='64G'", "set-resources:\n  pretrain: {mem_mb: 64G}\n"),
    prof("profile runtime a float", "timing.runtime=1.5", "set-resources:\n  timing: {runtime: 1.5}\n"),
    prof(
        "profile sbatch line injected",
        "evaluate.slurm_extra",
        'set-resources:\n  evaluate: {slurm_extra: "--exclusive\\nrm -rf ~"}\n',
    ),
    prof("profile configfile missing", "missing.yaml: cannot be read", "configfile: {tmp}/prof/missing.yaml\n"),
    prof("profile configfile a string", "must be a mapping", LAUNCHER, "just text\n"),
    prof("profile configfile float integer", "config prefetch_factor=4.0", LAUNCHER, "prefetch_factor: 4.0\n"),
    prof("profile configfile unknown key", "unknown config key 'device_bach'", LAUNCHER, "device_bach: 64\n"),
    prof("profile configfile shell in compile", "single quote", LAUNCHER, "compile: \"x'$(touch PWNED)'\"\n"),
    prof("profile configfile launcher typo", "config launcher", LAUNCHER, "launcher: slrum\n"),
    prof("profile configfile alias bomb", "launcher.yaml", LAUNCHER, BOMB),
    Case("profile not found", "not found", BASE, ["validate", "{suite}", "--profile", "{tmp}/nowhere"], kind=PR),
]
