"""What a suite's compute steps read and write, and what they build from it.

Where each step's output lives (pretrain/<backbone>/model.pth, runs/<id>/model.pth, runs/<id>/run.json) and the
key it is checked against, the suite's data, and a run's model (backbone + method). The steps themselves are in
bench.runner, which re-exports these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bench.config import Backbone, Run, Suite, evaluate_spec, pretrain_spec, run_spec
from bench.methods import Method, create_method
from bench.models import build_backbone
from bench.outputs import StepOutput, step_key
from bench.results.collect import RUN_FILE as RECORD_FILE

MODEL_FILE = "model.pth"
INDEX_FILE = "index.parquet"


def pretrain_dir(suite: Suite, backbone: str, root: str | Path = "results") -> Path:
    return suite.results_dir(root) / "pretrain" / backbone


def run_dir(suite: Suite, run: Run, root: str | Path = "results") -> Path:
    return suite.results_dir(root) / "runs" / run.run_id


def _data_inputs(suite: Suite, root: str | Path) -> list[Path]:
    index = index_path(suite, root)
    return [index] if index else []


def pretrain_basis(suite: Suite, backbone: str, root: str | Path = "results") -> tuple[dict[str, Any], list[Path]]:
    """What the pretrain step's result depends on: its spec and the files it reads (the folder index)."""
    return pretrain_spec(suite, backbone), _data_inputs(suite, root)


def finetune_basis(suite: Suite, run: Run, root: str | Path = "results") -> tuple[dict[str, Any], list[Path]]:
    """What a run's fine-tune depends on: the run's spec, its pretrained backbone and the folder index."""
    return run_spec(suite, run), [pretrain_dir(suite, run.backbone, root) / MODEL_FILE, *_data_inputs(suite, root)]


def pretrain_output(suite: Suite, backbone: str, root: str | Path = "results") -> StepOutput:
    """The pretrain step's model.pth, keyed by its spec and the folder index it read."""
    return StepOutput(
        pretrain_dir(suite, backbone, root) / MODEL_FILE, step_key(*pretrain_basis(suite, backbone, root))
    )


def evaluated_inputs(suite: Suite, run: Run, root: str | Path = "results") -> list[Path]:
    """The files an evaluation reads: the fine-tuned model, or (finetune: none) the backbone and given weights."""
    if run.finetune is not None:
        return [run_dir(suite, run, root) / MODEL_FILE]
    return [pretrain_dir(suite, run.backbone, root) / MODEL_FILE, *([Path(run.weights)] if run.weights else [])]


def step_output(suite: Suite, run: Run, step: str, root: str | Path = "results") -> StepOutput:
    """A run's finetune (model.pth) or evaluate (run.json) output, keyed by the run's spec and its inputs."""
    spec = run_spec(suite, run)
    if step == "finetune":
        return StepOutput(run_dir(suite, run, root) / MODEL_FILE, step_key(*finetune_basis(suite, run, root)))
    inputs = evaluated_inputs(suite, run, root) + _data_inputs(suite, root)
    return StepOutput(
        run_dir(suite, run, root) / RECORD_FILE,
        step_key({**spec, "evaluate": evaluate_spec(suite)}, inputs),
        run.run_id,
    )


def index_path(suite: Suite, root: str | Path = "results") -> Path | None:
    """Where the pipeline's index step writes the suite's folder index (local image folders only)."""
    return suite.results_dir(root) / "data" / INDEX_FILE if suite.data.get("source") == "imagefolder" else None


def _data(suite: Suite, root: str | Path):
    from bench.data import load_data

    return load_data(suite.data, index_path(suite, root))


def _model(
    suite: Suite, backbone: Backbone, bundle, pretrained: bool | str | None, recipe: dict[str, Any] | None = None
) -> nn.Module:
    """The backbone; a training ``recipe`` sets the student's drop-path rate (teachers and evaluation: 0)."""
    kwargs = dict(backbone.kwargs)
    if recipe is not None and recipe["drop_path"]:
        kwargs["drop_path_rate"] = float(recipe["drop_path"])
    return build_backbone(
        backbone.name,
        num_classes=bundle.num_classes,
        in_chans=bundle.in_chans,
        img_size=backbone.image_size,
        pretrained=pretrained,
        **kwargs,
    )


def _torch_data(suite: Suite, model: nn.Module, bundle, recipe: dict[str, Any] | None = None):
    """Train and val datasets: the training transform from the ``recipe``, evaluation as the backbone's
    pretrained_cfg says (interpolation, crop_pct, mean/std) unless the suite's ``evaluate.crop_pct`` is set."""
    from timm.data import resolve_data_config

    from bench.data.transforms import make_torch_datasets

    cfg = resolve_data_config(model=model)
    in_chans = int(model.patch_embed.proj.in_channels)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if len(mean) != in_chans:  # e.g. an RGB-pretrained backbone on grayscale data
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    crop_pct = suite.evaluate.get("crop_pct") or cfg.get("crop_pct")
    return make_torch_datasets(
        bundle,
        image_size=int(model.patch_embed.img_size[0]),
        in_chans=in_chans,
        mean=mean,
        std=std,
        recipe=recipe,
        crop_pct=crop_pct,
        eval_interpolation=str(cfg.get("interpolation") or "bicubic"),
    )


def build_run_model(
    suite: Suite, run: Run, bundle, weights: str | Path | None, recipe: dict[str, Any] | None = None
) -> tuple[nn.Module, Method]:
    """Backbone + method, patched; ``weights`` is a pretrain checkpoint (for fine-tuning) or None; a
    training ``recipe`` sets the student's drop-path rate."""
    model = _model(suite, suite.backbone(run.backbone), bundle, str(weights) if weights else None, recipe)
    method = create_method(run.method_name, run.keep_ratio, run.seed, **run.method_params)
    method.apply(model)
    return model, method
