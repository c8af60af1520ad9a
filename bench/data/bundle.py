"""The loaded-data record every source returns, plus the cache-root lookup they share.

Kept apart from ``bench.data.__init__`` so the source modules can build bundles without
importing the package facade (which imports them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

DEFAULT_IMAGE_SIZE = 224  # model input size for sources whose images have no single native size


@dataclass(frozen=True)
class DataBundle:
    """Train/val HF datasets plus what the model and transforms need to know about them."""

    name: str  # short dataset name for result rows, e.g. "canvas-digits" or "imagenet-1k"
    train: datasets.Dataset
    val: datasets.Dataset
    num_classes: int
    image_key: str
    label_key: str
    image_size: int  # native size for fixed-size data (canvas for embedded), else 224
    in_chans: int  # 1 for embedded (grayscale), 3 otherwise unless the config says so
    # True when every image already is image_size x image_size and the random placement (or
    # the user) provides the augmentation: transforms then only convert, never crop or flip.
    fixed_size: bool = False
    #: a local folder: the image column holds paths relative to this directory, opened per item
    image_root: str | None = None
    #: a local folder: its index summary (root, fingerprint, images per split), stated in run records
    index: dict[str, Any] | None = None


def cache_root() -> Path:
    """tokenbench's cache directory: ``$TOKENBENCH_CACHE`` or ``~/.cache/tokenbench``."""
    env = os.environ.get("TOKENBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tokenbench"
