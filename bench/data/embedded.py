"""canvas-digits: scikit-learn's 1,797 real 8x8 handwritten digits pasted at random positions
on a black canvas. Small enough to build in seconds and ship with no download, yet most patch
tokens are pure background, so which tokens a sparsification method keeps decides accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.data.bundle import cache_root
from bench.errors import UsageError
from bench.registry import did_you_mean

if TYPE_CHECKING:
    import datasets

NAME = "canvas-digits"
DIGIT_SIZE = 8  # sklearn digits are 8x8
NUM_CLASSES = 10
# Bump when the build algorithm changes so old caches are not mistaken for new data.
BUILD_VERSION = 2
_DONE_MARKER = "dataset_dict.json"  # written last by DatasetDict.save_to_disk


@dataclass(frozen=True)
class CanvasDigitsConfig:
    """Everything that determines the canvas-digits data; equal configs give identical data."""

    canvas: int = 32
    scale: int = 1
    val_fraction: float = 0.2
    train_placements: int = 4
    val_placements: int = 2
    seed: int = 0
    #: positions are multiples of ``align`` px. 4 matches the patch-4 ViTs' grid, so a digit covers
    #: whole tokens; align=1 also draws the 16 sub-patch phases, which a small ViT needs several
    #: times more training to learn (measured: about 87% vs 95% top-1 for the same budget).
    align: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "val_fraction":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not ok or not 0.0 < float(value) < 1.0:
                    raise UsageError(f"{NAME}: val_fraction must be a number in (0, 1), got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"{NAME}: {f.name} must be an integer, got {value!r}")
        for name in ("canvas", "scale", "train_placements", "val_placements", "align"):
            if getattr(self, name) < 1:
                raise UsageError(f"{NAME}: {name} must be >= 1, got {getattr(self, name)}")
        if self.digit_size > self.canvas:
            raise UsageError(
                f"{NAME}: the digit ({DIGIT_SIZE}*scale = {self.digit_size} px) does not fit in "
                f"canvas={self.canvas}; use canvas >= {self.digit_size} or a smaller scale"
            )

    @property
    def digit_size(self) -> int:
        return DIGIT_SIZE * self.scale

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> CanvasDigitsConfig:
        """Build from the suite's ``options:`` mapping, rejecting unknown keys with a suggestion."""
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                raise UsageError(
                    f"{NAME}: unknown option {key!r}{did_you_mean(str(key), known)} (known: {', '.join(known)})"
                )
        return cls(**options)

    def describe(self) -> str:
        """Compact label with every field, e.g. ``canvas-digits(canvas=32,scale=1,...)``."""
        return f"{NAME}(" + ",".join(f"{k}={v}" for k, v in asdict(self).items()) + ")"

    def cache_key(self) -> str:
        payload = json.dumps({"build_version": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def cache_dir(cfg: CanvasDigitsConfig) -> Path:
    return cache_root() / "datasets" / f"{NAME}-{cfg.cache_key()}"


def load_digit_images(scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as uint8 (N, 8*scale, 8*scale) in 0..255 (nearest upscaling) and labels."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return images, raw.target.astype(np.int64)


def split_indices(labels: np.ndarray, cfg: CanvasDigitsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/val split of digit indices (sorted, so order is canonical)."""
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(
            np.arange(len(labels)), test_size=cfg.val_fraction, stratify=labels, random_state=cfg.seed
        )
    except ValueError as e:  # e.g. a val_fraction leaving fewer samples than classes
        raise UsageError(f"{NAME}: cannot split with val_fraction={cfg.val_fraction}: {e}") from None
    return np.sort(train), np.sort(val)


def place_digits(
    digits: np.ndarray, placements: int, canvas: int, rng: np.random.Generator, align: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Paste each digit at ``placements`` random positions; returns (canvases, source row).

    Rows are placement-major: all digits at their first position, then all at the second, ...
    One fancy-indexing assignment does every paste, so 6k canvases take milliseconds.
    """
    n, size = digits.shape[0], digits.shape[1]
    src = np.tile(np.arange(n), placements)
    m = src.size
    slots = (canvas - size) // align + 1
    ys = rng.integers(0, slots, size=m) * align
    xs = rng.integers(0, slots, size=m) * align
    out = np.zeros((m, canvas, canvas), dtype=np.uint8)
    rows = (ys[:, None] + np.arange(size))[:, :, None]
    cols = (xs[:, None] + np.arange(size))[:, None, :]
    out[np.arange(m)[:, None, None], rows, cols] = digits[src]
    return out, src


def build_arrays(cfg: CanvasDigitsConfig) -> dict[str, dict[str, np.ndarray]]:
    """The whole dataset as numpy: ``{"train"|"validation": {"image", "label", "digit_index"}}``."""
    digits, labels = load_digit_images(cfg.scale)
    train_idx, val_idx = split_indices(labels, cfg)
    out: dict[str, dict[str, np.ndarray]] = {}
    # Separate streams per split: changing train_placements leaves the val set untouched.
    for stream, (split, idx, placements) in enumerate(
        (("train", train_idx, cfg.train_placements), ("validation", val_idx, cfg.val_placements))
    ):
        rng = np.random.default_rng([cfg.seed, stream])
        images, src = place_digits(digits[idx], placements, cfg.canvas, rng, cfg.align)
        out[split] = {"image": images, "label": labels[idx][src], "digit_index": idx[src]}
    return out


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(mode="L"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(NUM_CLASSES)]),
            "digit_index": datasets.Value("int32"),
        }
    )


def build_canvas_digits(cfg: CanvasDigitsConfig) -> datasets.DatasetDict:
    """Build the DatasetDict in memory (PNG-encoded images, so it saves compactly)."""
    import datasets

    feats = features()
    splits = {}
    for split, arrays in build_arrays(cfg).items():
        splits[split] = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": _png(a), "path": None} for a in arrays["image"]],
                "label": arrays["label"].tolist(),
                "digit_index": arrays["digit_index"].tolist(),
            },
            features=feats,
        )
    return datasets.DatasetDict(splits)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence HF progress bars for an internal step, restoring the user's setting after."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_canvas_digits(cfg: CanvasDigitsConfig | None = None) -> datasets.DatasetDict:
    """Load from the cache, building (into a temp dir, then renamed into place) on a miss."""
    import datasets

    cfg = cfg or CanvasDigitsConfig()
    final = cache_dir(cfg)
    if (final / _DONE_MARKER).is_file():
        return datasets.load_from_disk(str(final))
    if final.exists():  # not ours or damaged by hand: the rename below never leaves this state
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared between users
        with _quiet_progress():
            build_canvas_digits(cfg).save_to_disk(str(tmp))
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same build first; its copy is identical.
            if not (final / _DONE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(final))
