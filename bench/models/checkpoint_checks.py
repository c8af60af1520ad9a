"""Checkpoint files a suite points at, opened and matched to the model they will load into (`bench validate --build`).

A backbone's ``init: path`` is loaded by :func:`bench.models.backbones.load_checkpoint_into` when pretraining
starts, a method's ``weights:`` by the evaluate step: either can be a text file, a zip of something else, a
truncated copy, the weights of another architecture or integer tensors, and each used to pass validation and
fail (or, for integer tensors, silently train from rounded weights) minutes later. Here each file is read once
with the safe loader (``weights_only``: a pickle with objects is refused, never run) and compared with the
state_dict of a meta-device model built as the step builds it (keys, shapes, dtype kind, finite values), so
nothing is allocated for the model. Every problem is one line naming the file.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError, clip

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.config import Backbone, Suite

_NAMED = 3  # keys an error names before "..."
#: what a file must start with to be a checkpoint the loaders read: torch's zip format, its legacy pickle
_TORCH_ZIP, _TORCH_LEGACY = b"PK\x03\x04", b"\x80"


def _named(keys: list[str]) -> str:
    return ", ".join(keys[:_NAMED]) + (", ..." if len(keys) > _NAMED else "")


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint, from its type, size and first bytes; None when it may be one."""
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a checkpoint file"
    if not path.is_file():
        return "is not a regular file"
    from bench.io import open_artifact

    try:
        with open_artifact(path) as f:  # inside a results folder: no link followed (bench.io)
            head = f.read(64)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "is empty (0 bytes)"
    if path.suffix == ".safetensors":
        return None
    if head.startswith(_TORCH_ZIP):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "is a truncated or corrupt zip archive (torch's checkpoint format)"
        if not any(n.endswith("/data.pkl") for n in names):
            return f"is a zip archive but not a torch checkpoint (it holds {_named(names) or 'nothing'})"
        return None
    if head[:1] == _TORCH_LEGACY and len(head) > 1 and 2 <= head[1] <= 5:
        return None  # torch's legacy format: a pickle, protocol 2 (its default) to 5
    text = head.decode("utf-8", "ignore")  # a character cut at byte 64 is dropped
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = next((ln for ln in text.splitlines() if ln.strip()), text)
        return f"is a text file, not a torch checkpoint (it starts {clip(first.strip(), 40)!r})"
    return f"is not a torch checkpoint (no zip or pickle header; it starts {head[:8]!r})"


def read_tensors(path: str | Path, *, unwrap: tuple[str, ...], strict: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file under the first of the ``unwrap`` keys it holds (else the file's top
    mapping), without a ``module.`` prefix; a one-line UsageError naming the file when it is none. ``strict``: as
    the evaluate step reads a method's weights (torch files only, every value a tensor, keys as they are)."""
    import torch

    path = Path(path)
    why = _not_a_checkpoint(path)
    if strict and path.suffix == ".safetensors" and not why:
        why = "is a .safetensors file: a method's weights are read with torch.load (save them with torch.save)"
    if why:
        raise UsageError(f"checkpoint {str(path)!r} {why}")
    try:
        if path.suffix == ".safetensors" and not strict:
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            import warnings

            from bench.io import load_torch

            with warnings.catch_warnings():  # torch warns (two lines) on a pickle protocol it did not write
                warnings.simplefilter("ignore", UserWarning)
                obj = load_torch(path)
    except UsageError:  # the safe loader's line: a pickle with objects, a truncated file
        raise
    except Exception as e:  # noqa: BLE001 - any library failure on a bad file is that file's problem
        raise UsageError(f"checkpoint {str(path)!r} is unreadable ({type(e).__name__}: {clip(e, 120)})") from None
    for key in unwrap:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UsageError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict")
    others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others and len(others) == len(obj):
        raise UsageError(f"checkpoint {str(path)!r} holds no tensors (keys {_named(others)})")
    if others and strict:
        raise UsageError(f"checkpoint {str(path)!r} holds values that are not tensors ({_named(others)})")
    if strict:
        return dict(obj)
    return {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _kind(t: torch.Tensor) -> str:
    return "floating point" if t.is_floating_point() else "complex" if t.is_complex() else "integer or bool"


def mismatch(
    sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], *, head_free: bool, pos_embed_free: bool, prefix: int = 0
) -> str | None:
    """What keeps ``sd`` from loading into a model whose state_dict is ``own`` (meta tensors will do); None when it
    fits. ``head_free``: the classifier may be missing or of another size (a fresh head is made for the data's
    classes, as :func:`bench.models.backbones.load_checkpoint_into` does); ``pos_embed_free``: a position embedding
    of another grid is resampled (``prefix`` class/register tokens ahead of the grid)."""

    def free(k: str) -> bool:
        return head_free and k.startswith(("head.", "head_dist."))

    missing = [k for k in own if k not in sd and not free(k)]
    unexpected = [k for k in sd if k not in own and not free(k)]
    if missing and all(k.startswith("module.") for k in unexpected) and {k[7:] for k in unexpected} >= set(missing):
        return "its keys carry a 'module.' prefix (saved from DistributedDataParallel: save model.module's state_dict)"
    if missing and unexpected and len(unexpected) >= len(own) // 2:
        return (
            f"is the state_dict of another architecture: {len(missing)} of the model's {len(own)} keys missing "
            f"({_named(missing)}), {len(unexpected)} unexpected ({_named(unexpected)})"
        )
    if missing:
        return f"{len(missing)} key(s) missing ({_named(missing)})"
    if unexpected:
        return f"{len(unexpected)} unexpected key(s) ({_named(unexpected)})"
    for k, v in sd.items():
        if k not in own:
            continue
        want = own[k]
        if tuple(v.shape) != tuple(want.shape) and not free(k):
            grid = v.shape[-2] - prefix if v.dim() == 3 else -1
            resampled = (
                pos_embed_free and k == "pos_embed" and v.dim() == 3 and v.shape[-1] == want.shape[-1] and grid > 0
            )
            if not (resampled and math.isqrt(grid) ** 2 == grid):
                return f"{k} is {tuple(v.shape)} where the model has {tuple(want.shape)}"
        if _kind(v) != _kind(want):
            return f"{k} has dtype {str(v.dtype).removeprefix('torch.')} where the model has {str(want.dtype).removeprefix('torch.')}"
    import torch

    bad = next((k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        return f"{bad} holds NaN or infinite values"
    return None


def files_stamp(raw: dict[str, Any]) -> str:
    """The size and mtime of every checkpoint file a raw suite names: a suite whose checks are cached
    (``bench.config``'s marker) is checked again when one of its files changes."""
    import os

    named = [(raw.get("pretrain") or {}).get("init")]
    named += [b.get("init") for b in raw.get("backbones") or [] if isinstance(b, dict)]
    named += [m.get("weights") for m in raw.get("methods") or [] if isinstance(m, dict)]
    out = []
    for p in named:
        if isinstance(p, str) and p not in ("scratch", "hub"):
            try:
                st = os.stat(p)
                out.append(f"{p}\0{st.st_size}\0{st.st_mtime_ns}")
            except (OSError, ValueError):
                out.append(f"{p}\0-")
    return "\n".join(out)


def model_io(data: dict[str, Any] | None, classes_needed: bool = True) -> tuple[int, int | None]:
    """(input channels, classes) of the model the suite's data makes; classes None where only loading tells
    (a hub dataset) or not ``classes_needed`` (an image folder's splits are then not listed: jobs list none)."""
    from bench.data.sources import validate

    cfg = validate(data)
    if cfg["source"] == "embedded":
        from bench.data.embedded import NUM_CLASSES

        return 1, NUM_CLASSES
    classes = None
    if cfg["source"] == "imagefolder" and classes_needed:
        from bench.data.folder_checks import class_count

        classes = class_count(cfg["path"])
    return int(cfg.get("in_chans", 3)), classes


def meta_backbone(b: Backbone, in_chans: int, num_classes: int) -> nn.Module:
    """The backbone as the pipeline builds it (data's channels and classes), on the meta device."""
    import torch

    from bench.models import build_backbone

    with torch.device("meta"):
        return build_backbone(b.name, num_classes=num_classes, in_chans=in_chans, img_size=b.image_size, **b.kwargs)


def check_checkpoints(suite: Suite, where: str) -> None:
    """Every backbone's ``init`` file and every method's ``weights`` file read once and matched to the model it
    loads into; the first problem is one UsageError line naming the suite field and the file."""
    import copy

    import torch

    from bench.methods import create_method

    if all(b.init in ("scratch", "hub") for b in suite.backbones) and not any(r.weights for r in suite.runs):
        return
    # the head's size matters only for given weights (an init checkpoint's head is replaced when it differs)
    in_chans, num_classes = model_io(suite.data, classes_needed=any(r.weights for r in suite.runs))
    backbones: dict[str, nn.Module] = {}

    def backbone(b: Backbone) -> nn.Module:
        if b.label not in backbones:
            backbones[b.label] = meta_backbone(b, in_chans, num_classes or 10)
        return backbones[b.label]

    for i, b in enumerate(suite.backbones):
        if b.init in ("scratch", "hub"):
            continue
        field = f"{where}: field backbones[{i}].init"
        try:
            sd = read_tensors(b.init, unwrap=("model_ema", "model", "state_dict"))
            model = backbone(b)
            prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
            why = mismatch(sd, model.state_dict(), head_free=True, pos_embed_free=True, prefix=prefix)
        except UsageError as e:
            raise UsageError(f"{field}: {e}") from None
        if why:
            raise UsageError(f"{field}: checkpoint {b.init!r} does not fit {b.name}: {why}")
    fields = {}
    for i, m in enumerate(suite.raw["methods"]):
        if isinstance(m, dict) and m.get("weights"):
            fields[m.get("label", m["name"])] = f"{where}: field methods[{i}].weights"
    read: dict[str, dict[str, torch.Tensor]] = {}
    done: set[tuple] = set()
    for run in suite.runs:
        if not run.weights or (run.method, run.backbone, run.keep_ratio) in done:
            continue
        done.add((run.method, run.backbone, run.keep_ratio))
        field = fields.get(run.method, f"{where}: field methods.weights")
        try:
            if run.weights not in read:
                read[run.weights] = read_tensors(run.weights, unwrap=("model",), strict=True)
            method = create_method(run.method_name, run.keep_ratio, run.seed, **run.method_params)
            model = copy.deepcopy(backbone(suite.backbone(run.backbone)))
            if method.reads_weights:  # its apply reads weight values: a real model (rare: a method with weights)
                with torch.device("cpu"):
                    model = meta_backbone(suite.backbone(run.backbone), in_chans, num_classes or 10).to_empty(
                        device="cpu"
                    )
            method.apply(model)
        except UsageError as e:
            raise UsageError(f"{field}: {e}") from None
        why = mismatch(read[run.weights], model.state_dict(), head_free=num_classes is None, pos_embed_free=False)
        if why:
            raise UsageError(
                f"{field}: weights {run.weights!r} do not fit the {run.method_name} model of {run.backbone}: {why}"
            )
