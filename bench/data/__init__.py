"""Data for tokenbench: one ``data:`` mapping in, one DataBundle out, whatever the source.

Sources: ``embedded`` (canvas-digits, built locally, the default), ``hub`` (Hugging Face),
``imagefolder`` (DIR/train/<class>/*, DIR/validation/<class>/*) and ``disk``
(a ``DatasetDict.save_to_disk`` folder); each declares its keys in ``bench.data.sources``. The embedded
build (numpy) and the torch side (transforms, TorchImageDataset) are imported lazily, so validating a suite
pays for neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data import sources
from bench.data.bundle import DEFAULT_IMAGE_SIZE, DataBundle, cache_root

if TYPE_CHECKING:
    from bench.data.embedded import CanvasDigitsConfig, load_canvas_digits
    from bench.data.transforms import TorchImageDataset, build_transform, make_torch_datasets

SOURCES = sources.SOURCES

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "SOURCES",
    "CanvasDigitsConfig",
    "DataBundle",
    "TorchImageDataset",
    "build_transform",
    "cache_root",
    "describe_data",
    "load_canvas_digits",
    "load_data",
    "make_torch_datasets",
    "validate_data_config",
]

_LAZY = {
    "TorchImageDataset": "transforms",
    "build_transform": "transforms",
    "make_torch_datasets": "transforms",
    "CanvasDigitsConfig": "embedded",
    "load_canvas_digits": "embedded",
}


def load_data(cfg: Mapping[str, Any] | None, index_path: str | Path | None = None) -> DataBundle:
    """Load the train/val splits a suite's ``data:`` mapping names (None/{} = canvas-digits); a local image
    folder is read through its index at ``index_path`` (built there if missing), else listed now."""
    return sources.load(cfg, index_path)


def describe_data(cfg: Mapping[str, Any] | None) -> str:
    """Dataset label for result rows, e.g. ``canvas-digits(canvas=32,scale=1,...)``."""
    return sources.describe(cfg)


def validate_data_config(cfg: Mapping[str, Any] | None) -> None:
    """Raise UsageError for a bad ``data:`` mapping without loading data or using the network."""
    sources.validate(cfg)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"bench.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
