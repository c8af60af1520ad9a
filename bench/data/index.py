"""The index of a local image folder: listed once (one ``os.scandir`` walk), read by every job in about a second.

ImageNet as users hold it is ``ROOT/<split>/<class>/<image>`` (splits ``train`` and ``val`` or ``validation``).
Listing 1.28 million files costs minutes per job (``datasets``' imagefolder builder globs the tree dozens of
times), so the pipeline's ``index`` step writes one parquet file per suite: a row per image (split, path
relative to ROOT, label) and, in the file's metadata, the class names, the file counts and the tree's
fingerprint. Jobs read that file and open images by path; they never list a directory. Before it is written
the folder is checked (``bench.data.folder_checks``: class folders, every image decoded, verdicts cached).

The fingerprint is the modification time of every directory of the tree: adding, removing or renaming a file
changes its parent directory's mtime, so a changed tree is detected with a ``stat`` per directory (about two
thousand for ImageNet) and no listing. Rewriting a file in place is not detected (its directory does not change).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data.root_checks import check_inside, check_links, honest
from bench.errors import UsageError

if TYPE_CHECKING:
    from bench.data.folder_checks import FolderChecks

INDEX_FORMAT = 1
#: what counts as an image (lower-cased suffix); ImageNet's are ``.JPEG``
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
_META_KEY = b"tokenbench_index"
_SUMMARY_NAMES = 20  # skipped files a run record names


@dataclass
class FolderIndex:
    root: str  # the folder, resolved
    classes: list[str]  # label i is classes[i]: the sorted class folder names of every split
    counts: dict[str, int]  # labelled images per split
    loose: dict[str, int]  # images directly in a split folder (no class folder: unlabelled)
    dirs: dict[str, int]  # every directory (relative, "." for ROOT) -> st_mtime_ns
    table: Any  # pyarrow.Table: split (dictionary), path (relative to ROOT), label (int64)
    empty: list[str] = field(default_factory=list)  # class folders without images ("train/eel")
    #: the data keys the folder was checked with (bench.data.folder_checks.FolderChecks); None: not checked
    checks: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (skip_unreadable)

    @property
    def fingerprint(self) -> str:
        return tree_fingerprint(self.dirs)

    @property
    def files(self) -> int:
        return sum(self.counts.values())

    def splits(self) -> list[str]:
        return sorted(set(self.counts) | set(self.loose))

    def split_table(self, split: str) -> Any:
        """The rows of one split (columns path, label)."""
        import pyarrow.compute as pc

        return self.table.filter(pc.equal(self.table["split"], split)).select(["path", "label"])

    def summary(self) -> dict[str, Any]:
        """What a run record states about the data: the folder, its fingerprint, its file counts and, once
        checked, the unreadable images left out (their number, and the first of them by name)."""
        out: dict[str, Any] = {
            "root": self.root,
            "fingerprint": self.fingerprint,
            "classes": len(self.classes),
            "images": dict(sorted(self.counts.items())),
        }
        if self.checks is not None:
            out["unreadable_skipped"] = len(self.skipped)
        if self.skipped:
            more = f" (+{len(self.skipped) - _SUMMARY_NAMES} more, listed in the index)"
            out["unreadable_files"] = "; ".join(self.skipped[:_SUMMARY_NAMES]) + (
                more if len(self.skipped) > _SUMMARY_NAMES else ""
            )
        return out


def tree_fingerprint(dirs: dict[str, int]) -> str:
    h = hashlib.sha256()
    for rel in sorted(dirs):
        h.update(f"{rel}\0{dirs[rel]}\n".encode())
    return h.hexdigest()[:16]


_EXTENSIONS = tuple(IMAGE_EXTENSIONS)
_IMAGE_SUFFIX = r"\.(" + "|".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)) + r")$"


def _is_image(name: str) -> bool:
    return name.lower().endswith(_EXTENSIONS) and not name.startswith(".")


def build_index(root: str | Path) -> FolderIndex:
    """List ``root`` once: every split folder, every class folder under it, every image under those (nested
    folders inside a class folder count as that class).

    Python touches each directory, not each file: a flat class folder (ImageNet's layout) is read with
    ``os.listdir`` and sorted, and the names are filtered and joined to paths by pyarrow, all folders at once, so the
    index costs about what one plain walk of the tree costs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    top = Path(root).expanduser().resolve()
    if not top.is_dir():
        raise UsageError(f"data: imagefolder path {str(top)!r} is not a directory")
    dirs: dict[str, int] = {".": top.stat().st_mtime_ns}
    folders: list[tuple[str, str, list[str], bool]] = []  # (split, class, names or paths, already paths)
    loose: dict[str, int] = {}
    with os.scandir(top) as it:
        split_names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for split in split_names:
        split_dir = os.path.join(top, split)
        dirs[split] = os.stat(split_dir).st_mtime_ns
        class_dirs, n_loose = [], 0
        with os.scandir(split_dir) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    class_dirs.append(entry.name)
                elif _is_image(entry.name):
                    n_loose += 1
        for cls in sorted(class_dirs):
            rel, path = f"{split}/{cls}", os.path.join(split_dir, cls)
            st = os.stat(path)
            dirs[rel] = st.st_mtime_ns
            if st.st_nlink == 2:
                # POSIX file systems count a directory's links as 2 + its sub-directories: none here, so every
                # entry is a file and the names alone will do
                names = os.listdir(path)
                names.sort()
                folders.append((split, cls, names, False))
            else:  # file systems without that convention (btrfs), or nested folders
                found: list[str] = []
                _walk_class(rel, path, dirs, found, listed=True)
                folders.append((split, cls, found, True))
        if n_loose:
            loose[split] = n_loose
    # the flat folders' names (each folder's sorted), all at once: images only, prefixed with the folder's path
    flat = [i for i, f in enumerate(folders) if not f[3]]
    names = pa.array([n for i in flat for n in folders[i][2]], pa.string())
    owner = np.repeat(np.arange(len(flat), dtype=np.int32), [len(folders[i][2]) for i in flat])
    keep = pc.and_(
        pc.match_substring_regex(names, _IMAGE_SUFFIX, ignore_case=True), pc.invert(pc.starts_with(names, "."))
    )
    names, owner = names.filter(keep), pa.array(owner).filter(keep)
    prefixes = pa.array([f"{folders[i][0]}/{folders[i][1]}/" for i in flat], pa.string())
    flat_paths = pc.binary_join_element_wise(prefixes.take(owner), names, "")
    per_flat = np.bincount(owner.to_numpy(), minlength=len(flat))
    starts = dict(zip(flat, np.concatenate([[0], np.cumsum(per_flat)[:-1]]).tolist()))
    sizes = dict(zip(flat, per_flat.tolist()))
    chunks, runs, counts, empty = [], [], {}, []
    for i, (split, cls, found, done) in enumerate(folders):
        chunk = pa.array(found, pa.string()) if done else flat_paths.slice(starts[i], sizes[i])
        if len(chunk):
            chunks.append(chunk)
            runs.append((split, cls, len(chunk)))
            counts[split] = counts.get(split, 0) + len(chunk)
        else:
            empty.append(f"{split}/{cls}")
    check_links(top, dirs)
    if not counts and not loose:
        raise UsageError(
            f"data: imagefolder {str(top)!r} holds no images in SPLIT/CLASS/ folders (e.g. {top}/train/<class>/*.JPEG)"
        )
    classes = sorted({cls for _, cls, _ in runs})
    label_of = {c: i for i, c in enumerate(classes)}
    run_sizes = np.array([n for _, _, n in runs], dtype=np.int64)
    split_of = {s: i for i, s in enumerate(split_names)}
    table = pa.table(
        {
            "split": pa.DictionaryArray.from_arrays(
                pa.array(np.repeat(np.array([split_of[s] for s, _, _ in runs], dtype=np.int32), run_sizes)),
                pa.array(split_names, pa.string()),
            ),
            "path": pa.chunked_array(chunks, pa.string()).combine_chunks() if chunks else pa.array([], pa.string()),
            "label": pa.array(np.repeat(np.array([label_of[c] for _, c, _ in runs], dtype=np.int64), run_sizes)),
        }
    )
    return FolderIndex(str(top), classes, counts, loose, dirs, table, empty)


def _walk_class(rel: str, path: str, dirs: dict[str, int], out: list[str], listed: bool = False) -> int:
    """Append the images under one class folder (sorted by name, recursing into sub-folders in place);
    returns how many. ``listed``: its mtime is already recorded."""
    if not listed:
        dirs[rel] = os.stat(path).st_mtime_ns
    files, subdirs = [], []
    with os.scandir(path) as it:
        for entry in it:
            name = entry.name
            if entry.is_dir():
                if entry.is_symlink():  # a link to an ancestor would recurse forever: refused before the descent
                    real, here = os.path.realpath(entry.path), os.path.realpath(path)
                    if here == real or here.startswith(real + os.sep):
                        raise UsageError(
                            f"data: imagefolder: {rel}/{name} is a symbolic link loop (to {real}); remove it"
                        )
                if not name.startswith("."):
                    subdirs.append(name)
            elif _is_image(name):
                files.append(name)
    prefix, n, is_file = rel + "/", 0, set(files)
    for name in sorted(files + subdirs):
        if name in is_file:
            out.append(prefix + name)
            n += 1
        else:
            n += _walk_class(prefix + name, os.path.join(path, name), dirs, out)
    return n


def write_index(index: FolderIndex, path: str | Path) -> Path:
    """The index as one parquet file, written atomically; the metadata rides in the file's schema."""
    import pyarrow.parquet as pq

    from bench.io import atomic_write

    meta = {
        "format": INDEX_FORMAT,
        "root": index.root,
        "classes": index.classes,
        "counts": index.counts,
        "loose": index.loose,
        "dirs": index.dirs,
        "fingerprint": index.fingerprint,
        "empty": index.empty,
        "checks": index.checks,
        "skipped": index.skipped,
    }
    table = index.table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    # paths are unique: a dictionary for them would be wasted work; snappy writes twice as fast as zstd
    return atomic_write(
        path,
        lambda tmp: pq.write_table(table, tmp, compression="snappy", use_dictionary=["split"], write_statistics=False),
    )


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The index's metadata without reading its rows; None when the file is absent or not an index."""
    import pyarrow.parquet as pq

    from bench.io import open_artifact

    try:
        with open_artifact(path) as f:  # inside results: a planted link is refused (bench.io), never read
            raw = (pq.read_schema(f).metadata or {}).get(_META_KEY)
        meta = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT else None


def read_index(path: str | Path, root: str | Path | None = None) -> FolderIndex:
    """The index at ``path``, rows and metadata read from one open file; with ``root`` (the suite's folder) it
    must be that folder's, every path in it inside it (``bench.data.root_checks``: the results are shared)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.io import open_artifact

    not_index = UsageError(f"{path}: not a tokenbench folder index (rebuild it: bench index SUITE)")
    try:
        with open_artifact(path) as f:
            table = pq.read_table(f)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"null"))
    except (OSError, ValueError, pa.ArrowException):
        raise not_index from None
    want = {"split": pa.dictionary(pa.int32(), pa.string()), "path": pa.string(), "label": pa.int64()}
    columns = dict(zip(table.column_names, table.schema.types))
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or columns != want:
        raise not_index
    try:
        index = FolderIndex(
            str(meta["root"]),
            [str(c) for c in meta["classes"]],
            {str(k): int(v) for k, v in meta["counts"].items()},
            {str(k): int(v) for k, v in meta["loose"].items()},
            {str(k): int(v) for k, v in meta["dirs"].items()},
            table.replace_schema_metadata(None),
            [str(e) for e in meta.get("empty") or []],
            meta.get("checks"),
            [str(e) for e in meta.get("skipped") or []],
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise not_index from None
    if root is not None:
        check_inside(index, path, root)
    return index


def current_fingerprint(meta: dict[str, Any]) -> str | None:
    """The fingerprint of the tree now, over the directories the index recorded (a stat each, no listing);
    None when one of them is gone."""
    root = Path(meta["root"])
    now = {}
    for rel in meta["dirs"]:
        try:
            now[rel] = os.stat(root / rel if rel != "." else root).st_mtime_ns
        except OSError:
            return None
    return tree_fingerprint(now)


def is_fresh(meta: dict[str, Any] | None, root: str | Path) -> bool:
    """Whether an index (its metadata) still describes the folder ``root``."""
    return (
        meta is not None
        and meta["root"] == str(Path(root).expanduser().resolve())
        and current_fingerprint(meta) == meta["fingerprint"]
    )


def drop_if_stale(index_path: str | Path, root: str | Path) -> bool:
    """Remove an index that no longer describes ``root`` (files added or removed, or another folder), so the
    pipeline's index step runs again; True when it did. Costs a stat per directory the index recorded."""
    meta = read_meta(index_path)
    if meta is None or is_fresh(meta, root):
        return False
    from bench.io import safe_unlink

    safe_unlink(index_path)
    return True


def _checked_alike(meta: dict[str, Any], checks: FolderChecks | None, unchecked_ok: bool) -> bool:
    """Whether an index was checked with the data keys ``checks`` (None: any); ``unchecked_ok``: an index of an
    earlier harness, never checked, passes too (a job reads it; ``bench index`` rebuilds it)."""
    if checks is None:
        return True
    done = meta.get("checks")
    return done == checks.as_meta() or (done is None and unchecked_ok)


def checked(root: str | Path, path: str | Path | None, checks: FolderChecks | None) -> tuple[FolderIndex, str]:
    """``root`` listed and, with ``checks``, checked (decode verdicts cached beside ``path``); the index and a
    line on the check. Raises a one-line UsageError for what the checks refuse."""
    from bench.data.folder_checks import CACHE_NAME, check_folder

    index = build_index(root)
    if checks is None:
        return index, "not checked"
    cache = Path(path).with_name(CACHE_NAME) if path is not None else None
    return check_folder(index, checks, f"data: imagefolder {str(root)!r}", cache)


def ensure_index(
    root: str | Path, path: str | Path, *, build: bool = True, checks: FolderChecks | None = None
) -> FolderIndex:
    """The index at ``path`` when it still describes ``root`` (and was checked with ``checks``); else built,
    checked and written when ``build``, else a UsageError naming the step that rebuilds it."""
    meta = read_meta(path)
    if is_fresh(meta, root) and _checked_alike(meta, checks, unchecked_ok=True):
        return read_index(path, root)
    if not build:
        why = (
            "is missing"
            if meta is None
            else "describes another folder"
            if meta["root"] != str(Path(root).expanduser().resolve())
            else "is stale (files were added or removed)"
            if current_fingerprint(meta) != meta["fingerprint"]
            else f"was checked with other data keys ({meta.get('checks')})"
        )
        raise UsageError(
            f"the folder index {str(path)!r} of {str(root)!r} {why}; rebuild it with `bench index SUITE` "
            f"(the pipeline's index step)"
        )
    index, _ = checked(root, path, checks)
    write_index(index, path)
    return index


def refresh(root: str | Path, path: str | Path, checks: FolderChecks | None = None) -> str:
    """``bench index``: write the index of ``root`` at ``path`` unless it is up to date (and was checked with
    ``checks``); says what it did."""
    import time

    meta = read_meta(path)
    fresh = meta is not None and is_fresh(meta, root) and _checked_alike(meta, checks, unchecked_ok=False)
    if fresh and honest(path, root):  # a planted index (paths out of the root, swapped labels) is rebuilt
        return f"{path}: up to date"
    t0 = time.perf_counter()
    built, check_line = checked(root, path, checks)
    write_index(built, path)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(built.counts.items()))
    return (
        f"{path}: {built.files} images ({counts}), {len(built.classes)} classes, fingerprint {built.fingerprint}, "
        f"listed and checked in {time.perf_counter() - t0:.1f} s; {check_line}"
    )
