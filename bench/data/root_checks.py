"""What keeps a local image folder's index inside the folder (its data root).

The index step lists the folder: a folder that is a symbolic link out of it, or to one of its own ancestors (a
loop), is refused by name (:func:`check_links`; image files that are links are checked as they are decoded,
``bench.data.folder_checks``). Every job reads the index from the results folder, which co-users may write: a
planted index with ``../`` or absolute paths would make the job train on files outside the data, so its paths
are checked, vectorised, and each distinct folder resolved before any image is opened (:func:`check_inside`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from bench.data.index import FolderIndex


def check_links(top: Path, dirs: dict[str, int]) -> None:
    """Every folder listed, resolved, is inside ``top`` and not one of its own ancestors (a link loop): else a
    one-line UsageError naming it. A ``realpath`` per folder; image files are checked as they are decoded."""
    root = str(top)
    for rel in dirs:
        if rel == ".":
            continue
        real = os.path.realpath(os.path.join(root, rel))
        parent = os.path.realpath(os.path.join(root, os.path.dirname(rel)))
        if real != root and not real.startswith(root + os.sep):
            raise UsageError(
                f"data: imagefolder {root!r}: {rel} is a symbolic link to {real}, outside the folder; point "
                "data.path at a folder holding the images themselves (its links must stay inside it)"
            )
        if parent == real or parent.startswith(real + os.sep):
            raise UsageError(f"data: imagefolder {root!r}: {rel} is a symbolic link loop (to {real}); remove it")


#: a path the index step never writes: absolute, empty, with a ``.``/``..`` component, an empty one or a NUL
_OUTSIDE = r"^/|^$|(^|/)\.{1,2}(/|$)|//|\x00"


def check_inside(index: FolderIndex, path: str | Path, root: str | Path) -> None:
    """``index`` is the index of ``root`` and every image path in it, resolved (symbolic links of its folders
    too), stays inside ``root``; else a one-line UsageError naming the index and the path. Vectorised over the
    rows, then a ``realpath`` per distinct folder (about two thousand for ImageNet): no image is opened."""
    import pyarrow.compute as pc

    top = str(Path(root).expanduser().resolve())
    if index.root != top:
        raise UsageError(
            f"{path}: refused: it is the index of {index.root!r}, not of {top!r}; delete it and run `bench index SUITE`"
        )
    paths = index.table["path"]
    labels = pc.min_max(index.table["label"]).as_py()
    if index.table.num_rows and (labels["min"] < 0 or labels["max"] >= len(index.classes)):
        raise UsageError(
            f"{path}: refused: labels {labels['min']}..{labels['max']} for {len(index.classes)} classes; delete "
            "it and run `bench index SUITE`"
        )
    bad = paths.filter(pc.or_kleene(pc.is_null(paths), pc.match_substring_regex(paths, _OUTSIDE)))
    folders = pc.unique(pc.replace_substring_regex(paths, r"/[^/]*$", "")).to_pylist() if not len(bad) else []
    outside = [repr(bad[0].as_py())] if len(bad) else []
    for rel in folders:
        real = os.path.realpath(os.path.join(top, rel))
        if real != top and not real.startswith(top + os.sep):
            outside.append(f"folder {rel + '/'!r} (it resolves to {real})")
            break
    if outside:
        raise UsageError(
            f"{path}: refused: image path {outside[0]} leaves the data root {top} (the index step writes none: "
            "a planted index?); delete it and run `bench index SUITE`"
        )
    check_labels(index, path)


def check_labels(index: FolderIndex, path: str | Path) -> None:
    """Each row's split and class are its path's first two folders, as the index step wrote them: an index with
    labels swapped between classes (its fingerprint still valid) would train and score against wrong labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = index.table
    if not table.num_rows:
        return
    parts = pc.extract_regex(table["path"].combine_chunks(), r"^(?P<split>[^/]+)/(?P<cls>[^/]+)/")
    classes = pa.array(index.classes, pa.string()).take(table["label"].combine_chunks())
    same = pc.and_(
        pc.equal(parts.field("split"), table["split"].cast(pa.string())), pc.equal(parts.field("cls"), classes)
    )
    wrong = pc.invert(pc.fill_null(same, False))
    if pc.any(wrong).as_py():
        i = pc.index(wrong, True).as_py()
        row = table.slice(i, 1).to_pylist()[0]
        raise UsageError(
            f"{path}: refused: image {row['path']!r} is listed in split {row['split']!r} with label "
            f"{index.classes[row['label']]!r}, not its folders' (a planted index?); delete it and run `bench index SUITE`"
        )


def honest(path: str | Path, root: str | Path) -> bool:
    """Whether the index at ``path`` passes :func:`check_inside` for ``root``; the index step rebuilds one that
    does not (a planted link is still refused: it is never replaced silently)."""
    from bench.data.index import read_index

    try:
        read_index(path, root)
    except ArtifactError:
        raise
    except UsageError:
        return False
    return True
