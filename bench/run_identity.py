"""What identifies a run and what its results depend on: the record's identity columns and the specs the
Snakefile's rerun triggers and the runner's result checks compare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.config import Run, Suite


def run_identity(suite: Suite, run: Run, dataset: str) -> dict[str, Any]:
    """The columns that identify a run in every record (results, failures, missing rows)."""
    from bench.methods.catalog import method_info

    info = method_info(run.method_name)
    backbone = suite.backbone(run.backbone)
    return {
        "suite": suite.name,
        "run_id": run.run_id,
        "method": run.method,
        "method_name": run.method_name,
        **info.record_columns(),
        "method_params": info.check_params(run.method_params),  # defaults filled: the record says every value
        "backbone": run.backbone,  # the label: name@image_size when resized
        "backbone_model": backbone.name,
        "image_size": input_size(backbone.name, backbone.image_size),
        "keep_ratio": run.keep_ratio,
        "seed": run.seed,
        "dataset": dataset,
    }


def run_spec(suite: Suite, run: Run) -> dict[str, Any]:
    """Everything that defines a fine-tuned run's result (the Snakefile's rerun trigger, and what a kept or
    concurrently written result must match to be taken as this run's)."""
    from bench.data.sources import identity

    return {
        "method": run.method_name,
        "params": run.method_params,
        "keep": run.keep_ratio,
        "seed": run.seed,
        "recipe": run.finetune,
        "weights": run.weights,
        "data": identity(suite.data),
    }


def evaluate_spec(suite: Suite) -> dict[str, Any]:
    """What an evaluation's result depends on: the evaluate block without its timing protocol (throughput is
    measured by the timing step, so changing the protocol re-times and re-evaluates nothing)."""
    return {k: v for k, v in suite.evaluate.items() if k != "throughput"}


def input_size(name: str, image_size: int | None) -> int:
    """The input resolution a backbone runs at: the suite's, else the one its name states, else its timm default
    (only then is timm imported)."""
    from bench.config import size_in_name

    if image_size is not None:
        return int(image_size)
    stated = size_in_name(name)
    if stated is not None:
        return stated
    from bench.models.backbones import default_image_size

    return default_image_size(name)


def pretrain_spec(suite: Suite, backbone: str) -> dict[str, Any]:
    """What the pretrained ``backbone`` (a label) depends on; its label is not part of it."""
    from bench.data.sources import identity

    return {
        "backbone": suite.backbone(backbone).spec(),
        "recipe": suite.pretrain_recipe,
        "seed": suite.pretrain_seed,
        "data": identity(suite.data),
    }
