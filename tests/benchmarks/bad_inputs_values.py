"""Bad inputs of one class: suite values: impossible numbers, recipes, names, YAML, kwargs.

Written as a careless user (a float where an integer goes, a preset shortened without its warm-up, a label pasted
with its newline) and as an attacker (an alias bomb, an anchor that contains itself, a key that is a list, kwargs
that override the harness's own). Each is refused by a check of its class (bench.suite_values,
bench.suite_file, the schema's bounds), never by a rule for that one input.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_kit import BASE, RUN, Case, backbones, method, recipe, sub  # noqa: E402

NUM, RCP, NAME, YAML, KW = "impossible number", "recipe cross-field", "name", "yaml", "kwargs"
VALIDATE = ["validate", "{suite}"]  # the checks that need no torch
TRAIN = ["train", "{suite}", "--run", RUN, "--results", "{tmp}/results"]  # refused before anything is computed
FLOPS = ["flops", "tb_vit_pico_patch4_32", "--method", "static", "--param"]
PRETRAIN = ["train", "{suite}", "--pretrain", "tb_vit_pico_patch4_32", "--results", "{tmp}/results"]

FT = "finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}"
PRE = "recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 3}"


def ft(body: str) -> str:
    """BASE with this fine-tune recipe."""
    return sub(FT, f"finetune: {{{body}}}")


def pre(body: str) -> str:
    """BASE with this pretraining recipe."""
    return sub(PRE, f"recipe: {{{body}}}")


def pico(extra: str, methods: str = "[dense, static]") -> str:
    """BASE on the pico backbone given as a mapping with ``extra`` fields."""
    return backbones(f"[{{name: tb_vit_pico_patch4_32, {extra}}}]", methods)


def value(name: str, expect: str, suite: str | bytes, kind: str, argv: list[str] | None = None) -> Case:
    return Case(name, expect, suite, argv or VALIDATE, kind=kind)


#: nine lists of nine aliases: 9**9 values once expanded (387 million), a few hundred bytes of YAML
LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)

CASES: list[Case] = [
    # -- impossible numbers: the right type, a value no machine runs
    value(
        "svite update_interval 10**12",
        "update_interval",
        method("{name: svite, params: {update_interval: 1000000000000}}"),
        NUM,
    ),
    value(
        "svite_plus selector lr scale negative",
        "selector_lr_scale",
        method("{name: svite_plus, params: {selector_lr_scale: -1.0}}"),
        NUM,
    ),
    value(
        "token_pooling iterations 10**12",
        "iterations",
        method("{name: token_pooling, params: {iterations: 1000000000000}}"),
        NUM,
    ),
    value(
        "evit shrink_epochs 10**9", "shrink_epochs", method("{name: evit, params: {shrink_epochs: 1000000000}}"), NUM
    ),
    value(
        "evit shrink_start_epoch 10**9",
        "shrink_start_epoch",
        method("{name: evit, params: {shrink_start_epoch: 1000000000}}"),
        NUM,
    ),
    value("lr overflows with its batch scaling", "finetune.lr", recipe("lr: 1.0e+308, lr_base_batch: 1"), NUM, TRAIN),
    value("lr_base_batch denormal: lr x batch / base is inf", "lr_base_batch=", recipe("lr_base_batch: 1.0e-320"), NUM),
    value(
        "lr underflows to 0 with its batch scaling",
        "finetune.lr",
        recipe("lr: 1.0e-320, min_lr: 0, lr_base_batch: 1.0e+300"),
        NUM,
    ),
    value(
        "pretrain lr overflows with its batch scaling",
        "pretrain.recipe.lr",
        pre("lr: 1.0e+300, lr_base_batch: 1.0e-10, epochs: 1, batch_size: 64"),
        NUM,
        PRETRAIN,
    ),
    value(
        "backbone lr scale overflows",
        "finetune.backbone_lr_scale",
        recipe("lr: 10.0, backbone_lr_scale: 1.0e+308"),
        NUM,
    ),
    value("batch size 10**9", "finetune.batch_size", ft("epochs: 1, batch_size: 1000000000"), NUM, TRAIN),
    value(
        "batch x image size beyond any memory",
        "GiB of fp32 input",
        pico("image_size: 1024").replace("batch_size: 64, max_steps_per_epoch: 2", "batch_size: 65536"),
        NUM,
    ),
    value("image size 100000", "backbones[0].image_size", pico("image_size: 100000"), NUM),
    value(
        "evaluate batch size 10**12",
        "evaluate.batch_size",
        sub("evaluate: {", "evaluate: {batch_size: 1000000000000, "),
        NUM,
    ),
    value(
        "throughput batch size 10**9", "batch_sizes[1]", sub("batch_sizes: [2]", "batch_sizes: [2, 1000000000]"), NUM
    ),
    value(
        "max_val_images 10**20",
        "evaluate.max_val_images",
        sub("max_val_images: 64", "max_val_images: 100000000000000000000"),
        NUM,
    ),
    value("flops_images 10**9", "evaluate.flops_images", sub("flops_images: 4", "flops_images: 1000000000"), NUM),
    value("throughput repeats 10**12", "throughput.repeats", sub("repeats: 2", "repeats: 1000000000000"), NUM),
    value(
        "throughput min_time_s a day", "throughput.min_time_s", sub("warmup: 1}", "warmup: 1, min_time_s: 86400}"), NUM
    ),
    value("epochs 10**30", "finetune.epochs", ft("epochs: 1000000000000000000000000000000, batch_size: 64"), NUM),
    value("seed 2**32 (beyond numpy's seeds)", "seeds[0]", sub("seeds: [0]", "seeds: [4294967296]"), NUM, TRAIN),
    value("seed -1", "seeds[0]", sub("seeds: [0]", "seeds: [-1]"), NUM),
    value(
        "pretrain seed 2**64", "pretrain.seed", sub("init: scratch", "init: scratch, seed: 18446744073709551616"), NUM
    ),
    value("repeated_aug 10**9", "finetune.repeated_aug", recipe("repeated_aug: 1000000000"), NUM),
    value("epochs 2.0", "finetune.epochs", ft("epochs: 2.0, batch_size: 64"), NUM, TRAIN),
    value("batch size 64.0", "finetune.batch_size", ft("epochs: 1, batch_size: 64.0"), NUM),
    value("seed 1.0", "seeds[0]", sub("seeds: [0]", "seeds: [1.0]"), NUM),
    value("image size 32.0", "backbones[0].image_size", pico("image_size: 32.0"), NUM),
    value("throughput batch size 2.0", "batch_sizes[0]", sub("batch_sizes: [2]", "batch_sizes: [2.0]"), NUM),
    value(
        "max_steps_per_epoch 2.0",
        "finetune.max_steps_per_epoch",
        ft("epochs: 1, batch_size: 64, max_steps_per_epoch: 2.0"),
        NUM,
    ),
    value("--threads 2.0", "--threads", BASE, NUM, [*TRAIN, "--threads", "2.0"]),
    value("--device-batch 8.0", "--device-batch", BASE, NUM, [*TRAIN, "--device-batch", "8.0"]),
    value("--prefetch-factor 1e3", "--prefetch-factor", BASE, NUM, [*TRAIN, "--prefetch-factor", "1e3"]),
    value(
        "throughput --batch-sizes 10**9",
        "--batch-sizes",
        None,
        NUM,
        ["throughput", "tb_vit_pico_patch4_32", "--batch-sizes", "1,1000000000"],
    ),
    value(
        "throughput --repeats 10**9",
        "--repeats",
        None,
        NUM,
        ["throughput", "tb_vit_pico_patch4_32", "--repeats", "1000000000"],
    ),
    value(
        "flops --image-size 10**6",
        "--image-size",
        None,
        NUM,
        ["flops", "tb_vit_pico_patch4_32", "--image-size", "1000000"],
    ),
    value("seed of 5000 digits", "5,000 characters long", sub("seeds: [0]", "seeds: [" + "9" * 5000 + "]"), NUM, TRAIN),
    value(
        "embedded set placed 10**9 times",
        "data.options",
        sub("name: canvas-digits}", "name: canvas-digits, options: {train_placements: 1000000000}}"),
        NUM,
        PRETRAIN,
    ),
    value(
        "embedded canvas of 10**6 px",
        "data.options",
        sub("name: canvas-digits}", "name: canvas-digits, options: {canvas: 1000000}}"),
        NUM,
    ),
    value(
        "evaluation crop_pct 1e-300 (resize to inf)",
        "evaluate.crop_pct",
        sub("evaluate: {", "evaluate: {crop_pct: 1.0e-300, "),
        NUM,
    ),
    value(
        "RandAugment of 10**8 ops per image", "finetune.auto_augment", recipe("auto_augment: rand-m9-n100000000"), NUM
    ),
    value("AugMix chain depth 10**6", "finetune.auto_augment", recipe("auto_augment: augmix-m5-w3-d1000000"), NUM),
    value("label smoothing 1 (uniform targets)", "finetune.label_smoothing", recipe("label_smoothing: 1"), NUM),
    value("drop path 1 (every branch dropped)", "finetune.drop_path", recipe("drop_path: 1.0"), NUM),
    # -- recipes whose fields disagree
    value("mixup with an odd batch", "finetune.batch_size", ft("mixup: 0.8, epochs: 1, batch_size: 63"), RCP, TRAIN),
    value(
        "cutmix_minmax with no box size at 32 px",
        "finetune.cutmix_minmax",
        recipe("cutmix: 1.0, cutmix_minmax: [0.5, 0.51]"),
        RCP,
    ),
    value("floor above the peak", "finetune.min_lr", recipe("lr: 1.0e-4, min_lr: 1.0e-2"), RCP, TRAIN),
    value(
        "floor above the batch-scaled peak",
        "finetune.min_lr",
        recipe("lr: 1.0e-3, lr_base_batch: 4096, min_lr: 1.0e-4"),
        RCP,
    ),
    value(
        "pretrain floor above the peak",
        "pretrain.recipe.min_lr",
        pre("lr: 1.0e-5, min_lr: 1.0e-3, epochs: 1, batch_size: 64"),
        RCP,
    ),
    value("warm-up as long as the run", "finetune.warmup_epochs", recipe("warmup_epochs: 1"), RCP, TRAIN),
    value(
        "warm-up longer than a method's own run",
        "methods[1].finetune.warmup_epochs",
        method("{name: static, finetune: {epochs: 2, warmup_epochs: 3}}"),
        RCP,
    ),
    value(
        "named preset shortened without its warm-up",
        "warmup_epochs (from recipe deit)",
        ft("recipe: deit, epochs: 2, batch_size: 64, max_steps_per_epoch: 2"),
        RCP,
    ),
    value(
        "pretrain warm-up longer than the run",
        "pretrain.recipe.warmup_epochs",
        pre("warmup_epochs: 1.5, epochs: 1, batch_size: 64"),
        RCP,
        PRETRAIN,
    ),
    value(
        "warm-up starts above the peak",
        "finetune.warmup_lr",
        ft("epochs: 4, batch_size: 64, warmup_epochs: 1, warmup_lr: 1.0"),
        RCP,
    ),
    value("weight decay zeroes the weights", "finetune.weight_decay", recipe("lr: 0.5, weight_decay: 2.0"), RCP),
    value("scale not (min, max)", "finetune.scale", recipe("scale: [0.9, 0.1]"), RCP),
    value("ratio not (min, max)", "finetune.ratio", recipe("ratio: [1.333, 0.75]"), RCP),
    value(
        "cutmix_minmax not (min, max)", "finetune.cutmix_minmax", recipe("cutmix: 1.0, cutmix_minmax: [0.8, 0.2]"), RCP
    ),
    # -- names that pass a pattern with $, exceed a file name, carry control characters or lookalikes
    value("suite name with a trailing newline", "field name", sub("name: tiny", 'name: "tiny\\n"'), NAME),
    value(
        "method label with a trailing newline", "methods[1].label", method('{name: static, label: "static\\n"}'), NAME
    ),
    value("backbone label with a trailing newline", "backbones[0].label", pico('label: "pico\\n"'), NAME),
    value("backbone name with a trailing newline", "backbones[0]", backbones('["tb_vit_pico_patch4_32\\n"]'), NAME),
    value("method name with a trailing newline", "methods[1]", method('"static\\n"'), NAME),
    value("suite name of 300 bytes", "the suite name", sub("name: tiny", "name: " + "t" * 300), NAME, TRAIN),
    value("method label of 250 bytes", "methods[1]", method("{name: static, label: " + "s" * 250 + "}"), NAME),
    value(
        "run id beyond a file name from two long labels",
        "the run id",
        pico("label: " + "p" * 100, "[dense, {name: static, label: " + "s" * 100 + "}]"),
        NAME,
    ),
    value(
        "method label '-static' (an option to the evaluate step)",
        "methods[1].label",
        method("{name: static, label: -static}"),
        NAME,
    ),
    value("backbone label '-pico' (an option to the time step)", "backbones[0].label", pico("label: -pico"), NAME),
    value("method label '.kept' (a hidden folder)", "methods[1].label", method("{name: static, label: .kept}"), NAME),
    value("suite name '.tiny' (a hidden folder)", "field name", sub("name: tiny", "name: .tiny"), NAME),
    value("label with a tab", "methods[1].label", method('{name: static, label: "st\\tatic"}'), NAME),
    value("suite name with a NUL escape", "field name", sub("name: tiny", 'name: "tiny\\0"'), NAME),
    value("label with an accent", "methods[1].label", method("{name: static, label: stätic}"), NAME),
    value("suite name with a zero-width space", "field name", sub("name: tiny", 'name: "ti\\u200bny"'), NAME),
    value(
        "label with a right-to-left override",
        "methods[1].label",
        method('{name: static, label: "st\\u202eatic"}'),
        NAME,
    ),
    value(
        "method labels that differ only in case",
        "differ only in case",
        method("static, {name: random, label: Static}"),
        NAME,
    ),
    value(
        "backbone labels that differ only in case",
        "differ only in case",
        backbones("[{name: tb_vit_pico_patch4_32, label: Pico}, {name: tb_vit_nano_patch4_32, label: pico}]"),
        NAME,
    ),
    value("init path beyond a file name", "backbones[0].init", sub("init: scratch", "init: " + "i" * 3000), NAME),
    value(
        "image folder path beyond a file name",
        "data.path",
        sub("data: {source: embedded, name: canvas-digits}", "data: {source: imagefolder, path: " + "p" * 3000 + "}"),
        NAME,
    ),
    value("method name of 3000 bytes, quoted by its length", "<a value of 3,000 characters>", method("m" * 3000), NAME),
    # -- YAML that recurses, bombs, or has keys no field has
    value("anchor that contains itself", "contains itself", BASE + "description: &d [*d]\n", YAML),
    value(
        "recipe whose list holds the recipe",
        "contains itself",
        ft("epochs: 1, batch_size: 64").replace("finetune: {", "finetune: &f {frozen_params: [*f], "),
        YAML,
        TRAIN,
    ),
    value("billion laughs beside the suite", "aliases are expanded", LAUGHS + BASE, YAML),
    value(
        "billion laughs as the seeds",
        "aliases are expanded",
        LAUGHS + sub("seeds: [0]", "seeds: *l8"),
        YAML,
        TRAIN,
    ),
    value(
        "30,000 values inline",
        "20,000 values",
        sub("seeds: [0]", "seeds: [" + ",".join(["0"] * 30_000) + "]"),
        YAML,
    ),
    value("a 100 kB value in the wrong place", "field seeds", sub("seeds: [0]", "seeds: " + "x" * 100_000), YAML),
    value("a 10 MB suite file", "larger than 256 KiB", BASE + "description: " + "x" * 10_000_000 + "\n", YAML),
    value("brackets nested 5000 deep", "nested deeper", sub("seeds: [0]", "seeds: " + "[" * 5000 + "]" * 5000), YAML),
    value(
        "mappings nested 100 deep",
        "nested deeper",
        BASE + "description: " + "{a: " * 100 + "1" + "}" * 100 + "\n",
        YAML,
    ),
    value("a list as a key", "is a list", BASE + "? [name]\n: x\n", YAML),
    value("a mapping as a key", "is a mapping", BASE + "? {name: x}\n: x\n", YAML),
    value("an integer key at the top", "key 1", BASE + "1: x\n", YAML),
    value("a null key in a recipe", "key None", recipe("null: 1"), YAML),
    value("a boolean key in kwargs", "key True", pico("kwargs: {true: 1}"), YAML, TRAIN),
    value("a float key in params", "key 0.5", method("{name: static, params: {0.5: 1}}"), YAML),
    value(
        "a date key in data",
        "key datetime.date",
        sub("name: canvas-digits}", "name: canvas-digits, 2020-01-01: x}"),
        YAML,
    ),
    value(
        "flops --param with a recursive anchor", "--param stage_blocks", None, YAML, [*FLOPS, "stage_blocks=&a [*a]"]
    ),
    value("flops --param with a list as a key", "--param stage_blocks", None, YAML, [*FLOPS, "stage_blocks={[1]: 2}"]),
    value(
        "flops --param with a Python tag",
        "--param stage_blocks",
        None,
        YAML,
        [*FLOPS, "stage_blocks=!!python/name:os.system"],
    ),
    value("flops --param not valid YAML", "--param stage_blocks", None, YAML, [*FLOPS, "stage_blocks=[1"]),
    value("flops --param of 5000 digits", "--param num_stages", None, NUM, [*FLOPS, "num_stages=" + "9" * 5000]),
    # -- backbone kwargs that the harness sets itself
    value("kwargs num_classes", "backbones[0].kwargs.num_classes", pico("kwargs: {num_classes: 5}"), KW, TRAIN),
    value("kwargs img_size", "backbones[0].kwargs.img_size", pico("kwargs: {img_size: 64}"), KW),
    value("kwargs in_chans", "backbones[0].kwargs.in_chans", pico("kwargs: {in_chans: 1}"), KW),
    value("kwargs pretrained", "backbones[0].kwargs.pretrained", pico("kwargs: {pretrained: true}"), KW),
    value("kwargs drop_path_rate", "backbones[0].kwargs.drop_path_rate", pico("kwargs: {drop_path_rate: 0.5}"), KW),
    value(
        "kwargs checkpoint_path",
        "backbones[0].kwargs.checkpoint_path",
        pico("kwargs: {checkpoint_path: /etc/passwd}"),
        KW,
    ),
    value(
        "kwargs pretrained_cfg_overlay",
        "kwargs.pretrained_cfg_overlay",
        pico("kwargs: {pretrained_cfg_overlay: {file: /tmp/x.pth}}"),
        KW,
    ),
    value("kwargs embed_dim 10**11", "backbones[0].kwargs.embed_dim", pico("kwargs: {embed_dim: 100000000000}"), KW),
    value("kwargs depth 10**9", "backbones[0].kwargs.depth", pico("kwargs: {depth: 1000000000}"), KW, PRETRAIN),
    Case(
        "kwargs embed_dim 65536: 9 TiB to train (validate --build)",
        "backbones[0].kwargs: 618,549,673,994 parameters",
        backbones("[{name: vit_tiny_patch16_224, kwargs: {embed_dim: 65536, num_heads: 1}}]"),
        kind=KW,
    ),
    # -- through the pipeline: snakemake -n refuses before any job
    Case(
        "snakemake: warm-up as long as the run",
        "finetune.warmup_epochs",
        recipe("warmup_epochs: 1"),
        [],
        snakemake=True,
        kind=RCP,
    ),
    Case("snakemake: billion laughs", "aliases are expanded", LAUGHS + BASE, [], snakemake=True, kind=YAML),
]
