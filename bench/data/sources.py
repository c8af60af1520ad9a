"""The four data sources behind a suite's ``data:`` mapping: embedded, hub (``bench.data.hub``), imagefolder, disk.

Each turns its config into a DataBundle. Everything the user can get wrong (unknown source or
key, missing path, absent split, unreachable hub) becomes a one-line UsageError, raised as
early and as cheaply as possible.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from bench.data import embedded
from bench.data.bundle import DEFAULT_IMAGE_SIZE, DataBundle
from bench.errors import UsageError
from bench.registry import did_you_mean

if TYPE_CHECKING:
    import datasets

    from bench.data.index import FolderIndex

SOURCES = ("embedded", "hub", "imagefolder", "disk")
EMBEDDED_NAMES = (embedded.NAME,)
#: the validation split of a local folder when the suite names none: the first of these on disk
FOLDER_VAL_SPLITS = ("validation", "val")
LOCAL_HINT = (
    "use a local copy instead: data: {source: imagefolder, path: DIR} (DIR/train/<class>/*.png, "
    "DIR/validation/<class>/*.png) or {source: disk, path: DIR} (a DatasetDict.save_to_disk folder)"
)

# Keys every non-embedded source accepts: column names and how to treat the images.
_COMMON = {"source", "name", "image_key", "label_key", "train_split", "val_split",
           "in_chans", "image_size", "fixed_size"}
_KEYS: dict[str, set[str]] = {
    "embedded": {"source", "name", "options"},
    "hub": _COMMON | {"subset", "revision", "cache_dir", "num_proc"},
    "imagefolder": (_COMMON - {"image_key", "label_key"}) | {"path"},  # a folder's columns are its own
    "disk": _COMMON | {"path"},
}
_STR_KEYS = ("name", "image_key", "label_key", "train_split", "val_split", "subset", "revision", "path", "cache_dir")
#: keys that say how data is fetched, not what it is: left out of a run's identity (a change re-runs nothing)
RUNTIME_DATA_KEYS = ("cache_dir", "num_proc")


def normalize(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a ``data:`` mapping and fill defaults; an empty one means embedded canvas-digits."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise UsageError(f"data: must be a mapping with a 'source' key, got {type(cfg).__name__}")
    out = dict(cfg)
    source = out.setdefault("source", "embedded")
    if source not in SOURCES:
        raise UsageError(
            f"unknown data source {source!r}{did_you_mean(str(source), list(SOURCES))} "
            f"(valid: {', '.join(SOURCES)})"
        )
    allowed = sorted(_KEYS[source])
    for key in out:
        if key not in allowed:
            raise UsageError(
                f"data: unknown key {key!r} for source {source!r}{did_you_mean(str(key), allowed)} "
                f"(allowed: {', '.join(allowed)})"
            )
    for key in _STR_KEYS:
        if key in out and (not isinstance(out[key], str) or not out[key]):
            raise UsageError(f"data: {key} must be a non-empty string, got {out[key]!r}")
    if source == "embedded":
        name = out.setdefault("name", embedded.NAME)
        if name not in EMBEDDED_NAMES:
            raise UsageError(
                f"unknown embedded dataset {name!r}{did_you_mean(name, list(EMBEDDED_NAMES))} "
                f"(known: {', '.join(EMBEDDED_NAMES)})"
            )
        if not isinstance(out.get("options") or {}, Mapping):
            raise UsageError(f"data: options must be a mapping, got {out['options']!r}")
        return out
    if source == "hub" and "name" not in out:
        raise UsageError("data: source 'hub' needs a dataset name, e.g. name: imagenet-1k")
    if source in ("imagefolder", "disk") and "path" not in out:
        raise UsageError(f"data: source {source!r} needs a path: to a local directory")
    out.setdefault("train_split", "train")
    if source != "imagefolder":  # a folder's default is whichever of validation/ and val/ it has
        out.setdefault("val_split", "validation")
    out.setdefault("image_key", "image")
    out.setdefault("label_key", "label")
    out.setdefault("in_chans", 3)
    out.setdefault("image_size", DEFAULT_IMAGE_SIZE)
    out.setdefault("fixed_size", False)
    if "num_proc" in out and (not isinstance(out["num_proc"], int) or isinstance(out["num_proc"], bool)
                              or out["num_proc"] < 1):
        raise UsageError(f"data: num_proc must be a positive integer, got {out['num_proc']!r}")
    if out["in_chans"] not in (1, 3) or isinstance(out["in_chans"], bool):
        raise UsageError(f"data: in_chans must be 1 or 3, got {out['in_chans']!r}")
    size = out["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UsageError(f"data: image_size must be a positive integer, got {size!r}")
    if not isinstance(out["fixed_size"], bool):
        raise UsageError(f"data: fixed_size must be true or false, got {out['fixed_size']!r}")
    return out


def identity(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The data config a result depends on: without where the hub's files are cached or how many processes
    prepare them."""
    return {k: v for k, v in (cfg or {}).items() if k not in RUNTIME_DATA_KEYS}


def embedded_config(cfg: Mapping[str, Any]) -> embedded.CanvasDigitsConfig:
    return embedded.CanvasDigitsConfig.from_options(cfg.get("options"))


def _local_path(cfg: Mapping[str, Any]) -> Path:
    path = Path(cfg["path"]).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise UsageError(f"data: {cfg['source']} path {str(path)!r} {what}")
    return path


def validate(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything checkable without loading or touching the network; returns the normalized cfg."""
    out = normalize(cfg)
    if out["source"] == "embedded":
        embedded_config(out)
    elif out["source"] in ("imagefolder", "disk"):
        _local_path(out)
    return out


def short_name(cfg: Mapping[str, Any]) -> str:
    """Dataset name for result rows: the configured name, else the local directory's name."""
    if "name" in cfg:
        return str(cfg["name"])
    return Path(cfg["path"]).expanduser().resolve().name


def describe(cfg: Mapping[str, Any] | None) -> str:
    out = normalize(cfg)
    if out["source"] == "embedded":
        return embedded_config(out).describe()
    if out["source"] == "hub" and "subset" in out:
        return f"{out['name']}/{out['subset']}"
    return short_name(out)


# ---------------------------------------------------------------- shared bundle construction


def _pick_split(splits: Mapping[str, "datasets.Dataset"], split: str, where: str) -> "datasets.Dataset":
    if split not in splits:
        have = sorted(splits)
        raise UsageError(
            f"{where} has no split {split!r}{did_you_mean(split, have)} (splits: {', '.join(have)})"
        )
    return splits[split]


def _num_classes(train: "datasets.Dataset", val: "datasets.Dataset", label_key: str, where: str) -> int:
    import datasets

    feature = train.features[label_key]
    if isinstance(feature, datasets.ClassLabel):
        return int(feature.num_classes)
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        raise UsageError(
            f"{where}: label column {label_key!r} must hold class ids (ClassLabel or integers), "
            f"got {feature}"
        )
    return int(max(max(train.unique(label_key)), max(val.unique(label_key)))) + 1


def bundle_from_splits(
    splits: Mapping[str, "datasets.Dataset"], cfg: Mapping[str, Any], where: str
) -> DataBundle:
    """Pick the configured splits, check the columns exist, and wrap them in a DataBundle."""
    train = _pick_split(splits, cfg["train_split"], where)
    val = _pick_split(splits, cfg["val_split"], where)
    for key in (cfg["image_key"], cfg["label_key"]):
        for split, ds in ((cfg["train_split"], train), (cfg["val_split"], val)):
            if key not in ds.column_names:
                cols = list(ds.column_names)
                raise UsageError(
                    f"{where}: split {split!r} has no column {key!r}{did_you_mean(key, cols)} "
                    f"(columns: {', '.join(cols)}); set image_key/label_key"
                )
    return DataBundle(
        name=short_name(cfg),
        train=train,
        val=val,
        num_classes=_num_classes(train, val, cfg["label_key"], where),
        image_key=cfg["image_key"],
        label_key=cfg["label_key"],
        image_size=cfg["image_size"],
        in_chans=cfg["in_chans"],
        fixed_size=cfg["fixed_size"],
    )


# ---------------------------------------------------------------- the four sources


def load_embedded(cfg: Mapping[str, Any]) -> DataBundle:
    ecfg = embedded_config(cfg)
    dd = embedded.load_canvas_digits(ecfg)
    return DataBundle(
        name=embedded.NAME,
        train=dd["train"],
        val=dd["validation"],
        num_classes=embedded.NUM_CLASSES,
        image_key="image",
        label_key="label",
        image_size=ecfg.canvas,
        in_chans=1,
        fixed_size=True,
    )


def _folder_split(index: "FolderIndex", split: str, where: str) -> "datasets.Dataset":
    import datasets
    from datasets.table import InMemoryTable

    if split not in index.counts:
        if split in index.loose:
            raise UsageError(f"{where}: split {split!r} holds {index.loose[split]} images but no class folders; "
                             f"sort them into {split}/<class>/ (for ImageNet's val: its valprep.sh)")
        have = index.splits()
        raise UsageError(f"{where} has no split {split!r}{did_you_mean(split, have)} (splits: {', '.join(have)})")
    features = datasets.Features({"image": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=index.classes)})
    return datasets.Dataset(InMemoryTable(index.split_table(split).rename_columns(["image", "label"])),
                            info=datasets.DatasetInfo(features=features), split=split)


def load_imagefolder(cfg: Mapping[str, Any], index_path: str | Path | None = None) -> DataBundle:
    """A local folder through its index (``bench.data.index``): read from ``index_path`` (built there when it
    is missing), or listed now when no index path is given. Images are opened by path, never via a listing."""
    from bench.data.index import build_index, ensure_index

    path = _local_path(cfg)
    where = f"imagefolder {str(path)!r}"
    # a job builds a missing index (``bench train`` run by hand) but never replaces one: a folder that changed
    # under a running suite is an error, so one suite's runs never read two versions of it
    index = build_index(path) if index_path is None else ensure_index(path, index_path,
                                                                       build=not Path(index_path).exists())
    val_split = cfg.get("val_split") or next((s for s in FOLDER_VAL_SPLITS if s in index.splits()), FOLDER_VAL_SPLITS[0])
    train, val = (_folder_split(index, s, where) for s in (cfg["train_split"], val_split))
    return DataBundle(name=short_name(cfg), train=train, val=val, num_classes=len(index.classes),
                      image_key="image", label_key="label", image_size=cfg["image_size"], in_chans=cfg["in_chans"],
                      fixed_size=cfg["fixed_size"], image_root=index.root, index=index.summary())


def load_disk(cfg: Mapping[str, Any]) -> DataBundle:
    import datasets

    path = _local_path(cfg)
    try:
        dd = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(
            f"data: {str(path)!r} is not a saved dataset (DatasetDict.save_to_disk): {_one_line(e)}"
        ) from None
    if not isinstance(dd, datasets.DatasetDict):
        raise UsageError(
            f"data: {str(path)!r} holds a single Dataset; save a DatasetDict with "
            f"{cfg['train_split']!r} and {cfg['val_split']!r} splits"
        )
    return bundle_from_splits(dd, cfg, f"disk dataset {str(path)!r}")


def load(cfg: Mapping[str, Any] | None, index_path: str | Path | None = None) -> DataBundle:
    """The bundle a ``data:`` mapping names; a local folder is read through the index at ``index_path``."""
    out = validate(cfg)
    if out["source"] == "imagefolder":
        return load_imagefolder(out, index_path)
    if out["source"] == "hub":
        from bench.data.hub import load_hub

        return load_hub(out)
    return {"embedded": load_embedded, "disk": load_disk}[out["source"]](out)


def _one_line(e: object) -> str:
    return " ".join(str(e).split())
