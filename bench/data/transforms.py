"""HF datasets -> torch datasets of normalized CxHxW float tensors.

Transforms come from timm (``timm.data.create_transform``), configured by the recipe's augmentation
keys: real photos get RandomResizedCrop + flip and whatever the recipe adds (RandAugment, colour jitter,
random erasing) for training, and resize to size / crop_pct + centre crop for evaluation, with
interpolation, crop_pct and mean/std from the backbone's ``pretrained_cfg`` unless the suite says
otherwise. Fixed-size data (canvas-digits) is only converted when the recipe asks for no augmentation,
because the random digit position already is the augmentation and cropping could cut the digit off;
augmentation keys set for such data act on it with no crop and no flip unless those are asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from bench.config import DEFAULT_RECIPE
from bench.errors import UsageError, clip

if TYPE_CHECKING:
    import datasets

    from bench.data.bundle import DataBundle

EVAL_CROP_PCT = 0.875  # DeiT/timm evaluation: resize to size/0.875, then center crop
#: recipe keys that configure the training transform, and the values that mean "no augmentation"
AUGMENT_KEYS = (
    "auto_augment",
    "color_jitter",
    "interpolation",
    "scale",
    "ratio",
    "hflip",
    "re_prob",
    "re_mode",
    "re_count",
)
# the recipe defaults are "off" (bench.config.DEFAULT_RECIPE); these are the keys that add augmentation
_AUGMENT_OFF = {k: DEFAULT_RECIPE[k] for k in ("auto_augment", "color_jitter", "scale", "ratio", "hflip", "re_prob")}
# Preload decoded fixed-size images when they fit in this many bytes (6.5k 32x32 gray = 6.6 MB).
PRELOAD_MAX_BYTES = 512 * 2**20
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # the weights PIL's "L" conversion uses


class UnreadableImage(UsageError):
    """An image of a local folder that does not decode, named in one line. A DataLoader worker's error comes
    back as ``UnreadableImage(<its whole traceback>)``: the message is cut back to the original line."""

    def __init__(self, message: str):
        if "\nOriginal Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def open_image(root: str, rel: str) -> Image.Image:
    """The image at ``root/rel``, decoded; an UnreadableImage naming the file when it does not decode (a
    truncated JPEG fails here with PIL's bare "Truncated File Read" otherwise)."""
    path = os.path.join(root, rel)
    try:
        image = Image.open(path)
        image.load()  # decodes and closes the file
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        why = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise UnreadableImage(
            f"data: image {path!r} does not decode ({clip(why, 120)}); replace or remove it, or set "
            "skip_unreadable: true under data: (the index step then leaves it out)"
        ) from None
    return image


def channel_stats(values: Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    """Fit a mean/std tuple to ``in_chans``: one value is broadcast, RGB is averaged for gray."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if len(values) == 3 and in_chans == 1:
        return (sum(values) / 3.0,)
    raise UsageError(f"normalization {what} has {len(values)} values but the model takes {in_chans} channels")


def to_array(image: Any, in_chans: int) -> np.ndarray:
    """A PIL image or uint8 array as a uint8 array, HxW for 1 channel or HxWx3 for 3."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L" if in_chans == 1 else "RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # drop alpha, as PIL's RGBA -> RGB does
    if arr.ndim == 2:
        return arr if in_chans == 1 else np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        if in_chans == 3:
            return arr
        return np.clip(np.rint(arr.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
    raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")


class FixedSizeTransform:
    """ToTensor + Normalize on numpy (no PIL round trip), resizing only if sizes differ.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]):
        self.image_size = image_size
        self.in_chans = in_chans
        self.mean = torch.tensor(channel_stats(mean, in_chans, "mean")).view(-1, 1, 1)
        self.std = torch.tensor(channel_stats(std, in_chans, "std")).view(-1, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        arr = to_array(image, self.in_chans)
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32).div_(255.0)
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        if t.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            if min(t.shape[-2:]) <= self.image_size:  # upscaling: keep pixels crisp like `scale`
                t = F.interpolate(t[None], size=size, mode="nearest-exact")[0]
            else:
                t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        return (t - self.mean) / self.std


class ConvertMode:
    """PIL (or array) -> PIL in the mode the model expects ("L" or "RGB")."""

    def __init__(self, in_chans: int):
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, image: Any) -> Image.Image:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(to_array(image, 1 if self.mode == "L" else 3))
        return image if image.mode == self.mode else image.convert(self.mode)


_TIMM_POSTERIZE: Callable[..., Any] | None = None  # timm's own posterize, once guard_timm_posterize replaced it


def _posterize_keep_zero_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, with 0 bits kept done as Pillow < 13 did it (a black image). Module-level, so a
    transform holding it pickles into DataLoader workers."""
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    assert _TIMM_POSTERIZE is not None
    return _TIMM_POSTERIZE(img, bits_to_keep, **kwargs)


def guard_timm_posterize() -> bool:
    """Work around timm's RandAugment on Pillow >= 13, which rejects ``posterize(bits=0)``: DeiT's
    ``rand-m9-mstd0.5-inc1`` clips the magnitude at 10, where PosterizeIncreasing keeps 0 bits (about 0.15%
    of images, so nearly every ImageNet epoch would die in a loader worker). No library fix exists in the
    versions we support, hence this patch of timm's op table; True when it was needed."""
    global _TIMM_POSTERIZE
    from PIL import ImageOps

    if _TIMM_POSTERIZE is not None:
        return True
    try:
        ImageOps.posterize(Image.new("RGB", (2, 2)), 0)
        return False
    except ValueError:
        pass
    import timm.data.auto_augment as aa

    _TIMM_POSTERIZE = aa.posterize
    for name, op in list(aa.NAME_TO_OP.items()):
        if op is _TIMM_POSTERIZE:
            aa.NAME_TO_OP[name] = _posterize_keep_zero_bits
    return True


def augments(recipe: dict[str, Any] | None) -> bool:
    """True when the recipe asks for any image augmentation (fixed-size data then leaves the fast path)."""
    return recipe is not None and any(recipe.get(k, off) != off for k, off in _AUGMENT_OFF.items())


def build_transform(
    *,
    train: bool,
    image_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    native_size: int | None,
    recipe: dict[str, Any] | None = None,
    crop_pct: float | None = None,
    eval_interpolation: str = "bicubic",
) -> Callable[[Any], torch.Tensor]:
    """Transform for one split, built by timm. ``native_size`` set means fixed-size data, which is only
    converted unless ``recipe`` (the training recipe) asks for augmentation."""
    from timm.data import create_transform

    if in_chans not in (1, 3):
        raise UsageError(f"in_chans must be 1 or 3, got {in_chans}")
    mean, std = channel_stats(mean, in_chans, "mean"), channel_stats(std, in_chans, "std")
    if native_size is not None and not (train and augments(recipe)):
        return FixedSizeTransform(image_size, in_chans, mean, std)
    if not train:
        t = create_transform(
            image_size,
            is_training=False,
            interpolation=eval_interpolation,
            mean=mean,
            std=std,
            crop_pct=EVAL_CROP_PCT if crop_pct is None else crop_pct,
        )
        return _with_mode(t, in_chans)
    r = {k: (recipe or {}).get(k) for k in AUGMENT_KEYS}
    if r["auto_augment"]:
        guard_timm_posterize()  # before create_transform builds the ops, which bind their functions
    fixed = native_size is not None  # the placement is the augmentation: no crop, no flip unless asked
    t = create_transform(
        image_size,
        is_training=True,
        mean=mean,
        std=std,
        scale=tuple(r["scale"]) if r["scale"] else ((1.0, 1.0) if fixed else (0.08, 1.0)),
        ratio=tuple(r["ratio"]) if r["ratio"] else ((1.0, 1.0) if fixed else (3 / 4, 4 / 3)),
        hflip=r["hflip"] if r["hflip"] is not None else (0.0 if fixed else 0.5),
        color_jitter=r["color_jitter"],
        auto_augment=r["auto_augment"],
        interpolation=r["interpolation"] or "bicubic",
        re_prob=float(r["re_prob"] or 0.0),
        re_mode=r["re_mode"] or "pixel",
        re_count=int(r["re_count"] or 1),
    )
    return _with_mode(t, in_chans)


def _with_mode(transform: Any, in_chans: int) -> Any:
    from torchvision import transforms as T

    return T.Compose([ConvertMode(in_chans), *transform.transforms])


def _column(ds: datasets.Dataset, key: str) -> Any:
    """One column, decoded, as numpy (a stacked array when all images share a shape)."""
    return ds.with_format("numpy", columns=[key])[:][key]


class TorchImageDataset(torch.utils.data.Dataset):
    """An HF image dataset as ``(float tensor CxHxW, int label)`` pairs.

    With ``preload`` every image is decoded once up front (one vectorised arrow pass), so an
    epoch costs only the cheap tensor conversion; otherwise images are decoded per item, opened by path under
    ``image_root`` for a local folder (its image column holds relative paths, kept as an arrow array so forked
    workers do not copy a million Python strings).

    ``random_transform`` says whether the transform draws random numbers (the training loader then seeds them
    per sample, ``bench.train.loaders.SeededItems``).
    """

    def __init__(
        self,
        hf_dataset: datasets.Dataset,
        *,
        image_key: str = "image",
        label_key: str = "label",
        transform: Callable[[Any], torch.Tensor],
        preload: bool = False,
        image_root: str | None = None,
        random_transform: bool = False,
    ):
        self.transform = transform
        self.image_key = image_key
        self.random_transform = random_transform
        self.labels = np.asarray(_column(hf_dataset, label_key), dtype=np.int64)
        self.image_root = image_root
        self.paths = hf_dataset.data.column(image_key).combine_chunks() if image_root is not None else None
        self.images: Any = _column(hf_dataset, image_key) if preload and self.paths is None else None
        # Only the image column is needed per item; skip decoding the others.
        self.hf = None if self.images is not None or self.paths is not None else hf_dataset.select_columns([image_key])

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, index: int) -> Any:
        if self.paths is not None:
            return open_image(self.image_root, self.paths[index].as_py())
        return self.images[index] if self.hf is None else self.hf[index][self.image_key]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        return self.transform(self._image(index)), int(self.labels[index])


def make_torch_datasets(
    bundle: DataBundle,
    *,
    image_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    recipe: dict[str, Any] | None = None,
    crop_pct: float | None = None,
    eval_interpolation: str = "bicubic",
) -> tuple[TorchImageDataset, TorchImageDataset]:
    """Train and val torch datasets for a bundle at the model's input size and channels; ``recipe`` (the
    training recipe) configures the training transform."""
    native = bundle.image_size if bundle.fixed_size else None
    out = []
    for train, ds in ((True, bundle.train), (False, bundle.val)):
        size_bytes = len(ds) * bundle.image_size**2 * bundle.in_chans
        transform = build_transform(
            train=train,
            image_size=image_size,
            in_chans=in_chans,
            mean=mean,
            std=std,
            native_size=native,
            recipe=recipe,
            crop_pct=crop_pct,
            eval_interpolation=eval_interpolation,
        )
        out.append(
            TorchImageDataset(
                ds,
                image_key=bundle.image_key,
                label_key=bundle.label_key,
                transform=transform,
                preload=bundle.fixed_size and size_bytes <= PRELOAD_MAX_BYTES,
                image_root=bundle.image_root,
                random_transform=train and not isinstance(transform, FixedSizeTransform),
            )
        )
    return out[0], out[1]
