"""The index of a local image folder: listed once (one ``os.scandir`` walk), read by every job in about a second.

ImageNet as users hold it is ``ROOT/<split>/<class>/<image>`` (splits ``train`` and ``val`` or ``validation``).
Listing 1.28 million files costs minutes per job (``datasets``' imagefolder builder globs the tree dozens of
times), so the pipeline's ``index`` step writes one parquet file per suite: a row per image (split, path
relative to ROOT, label) and, in the file's metadata, the class names, the file counts and the tree's
fingerprint. Jobs read that file and open images by path; they never list a directory.

The fingerprint is the modification time of every directory of the tree: adding, removing or renaming a file
changes its parent directory's mtime, so a changed tree is detected with a ``stat`` per directory (about two
thousand for ImageNet) and no listing. Rewriting a file in place is not detected (its directory does not change).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UsageError

INDEX_FORMAT = 1
#: what counts as an image (lower-cased suffix); ImageNet's are ``.JPEG``
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
_META_KEY = b"tokenbench_index"


@dataclass
class FolderIndex:
    root: str                          # the folder, resolved
    classes: list[str]                 # label i is classes[i]: the sorted class folder names of every split
    counts: dict[str, int]             # labelled images per split
    loose: dict[str, int]              # images directly in a split folder (no class folder: unlabelled)
    dirs: dict[str, int]               # every directory (relative, "." for ROOT) -> st_mtime_ns
    table: Any                         # pyarrow.Table: split (dictionary), path (relative to ROOT), label (int64)

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
        """What a run record states about the data: the folder, its fingerprint and its file counts."""
        return {"root": self.root, "fingerprint": self.fingerprint, "classes": len(self.classes),
                "images": dict(sorted(self.counts.items()))}


def tree_fingerprint(dirs: dict[str, int]) -> str:
    h = hashlib.sha256()
    for rel in sorted(dirs):
        h.update(f"{rel}\0{dirs[rel]}\n".encode())
    return h.hexdigest()[:16]


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def build_index(root: str | Path) -> FolderIndex:
    """List ``root`` once: every split folder, every class folder under it, every image under those (nested
    folders inside a class folder count as that class)."""
    import pyarrow as pa

    top = Path(root).expanduser().resolve()
    if not top.is_dir():
        raise UsageError(f"data: imagefolder path {str(top)!r} is not a directory")
    dirs: dict[str, int] = {".": top.stat().st_mtime_ns}
    splits, paths, labels_by_name = [], [], []
    counts: dict[str, int] = {}
    loose: dict[str, int] = {}
    class_names: set[str] = set()
    with os.scandir(top) as it:
        split_entries = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    for split in split_entries:
        dirs[split.name] = split.stat().st_mtime_ns
        n_loose = 0
        with os.scandir(split.path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                n = _walk_class(top, f"{split.name}/{entry.name}", entry.path, dirs, paths)
                if n:
                    splits.extend([split.name] * n)
                    labels_by_name.extend([entry.name] * n)
                    counts[split.name] = counts.get(split.name, 0) + n
                    class_names.add(entry.name)
            elif entry.is_file() and _is_image(entry.name):
                n_loose += 1
        if n_loose:
            loose[split.name] = n_loose
    if not counts and not loose:
        raise UsageError(f"data: imagefolder {str(top)!r} holds no images in SPLIT/CLASS/ folders "
                         f"(e.g. {top}/train/<class>/*.JPEG)")
    classes = sorted(class_names)
    label_of = {c: i for i, c in enumerate(classes)}
    table = pa.table({
        "split": pa.array(splits, pa.string()).dictionary_encode(),
        "path": pa.array(paths, pa.string()),
        "label": pa.array([label_of[c] for c in labels_by_name], pa.int64()),
    })
    return FolderIndex(str(top), classes, counts, loose, dirs, table)


def _walk_class(top: Path, rel: str, path: str, dirs: dict[str, int], out: list[str]) -> int:
    """Append the images under one class folder (sorted, recursing into sub-folders); returns how many."""
    dirs[rel] = os.stat(path).st_mtime_ns
    n = 0
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            n += _walk_class(top, f"{rel}/{entry.name}", entry.path, dirs, out)
        elif _is_image(entry.name):
            out.append(f"{rel}/{entry.name}")
            n += 1
    return n


def write_index(index: FolderIndex, path: str | Path) -> Path:
    """The index as one parquet file, written atomically; the metadata rides in the file's schema."""
    import pyarrow.parquet as pq

    from bench.io import atomic_write

    meta = {"format": INDEX_FORMAT, "root": index.root, "classes": index.classes, "counts": index.counts,
            "loose": index.loose, "dirs": index.dirs, "fingerprint": index.fingerprint}
    table = index.table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The index's metadata without reading its rows; None when the file is absent or not an index."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
        meta = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT else None


def read_index(path: str | Path) -> FolderIndex:
    import pyarrow.parquet as pq

    meta = read_meta(path)
    if meta is None:
        raise UsageError(f"{path}: not a tokenbench folder index (rebuild it: bench index SUITE)")
    table = pq.read_table(path).replace_schema_metadata(None)
    return FolderIndex(meta["root"], meta["classes"], meta["counts"], meta["loose"],
                       {k: int(v) for k, v in meta["dirs"].items()}, table)


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
    return (meta is not None and meta["root"] == str(Path(root).expanduser().resolve())
            and current_fingerprint(meta) == meta["fingerprint"])


def drop_if_stale(index_path: str | Path, root: str | Path) -> bool:
    """Remove an index that no longer describes ``root`` (files added or removed, or another folder), so the
    pipeline's index step runs again; True when it did. Costs a stat per directory the index recorded."""
    meta = read_meta(index_path)
    if meta is None or is_fresh(meta, root):
        return False
    Path(index_path).unlink(missing_ok=True)
    return True


def ensure_index(root: str | Path, path: str | Path, *, build: bool = True) -> FolderIndex:
    """The index at ``path`` when it still describes ``root``; else built (and written) when ``build``, else a
    UsageError naming the step that rebuilds it."""
    meta = read_meta(path)
    if is_fresh(meta, root):
        return read_index(path)
    if not build:
        why = "is missing" if meta is None else "describes another folder" \
            if meta["root"] != str(Path(root).expanduser().resolve()) else "is stale (files were added or removed)"
        raise UsageError(f"the folder index {str(path)!r} of {str(root)!r} {why}; rebuild it with `bench index SUITE` "
                         f"(the pipeline's index step)")
    index = build_index(root)
    write_index(index, path)
    return index
