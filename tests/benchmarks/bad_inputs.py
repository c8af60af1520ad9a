"""Every bad input is one line, exit 2, naming the field or file: a table over 80 malformed inputs.

    python tests/benchmarks/bad_inputs.py            # every case as its own process (bench, snakemake)
    python tests/benchmarks/bad_inputs.py --markdown # the same, as a Markdown table

Each case is a suite (the tiny BASE suite with one value broken) or a command line. The script prints, per
case, the exit code, the number of stderr lines the user sees and the message, then the share of cases that
exit 2 with one line naming what is wrong. ``tests/test_bad_inputs.py`` runs the same cases in-process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_kit import (  # noqa: E402
    BASE,
    EMPTY_CACHE,
    HUB,
    RUN,
    Case,
    add,
    backbones,
    cut,
    image_folder,
    method,
    recipe,
    run_case,
    sub,
)


def _plant_pickle(tmp: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp / "PWNED"), "w"))

    d = tmp / "results" / "tiny" / "runs" / RUN
    d.mkdir(parents=True)
    torch.save({"model": Evil(), "meta": {}}, d / "model.pth")


def _truncated_model(tmp: Path) -> None:
    d = tmp / "results" / "tiny" / "runs" / RUN
    d.mkdir(parents=True)
    (d / "model.pth").write_bytes(b"PK\x03\x04 truncated")


INDEX = ["index", "{suite}", "--results", "{tmp}/results"]

EARLIER: list[Case] = [
    # -- the suite file itself
    Case("binary suite file", "not UTF-8", b"\xff\xfe\x00\x01name: x"),
    Case("latin-1 suite file", "not UTF-8", BASE.replace("name: tiny", "name: tiny # caf\xe9").encode("latin-1")),
    Case("NUL bytes in suite", "binary", BASE.replace("seeds: [0]", "seeds: [0]\x00")),
    Case("empty suite file", "mapping", ""),
    Case("suite is a list", "mapping", "- a\n- b\n"),
    Case("invalid YAML", "not valid YAML", BASE.replace("seeds: [0]", "seeds: [0")),
    Case("repeated top-level key", "appears twice", BASE + "seeds: [1]\n"),
    Case("repeated nested key", "appears twice", recipe("lr: 1.0e-3, lr: 2.0e-3")),
    Case("missing suite file", "not found", None, ["validate", "{tmp}/nope.yaml"]),
    Case("unknown top-level field", "unknown field", BASE + "seed: [1]\n"),
    Case("missing name", "name", BASE.replace("name: tiny\n", "")),
    # -- names that are folders
    Case("name '..'", "field name", sub("name: tiny", "name: '..'")),
    Case("name '.'", "field name", sub("name: tiny", "name: '.'")),
    Case("name with a slash", "field name", sub("name: tiny", "name: a/b")),
    Case("name with a space", "field name", sub("name: tiny", "name: 'a b'")),
    Case("label '..'", "methods[1].label", method("{name: static, label: '..'}")),
    Case("label with a slash", "methods[1].label", method("{name: static, label: x/../y}")),
    Case(
        "backbone with a slash", "not a valid name", sub("backbones: [tb_vit_pico_patch4_32]", "backbones: ['../vit']")
    ),
    Case("method name '..'", "methods[1]", method("'..'")),
    # -- the grid
    Case("keep ratio .nan", "keep_ratios[0]", sub("keep_ratios: [0.5]", "keep_ratios: [.nan]")),
    Case("keep ratio .inf", "keep_ratios[0]", sub("keep_ratios: [0.5]", "keep_ratios: [.inf]")),
    Case("keep ratio 0", "keep_ratios[0]", sub("keep_ratios: [0.5]", "keep_ratios: [0]")),
    Case("keep ratio 1.5", "keep_ratios[0]", sub("keep_ratios: [0.5]", "keep_ratios: [1.5]")),
    Case("keep ratio a string", "keep_ratios[0]", sub("keep_ratios: [0.5]", "keep_ratios: [half]")),
    Case("keep ratios with one run id", "share the run id", sub("keep_ratios: [0.5]", "keep_ratios: [0.701, 0.704]")),
    Case(
        "method keep ratios with one run id", "share the run id", method("{name: static, keep_ratios: [0.501, 0.499]}")
    ),
    Case("no keep ratios", "keep_ratios", sub("keep_ratios: [0.5]", "keep_ratios: []")),
    Case("seed not an integer", "seeds[0]", sub("seeds: [0]", "seeds: [zero]")),
    Case("seed a float", "seeds[0]", sub("seeds: [0]", "seeds: [0.5]")),
    Case("method listed twice", "methods[2]", method("static, static")),
    Case(
        "backbone listed twice",
        "backbones",
        sub("backbones: [tb_vit_pico_patch4_32]", "backbones: [tb_vit_pico_patch4_32, tb_vit_pico_patch4_32]"),
    ),
    # -- methods and their parameters, checked on the backbone before anything runs
    Case("unknown method", "methods[1]", method("statik")),
    Case("unknown method parameter", "methods[1]", method("{name: static, params: {num_stage: 2}}")),
    Case("num_stages 0", "num_stages", method("{name: random, params: {num_stages: 0}}")),
    Case("num_stages -2", "num_stages", method("{name: random, params: {num_stages: -2}}")),
    Case("num_stages too many for the depth", "methods[1].params", method("{name: random, params: {num_stages: 9}}")),
    Case(
        "stage_blocks beyond the depth",
        "methods[1].params",
        method("{name: static, params: {stage_blocks: [2, 4, 99]}}"),
    ),
    Case("stage_blocks not increasing", "methods[1].params", method("{name: static, params: {stage_blocks: [6, 3]}}")),
    Case(
        "stage_blocks with every_block",
        "methods[1].params",
        method("{name: static, params: {stage_blocks: [2], schedule: every_block}}"),
    ),
    Case("schedule not a choice", "schedule", method("{name: static, params: {schedule: sometimes}}")),
    Case("dynamicvit tau .nan", "tau", method("{name: dynamicvit, params: {tau: .nan}}")),
    Case("dynamicvit negative loss weight", "ratio_weight", method("{name: dynamicvit, params: {ratio_weight: -1}}")),
    Case(
        "token_pooling clustering not a choice",
        "clustering",
        method("{name: token_pooling, params: {clustering: dbscan}}"),
    ),
    Case("token_pooling negative iterations", "iterations", method("{name: token_pooling, params: {iterations: -1}}")),
    Case("svite density 1.5", "density", method("{name: svite, params: {density: 1.5}}")),
    Case("svite density 0", "density", method("{name: svite, params: {density: 0}}")),
    Case("svite update_interval 0", "update_interval", method("{name: svite, params: {update_interval: 0}}")),
    Case("parameter of the wrong type", "num_stages", method("{name: static, params: {num_stages: two}}")),
    Case("learned method, no fine-tune, no weights", "learns parameters", method("{name: dynamicvit, finetune: none}")),
    Case("weights file missing", "weights", method("{name: dynamicvit, finetune: none, weights: /nonexistent.pth}")),
    Case("weights with a fine-tune", "weights", method("{name: dynamicvit, weights: /nonexistent.pth}")),
    # -- recipes: optimiser, schedule, augmentation built before anything runs
    Case("opt adamww", "finetune.opt", recipe("opt: adamww")),
    Case("opt in a method's recipe", "methods[1].finetune.opt", method("{name: static, finetune: {opt: sgdd}}")),
    Case(
        "pretrain opt unknown",
        "pretrain.recipe.opt",
        sub("recipe: {epochs: 1, batch_size: 64", "recipe: {opt: lamb2, epochs: 1, batch_size: 64"),
    ),
    Case("opt_betas of length 1", "finetune.opt_betas", recipe("opt_betas: [0.9]")),
    Case("lr a string", "finetune.lr", recipe("lr: fast")),
    Case("lr .nan", "finetune.lr", recipe("lr: .nan")),
    Case("negative epochs", "finetune.epochs", recipe("lr: 1.0e-3").replace("epochs: 1, batch", "epochs: -1, batch")),
    Case(
        "batch size 0",
        "finetune.batch_size",
        recipe("lr: 1.0e-3").replace("batch_size: 64, max_steps_per_epoch: 2", "batch_size: 0, max_steps_per_epoch: 2"),
    ),
    Case("unknown recipe key", "learning_rate", recipe("learning_rate: 1.0e-3")),
    Case(
        "unknown named recipe",
        "finetune.recipe",
        sub("finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}", "finetune: deit3"),
    ),
    Case("runtime key in a suite", "loader_workers", recipe("num_workers: 8")),
    Case("auto_augment not a policy", "finetune.auto_augment", recipe("auto_augment: rand-zz9")),
    Case("mixup_mode not a mode", "finetune", recipe("mixup: 0.8, mixup_mode: pairs")),
    Case("interpolation not a mode", "finetune", recipe("interpolation: lanczos9")),
    Case("lr_step not a unit", "finetune", recipe("lr_step: hour")),
    Case("fractional warm-up per epoch", "finetune", recipe("lr_step: epoch, warmup_epochs: 0.5")),
    Case("frozen_params unknown", "finetune.frozen_params", recipe("frozen_params: [cls_tokenn]")),
    # -- backbones and data
    Case("unknown backbone", "backbones[0]", sub("backbones: [tb_vit_pico_patch4_32]", "backbones: [vit_tinyy]")),
    Case("init hub without hub weights", "backbones[0].init", sub("init: scratch", "init: hub")),
    Case("init checkpoint missing", "backbones[0].init", sub("init: scratch", "init: /nonexistent/ckpt.pth")),
    Case(
        "image size too small",
        "backbones[0]",
        sub("backbones: [tb_vit_pico_patch4_32]", "backbones: [{name: tb_vit_pico_patch4_32, image_size: 2}]"),
    ),
    Case("unknown data source", "data", sub("source: embedded", "source: s3")),
    Case("unknown embedded set", "data", sub("name: canvas-digits", "name: mnist-fashion")),
    Case(
        "image folder missing",
        "data",
        sub(
            "data: {source: embedded, name: canvas-digits}", "data: {source: imagefolder, path: /nonexistent/imagenet}"
        ),
    ),
    Case("unknown data key", "data", sub("name: canvas-digits}", "name: canvas-digits, split: train}")),
    Case(
        "evaluate precision unknown", "evaluate", sub("repeats: 2, warmup: 1", "repeats: 2, warmup: 1, precision: fp8")
    ),
    Case(
        "evaluate batch size 0",
        "evaluate",
        sub("evaluate: {max_val_images", "evaluate: {batch_size: 0, max_val_images"),
    ),
    Case("throughput batch sizes a word", "batch_sizes", sub("batch_sizes: [2]", "batch_sizes: many")),
    Case("throughput noise threshold 0", "noise_threshold", sub("warmup: 1}", "warmup: 1, noise_threshold: 0}")),
    Case("throughput min_time_s negative", "min_time_s", sub("warmup: 1}", "warmup: 1, min_time_s: -1}")),
    Case("throughput max_attempts 0", "max_attempts", sub("warmup: 1}", "warmup: 1, max_attempts: 0}")),
    # -- command lines
    Case("train without --run or --pretrain", "--run", BASE, ["train", "{suite}", "--results", "{tmp}/results"]),
    Case(
        "train an unknown run",
        "no run",
        BASE,
        ["train", "{suite}", "--run", "static__k9", "--results", "{tmp}/results"],
    ),
    Case(
        "pretrain an unknown backbone",
        "no backbone",
        BASE,
        ["train", "{suite}", "--pretrain", "vit_x", "--results", "{tmp}/results"],
    ),
    Case(
        "evaluate a run never trained", "not trained", BASE, ["evaluate", "{suite}", RUN, "--results", "{tmp}/results"]
    ),
    Case(
        "--device cuda without a GPU",
        "--device",
        BASE,
        ["evaluate", "{suite}", RUN, "--device", "cuda", "--results", "{tmp}/results"],
    ),
    Case("--device gpu0", "--device", BASE, ["train", "{suite}", "--run", RUN, "--device", "gpu0"]),
    Case("--threads 0", "--threads", BASE, ["train", "{suite}", "--run", RUN, "--threads", "0"]),
    Case("--workers -1", "loader_workers", BASE, ["train", "{suite}", "--run", RUN, "--workers", "-1"]),
    Case(
        "evaluate a planted pickle",
        "model.pth",
        BASE,
        ["evaluate", "{suite}", RUN, "--results", "{tmp}/results"],
        setup=_plant_pickle,
    ),
    Case(
        "evaluate a truncated model.pth",
        "model.pth",
        BASE,
        ["evaluate", "{suite}", RUN, "--results", "{tmp}/results"],
        setup=_truncated_model,
    ),
    Case(
        "time an unknown backbone",
        "no runs on backbone",
        BASE,
        ["time", "{suite}", "vit_x", "--results", "{tmp}/results"],
    ),
    Case(
        "time a backbone never evaluated",
        "no evaluated run",
        BASE,
        ["time", "{suite}", "tb_vit_pico_patch4_32", "--results", "{tmp}/results"],
    ),
    Case(
        "time in an unknown precision",
        "--timing-precision",
        BASE,
        ["time", "{suite}", "tb_vit_pico_patch4_32", "--timing-precision", "fp8"],
    ),
    Case(
        "throughput batch sizes not integers",
        "--batch-sizes",
        None,
        ["throughput", "tb_vit_pico_patch4_32", "--batch-sizes", "1,x"],
    ),
    Case("flops of an unknown backbone", "backbone", None, ["flops", "vit_nope"]),
    Case("flops at keep ratio 0", "--keep-ratio", None, ["flops", "tb_vit_pico_patch4_32", "--keep-ratio", "0"]),
    Case("flops --param without =", "--param", None, ["flops", "tb_vit_pico_patch4_32", "--param", "num_stages"]),
    Case("flops of an unknown method", "method", None, ["flops", "tb_vit_pico_patch4_32", "--method", "tome2"]),
    Case("collect a suite never run", "no results", BASE, ["collect", "{suite}", "--results", "{tmp}/results"]),
    Case("figures --only unknown", "figure", BASE, ["figures", "{suite}", "--only", "paper_nope"]),
    # -- a local image folder: the index step checks it, a job names the image that fails
    Case("empty class folder", "train/eel", BASE, INDEX, setup=image_folder(add("train/eel/"))),
    Case(
        "class names equal but for case",
        "train/Cat, train/cat",
        BASE,
        INDEX,
        setup=image_folder(lambda root: (root / "train/dog").rename(root / "train/Cat")),
    ),
    Case(
        "class only in val/",
        "never trained; found in val/): fox",
        BASE,
        INDEX,
        setup=image_folder(add("val/fox/0.jpg")),
    ),
    Case(
        "class only in train/",
        "never evaluated; found in train/): fox",
        BASE,
        INDEX,
        setup=image_folder(add("train/fox/0.jpg")),
    ),
    Case("truncated JPEG", "train/cat/1.jpg", BASE, INDEX, setup=image_folder(cut("train/cat/1.jpg"))),
    Case("text file named .jpg", "val/dog/notes.jpg", BASE, INDEX, setup=image_folder(add("val/dog/notes.jpg", b"hi"))),
    Case("empty .JPEG file", "train/dog/x.JPEG", BASE, INDEX, setup=image_folder(add("train/dog/x.JPEG", b""))),
    Case(
        "JPEG truncated after the index step",
        "train/cat/1.jpg",
        BASE,
        ["train", "{suite}", "--pretrain", "tb_vit_pico_patch4_32", "--results", "{tmp}/results"],
        setup=image_folder(cut("train/cat/1.jpg"), indexed=True),
    ),
    # -- what the backbone lacks, its label, its weights (bench/preflight.py, bench/config.py)
    Case("evit, no class token", "no class token", backbones("[vit_medium_patch16_gap_256]", "[dense, evit]")),
    Case(
        "evit without fusion, no class token",
        "no class token",
        backbones("[vit_medium_patch16_gap_256]", "[dense, {name: evit, label: evit_nofuse, params: {fuse: false}}]"),
    ),
    Case(
        "evit, registers and no class token",
        "register",
        backbones("[vit_little_patch16_reg4_gap_256]", "[dense, evit]"),
    ),
    Case(
        "evit, class token turned off",
        "no class token",
        backbones("[{name: tb_vit_pico_patch4_32, kwargs: {class_token: false, global_pool: avg}}]", "[dense, evit]"),
    ),
    Case(
        "dynamicvit, average pooling",
        "class-token pooling",
        backbones("[vit_medium_patch16_gap_256]", "[dense, dynamicvit]"),
    ),
    Case(
        "backbone at its own size listed twice",
        "backbones[1]",
        backbones("[tb_vit_pico_patch4_32, {name: tb_vit_pico_patch4_32, image_size: 32}]"),
    ),
    Case(
        "two backbones, one label",
        "label 'pico'",
        backbones("[{name: tb_vit_pico_patch4_32, label: pico}, {name: tb_vit_nano_patch4_32, label: pico}]"),
    ),
    Case(
        "backbone label with a slash",
        "not a valid name",
        backbones("[{name: tb_vit_pico_patch4_32, label: a/b}]"),
    ),
    Case("tome r with keep ratios", "keep_ratios", method("{name: tome, params: {r: 2}, keep_ratios: [0.7, 0.5]}")),
    Case("init hub, HF_HUB_OFFLINE", "HF_HUB_OFFLINE", HUB, env={**EMPTY_CACHE, "HF_HUB_OFFLINE": "1"}),
    Case(
        "init hub, hub unreachable",
        "unreachable",
        HUB,
        env={**EMPTY_CACHE, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
    ),
    # -- the pipeline's own config (snakemake --config)
    Case("snakemake --config foo=1", "foo", BASE, ["foo=1"], snakemake=True),
    Case("snakemake launcher=slurmm", "launcher", BASE, ["launcher=slurmm"], snakemake=True),
    Case("snakemake loader_workers=-1", "loader_workers", BASE, ["loader_workers=-1"], snakemake=True),
    Case("snakemake timing_precision=fp8", "timing_precision", BASE, ["timing_precision=fp8"], snakemake=True),
    Case("snakemake suite missing", "not found", None, ["suite={tmp}/missing.yaml"], snakemake=True),
    Case("snakemake binary suite", "not UTF-8", b"\xff\xfe\x00\x01", [], snakemake=True),
    Case("snakemake repeated key", "appears twice", BASE + "name: tiny2\n", [], snakemake=True),
    Case("snakemake results path with a single quote", "single quote", BASE, ["results={tmp}/it's"], snakemake=True),
]


# each class of bad input has its own file of cases (a Case's kind names its class)
from bad_inputs_config import CASES as CONFIG_CASES  # noqa: E402
from bad_inputs_files import CASES as FILE_CASES  # noqa: E402
from bad_inputs_values import CASES as VALUE_CASES  # noqa: E402

CASES: list[Case] = [*EARLIER, *VALUE_CASES, *FILE_CASES, *CONFIG_CASES]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    good = 0
    cases = [c for c in CASES if args.k in c.name]
    if args.markdown:
        print("| # | bad input | exit | lines | message |\n|---|---|---|---|---|")
    for i, case in enumerate(cases, 1):
        with tempfile.TemporaryDirectory() as d:
            code, lines = run_case(case, Path(d))
        msg = lines[-1] if lines else ""
        ok = code == 2 and len(lines) == 1 and case.expect in msg and "Traceback" not in msg
        good += ok
        msg = msg.replace(d, "<tmp>")
        if args.markdown:
            print(f"| {i} | {case.name} | {code} | {len(lines)} | `{msg[:160].replace('|', '/')}` |")
        else:
            print(f"{'ok  ' if ok else 'FAIL'} {code} {len(lines)} {case.name}: {msg[:200]}")
    print(f"\n{good}/{len(cases)} cases exit 2 with one line naming the field or file")
    kinds = Counter(c.kind for c in cases)
    print("cases per class: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return 0 if good == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
