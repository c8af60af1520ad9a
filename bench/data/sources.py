"""The four data sources behind a suite's ``data:`` mapping: embedded, hub (``bench.data.hub``), imagefolder, disk.

Each source is an entry of ``REGISTRY`` (``bench.data.source_registry``) declaring its keys (JSON type, one-line
doc, required, runtime, bounds, default) beside the loader that turns its config into a DataBundle. The key
checks here and the ``data`` part of the suite schema (``data_schema``, which ``bench.config`` injects when it
loads the schema) are both derived from those declarations. A new source is one entry and its loader, here.

Everything the user can get wrong (unknown source or key, wrong type, missing path, absent split, unreachable
hub) becomes a one-line UsageError, raised as early and as cheaply as possible. Importing this module imports
neither torch nor datasets (nor numpy): loaders import what they need.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data.bundle import DEFAULT_IMAGE_SIZE, DataBundle
from bench.data.source_registry import SOURCE_KEY, DataSource, Key, SourceRegistry
from bench.data.source_registry import data_schema as _data_schema
from bench.data.source_registry import markdown_table as _markdown_table
from bench.errors import UsageError, one_line
from bench.registry import did_you_mean

if TYPE_CHECKING:
    import datasets

    from bench.data.embedded import CanvasDigitsConfig
    from bench.data.index import FolderIndex

#: the data sources by name, in the order below; the first (embedded) is the default
REGISTRY = SourceRegistry("data source")
#: the embedded datasets (``bench.data.embedded.NAME``; written out so declaring it imports no numpy)
EMBEDDED_NAMES = ("canvas-digits",)
LOCAL_HINT = (
    "use a local copy instead: data: {source: imagefolder, path: DIR} (DIR/train/<class>/*.png, "
    "DIR/validation/<class>/*.png) or {source: disk, path: DIR} (a DatasetDict.save_to_disk folder)"
)

# ---------------------------------------------------------------- keys several sources declare

_RESULTS_NAME = Key("name", "string", "the dataset's name in results (default: the folder's name)")
_TRAIN_SPLIT = Key("train_split", "string", "the split to train on", default="train")
_VAL_SPLIT = Key("val_split", "string", "the split to evaluate on", default="validation")
_COLUMNS = (
    Key("image_key", "string", "the column holding the images", default="image"),
    Key("label_key", "string", "the column holding the class ids (ClassLabel or integers)", default="label"),
)
_IMAGES = (
    Key(
        "in_chans",
        "integer",
        "the channels the model takes (1: images converted to grayscale)",
        default=3,
        choices=(1, 3),
    ),
    Key(
        "image_size",
        "integer",
        "the images' native size in pixels, used with fixed_size (the model's input size is the backbone's)",
        default=DEFAULT_IMAGE_SIZE,
        minimum=8,
    ),
    Key(
        "fixed_size",
        "boolean",
        "whether every image already is image_size x image_size: transforms then only "
        "convert and resize, no random crop or flip unless the recipe asks for augmentation",
        default=False,
    ),
)


def normalize(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a ``data:`` mapping against its source's declared keys and fill defaults; an empty one means
    embedded canvas-digits."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise UsageError(f"data: must be a mapping with a 'source' key, got {type(cfg).__name__}")
    source = cfg.get(SOURCE_KEY, REGISTRY.in_order()[0])
    if not isinstance(source, str) or source not in REGISTRY:
        names = REGISTRY.in_order()
        raise UsageError(
            f"unknown data source {source!r}{did_you_mean(str(source), names)} (valid: {', '.join(names)})"
        )
    return REGISTRY.get(source).normalize(cfg)


def data_schema() -> dict[str, Any]:
    """The ``data`` part of the suite schema, generated from the declarations (``bench.config`` injects it)."""
    return _data_schema(REGISTRY)


def markdown_table() -> str:
    """The sources and every key of every source as the README's Markdown tables."""
    return _markdown_table(REGISTRY)


def identity(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The data config a result depends on: without where the hub's files are cached or how many processes
    prepare them."""
    return {k: v for k, v in (cfg or {}).items() if k not in RUNTIME_DATA_KEYS}


def _local_path(cfg: Mapping[str, Any]) -> Path:
    path = Path(cfg["path"]).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise UsageError(f"data: {cfg['source']} path {str(path)!r} {what}")
    return path


def validate(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything checkable without loading or touching the network; returns the normalized cfg."""
    out = normalize(cfg)
    check = REGISTRY.get(out[SOURCE_KEY]).check
    if check is not None:
        check(out)
    return out


def short_name(cfg: Mapping[str, Any]) -> str:
    """Dataset name for result rows: the configured name, else the local directory's name."""
    if "name" in cfg:
        return str(cfg["name"])
    return Path(cfg["path"]).expanduser().resolve().name


def describe(cfg: Mapping[str, Any] | None) -> str:
    """Dataset label for result rows."""
    out = normalize(cfg)
    label = REGISTRY.get(out[SOURCE_KEY]).describe
    return label(out) if label is not None else short_name(out)


def load(cfg: Mapping[str, Any] | None, index_path: str | Path | None = None) -> DataBundle:
    """The bundle a ``data:`` mapping names; a local folder is read through the index at ``index_path``."""
    out = validate(cfg)
    source = REGISTRY.get(out[SOURCE_KEY])
    loader = source.load_function()
    return loader(out, index_path) if source.indexed else loader(out)


# ---------------------------------------------------------------- shared bundle construction


def _pick_split(splits: Mapping[str, datasets.Dataset], split: str, where: str) -> datasets.Dataset:
    if split not in splits:
        have = sorted(splits)
        raise UsageError(f"{where} has no split {split!r}{did_you_mean(split, have)} (splits: {', '.join(have)})")
    return splits[split]


def _num_classes(train: datasets.Dataset, val: datasets.Dataset, label_key: str, where: str) -> int:
    import datasets

    feature = train.features[label_key]
    if isinstance(feature, datasets.ClassLabel):
        return int(feature.num_classes)
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        raise UsageError(
            f"{where}: label column {label_key!r} must hold class ids (ClassLabel or integers), got {feature}"
        )
    return int(max(max(train.unique(label_key)), max(val.unique(label_key)))) + 1


def bundle_from_splits(splits: Mapping[str, datasets.Dataset], cfg: Mapping[str, Any], where: str) -> DataBundle:
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


# ---------------------------------------------------------------- the four sources, each beside its loader


def embedded_config(cfg: Mapping[str, Any]) -> CanvasDigitsConfig:
    from bench.data.embedded import CanvasDigitsConfig

    return CanvasDigitsConfig.from_options(cfg.get("options"))


def load_embedded(cfg: Mapping[str, Any]) -> DataBundle:
    from bench.data import embedded

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


REGISTRY.add_source(
    DataSource(
        "embedded",
        "canvas-digits: scikit-learn's 1,797 real handwritten digits at seeded random positions on a 32x32 canvas "
        "(64 patch tokens, mostly background), built locally with datasets and cached under $TOKENBENCH_CACHE",
        keys=(
            Key("name", "string", "the embedded dataset", default=EMBEDDED_NAMES[0], choices=EMBEDDED_NAMES),
            Key(
                "options",
                "object",
                "its build options: canvas, scale, val_fraction, train_placements, "
                "val_placements, seed, align (bench.data.embedded.CanvasDigitsConfig)",
            ),
        ),
        loader=load_embedded,
        check=embedded_config,
        describe=lambda cfg: embedded_config(cfg).describe(),
    )
)
REGISTRY.add_source(
    DataSource(
        "hub",
        "the Hugging Face hub through datasets.load_dataset (parquet repositories; datasets >= 4 runs no loading "
        "scripts), with the token from HF_TOKEN; fails in about a second when the hub cannot answer",
        keys=(
            Key(
                "name",
                "string",
                "a dataset name on the hub, e.g. ILSVRC/imagenet-1k, also its name in results",
                required=True,
            ),
            Key("subset", "string", "the dataset's configuration (load_dataset's second argument)"),
            Key("revision", "string", "a branch, tag or commit of the dataset repository, e.g. refs/convert/parquet"),
            _TRAIN_SPLIT,
            _VAL_SPLIT,
            *_COLUMNS,
            *_IMAGES,
            Key("cache_dir", "string", "where datasets caches the download (default: its own cache)", runtime=True),
            Key("num_proc", "integer", "processes that download and prepare it", runtime=True, minimum=1),
        ),
        loader="bench.data.hub:load_hub",
        describe=lambda cfg: f"{cfg['name']}/{cfg['subset']}" if "subset" in cfg else cfg["name"],
    )
)


def _folder_split(index: FolderIndex, split: str, where: str) -> datasets.Dataset:
    import datasets
    from datasets.table import InMemoryTable

    from bench.data.folder_checks import check_split

    check_split(index, split, where)
    features = datasets.Features({"image": datasets.Value("string"), "label": datasets.ClassLabel(names=index.classes)})
    return datasets.Dataset(
        InMemoryTable(index.split_table(split).rename_columns(["image", "label"])),
        info=datasets.DatasetInfo(features=features),
        split=split,
    )


def load_imagefolder(cfg: Mapping[str, Any], index_path: str | Path | None = None) -> DataBundle:
    """A local folder through its index (``bench.data.index``): read from ``index_path`` (built and checked there
    when it is missing), or listed and checked now when no index path is given. Images are opened by path, never
    via a listing."""
    from bench.data.folder_checks import FolderChecks
    from bench.data.index import checked, ensure_index

    path = _local_path(cfg)
    where = f"imagefolder {str(path)!r}"
    checks = FolderChecks.from_cfg(cfg)
    # a job builds a missing index (``bench train`` run by hand) but never replaces one: a folder that changed
    # under a running suite is an error, so one suite's runs never read two versions of it
    index = (
        checked(path, None, checks)[0]
        if index_path is None
        else ensure_index(path, index_path, build=not Path(index_path).exists(), checks=checks)
    )
    train, val = (_folder_split(index, s, where) for s in (cfg["train_split"], checks.val(index)))
    return DataBundle(
        name=short_name(cfg),
        train=train,
        val=val,
        num_classes=len(index.classes),
        image_key="image",
        label_key="label",
        image_size=cfg["image_size"],
        in_chans=cfg["in_chans"],
        fixed_size=cfg["fixed_size"],
        image_root=index.root,
        index=index.summary(),
    )


REGISTRY.add_source(
    DataSource(
        "imagefolder",
        "local images in class folders, listed once per suite into results/<suite>/data/index.parquet",
        keys=(
            Key(
                "path",
                "string",
                "a path to a folder with train/<class>/* and validation/<class>/* (or val/<class>/*)",
                required=True,
            ),
            _RESULTS_NAME,
            _TRAIN_SPLIT,
            Key("val_split", "string", "the split folder to evaluate on (default: validation/, else val/)"),
            *_IMAGES,  # a folder's columns are its own: no image_key or label_key
            Key(
                "skip_unreadable",
                "boolean",
                "whether images that do not decode (truncated, not an image) are left out of the index, which "
                "lists them as run records do, instead of refused by name",
                default=False,
            ),
        ),
        loader=load_imagefolder,
        check=lambda cfg: _local_path(cfg),
        indexed=True,
    )
)


def refresh_index(cfg: Mapping[str, Any], index_path: str | Path) -> str:
    """``bench index``: list and check the folder of an imagefolder ``data:`` mapping into ``index_path``
    unless that index is up to date; says what it did."""
    from bench.data.folder_checks import FolderChecks
    from bench.data.index import refresh

    out = validate(cfg)
    return refresh(out["path"], index_path, FolderChecks.from_cfg(out))


def load_disk(cfg: Mapping[str, Any]) -> DataBundle:
    import datasets

    path = _local_path(cfg)
    try:
        dd = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(
            f"data: {str(path)!r} is not a saved dataset (DatasetDict.save_to_disk): {one_line(e)}"
        ) from None
    if not isinstance(dd, datasets.DatasetDict):
        raise UsageError(
            f"data: {str(path)!r} holds a single Dataset; save a DatasetDict with "
            f"{cfg['train_split']!r} and {cfg['val_split']!r} splits"
        )
    return bundle_from_splits(dd, cfg, f"disk dataset {str(path)!r}")


REGISTRY.add_source(
    DataSource(
        "disk",
        "a DatasetDict saved with save_to_disk, loaded with datasets.load_from_disk",
        keys=(
            Key("path", "string", "a path to a DatasetDict.save_to_disk folder", required=True),
            _RESULTS_NAME,
            _TRAIN_SPLIT,
            _VAL_SPLIT,
            *_COLUMNS,
            *_IMAGES,
        ),
        loader=load_disk,
        check=lambda cfg: _local_path(cfg),
    )
)


#: the source names, in registry order
SOURCES = tuple(REGISTRY.in_order())
#: keys that say how data is fetched, not what it is: left out of a run's identity (a change re-runs nothing)
RUNTIME_DATA_KEYS = REGISTRY.runtime_keys()
