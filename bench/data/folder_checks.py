"""What the index step refuses in a local image folder before anything trains on it.

Layout (the listing alone, no file opened): class folders whose names differ only in case (``train/Class_00``
beside ``train/class_00``: two labels for one class, or one on a case-insensitive disk), empty class folders (a
label no image has) and classes missing from a split the suite reads (a class only in ``val/`` is never trained,
one only in ``train/`` never evaluated). Each is a one-line error naming the folders.

Images: every image of those splits is decoded once with PIL, in threads (PIL decodes without the GIL); a
truncated file fails only once its data is read, so a header check would not do. The verdict is cached beside
the index (``decode_cache.parquet``) keyed by (relative path, size, mtime_ns): rebuilding the index of an
unchanged folder decodes nothing, and one with files added decodes those. Unreadable images are one error line
naming them, or with ``skip_unreadable: true`` are left out of the index, which records them (and so does
every run record, through the index summary).
"""

from __future__ import annotations

import json
import os
import stat
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.data.index import FolderIndex
from bench.errors import UsageError, clip
from bench.registry import did_you_mean

#: the validation split of a local folder when the suite names none: the first of these on disk
FOLDER_VAL_SPLITS = ("validation", "val")
#: the decode verdicts beside the index
CACHE_NAME = "decode_cache.parquet"
#: the full list of unreadable images, written beside the index when an error names only the first few
UNREADABLE_LIST = "unreadable.txt"
_CACHE_FORMAT = 1
_CACHE_KEY = b"tokenbench_decode_cache"
_NAMED = 5  # files or folders a one-line error names before "+N more"


@dataclass(frozen=True)
class FolderChecks:
    """The data keys the checks follow: the splits the suite reads and what to do with an unreadable image."""

    train_split: str = "train"
    val_split: str | None = None  # None: validation/, else val/
    skip_unreadable: bool = False

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> FolderChecks:
        return cls(cfg.get("train_split", "train"), cfg.get("val_split"), bool(cfg.get("skip_unreadable", False)))

    def as_meta(self) -> dict[str, Any]:
        return {"train_split": self.train_split, "val_split": self.val_split, "skip_unreadable": self.skip_unreadable}

    def val(self, index: FolderIndex) -> str:
        return self.val_split or next((s for s in FOLDER_VAL_SPLITS if s in index.splits()), FOLDER_VAL_SPLITS[0])

    def splits(self, index: FolderIndex) -> list[str]:
        return list(dict.fromkeys([self.train_split, self.val(index)]))


def class_count(root: str | Path) -> int | None:
    """The classes (labels) the index of ``root`` will have: its class folder names over every split (a listing
    of the split folders, no image opened); None when it cannot be listed (the index step says why)."""
    top = Path(root).expanduser()
    names: set[str] = set()
    try:
        with os.scandir(top) as splits:
            for split in [e.path for e in splits if e.is_dir() and not e.name.startswith(".")]:
                with os.scandir(split) as it:
                    names |= {e.name for e in it if e.is_dir() and not e.name.startswith(".")}
    except OSError:
        return None
    return len(names) or None


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED])
    return shown + (f" (+{len(items) - _NAMED} more)" if len(items) > _NAMED else "")


def check_split(index: FolderIndex, split: str, where: str) -> None:
    """A split the suite reads exists and holds class folders."""
    if split in index.counts:
        return
    if split in index.loose:
        raise UsageError(
            f"{where}: split {split!r} holds {index.loose[split]} images but no class folders; "
            f"sort them into {split}/<class>/ (for ImageNet's val: its valprep.sh)"
        )
    have = index.splits()
    raise UsageError(f"{where} has no split {split!r}{did_you_mean(split, have)} (splits: {', '.join(have)})")


def check_layout(index: FolderIndex, splits: list[str], where: str) -> None:
    """Case clashes, empty class folders, classes missing from a split read: each a one-line UsageError."""
    for split in splits:
        check_split(index, split, where)
    folders = sorted({f"{split}/{index.classes[label]}" for split, label in _split_labels(index)} | set(index.empty))
    by_fold: dict[str, list[str]] = {}
    for cls in sorted({f.split("/", 1)[1] for f in folders}):
        by_fold.setdefault(cls.casefold(), []).append(cls)
    clashes = [names for names in by_fold.values() if len(names) > 1]
    if clashes:
        groups = [", ".join(f for f in folders if f.split("/", 1)[1] in names) for names in clashes]
        raise UsageError(
            f"{where}: class folders whose names differ only in case: {'; '.join(groups[:_NAMED])}"
            + (f" (+{len(groups) - _NAMED} more)" if len(groups) > _NAMED else "")
            + " (one class would get two labels); rename them to one spelling"
        )
    empty = [f for f in index.empty if f.split("/", 1)[0] in splits]
    if empty:
        raise UsageError(
            f"{where}: {len(empty)} empty class folder(s) (no images, a label no image has): {_named(empty)}; "
            "add images or remove the folder(s)"
        )
    check_classes(index, splits, where)


def _split_labels(index: FolderIndex) -> Iterable[tuple[str, int]]:
    """(split, label) of every class folder holding images."""
    import pyarrow as pa

    keys = pa.table({"split": index.table["split"].cast(pa.string()), "label": index.table["label"]})
    pairs = keys.group_by(["split", "label"]).aggregate([]).to_pylist()
    return ((str(p["split"]), int(p["label"])) for p in pairs)


def check_classes(index: FolderIndex, splits: list[str], where: str) -> None:
    """Every class of the folder has images in every split the suite reads."""
    have: dict[str, set[int]] = {}
    for split, label in _split_labels(index):
        have.setdefault(split, set()).add(label)
    for split in splits:
        missing = [index.classes[i] for i in range(len(index.classes)) if i not in have.get(split, set())]
        if missing:
            elsewhere = sorted(
                s for s in have if s != split and any(index.classes.index(m) in have[s] for m in missing)
            )
            role = "never trained" if split == splits[0] else "never evaluated"
            raise UsageError(
                f"{where}: {len(missing)} class(es) with no images in {split}/ ({role}; found in "
                f"{', '.join(s + '/' for s in elsewhere)}): {_named(missing)}; every split the suite reads "
                "needs every class"
            )


def decode_error(path: str) -> str | None:
    """Why the image at ``path`` cannot be decoded, in a few words; None when it decodes whole."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":  # at 1/8 scale libjpeg still reads every byte (truncation shows), skips IDCT work
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            if im.width * im.height > (Image.MAX_IMAGE_PIXELS or float("inf")):  # decoded, it would fill memory
                return (
                    f"{im.width} x {im.height} pixels, over PIL's decompression-bomb limit of "
                    f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)"
                )
            im.load()
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return clip(f"{type(e).__name__}: {e}", 120)
    return None


def _verdicts(
    root: str, paths: list[str], cache: dict[str, tuple[int, int, str | None]]
) -> list[tuple[str, int, int, str | None, bool]]:
    """(path, size, mtime_ns, error, decoded now) for a chunk of paths: a stat each, a decode where the cache has
    no verdict for that size and mtime."""
    out = []
    for rel in paths:
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):  # a link is read only when it stays inside the data root
                real = os.path.realpath(full)
                if not real.startswith(root.rstrip(os.sep) + os.sep):
                    out.append((rel, -1, -1, f"a symbolic link to {real}, outside the data root: never opened", True))
                    continue
                st = os.stat(full)
        except OSError as e:
            out.append((rel, -1, -1, clip(f"{type(e).__name__}: {e.strerror}", 120), True))
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever, a device never end
            out.append((rel, -1, -1, "not a regular file (a FIFO, socket or device): never opened", True))
            continue
        hit = cache.get(rel)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out.append((rel, st.st_size, st.st_mtime_ns, hit[2], False))
        else:
            out.append((rel, st.st_size, st.st_mtime_ns, decode_error(full), True))
    return out


def read_cache(path: Path, root: str) -> dict[str, tuple[int, int, str | None]]:
    """The cached verdicts of ``root``; empty when the file is absent, a link, not a regular file, another user's,
    another format or another folder's (the results folder is shared: a planted file is ignored, never followed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(f.fileno())
            # another user's verdicts are not trusted (a co-user could plant "readable" for a bomb): decoded again
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return {}
            table = pq.read_table(f)
            meta = json.loads((table.schema.metadata or {}).get(_CACHE_KEY, b"null"))
        except (OSError, ValueError, pa.ArrowException):
            return {}
    want = {"path": pa.string(), "size": pa.int64(), "mtime_ns": pa.int64(), "error": pa.string()}
    if (
        not isinstance(meta, dict)
        or meta.get("format") != _CACHE_FORMAT
        or meta.get("root") != root
        or {f.name: f.type for f in table.schema} != want
    ):
        return {}
    cols = [table[c].to_pylist() for c in want]
    return {p: (s, m, e) for p, s, m, e in zip(*cols) if p is not None and s is not None and m is not None}


def write_cache(path: Path, root: str, rows: list[tuple[str, int, int, str | None, bool]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.io import atomic_write

    kept = [r for r in rows if r[1] >= 0]  # a file that could not be stat'ed has no key
    table = pa.table(
        {
            "path": pa.array([r[0] for r in kept], pa.string()),
            "size": pa.array([r[1] for r in kept], pa.int64()),
            "mtime_ns": pa.array([r[2] for r in kept], pa.int64()),
            "error": pa.array([r[3] for r in kept], pa.string()),
        }
    ).replace_schema_metadata({_CACHE_KEY: json.dumps({"format": _CACHE_FORMAT, "root": root}).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="snappy"))


def _threads() -> int:
    from bench.runtime import job_cpus

    return max(1, min(32, 2 * job_cpus()))  # twice the CPUs: a thread waiting on a network file system costs none


def decode_all(root: str, paths: list[str], cache_path: Path | None) -> tuple[dict[str, str], int, int]:
    """Every image's verdict (from the cache when its size and mtime are unchanged); returns the unreadable ones
    (path -> why), how many were decoded now and how many came from the cache. The cache is rewritten with
    the verdicts of ``paths`` only (files gone from the folder drop out)."""
    cache = read_cache(cache_path, root) if cache_path is not None else {}
    size = max(64, min(4096, len(paths) // (8 * _threads()) + 1))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(_threads()) as pool:
        rows = [r for part in pool.map(lambda c: _verdicts(root, c, cache), chunks) for r in part]
    decoded = sum(r[4] for r in rows)
    if cache_path is not None and decoded:
        write_cache(cache_path, root, rows)
    return {r[0]: r[3] for r in rows if r[3] is not None}, decoded, len(rows) - decoded


def check_folder(
    index: FolderIndex, checks: FolderChecks, where: str, cache_path: Path | None = None
) -> tuple[FolderIndex, str]:
    """The layout checks, then every image of the splits read decoded (cached by ``cache_path``). Returns the
    index, without the unreadable images when ``skip_unreadable`` (recorded in it), and a line saying what was
    decoded; raises a one-line UsageError for what it refuses."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from PIL import Image

    splits = checks.splits(index)
    check_layout(index, splits, where)
    t0 = time.perf_counter()
    read = index.table.filter(pc.is_in(index.table["split"].cast(pa.string()), pa.array(splits, pa.string())))
    with warnings.catch_warnings():  # an image over PIL's bomb limit is named below, not warned about on stderr
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        bad, decoded, cached = decode_all(index.root, read["path"].to_pylist(), cache_path)
    line = (
        f"decoded {decoded} images of {', '.join(s + '/' for s in splits)} ({cached} unchanged since their "
        f"last check) in {time.perf_counter() - t0:.1f} s"
    )
    skipped = sorted(bad)
    if skipped and not checks.skip_unreadable:
        listed = ""
        if len(skipped) > _NAMED and cache_path is not None:
            from bench.io import atomic_write_text

            listed_at = cache_path.with_name(UNREADABLE_LIST)
            atomic_write_text(listed_at, "".join(f"{p}\t{bad[p]}\n" for p in skipped))
            listed = f", all listed in {listed_at}"
        named = [f"{p} ({bad[p]})" for p in skipped[:_NAMED]]
        more = f" (+{len(skipped) - _NAMED} more{listed})" if len(skipped) > _NAMED else ""
        raise UsageError(
            f"{where}: {len(skipped)} unreadable image(s): {'; '.join(named)}{more}; replace or remove them, "
            "or set skip_unreadable: true under data: to leave them out (the index and run records list them)"
        )
    out = replace(index, checks=checks.as_meta(), skipped=skipped)
    if skipped:
        keep = pc.invert(pc.is_in(index.table["path"], pa.array(skipped, pa.string())))
        table = index.table.filter(keep)
        per_split = pc.value_counts(table["split"].cast(pa.string()).combine_chunks())
        counts = dict(zip(per_split.field("values").to_pylist(), per_split.field("counts").to_pylist()))
        out = replace(out, table=table, counts=counts)
        check_classes(out, splits, where)  # a class whose every image was skipped is missing now
        line += f"; warning: skipped {len(skipped)} unreadable image(s) (skip_unreadable): {_named(skipped)}"
    return out, line
