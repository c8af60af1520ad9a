# tokenbench pipeline: pretrain -> fine-tune -> evaluate (accuracy, FLOPs) -> timing (every run of a backbone
# against dense, interleaved, in one job) -> collect -> report.
#   snakemake                                  # the default suite (suites/smoke.yaml), profile profiles/default
#   snakemake --config suite=suites/dynamicvit.yaml
# Every rule turns files into files; what to run lives in the suite, how to run it in a profile.
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

from bench.errors import UsageError, one_line
from bench.workflow import check_config, check_resources, check_results_path, runtime_args

try:
    # what to run (suite, results) and how (launcher, runtime settings), checked against a schema up front
    config.update(check_config(config))
    if "results" not in config:  # check_config checked a given one; the default is checked here
        check_results_path("results", "config results")
    # the rule and resource names of set-resources (a profile's or --set-resources); values are Snakemake's
    check_resources({rule: dict(res.items()) for rule, res in workflow.resource_settings.overwrite_resources.items()},
                    "set-resources (profile or --set-resources)", values=False)
except UsageError as e:
    print(f"bench: error: {e}", file=sys.stderr)
    sys.exit(2)
# none: steps run as plain local processes; local / slurm: each step is a submitit job (bench.launch),
# set by a profile (slurm/config.yaml), never by a suite
LAUNCHER = str(config.get("launcher", "none"))
# loader workers, device batch cap, channels_last, compile: passed to every compute step, never a rerun trigger
RUNTIME_ARGS = runtime_args(config)

from bench.config import evaluate_spec, load_suite, pretrain_spec

try:
    SUITE = load_suite(config.get("suite", "smoke"), reuse_checks=True)
except UsageError as e:
    # one line naming the field, like the CLI, instead of Snakemake's traceback-style report
    print(f"bench: error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)

ROOT = str(config.get("results", "results"))
OUT = f"{ROOT}/{SUITE.name}"
from bench.io import results_root

results_root(ROOT)  # below it no symlink is followed (bench.io): a planted one is refused
SUITE_FILE = str(SUITE.path)
RUNS = {r.run_id: r for r in SUITE.runs}
BACKBONES = sorted({r.backbone for r in SUITE.runs})
BENCH = [sys.executable, "-m", "bench"]
print(f"tokenbench: suite {SUITE.name} ({SUITE_FILE}), {len(RUNS)} runs, launcher {LAUNCHER}", file=sys.stderr)

from bench import progress

# status lines of the running steps on this terminal (a thread of this snakemake process, started by onstart;
# spawned job processes build it too but never start it): every 5 s on a terminal, every 60 s into a file;
# `--config progress_s=N` sets it, 0 turns it off
MONITOR = progress.Monitor(f"{OUT}/logs", launcher=LAUNCHER,
                           every_s=float(config.get("progress_s", progress.default_every_s())))

# Compute rules declare these; profiles override them per rule (set-resources). Under a launcher they
# become submitit/SLURM parameters; without one only threads matter. tasks=0: one task per GPU.
COMPUTE_RESOURCES = dict(gpus=0, tasks=0, cpus_per_task=1, mem_mb=0, runtime=60, slurm_partition="", slurm_account="",
                         slurm_qos="", constraint="", slurm_extra="")


def run_step(step, key, bench_args, resources, threads, log, folder, output, failure=None):
    """Run `bench <bench_args>` directly or, under a launcher, as a submitit job (bench.launch).

    Built in a `run:` block rather than `params:` so that how a step runs is never a rerun trigger.
    """
    if LAUNCHER == "none":
        prefix, torch_threads = [sys.executable, "-m", "bench"], threads
    else:
        torch_threads = resources.cpus_per_task
        prefix = [sys.executable, "-m", "bench.launch", "--launcher", LAUNCHER, "--folder", folder,
                  "--name", f"tb.{SUITE.name}.{step}.{key}", "--gpus", resources.gpus, "--tasks", resources.tasks,
                  "--cpus", resources.cpus_per_task, "--mem-mb", resources.mem_mb, "--time-min", resources.runtime,
                  "--partition", resources.slurm_partition, "--account", resources.slurm_account,
                  "--qos", resources.slurm_qos, "--constraint", resources.constraint, "--extra", resources.slurm_extra]
        if failure is not None:
            prefix += ["--failure-record", failure]
        for path in output:
            prefix += ["--output", path]
        prefix.append("--")
    run_logged([*prefix, *bench_args, "--results", ROOT, "--threads", torch_threads,
                *(RUNTIME_ARGS if bench_args[0] in ("train", "evaluate", "time") else [])], log[0],
               step=(step, key), job_folder=None if LAUNCHER == "none" else folder)


def run_logged(argv, log=None, check=True, step=None, job_folder=None):
    """Run a command without a shell (paths from the config reach it as arguments, never as shell text),
    its output appended to ``log`` (or to this terminal). With a log, the step's progress record sits beside it
    (bench.progress: <log name>.progress.json), named ``step`` = (step, id), for the terminal's status lines."""
    argv = [str(a) for a in argv]
    print(shlex.join(argv) + (f" > {shlex.quote(str(log))} 2>&1" if log else ""), file=sys.stderr, flush=True)
    if log is None:
        code = subprocess.run(argv).returncode
    else:
        from bench.io import open_nofollow, safe_mkdir

        try:  # a symlink planted at the log or a folder above it (inside the results) is refused, never written
            safe_mkdir(os.path.dirname(str(log)) or ".")
            fd = open_nofollow(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except UsageError as e:
            raise WorkflowError(f"bench: error: {e}") from None
        record = os.path.abspath(progress.progress_path(log))
        name, key = step or (Path(str(log)).stem, "")
        progress.step_started(record, step=name, key=key, log=os.path.abspath(str(log)), job_folder=job_folder)
        with os.fdopen(fd, "w") as f:
            code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, progress.ENV: record}).returncode
        progress.step_finished(record, code)
    if check and code != 0:
        raise WorkflowError(f"{shlex.join(argv[:4])} ... exited with code {code}" + (f" (log: {log})" if log else ""))
    return code


def run_spec(run_id):
    """Everything that defines a run's result: a change re-runs it (params are a rerun trigger)."""
    from bench.config import run_spec as spec

    return json.dumps(spec(SUITE, RUNS[run_id]), sort_keys=True)


# a local image folder is listed once, by its own step; every job reads the index (bench.data.index)
INDEX = f"{OUT}/data/index.parquet" if SUITE.data.get("source") == "imagefolder" else None
DATA_INPUT = [INDEX] if INDEX else []
if INDEX:
    from bench.data.index import drop_if_stale

    # files added or removed (a stat per directory the index recorded, nothing listed): the index goes, so its
    # step rebuilds it and every result that read the folder follows
    try:
        dropped = drop_if_stale(INDEX, SUITE.data["path"])
    except UsageError as e:  # a planted symlink at the index: refused in one line, like the CLI
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    if dropped:
        print(f"tokenbench: {SUITE.data['path']} changed since {INDEX} was built; rebuilding it and what read it",
              file=sys.stderr)


# a damaged result (truncated, another format) is moved aside now, so that this run rebuilds exactly it and what
# depends on it: a zip directory, JSON parse or parquet footer per file, nothing loaded
from bench.artifacts import quarantine_damaged
from bench.io import refuse_links_below

try:
    refuse_links_below(OUT)  # Snakemake writes logs and makes folders through links: none may be planted
    quarantine_damaged([(Path(f"{OUT}/pretrain/{b.label}/model.pth"), None) for b in SUITE.backbones]
                       + [(Path(f"{OUT}/runs/{rid}/model.pth"), None) for rid in RUNS]
                       + [(Path(f"{OUT}/runs/{rid}/run.json"), rid) for rid in RUNS]
                       + [(Path(p), None) for p in [f"{OUT}/table.parquet", *DATA_INPUT]]
                       + [(Path(f"{OUT}/timing/{b.label}.json"), None) for b in SUITE.backbones])
except UsageError as e:  # a planted symlink among them: refused in one line, like the CLI
    print(f"bench: error: {e}", file=sys.stderr)
    sys.exit(2)


def data_spec():
    """The data config without its runtime keys (cache_dir, num_proc): what a result depends on."""
    from bench.data.sources import identity

    return identity(SUITE.data)


def trained_model(wc):
    """What a run is evaluated from: its fine-tuned model, or with finetune: none the pretrained backbone
    (and the method's given weights), so that no fine-tune job exists for it."""
    r = RUNS[wc.run]
    if r.finetune is not None:
        return [f"{OUT}/runs/{wc.run}/model.pth"]
    return [f"{OUT}/pretrain/{r.backbone}/model.pth", *([r.weights] if r.weights else [])]


wildcard_constraints:
    run="[^/]+",
    backbone="[^/]+",


localrules: all, collect, report, index


REPORT_FILES = [f"{OUT}/report/{name}" for name in
                ("report.md", "index.md", "tradeoff_top1_vs_gmacs.png", "tradeoff_top1_vs_gmacs.pdf")]


rule all:
    # every run record is a target itself: Snakemake does not rebuild a missing intermediate file
    # whose consumers are up to date, and a deleted run must re-run
    input:
        expand(f"{OUT}/runs/{{run}}/run.json", run=sorted(RUNS)),
        # and so is every checkpoint: one moved aside as damaged is rebuilt, and its newer copy reruns what read it
        expand(f"{OUT}/pretrain/{{backbone}}/model.pth", backbone=BACKBONES),
        expand(f"{OUT}/timing/{{backbone}}.json", backbone=BACKBONES),
        [f"{OUT}/runs/{rid}/model.pth" for rid in sorted(RUNS) if RUNS[rid].finetune is not None],
        # the table and the report's files too: collect's marker alone would call a table moved aside as damaged
        # (or a deleted figure) up to date ("Nothing to be done")
        f"{OUT}/table.parquet",
        f"{OUT}/table.csv",
        REPORT_FILES,
        f"{OUT}/.collected",
        # the folder index too: a stale one is removed at parse time, and must then be rebuilt (with what read it)
        DATA_INPUT,


if INDEX:

    rule index:
        output:
            INDEX,
        params:
            spec=lambda wc: json.dumps(data_spec(), sort_keys=True),
        log:
            f"{OUT}/logs/index.log",
        run:
            run_logged([*BENCH, "index", SUITE_FILE, "--results", ROOT], log[0])


rule pretrain:
    input:
        DATA_INPUT,
    output:
        f"{OUT}/pretrain/{{backbone}}/model.pth",
    params:
        spec=lambda wc: json.dumps(pretrain_spec(SUITE, wc.backbone), sort_keys=True),
    resources:
        **COMPUTE_RESOURCES,
    log:
        f"{OUT}/logs/pretrain/{{backbone}}.log",
    run:
        run_step("pretrain", wildcards.backbone, ["train", SUITE_FILE, "--pretrain", wildcards.backbone], resources,
                 threads, log, f"{OUT}/pretrain/{wildcards.backbone}/slurm", output)


rule finetune:
    input:
        lambda wc: f"{OUT}/pretrain/{RUNS[wc.run].backbone}/model.pth",
        DATA_INPUT,
    output:
        f"{OUT}/runs/{{run}}/model.pth",
    params:
        spec=lambda wc: run_spec(wc.run),
    resources:
        **COMPUTE_RESOURCES,
    log:
        f"{OUT}/logs/finetune/{{run}}.log",
    run:
        run_step("finetune", wildcards.run, ["train", SUITE_FILE, "--run", wildcards.run], resources, threads, log,
                 f"{OUT}/runs/{wildcards.run}/slurm/finetune", output, f"{OUT}/runs/{wildcards.run}/failure.json")


rule evaluate:
    input:
        trained_model,
        DATA_INPUT,
    output:
        f"{OUT}/runs/{{run}}/run.json",
    params:
        spec=lambda wc: json.dumps(evaluate_spec(SUITE), sort_keys=True) + ("" if RUNS[wc.run].finetune else run_spec(wc.run)),
    resources:
        **COMPUTE_RESOURCES,
    log:
        f"{OUT}/logs/evaluate/{{run}}.log",
    run:
        run_step("evaluate", wildcards.run, ["evaluate", SUITE_FILE, wildcards.run], resources, threads, log,
                 f"{OUT}/runs/{wildcards.run}/slurm/evaluate", output, f"{OUT}/runs/{wildcards.run}/failure.json")


def run_outcome(rid):
    """A run's outcome: its run record, or its failure record when its last attempt failed (failure.json newer
    than any run.json), so that a run that keeps failing never blocks the timing of the others."""
    record, failure = Path(f"{OUT}/runs/{rid}/run.json"), Path(f"{OUT}/runs/{rid}/failure.json")
    failed = failure.is_file() and (not record.is_file() or failure.stat().st_mtime > record.stat().st_mtime)
    return str(failure if failed else record)


def backbone_outcomes(wc):
    return [run_outcome(rid) for rid in sorted(RUNS) if RUNS[rid].backbone == wc.backbone]


def time_blocked_backbones():
    """After a failure (onerror): time each backbone whose timing is missing or older than one of its run records,
    so a run that failed in this invocation does not leave the others untimed (bench time times what is evaluated
    and lists the rest, with the reason). Locally only; under a launcher the next snakemake run times them, without
    waiting for the failed run."""
    for backbone in BACKBONES:
        out = Path(f"{OUT}/timing/{backbone}.json")
        records = [Path(f"{OUT}/runs/{rid}/run.json") for rid in sorted(RUNS) if RUNS[rid].backbone == backbone]
        newest = max((r.stat().st_mtime for r in records if r.is_file()), default=None)
        if newest is None or (out.is_file() and out.stat().st_mtime >= newest):
            continue
        if LAUNCHER != "none":
            print(f"tokenbench: {out} is not up to date (a run failed); the next snakemake run times {backbone}",
                  file=sys.stderr)
            continue
        run_logged([*BENCH, "time", SUITE_FILE, backbone, "--results", ROOT, *RUNTIME_ARGS],
                   f"{OUT}/logs/timing/{backbone}.log", check=False)


def timing_spec():
    """What a timing depends on besides its runs: the suite's protocol (a change re-times and re-evaluates nothing).
    Runtime settings re-run nothing, as everywhere; the timing records the ones it ran with."""
    return json.dumps(SUITE.evaluate["throughput"], sort_keys=True)


rule timing:
    # the whole backbone group is timed again when any of its runs changes: a speed-up is only ever paired with
    # the dense reference timed in the same job, on the same device. Its input is each run's outcome (run.json, or
    # failure.json for a run whose last attempt failed): what is evaluated is timed, the rest listed as not timed
    input:
        backbone_outcomes,
    output:
        f"{OUT}/timing/{{backbone}}.json",
    params:
        spec=lambda wc: timing_spec(),
    resources:
        **COMPUTE_RESOURCES,
    log:
        f"{OUT}/logs/timing/{{backbone}}.log",
    run:
        run_step("timing", wildcards.backbone, ["time", SUITE_FILE, wildcards.backbone], resources, threads, log,
                 f"{OUT}/timing/slurm/{wildcards.backbone}", output)


rule collect:
    input:
        expand(f"{OUT}/runs/{{run}}/run.json", run=sorted(RUNS)),
        expand(f"{OUT}/timing/{{backbone}}.json", backbone=BACKBONES),
    output:
        f"{OUT}/table.parquet",
        f"{OUT}/table.csv",
        # written only here, never on error: its absence makes the next run rebuild table and report
        touch(f"{OUT}/.collected"),
    run:
        run_logged([*BENCH, "collect", SUITE_FILE, "--results", ROOT])


rule report:
    input:
        f"{OUT}/table.parquet",
        f"{OUT}/.collected",
    output:
        REPORT_FILES,
    run:
        run_logged([*BENCH, "figures", SUITE_FILE, "--results", ROOT])
        run_logged([*BENCH, "report", SUITE_FILE, "--results", ROOT])


onstart:
    MONITOR.start()


onsuccess:
    MONITOR.stop()


onerror:
    MONITOR.stop()
    # failed runs never hide: the table and report still show every finished run and list the holes;
    # removing the collect marker makes the next run rebuild them once the holes are filled
    time_blocked_backbones()
    for step in ("collect", "figures", "report"):
        if run_logged([*BENCH, step, SUITE_FILE, "--results", ROOT], check=False) != 0:
            break
    if os.path.exists(f"{OUT}/.collected"):
        os.remove(f"{OUT}/.collected")
