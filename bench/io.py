"""Atomic file writes (a reader sees the old file or the new one, never half of one), and file access inside a
results folder that never follows a symbolic link.

Results folders are shared (group-writable), so a co-user can plant a link where the harness will write, read or
delete (``runs/<id>/.writer.lock -> ~victim/private``): the harness would then act on the link's target with its
user's rights. The harness never makes a link, so below a results root every component of a path is checked
with ``lstat`` and the last one is opened with ``O_NOFOLLOW``: a link is refused in one :class:`UnsafeArtifact`
line naming it. The root is the ``--results`` folder (declared by :func:`results_root`, which
``Suite.results_dir`` calls): it and the folders above it are the user's choice and may be links (a scratch
space linked into the home). Paths outside every root (a suite's init checkpoint, an image folder) are read as
given. Files are created with mode ``0o666 & ~umask`` (the group's mode, README *Safety and recovery*) and never
chmodded.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.errors import ArtifactError, DiskFull, UnsafeArtifact, clip

#: the mode of every file and folder the harness creates in results (before the umask): the group may share it
FILE_MODE, DIR_MODE = 0o666, 0o777

#: declared results roots, as lexical absolute paths (not resolved: the root itself may be a link)
RESULTS_ROOTS: set[str] = set()


def results_root(root: str | os.PathLike) -> Path:
    """Declare ``root`` (a ``--results`` folder) a results root and return it: below it no link is followed."""
    RESULTS_ROOTS.add(os.path.abspath(root))
    return Path(root)


def root_of(path: str | os.PathLike) -> str | None:
    """The declared results root that holds ``path`` (the innermost), or None when it is outside every root."""
    a = os.path.abspath(path)
    inside = [r for r in RESULTS_ROOTS if a != r and a.startswith(r.rstrip(os.sep) + os.sep)]
    return max(inside, key=len) if inside else None


def link_refused(path: str | os.PathLike, root: str | os.PathLike | None = None) -> UnsafeArtifact:
    where = f" inside the results folder {root}" if root else ""
    return UnsafeArtifact(
        f"{path}: refused: a symbolic link{where} (the harness makes none and never follows one: a co-user may "
        f"have planted it); remove it and run again"
    )


def check_no_link(path: str | os.PathLike) -> Path:
    """``path`` if no component of it below its results root is a symbolic link (components that do not exist
    yet are fine); else :class:`UnsafeArtifact` naming the link. A no-op outside every results root."""
    root = root_of(path)
    if root is None:
        return Path(path)
    current = root
    for part in os.path.relpath(os.path.abspath(path), root).split(os.sep):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode):
            raise link_refused(current, root)
    return Path(path)


def refuse_links_below(folder: str | os.PathLike) -> None:
    """:class:`UnsafeArtifact` naming the first symbolic link anywhere below ``folder`` (none followed on the way).
    For the pipeline at parse time: Snakemake itself creates log files and output folders through whatever is
    there, so a planted link must stop it before any job starts."""
    check_no_link(folder)
    if not os.path.isdir(folder):
        return
    stack = [os.fspath(folder)]
    while stack:  # scandir's entry types come with the listing: no stat per file (10,000 runs, 90,000 entries: 0.15 s, was 0.47 s)
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    raise link_refused(entry.path, root_of(entry.path))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


def open_nofollow(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = FILE_MODE) -> int:
    """``os.open`` that follows no link: the components below the results root are checked (:func:`check_no_link`)
    and the file itself is opened with ``O_NOFOLLOW``. Only a regular file is opened (a planted FIFO would block,
    a device would be read), and one opened for writing must have no other hard link (a planted hard link to
    another user's file would be written through). ``O_TRUNC`` is applied only once these checks pass."""
    check_no_link(path)
    truncate = bool(flags & os.O_TRUNC)
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise link_refused(path, root_of(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeArtifact(f"{path}: refused: not a regular file; remove it and run again")
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
            raise UnsafeArtifact(
                f"{path}: refused: it has {st.st_nlink} hard links (writing it would change the other names' "
                f"file: a co-user may have planted it); remove it and run again"
            )
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_artifact(
    path: str | os.PathLike, mode: str = "rb", encoding: str | None = None, errors: str | None = None
) -> IO[Any]:
    """A file object to read ``path``: through :func:`open_nofollow` inside a results root, as given outside."""
    if "r" not in mode or "+" in mode:
        raise ValueError(f"open_artifact reads only, not mode {mode!r}")
    if root_of(path) is None:
        return open(path, mode, encoding=encoding, errors=errors)
    return os.fdopen(open_nofollow(path), mode, encoding=encoding, errors=errors)


def read_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str | None = None) -> str:
    """The text of ``path``, read without following a link inside a results root."""
    with open_artifact(path, "r", encoding=encoding, errors=errors) as f:
        return f.read()


def safe_mkdir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` that creates (mode 0o777 & ~umask) and accepts only real folders below the results root: a
    planted link to a folder is refused (:func:`check_no_link`). As ``Path.mkdir`` outside every root."""
    path = Path(path)
    root = root_of(path)
    if root is None:
        path.mkdir(parents=True, exist_ok=True)
        return path
    Path(root).mkdir(parents=True, exist_ok=True)
    current = root
    for part in os.path.relpath(os.path.abspath(path), root).split(os.sep):
        current = os.path.join(current, part)
        try:
            os.mkdir(current, DIR_MODE)
        except FileExistsError:
            pass
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            raise link_refused(current, root)
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{current}: not a folder (the harness needs one there); remove it and run again")
    return path


def safe_unlink(path: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete ``path`` (a link there is deleted, never its target) after checking that no folder above it below
    the results root is a link: a planted ``.kept -> elsewhere`` must not make the harness delete elsewhere."""
    check_no_link(Path(path).parent)
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp`` in ``folder``, created exclusively (never an existing file or link)
    with the group's mode (no chmod afterwards), kept open: (fd, path)."""
    while True:
        tmp = str(folder / f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE), tmp
        except FileExistsError:
            continue


def _pinned(fd: int, tmp: str) -> str:
    """The name a writer opens: ``/proc/self/fd/N`` reopens the very file :func:`_create_temp` made, so a co-user
    who swaps the temporary name for a link while it is written is not followed; the path where /proc is absent."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else tmp


def _still_ours(fd: int, tmp: str) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(tmp)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


#: outputs this process's step is making: absolute path -> hook(tmp path) called once the file is whole and before
#: it takes its name (``bench.outputs`` keeps a hard link of it), so a finished result never lacks its kept copy
ON_COMPLETE: dict[str, Callable[[str], None]] = {}


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], needed: int | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``. A full disk is one
    :class:`DiskFull` line naming the path and the space needed (``needed`` bytes, when the caller knows)."""
    path = Path(path)
    check_no_link(path)  # a link in place of the file is refused too: replacing it would hide the planting
    safe_mkdir(path.parent)
    fd, tmp = _create_temp(path.parent, path.name)
    full, written = False, 0
    try:
        write(_pinned(fd, tmp))
        if not _still_ours(fd, tmp):
            raise UnsafeArtifact(f"{tmp}: refused: replaced by another file or a link while it was written")
        hook = ON_COMPLETE.get(os.path.abspath(path))
        if hook is not None:
            hook(tmp)
        check_no_link(path)  # again: a link planted while the file was written is not replaced silently either
        os.replace(tmp, path)
    except BaseException as e:
        written = os.fstat(fd).st_size
        if _still_ours(fd, tmp):
            os.unlink(tmp)  # the previous file, if any, is untouched
        if not is_disk_full(e):
            raise
        full = True
    finally:
        os.close(fd)
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
    import struct

    import torch

    path = Path(path)
    try:
        with open_artifact(path) as f:  # inside results: no link followed (UnsafeArtifact names it)
            return torch.load(f, map_location="cpu", weights_only=True)
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
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as e:
        raise ArtifactError(
            f"{path}: unreadable (truncated or corrupt: {_first_line(e)}); delete it and rebuild it"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return clip(text) if text else type(e).__name__
