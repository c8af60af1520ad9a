"""The checks a suite passes before anything runs, beyond its schema: names, parameters, files, run ids.

``check_static`` needs no torch (`bench validate`); ``check_build`` builds every run's method on its backbone
(`bench validate --build`, and the pipeline before it starts). Every error is one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError

if TYPE_CHECKING:
    from bench.config import Run, Suite


def method_info_at(where: str, i: int, m: dict[str, Any]):
    """The method's declarations, its name and parameters checked, without importing torch."""
    from bench.methods.catalog import method_info

    try:
        info = method_info(m["name"])
        info.check_params(dict(m.get("params", {})))
    except UsageError as e:
        raise UsageError(f"{where}: field methods[{i}]: {e}") from None
    return info


def refuse_id_collisions(suite: Suite, where: str) -> None:
    """Run ids name folders and keep ratios appear in them to 2 decimals: two grid points with one id
    would share a folder and one would silently vanish from the results."""
    seen: dict[str, Run] = {}
    for r in suite.runs:
        other = seen.setdefault(r.run_id, r)
        if other is not r:
            raise UsageError(
                f"{where}: field keep_ratios: {other.method} at keep ratios {other.keep_ratio!r} and "
                f"{r.keep_ratio!r} share the run id {r.run_id!r} (ids keep 2 decimals); use keep "
                f"ratios that differ at 2 decimals"
            )


def _is_file(path: str) -> bool:
    """``Path.is_file`` that is False for a path no file can have (a name beyond the file system's length, a NUL)
    instead of raising."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def check_paths(suite: Suite, where: str) -> None:
    """Local files the suite names must exist now (cheap, so never cached)."""
    from bench.data import validate_data_config

    try:
        validate_data_config(suite.data)
    except UsageError as e:
        raise UsageError(f"{where}: field data: {e}") from None
    except (OSError, ValueError) as e:  # a path no folder can have: too long for the file system, a NUL byte
        raise UsageError(
            f"{where}: field data.path: cannot be looked up ({getattr(e, 'strerror', None) or e})"
        ) from None
    for i, b in enumerate(suite.backbones):
        if b.init not in ("scratch", "hub") and not _is_file(b.init):
            raise UsageError(
                f"{where}: field backbones[{i}].init: {b.init!r} is not 'scratch', 'hub' or an existing checkpoint file"
            )
    for i, m in enumerate(suite.raw["methods"]):
        if isinstance(m, dict) and m.get("weights") and not _is_file(m["weights"]):
            raise UsageError(
                f"{where}: field methods[{i}].weights: {m['weights']!r} is not an existing checkpoint file"
            )


def check_static(suite: Suite, raw: dict[str, Any], where: str) -> None:
    """What needs no torch: local files, and learned methods that would be scored untrained."""
    from bench.methods.catalog import method_info

    check_paths(suite, where)
    for i, m in enumerate(raw["methods"]):
        m = {"name": m} if isinstance(m, str) else m
        label = m.get("label", m["name"])
        run = next((r for r in suite.runs if r.method == label), None)
        untrained = run is not None and (run.finetune is None or int(run.finetune["epochs"]) == 0)
        if untrained and method_info(m["name"]).learns_parameters and not m.get("weights"):
            how = "finetune: none" if run.finetune is None else "finetune epochs 0"
            raise UsageError(
                f"{where}: field methods[{i}]: method {m['name']!r} learns parameters and would be "
                f"scored untrained ({how}); give its trained weights (weights: path/to/model.pth) "
                f"or fine-tune it"
            )


def check_build(suite: Suite, where: str, *, check_hub: bool = False) -> None:
    """Backbone names, and every run's method and recipe built on its backbone (torch, timm); with ``check_hub``
    also that ``init: hub`` weights can be had now (in the local cache, or the hub answers)."""
    from bench.models.backbones import check_backbone_name
    from bench.preflight import preflight

    for i, b in enumerate(suite.backbones):
        try:
            check_backbone_name(b.name)
        except UsageError as e:
            raise UsageError(f"{where}: field backbones[{i}]: {e}") from None
    # every run's method on its backbone, and every recipe's optimiser, built cheaply
    preflight(suite, where, check_hub=check_hub)
