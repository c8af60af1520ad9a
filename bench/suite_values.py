"""A suite's values checked as a class, not case by case, before anything runs (`bench validate`, no torch).

* Types that stay what they say: an ``integer`` field takes an integer, never ``2.0`` (JSON Schema counts an
  integral float as an integer; the run key, the run id and the command line would then hold ``2.0``), and a
  name pattern must match the whole string (``re.search("...$")`` accepts a trailing newline).
* Names that fit a file name: every name and run id at most ``MAX_NAME_BYTES`` (a file name holds 255 bytes; the
  harness adds up to 28 to a run id: ``.<id>.progress.json.<8 hex>.tmp``), and no two ids one folder on a
  case-insensitive file system.
* Recipes whose fields agree (every recipe that trains): the effective lr (the linear scaling rule) finite and
  positive, the floor and the warm-up's start not above the peak, a warm-up shorter than the run, ranges whose
  ends are in order, a weight decay that does not zero the weights in one step. (A backbone frozen for longer
  than a shortened preset's run is allowed: it is held at lr 0 throughout, as declared.)
* Allocations bounded before they are tried: one batch of fp32 input images at most ``MAX_BATCH_BYTES``.
* Backbone ``kwargs`` that would collide with what the harness passes to ``timm.create_model`` refused by name.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError

if TYPE_CHECKING:
    from bench.config import Suite

MAX_NAME_BYTES = 200
#: what the schema's name patterns allow (a name is a folder and an argument of the pipeline's commands)
NAME_RULE = "letters, digits and _ . -, starting with a letter, digit or _"
#: one batch of fp32 input images (batch x 3 x size x size x 4 bytes): 256 GiB is beyond any node, before the
#: activations (about a hundred times the input when training a ViT)
MAX_BATCH_BYTES = 2**38
#: RandAugment's ops per image (n), AugMix's chain width (w) and depth (d): beyond this no image is ever ready
MAX_AUGMENT_OPS = 16
#: images in sklearn's digits, which the embedded set places on its canvases (bench.data.embedded)
N_DIGITS = 1797
#: an integer backbone kwarg (depth, width, heads, patch size) beyond this builds no model a machine holds
MAX_KWARG_INT = 65_536
#: what the harness passes to timm.create_model itself, and the suite field that sets it
HARNESS_KWARGS = {
    "num_classes": "the data's class count",
    "in_chans": "the data's channels",
    "img_size": "backbones[{i}].image_size",
    "pretrained": "backbones[{i}].init (scratch, hub or a checkpoint file)",
    "pretrained_cfg": "backbones[{i}].init (scratch, hub or a checkpoint file)",
    "pretrained_cfg_overlay": "backbones[{i}].init (scratch, hub or a checkpoint file)",
    "checkpoint_path": "backbones[{i}].init (scratch, hub or a checkpoint file)",
    "cache_dir": "backbones[{i}].init (scratch, hub or a checkpoint file)",
    "drop_path_rate": "the recipe's drop_path",
}


# ---------------------------------------------------------------- the schema's types and patterns, strictly


def _is_integer(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _whole_pattern(validator: Any, pattern: str, instance: Any, schema: Any):
    """JSON Schema's ``pattern`` (``re.search``), except that a pattern ending in ``$`` must reach the string's end:
    Python's ``$`` also matches before a trailing newline."""
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    m = re.search(pattern, instance)
    if m is None or (pattern.endswith("$") and m.end() != len(instance)):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def strict_validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator of ``schema`` whose integers are ints and whose patterns match whole strings."""
    from jsonschema import Draft202012Validator, validators

    cls = validators.extend(
        Draft202012Validator,
        validators={"pattern": _whole_pattern},
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
    )
    return cls(schema)


# ---------------------------------------------------------------- names that fit a file name


def _refuse_long(field_name: str, what: str, name: str, where: str) -> None:
    n = len(name.encode())
    if n > MAX_NAME_BYTES:
        raise UsageError(
            f"{where}: field {field_name}: {what} is {n} bytes long; it names files and "
            f"folders, which hold {MAX_NAME_BYTES} bytes here (a file name holds 255): use a shorter label"
        )


def check_names(suite: Suite, raw: dict[str, Any], where: str) -> None:
    _refuse_long("name", "the suite name", suite.name, where)
    folders: dict[str, str] = {}
    for i, b in enumerate(suite.backbones):
        _refuse_long(f"backbones[{i}]", "the label", b.label, where)
        other = folders.setdefault(b.label.casefold(), b.label)
        if other != b.label:
            raise UsageError(
                f"{where}: field backbones[{i}]: label {b.label!r} and {other!r} differ only in case: one folder "
                f"on a case-insensitive file system (macOS, Windows); use labels that differ in letters"
            )
    fields = {}
    for i, m in enumerate(raw["methods"]):
        m = {"name": m} if isinstance(m, str) else m
        fields[m.get("label", m["name"])] = f"methods[{i}]"
    ids: dict[str, str] = {}
    for r in suite.runs:
        _refuse_long(fields[r.method], "the run id", r.run_id, where)
        other = ids.setdefault(r.run_id.casefold(), r.run_id)
        if other != r.run_id:
            raise UsageError(
                f"{where}: field {fields[r.method]}: run ids {other!r} and {r.run_id!r} differ only in case: "
                f"one folder on a case-insensitive file system (macOS, Windows); use labels that differ in letters"
            )


# ---------------------------------------------------------------- recipes whose fields agree


def _named(recipe_field: str, sources: dict[str, str]):
    """How a message names a recipe key: the suite field that set it, else the recipe's field and where the value
    came from (a named recipe's default, the harness's default)."""

    def name(key: str) -> str:
        src = sources.get(key, "default")
        if src == "default":
            return f"{recipe_field}.{key} (default)"
        if src.startswith("recipe "):
            return f"{recipe_field}.{key} (from {src.split(':', 1)[0]})"
        return f"{src}.{key}"

    return name


def effective_lr(recipe: dict[str, Any]) -> float:
    """The peak lr the schedule starts from: ``lr`` scaled by ``batch_size / lr_base_batch`` when the recipe sets a
    base batch (DeiT's linear scaling rule); the training loop's batch plan uses it too."""
    base = recipe.get("lr_base_batch")
    lr = float(recipe["lr"])
    return lr * int(recipe["batch_size"]) / float(base) if base else lr


def check_recipe(recipe: dict[str, Any], sources: dict[str, str], recipe_field: str, where: str) -> None:
    """One line naming the fields of the first relation a training recipe breaks."""
    if int(recipe["epochs"]) == 0:  # trains nothing: no schedule is built from it
        return
    f = _named(recipe_field, sources)

    def refuse(key: str, why: str) -> None:
        raise UsageError(f"{where}: field {f(key).split(' ')[0]}: {why}")

    epochs = int(recipe["epochs"])
    lr, peak = float(recipe["lr"]), effective_lr(recipe)
    scaled = f"{f('lr')}={lr:g}" + (
        f" x {f('batch_size')}={recipe['batch_size']} / {f('lr_base_batch')}={recipe['lr_base_batch']:g}"
        if recipe.get("lr_base_batch")
        else ""
    )
    if not (math.isfinite(peak) and peak > 0):
        refuse("lr", f"the effective lr {scaled} is {peak:g}, not a finite positive number")
    top = peak * max(1.0, float(recipe["backbone_lr_scale"]))
    if not math.isfinite(top):
        refuse(
            "backbone_lr_scale", f"{f('backbone_lr_scale')}={recipe['backbone_lr_scale']:g} x the lr {peak:g} overflows"
        )
    if float(recipe["min_lr"]) > peak:
        refuse(
            "min_lr",
            f"{f('min_lr')}={recipe['min_lr']:g} is above the peak lr ({scaled} = {peak:g}): the floor above the peak",
        )
    warmup = float(recipe["warmup_epochs"])
    if warmup > 0:
        if warmup >= epochs:
            refuse(
                "warmup_epochs",
                f"{f('warmup_epochs')}={warmup:g} is not shorter than {f('epochs')}={epochs}: the run would end in its warm-up",
            )
        if float(recipe["warmup_lr"]) > peak:
            refuse(
                "warmup_lr",
                f"{f('warmup_lr')}={recipe['warmup_lr']:g} is above the peak lr ({scaled} = {peak:g}): the warm-up would go down",
            )
        if recipe["lr_step"] == "epoch" and warmup != int(warmup):
            refuse("warmup_epochs", f"{f('warmup_epochs')}={warmup:g} with lr_step: epoch needs whole epochs")
    decay = top * float(recipe["weight_decay"])
    if decay >= 1:
        refuse(
            "weight_decay",
            f"{f('weight_decay')}={recipe['weight_decay']:g} x the largest group lr {top:g} = {decay:g} >= 1: "
            f"each step would scale the weights by 1 - lr x weight_decay <= 0",
        )
    for key in ("scale", "ratio", "cutmix_minmax"):
        pair = recipe.get(key)
        if pair is not None and float(pair[0]) > float(pair[1]):
            refuse(key, f"{f(key)}={list(pair)} is not (min, max): {pair[0]:g} > {pair[1]:g}")
    policy = str(recipe.get("auto_augment") or "")
    for section in policy.split("-")[1:] if policy.startswith(("rand", "augmix")) else ():
        m = re.fullmatch(r"([nwd])(\d+)", section)  # RandAugment's ops per image, AugMix's chain width and depth
        if m and int(m.group(2)) > MAX_AUGMENT_OPS:
            refuse(
                "auto_augment",
                f"{f('auto_augment')}={policy!r}: {m.group(1)}={int(m.group(2)):,} augmentation ops per image; at most "
                f"{MAX_AUGMENT_OPS} (RandAugment uses 2, AugMix 3 chains)",
            )
    mixing = recipe["mixup"] > 0 or recipe["cutmix"] > 0 or recipe["cutmix_minmax"] is not None
    if mixing and int(recipe["batch_size"]) % 2:
        refuse(
            "batch_size",
            f"{f('batch_size')}={recipe['batch_size']} is odd and mixup/cutmix pair the images of a batch "
            f"(timm's Mixup needs an even batch)",
        )


def check_cutmix_boxes(recipe: dict[str, Any], recipe_field: str, sizes: dict[str, int | None], where: str) -> None:
    """timm's min-max CutMix draws a box side from ``randint(int(size * min), int(size * max))``: at a size where the
    two are equal the draw fails at the first mixed batch, after everything before it ran."""
    pair = recipe.get("cutmix_minmax")
    if pair is None or not int(recipe["epochs"]):
        return
    for label, size in sizes.items():
        if size and int(size * float(pair[0])) >= int(size * float(pair[1])):
            raise UsageError(
                f"{where}: field {recipe_field}.cutmix_minmax: {list(pair)} gives no box size to draw at "
                f"{size} px (backbone {label}: int({size} x {pair[0]:g}) >= int({size} x {pair[1]:g})); "
                f"widen the range"
            )


def _recipe_field(raw: dict[str, Any], label: str) -> str:
    for i, m in enumerate(raw["methods"]):
        if isinstance(m, dict) and m.get("label", m["name"]) == label and "finetune" in m:
            return f"methods[{i}].finetune"
    return "finetune"


def check_recipes(suite: Suite, where: str) -> None:
    sizes = _input_sizes(suite)
    check_recipe(suite.pretrain_recipe, suite.pretrain_sources, "pretrain.recipe", where)
    check_cutmix_boxes(suite.pretrain_recipe, "pretrain.recipe", sizes, where)
    seen: set[str] = set()
    for r in suite.runs:
        if r.finetune is None or r.method in seen:
            continue
        seen.add(r.method)
        check_recipe(r.finetune, r.finetune_sources, _recipe_field(suite.raw, r.method), where)
        own = {r.backbone: sizes[r.backbone]}
        check_cutmix_boxes(r.finetune, _recipe_field(suite.raw, r.method), own, where)


def _input_sizes(suite: Suite) -> dict[str, int | None]:
    """Each backbone's input size where the suite or the name states it (no timm: None otherwise)."""
    from bench.config import size_in_name

    return {b.label: b.image_size or size_in_name(b.name) for b in suite.backbones}


# ---------------------------------------------------------------- allocations, bounded before they are tried


def oversized_batch(batch: int, size: int, chans: int = 3) -> str | None:
    """Why a batch of ``batch`` fp32 images of ``chans`` x ``size`` x ``size`` cannot be allocated, or None."""
    n = int(batch) * int(chans) * int(size) ** 2 * 4
    if n <= MAX_BATCH_BYTES:
        return None
    return (
        f"a batch of {batch} images at {size}x{size} px is {n / 2**30:,.0f} GiB of fp32 input alone; "
        f"at most {MAX_BATCH_BYTES // 2**30} GiB (before activations)"
    )


def oversized_model(model: Any) -> str | None:
    """Why a (meta-device) model's fp32 weights cannot be held, or None; training adds gradients and two AdamW
    moments, four times the weights."""
    n = sum(p.numel() for p in model.parameters())
    if 16 * n <= MAX_BATCH_BYTES:
        return None
    return (
        f"{n:,} parameters are {16 * n / 2**30:,.0f} GiB to train in fp32 (weights, gradients, two AdamW "
        f"moments); at most {MAX_BATCH_BYTES // 2**30} GiB"
    )


def _refuse_batch(field_name: str, batch: int, size: int, on: str, where: str) -> None:
    why = oversized_batch(batch, size)
    if why:
        raise UsageError(f"{where}: field {field_name}: {why} (backbone {on})")


def check_allocations(suite: Suite, where: str) -> None:
    """Each batch the suite asks for, at each backbone's input size (the size its name or the suite states;
    a backbone whose size only timm knows is checked by the schema's batch bound alone)."""
    sizes = _input_sizes(suite)
    batches = [("evaluate.batch_size", suite.evaluate["batch_size"])]
    tput = suite.evaluate["throughput"]["batch_sizes"]
    if isinstance(tput, list):
        batches += [(f"evaluate.throughput.batch_sizes[{i}]", b) for i, b in enumerate(tput)]
    if int(suite.pretrain_recipe["epochs"]):
        batches.append(("pretrain.recipe.batch_size", suite.pretrain_recipe["batch_size"]))
    for r in suite.runs:
        if r.finetune is not None and int(r.finetune["epochs"]):
            src = r.finetune_sources.get("batch_size", "default")
            name = src if not src.startswith(("default", "recipe ")) else _recipe_field(suite.raw, r.method)
            batches.append((f"{name}.batch_size", r.finetune["batch_size"]))
    for label, size in sizes.items():
        if size:
            for field_name, batch in batches:
                _refuse_batch(field_name, batch, int(size), label, where)
    _refuse_embedded_size(suite.data, where)


def _refuse_embedded_size(data: dict[str, Any], where: str) -> None:
    """The embedded set is drawn into memory whole: its uint8 canvases bounded like a batch."""
    if data.get("source", "embedded") != "embedded":
        return
    from bench.data.embedded import CanvasDigitsConfig

    try:
        cfg = CanvasDigitsConfig.from_options(data.get("options"))
    except UsageError:  # named by the data check (bench.suite_checks.check_paths)
        return
    val = round(N_DIGITS * cfg.val_fraction)
    n = (N_DIGITS - val) * cfg.train_placements + val * cfg.val_placements
    size = n * cfg.canvas**2
    if size > MAX_BATCH_BYTES:
        raise UsageError(
            f"{where}: field data.options: {n:,} canvases of {cfg.canvas}x{cfg.canvas} px are {size / 2**30:,.0f} GiB "
            f"in memory; at most {MAX_BATCH_BYTES // 2**30} GiB (fewer placements or a smaller canvas)"
        )


# ---------------------------------------------------------------- backbone kwargs


def check_kwargs(suite: Suite, where: str) -> None:
    for i, b in enumerate(suite.backbones):
        for key, value in b.kwargs.items():
            if key in HARNESS_KWARGS:
                raise UsageError(
                    f"{where}: field backbones[{i}].kwargs.{key}: the harness sets {key} itself (from "
                    f"{HARNESS_KWARGS[key].format(i=i)}); remove it from kwargs"
                )
            if _is_integer(None, value) and abs(value) > MAX_KWARG_INT:
                raise UsageError(
                    f"{where}: field backbones[{i}].kwargs.{key}: {value} is beyond any model a machine holds "
                    f"(at most {MAX_KWARG_INT:,})"
                )


def check_values(suite: Suite, raw: dict[str, Any], where: str) -> None:
    """Every class above, on an expanded suite (no torch, no file read)."""
    check_names(suite, raw, where)
    check_kwargs(suite, where)
    check_recipes(suite, where)
    check_allocations(suite, where)
