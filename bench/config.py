"""Suite files: YAML validated against a JSON schema, then expanded into one run per grid point.

A suite says *what* to run (data, backbones, methods, keep ratios, seeds, recipes). How it runs
(cores, cluster, GPUs) lives in Snakemake profiles, never here.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.errors import UsageError, clip, one_line
from bench.recipe_config import DEFAULT_RECIPE, resolve_recipe  # noqa: F401  (re-exported)
from bench.run_identity import evaluate_spec, pretrain_spec, run_identity, run_spec  # noqa: F401  (re-exported)
from bench.suite_checks import check_build, check_paths, check_static, method_info_at, refuse_id_collisions
from bench.suite_values import NAME_RULE, check_values

#: a suite's or method's ``finetune: none``: evaluate the pretrained backbone with the method applied
NO_FINETUNE = "none"
DEFAULT_EVALUATE: dict[str, Any] = {
    "batch_size": 256,
    "flops_images": 64,
    "max_val_images": None,
    "crop_pct": None,  # evaluation centre crop; None: the backbone's pretrained_cfg (DeiT: 0.875)
    # timed by the timing step (bench.timing), every run against dense in one job; see bench.measure.paired
    "throughput": {
        "batch_sizes": "auto",
        "repeats": 7,
        "warmup": 3,
        "precision": "fp32",
        "min_time_s": 0.25,
        "noise_threshold": 0.10,
        "max_attempts": 3,
    },
}
SUITES_DIR = Path("suites")


@dataclass(frozen=True)
class Run:
    """One grid point: a method on a backbone at a keep ratio and seed, fine-tuned from a pretrained backbone."""

    suite: str
    method: str  # label shown in results (the registry name unless the suite gives a label)
    method_name: str  # registry name
    method_params: dict[str, Any]
    backbone: str  # the backbone's label (its timm name, ``@<image size>`` when resized, or the suite's label)
    keep_ratio: float
    seed: int
    finetune: dict[str, Any] | None  # the resolved recipe; None: no fine-tuning (``finetune: none``)
    #: where each recipe value came from (default, a named recipe's official file:line, the suite)
    finetune_sources: dict[str, str] = field(default_factory=dict, compare=False)
    #: the method's trained weights for ``finetune: none`` (a checkpoint file), or None
    weights: str | None = None

    @property
    def run_id(self) -> str:
        return f"{self.method}__{self.backbone}__k{self.keep_ratio:.2f}__s{self.seed}"


@dataclass(frozen=True)
class Backbone:
    name: str  # the timm model
    image_size: int | None  # the suite's input resolution; None: the model's default
    init: str  # scratch | hub | checkpoint path
    kwargs: dict[str, Any]
    #: what runs, results, the pretrain folder and the report name it by: unique in a suite (see backbone_label)
    label: str = ""

    def spec(self) -> dict[str, Any]:
        """What the pretrained model depends on (not its label: renaming a folder trains nothing again)."""
        return {"name": self.name, "image_size": self.image_size, "init": self.init, "kwargs": self.kwargs}


def size_in_name(name: str) -> int | None:
    """The input resolution a timm ViT name states (``deit_small_patch16_224`` -> 224; a ``.tag`` is ignored): a
    number after the patch size, as timm names its ViTs (``levit_128``'s number is no resolution)."""
    m = re.search(r"_patch\d+_(?:.*_)?(\d+)$", name.split(".", 1)[0])
    return int(m.group(1)) if m else None


def backbone_label(name: str, image_size: int | None, label: str | None = None) -> str:
    """The suite's label, else the timm name, with ``@<image size>`` when the suite resizes the model to a size
    its name does not state (``deit_small_patch16_224@160``): a run at another resolution never passes for
    the model's own."""
    if label:
        return label
    if image_size is None or size_in_name(name) == image_size:
        return name
    return f"{name}@{image_size}"


@dataclass
class Suite:
    name: str
    path: Path
    raw: dict[str, Any]
    data: dict[str, Any]
    backbones: list[Backbone]
    pretrain_recipe: dict[str, Any]
    pretrain_seed: int
    pretrain_sources: dict[str, str]
    evaluate: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def run(self, run_id: str) -> Run:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        from bench.registry import did_you_mean

        raise UsageError(
            f"suite {self.name!r} has no run {run_id!r}{did_you_mean(run_id, [r.run_id for r in self.runs])}"
        )

    def backbone(self, label: str) -> Backbone:
        """The backbone entry named ``label`` (runs, folders and the pipeline name backbones by label)."""
        for b in self.backbones:
            if b.label == label:
                return b
        from bench.registry import did_you_mean

        labels = [b.label for b in self.backbones]
        raise UsageError(
            f"suite {self.name!r} has no backbone {label!r}{did_you_mean(label, labels)} (backbones: {', '.join(labels)})"
        )

    def results_dir(self, root: str | Path = "results") -> Path:
        from bench.io import results_root  # below the --results folder no symlink is followed (bench.io)

        return results_root(root) / self.name


def budget_params(info: Any, m: dict[str, Any]) -> list[str]:
    """The parameters the suite gives ``m`` that fix its budget (``Param.replaces_keep_ratio``, ToMe's ``r``): with
    any, the keep ratio is unused and the method runs once, at 1.0, not once per keep ratio."""
    given = m.get("params") or {}
    return [k for k, p in info.params.items() if p.replaces_keep_ratio and given.get(k) is not None]


def suite_schema() -> dict[str, Any]:
    from bench.data.sources import data_schema

    schema = json.loads(resources.files("bench").joinpath("schemas/suite.schema.json").read_text())
    schema["properties"]["data"] = data_schema()  # generated from the data sources' declared keys
    return schema


def resolve_suite_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    for cand in (p, SUITES_DIR / f"{name_or_path}.yaml", SUITES_DIR / f"{name_or_path}.yml"):
        try:
            if cand.is_file():
                return cand
        except (OSError, ValueError):  # a name no file can have (too long, a NUL): not found, below
            pass
    known = list_suites()
    from bench.registry import did_you_mean

    raise UsageError(
        f"suite {str(name_or_path)!r} not found{did_you_mean(str(name_or_path), known)} (suites: {', '.join(known) or 'none'})"
    )


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.y*ml")) if SUITES_DIR.is_dir() else []


def _field_path(error: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "(top level)"


#: settings of how a step runs, which a suite may not hold (a change would re-run finished runs): where they go
RUNTIME_IN_SUITE = {
    "num_workers": "loader_workers",
    "workers": "loader_workers",
    "loader_workers": "loader_workers",
    "device_batch": "device_batch",
    "prefetch_factor": "prefetch_factor",
    "channels_last": "channels_last",
    "compile": "compile",
    "pin_memory": "loader_workers",
}


def _refuse_runtime_keys(raw: dict[str, Any], where: str) -> None:
    specs = [("finetune", raw.get("finetune")), ("pretrain.recipe", (raw.get("pretrain") or {}).get("recipe"))]
    specs += [
        (f"methods[{i}].finetune", m.get("finetune"))
        for i, m in enumerate(raw.get("methods") or [])
        if isinstance(m, dict)
    ]
    for field_name, spec in specs:
        for key in spec if isinstance(spec, dict) else ():
            if key in RUNTIME_IN_SUITE:
                raise UsageError(
                    f"{where}: field {field_name}.{key}: a runtime setting, not part of a run; set "
                    f"{RUNTIME_IN_SUITE[key]} in the profile's config (e.g. slurm/launcher.yaml) or "
                    f"snakemake --config {RUNTIME_IN_SUITE[key]}=..."
                )


def validate_raw(raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a suite must be a YAML mapping, got {type(raw).__name__}")
    _refuse_runtime_keys(raw, where)
    from bench.suite_values import strict_validator

    validator = strict_validator(suite_schema())  # integers are ints, name patterns match whole strings
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        e = errors[0]
        while e.validator in ("oneOf", "anyOf") and isinstance(e.instance, (dict, list)) and e.context:
            # the branch that got furthest into the mapping names the field (e.g. finetune.lr, not finetune)
            deeper = max(e.context, key=lambda c: len(list(c.absolute_path)))
            if len(list(deeper.absolute_path)) <= len(list(e.absolute_path)):
                break
            e = deeper
        if e.validator in ("oneOf", "anyOf") and e.context:
            # a value of the right type in the wrong shape: the error of the branch of its type, not "any of"
            typed = [c for c in e.context if c.validator != "type"]
            if typed:
                e = min(typed, key=lambda c: (c.validator != "additionalProperties", len(c.message)))
        if e.validator == "additionalProperties":
            msg = e.message.replace("Additional properties are not allowed", "unknown field(s)")
        elif e.validator == "pattern":
            msg = f"{e.instance!r} is not a valid name ({NAME_RULE}): it names a folder and a command-line argument"
        elif e.validator == "type" and isinstance(e.instance, float) and e.instance.is_integer():
            msg = f"{e.instance!r} is not an integer (write {int(e.instance)})"
        else:
            msg = e.message
        # a value quoted whole (a 100 kB scalar, a list of thousands) is described by its length, on one line
        raise UsageError(f"{where}: field {clip(one_line(_field_path(e)), 80)}: {clip(one_line(msg), 240)}")


def load_suite(
    name_or_path: str | Path,
    *,
    check_names: bool = True,
    reuse_checks: bool = False,
    build: bool = True,
    check_hub: bool = False,
) -> Suite:
    """Read, validate and expand a suite. Every error is a one-line UsageError naming the field.

    ``check_names``: check the names, parameters and local files the suite refers to. Without ``build`` only what
    needs no torch (schema, data keys, method names and parameters from :mod:`bench.methods.catalog`, files);
    with it also backbone names and every run's method built on its backbone (torch and timm imported).

    ``reuse_checks``: skip the name checks (which import torch and timm, ~4 s) when this exact suite
    already passed them with this exact code and these library versions (Snakemake parses the
    Snakefile on every call, `-n` included).

    ``check_hub`` (with ``build``; `bench validate --build`): ``init: hub`` weights must be in the local cache or the
    hub must answer now. Not for the pipeline's own steps: only pretraining downloads them (and
    :func:`bench.models.build_backbone` checks the same first), so an offline fine-tune is never refused.
    """
    from bench.suite_file import read_yaml

    path = resolve_suite_path(name_or_path)
    raw = read_yaml(path)
    validate_raw(raw, str(path))
    if not (check_names and build and reuse_checks):
        return expand(raw, path, check_names=check_names, build=build, check_hub=check_hub)
    marker = _checks_marker(raw)
    if marker.exists():
        suite = expand(raw, path, check_names=False)
        check_paths(suite, str(path))
        return suite
    suite = expand(raw, path, check_names=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return suite


def _checks_marker(raw: dict[str, Any]) -> Path:
    """Cache file naming (suite content, bench source, timm/torch versions) that passed the name checks."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    from bench.data.bundle import cache_root
    from bench.models.checkpoint_checks import files_stamp

    h = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode())
    h.update(files_stamp(raw).encode())  # a checkpoint file replaced since: its match to the model is checked again
    for src in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(src.read_bytes())
    for dist in ("timm", "torch"):
        try:
            h.update(version(dist).encode())
        except PackageNotFoundError:
            h.update(b"-")
    return cache_root() / "validated-suites" / h.hexdigest()[:24]


def expand(
    raw: dict[str, Any], path: Path, *, check_names: bool = True, build: bool = True, check_hub: bool = False
) -> Suite:
    where = str(path)
    evaluate = copy.deepcopy(DEFAULT_EVALUATE)
    for k, v in (raw.get("evaluate") or {}).items():
        if k == "throughput":
            evaluate["throughput"].update(v)
        else:
            evaluate[k] = v
    pre = raw.get("pretrain") or {}
    default_init = pre.get("init", "scratch")
    backbones: list[Backbone] = []
    for i, b in enumerate(raw["backbones"]):
        b = {"name": b} if isinstance(b, str) else b
        label = backbone_label(b["name"], b.get("image_size"), b.get("label"))
        twin = next((j for j, other in enumerate(backbones) if other.label == label), None)
        if twin is not None:
            raise UsageError(
                f"{where}: field backbones[{i}]: label {label!r} is also backbones[{twin}]'s (a backbone listed "
                f"twice needs another image_size or a distinct label)"
            )
        init = b.get("init", default_init)
        backbones.append(Backbone(b["name"], b.get("image_size"), init, b.get("kwargs", {}), label))
    try:
        pretrain_recipe, pretrain_sources = resolve_recipe(("pretrain.recipe", pre.get("recipe")))
    except UsageError as e:
        raise UsageError(f"{where}: field {e}") from None
    suite = Suite(
        name=raw["name"],
        path=path,
        raw=raw,
        data=raw["data"],
        backbones=backbones,
        pretrain_recipe=pretrain_recipe,
        pretrain_seed=int(pre.get("seed", 0)),
        pretrain_sources=pretrain_sources,
        evaluate=evaluate,
    )
    finetune_base = raw.get("finetune")
    seen: set[str] = set()
    for i, m in enumerate(raw["methods"]):
        m = {"name": m} if isinstance(m, str) else m
        label = m.get("label", m["name"])
        if label in seen:
            raise UsageError(f"{where}: field methods[{i}]: {label!r} appears twice (give one a distinct label)")
        seen.add(label)
        info = method_info_at(where, i, m)
        fixed = budget_params(info, m)
        if fixed and sorted(set(m.get("keep_ratios", [1.0]))) != [1.0]:
            raise UsageError(
                f"{where}: field methods[{i}].keep_ratios: parameter {fixed[0]!r} fixes {m['name']}'s budget, so "
                f"keep ratios {m['keep_ratios']} would all run one model; drop keep_ratios (it runs once, at 1.0)"
            )
        full = info.has("reference") or info.has("weight_budget") or fixed  # no token budget: keep ratio 1.0 only
        ratios = [1.0] if full else sorted(set(m.get("keep_ratios", raw["keep_ratios"])), reverse=True)
        spec = m.get("finetune", finetune_base)
        if spec == NO_FINETUNE:
            recipe, sources = None, {}
        else:
            base = None if finetune_base == NO_FINETUNE else finetune_base
            try:
                recipe, sources = resolve_recipe(("finetune", base), (f"methods[{i}].finetune", m.get("finetune")))
            except UsageError as e:
                raise UsageError(f"{where}: field {e}") from None
        if m.get("weights") and recipe is not None:
            raise UsageError(
                f"{where}: field methods[{i}].weights: trained weights are evaluated as they are; "
                f"set finetune: none for this method"
            )
        for b in backbones:
            for k in ratios:
                for s in raw["seeds"]:
                    suite.runs.append(
                        Run(
                            suite.name,
                            label,
                            m["name"],
                            dict(m.get("params", {})),
                            b.label,
                            float(k),
                            int(s),
                            recipe,
                            sources,
                            m.get("weights"),
                        )
                    )
    refuse_id_collisions(suite, where)
    check_values(suite, raw, where)  # names, recipes, allocations, kwargs: no torch (bench.suite_values)
    if check_names:
        check_static(suite, raw, where)
        if build:
            check_build(suite, where, check_hub=check_hub)
    return suite
