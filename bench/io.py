"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import ArtifactError, DiskFull, UnsafeArtifact, clip

_UMASK = os.umask(0)
os.umask(_UMASK)


#: outputs this process's step is making: absolute path -> hook(tmp path) called once the file is whole and before
#: it takes its name (``bench.outputs`` keeps a hard link of it), so a finished result never lacks its kept copy
ON_COMPLETE: dict[str, Callable[[str], None]] = {}


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], needed: int | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``. A full disk is one
    :class:`DiskFull` line naming the path and the space needed (``needed`` bytes, when the caller knows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
    full, written = False, 0
    try:
        write(tmp)
        hook = ON_COMPLETE.get(os.path.abspath(path))
        if hook is not None:
            hook(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)  # the previous file, if any, is untouched
        if not is_disk_full(e):
            raise
        full = True
    if full:
        import gc

        gc.collect()  # the failed writer's open file (held by the traceback) goes, and with it the space it took
        raise DiskFull(disk_full_message(path, max(written, needed or 0)))
    return path


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as torch's zip writer reports them (a RuntimeError with no errno)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "unexpected pos" in text or "failed writing" in text or "No space left" in text
    )


def disk_full_message(path: str | os.PathLike, needed: int) -> str:
    free = shutil.disk_usage(Path(path).parent if Path(path).parent.exists() else ".").free
    need = f"needs about {needed / 2**20:.1f} MB, " if needed else ""
    return (
        f"no space left on the device writing {path} ({need}{free / 2**20:.1f} MB free there); free some space "
        f"and run again (the previous file, if any, is kept)"
    )


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, _write, needed=len(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp), needed=_tensor_bytes(obj))


def _tensor_bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load`` that never runs code from the file, with one-line errors naming it.

    ``weights_only=True``: results folders are shared (group-writable by design), so a pickle planted in
    one must not execute as the next user who trains or evaluates. Every harness artifact holds only
    tensors and plain containers (RNG states are stored as tensors).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UnsafeArtifact(
                f"{path}: refused: it holds Python objects, not only tensors and plain values "
                f"(loading it could run code); delete it and rebuild it"
            ) from None
        raise ArtifactError(
            f"{path}: unreadable (not a torch checkpoint: {_first_line(e)}); delete it and rebuild it"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise ArtifactError(
            f"{path}: unreadable (truncated or corrupt: {_first_line(e)}); delete it and rebuild it"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return clip(text) if text else type(e).__name__
