"""The data-source registry: every source declares its keys, the key checks and the suite schema's ``data`` part
both come from the declarations (and agree), the declarations import no torch, and every declared key acts:
each is set in a suite file, loaded through ``load_suite`` and ``sources.load``, and seen in the bundle (or, for
the hub, which no test can reach, in the ``datasets.load_dataset`` call)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.config import load_suite, suite_schema
from bench.data import sources
from bench.data.source_registry import NO_DEFAULT, DataSource, Key, SourceRegistry, data_schema
from bench.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
SUITE = """\
name: t
backbones: [tb_vit_pico_patch4_32]
methods: [dense]
keep_ratios: [0.5]
seeds: [0]
"""


def suite_file(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(SUITE + yaml.safe_dump({"data": data}, default_flow_style=False))
    return p


def load_via_suite(tmp_path: Path, data: dict, **kw):
    """A suite file with this ``data:``, read by ``load_suite`` (schema and all), then its data loaded."""
    suite = load_suite(suite_file(tmp_path, data), check_names=False)
    return sources.load(suite.data, **kw)


def schema_error(tmp_path: Path, data: dict) -> str | None:
    try:
        load_suite(suite_file(tmp_path, data), check_names=False)
    except UsageError as e:
        return str(e)
    return None


def normalize_error(data: dict) -> str | None:
    try:
        sources.normalize(data)
    except UsageError as e:
        return str(e)
    return None


def required(source: str) -> dict:
    """The smallest valid mapping for a source."""
    return {"source": source, **{k.name: "x" for k in sources.REGISTRY.get(source).keys if k.required}}


def good_value(key: Key):
    if key.choices is not None:
        return key.choices[-1]
    return {
        "string": "some-value",
        "integer": max(key.minimum or 0, 16),
        "number": 1.5,
        "boolean": True,
        "object": {},
        "array": [],
    }[key.type]


def bad_values(key: Key) -> list:
    out = [{"string": 5, "integer": "many", "number": "many", "boolean": "yes", "object": [1], "array": 1}[key.type]]
    if key.type == "string":
        out.append("")
    if key.minimum is not None:
        out.append(key.minimum - 1)
    if key.choices is not None:
        out.append(
            next(
                v for v in (2, "not-a-choice") if v not in key.choices and isinstance(v, int) == (key.type == "integer")
            )
        )
    return out


ALL_KEYS = [(s, k) for s in sources.SOURCES for k in sources.REGISTRY.get(s).keys]


# ---------------------------------------------------------------- declarations, schema, README


def test_declarations_and_schema_import_no_torch():
    code = (
        "import sys, bench.data.sources, bench.config; bench.config.suite_schema(); "
        "heavy = [m for m in ('torch', 'torchvision', 'timm', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_schema_data_part_is_generated_from_the_registry():
    assert suite_schema()["properties"]["data"] == sources.data_schema()
    static = json.loads(resources.files("bench").joinpath("schemas/suite.schema.json").read_text())
    assert "properties" not in static["properties"]["data"]  # no hand-written copy to drift
    schema = sources.data_schema()
    assert schema["properties"]["source"]["enum"] == list(sources.SOURCES)
    for branch in schema["allOf"]:
        name = branch["if"]["properties"]["source"]["const"]
        declared = {k.name for k in sources.REGISTRY.get(name).keys}
        assert set(branch["then"]["properties"]) == declared | {"source"}


def test_readme_lists_every_key_of_every_source():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- data-keys:begin[^>]*-->\n(.*?)\n<!-- data-keys:end -->", text, re.S)
    assert block, "README has no generated data-keys block"
    assert block.group(1) == sources.markdown_table(), (
        "README's data tables are stale: paste python -c 'import bench.data.sources as s; print(s.markdown_table())'"
    )


def test_runtime_keys_come_from_the_declarations():
    assert sources.RUNTIME_DATA_KEYS == ("cache_dir", "num_proc")
    cfg = {"source": "hub", "name": "imagenet-1k", "cache_dir": "/scratch/hf", "num_proc": 16, "revision": "main"}
    assert sources.identity(cfg) == {"source": "hub", "name": "imagenet-1k", "revision": "main"}


def test_embedded_names_match_the_embedded_module():
    from bench.data import embedded

    assert sources.EMBEDDED_NAMES == (embedded.NAME,)
    assert sources.REGISTRY.get("embedded").key("name").default == embedded.NAME


def test_every_loader_resolves():
    for name in sources.SOURCES:
        assert callable(sources.REGISTRY.get(name).load_function())


def test_registry_refuses_a_duplicate_source_and_inconsistent_keys():
    reg = SourceRegistry("data source")
    src = DataSource("mine", "my data", keys=(Key("path", "string", "a path", required=True),), loader=len)
    reg.add_source(src)
    with pytest.raises(ValueError, match="already registered"):
        reg.add_source(src)
    with pytest.raises(ValueError, match="runtime key in one source"):
        reg.add_source(DataSource("other", "d", keys=(Key("path", "string", "a path", runtime=True),), loader=len))
    with pytest.raises(ValueError, match="type"):
        Key("k", "str", "doc")
    with pytest.raises(ValueError, match="declares a key twice"):
        DataSource("dup", "d", keys=(Key("a", "string", "x"), Key("a", "string", "y")), loader=len)


def test_a_new_source_is_one_declaration():
    """What adding a source takes: a DataSource entry (keys and loader); checks and schema follow from it."""
    import jsonschema

    reg = SourceRegistry("data source")
    reg.add_source(
        DataSource(
            "webdataset",
            "tar shards",
            loader="builtins:len",
            keys=(
                Key("urls", "string", "a shard pattern", required=True),
                Key("shuffle", "integer", "a shuffle buffer", default=1000, minimum=0),
            ),
        )
    )
    validator = jsonschema.Draft202012Validator(data_schema(reg))
    assert validator.is_valid({"source": "webdataset", "urls": "s-{0..9}.tar", "shuffle": 0})
    assert not validator.is_valid({"source": "webdataset", "urls": "s.tar", "shuffle": -1})
    assert not validator.is_valid({"source": "webdataset", "urls": "s.tar", "shufle": 5})
    assert reg.get("webdataset").normalize({"source": "webdataset", "urls": "s.tar"}) == {
        "source": "webdataset",
        "urls": "s.tar",
        "shuffle": 1000,
    }


# ---------------------------------------------------------------- one validator: schema and normalize agree


@pytest.mark.parametrize("source,key", ALL_KEYS, ids=lambda x: getattr(x, "name", x))
def test_each_declared_key_is_accepted_by_schema_and_normalize(tmp_path, source, key):
    data = {**required(source), key.name: good_value(key)}
    assert schema_error(tmp_path, data) is None
    assert sources.normalize(data)[key.name] == good_value(key)


@pytest.mark.parametrize("source,key", ALL_KEYS, ids=lambda x: getattr(x, "name", x))
def test_a_bad_value_is_one_line_naming_the_key_from_both(tmp_path, source, key):
    for bad in bad_values(key):
        data = {**required(source), key.name: bad}
        from_schema, from_normalize = schema_error(tmp_path, data), normalize_error(data)
        assert from_schema and from_normalize, (bad, from_schema, from_normalize)
        assert f"field data.{key.name}:" in from_schema and "\n" not in from_schema
        assert from_normalize.startswith(f"data: {key.name} must be ") and "\n" not in from_normalize


@pytest.mark.parametrize("source", sources.SOURCES)
def test_an_unknown_key_is_rejected_naming_it_and_the_valid_keys(tmp_path, source):
    allowed = sources.REGISTRY.get(source).allowed()
    data = {**required(source), "trian_split": "train"}
    msg = schema_error(tmp_path, data)
    assert msg.endswith(f"field data: 'trian_split' is not one of {allowed}"), msg
    msg = normalize_error(data)
    assert msg.startswith(f"data: unknown key 'trian_split' for source {source!r}") and "\n" not in msg
    assert msg.endswith(f"(allowed: {', '.join(allowed)})")
    if "train_split" in allowed:
        assert "did you mean 'train_split'" in msg


@pytest.mark.parametrize(
    "source", [s for s in sources.SOURCES if any(k.required for k in sources.REGISTRY.get(s).keys)]
)
def test_a_missing_required_key_is_named_by_both(tmp_path, source):
    for key in (k for k in sources.REGISTRY.get(source).keys if k.required):
        data = {k: v for k, v in required(source).items() if k != key.name}
        assert f"'{key.name}' is a required property" in schema_error(tmp_path, data)
        assert f"(key '{key.name}')" in normalize_error(data)


def test_unknown_source_from_both(tmp_path):
    assert "field data.source: 'imagefoldr' is not one of" in schema_error(tmp_path, {"source": "imagefoldr"})
    assert "did you mean 'imagefolder'" in normalize_error({"source": "imagefoldr"})


def test_integral_float_is_no_integer_in_both(tmp_path):
    data = {"source": "hub", "name": "x", "image_size": 32.0}
    assert "data.image_size: 32.0 is not an integer (write 32)" in schema_error(tmp_path, data)
    assert "image_size must be an integer, got 32.0" in normalize_error(data)


# ---------------------------------------------------------------- every key acts


def write_imagefolder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("validation", 2), ("holdout", 1)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def write_disk(root: Path) -> None:
    import datasets

    rng = np.random.default_rng(1)
    feats = datasets.Features(
        {
            "img": datasets.Image(),
            "y": datasets.ClassLabel(names=["a", "b", "c"]),
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list("abcdefg")),
        }
    )

    def split(n):
        images = [rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8) for _ in range(n)]
        return datasets.Dataset.from_dict(
            {"img": images, "y": [i % 3 for i in range(n)], "image": images, "label": [6] * n}, features=feats
        )

    datasets.DatasetDict({"train": split(5), "extra": split(4), "test": split(3)}).save_to_disk(str(root))


# each local source with every declared key set away from its default (a test below checks none is missed)
def imagefolder_cfg(root: Path) -> dict:
    return {
        "source": "imagefolder",
        "path": str(root),
        "name": "pets-v2",
        "train_split": "validation",
        "val_split": "holdout",
        "in_chans": 1,
        "image_size": 20,
        "fixed_size": True,
        "skip_unreadable": True,
    }


def disk_cfg(root: Path) -> dict:
    return {
        "source": "disk",
        "path": str(root),
        "name": "tiny-v2",
        "train_split": "extra",
        "val_split": "test",
        "image_key": "img",
        "label_key": "y",
        "in_chans": 1,
        "image_size": 12,
        "fixed_size": True,
    }


def hub_cfg() -> dict:
    return {
        "source": "hub",
        "name": "org/pets",
        "subset": "small",
        "revision": "refs/convert/parquet",
        "train_split": "tr",
        "val_split": "va",
        "image_key": "pixels",
        "label_key": "cls",
        "in_chans": 1,
        "image_size": 12,
        "fixed_size": True,
        "cache_dir": "~/hf-cache",
        "num_proc": 3,
    }


EMBEDDED_CFG = {
    "source": "embedded",
    "name": "canvas-digits",
    "options": {"canvas": 16, "train_placements": 1, "val_placements": 1},
}


def test_every_declared_key_is_exercised_below():
    for cfg in (imagefolder_cfg(Path("p")), disk_cfg(Path("p")), hub_cfg(), EMBEDDED_CFG):
        declared = {k.name for k in sources.REGISTRY.get(cfg["source"]).keys}
        assert set(cfg) - {"source"} == declared, cfg["source"]
        for key in sources.REGISTRY.get(cfg["source"]).keys:  # every key set away from its default
            assert key.default is NO_DEFAULT or cfg[key.name] != key.default or key.choices == (cfg[key.name],)


def transform_kind(bundle):
    """Whether the torch side treats the images as fixed-size (only converted, nothing random)."""
    from bench.data.transforms import FixedSizeTransform, make_torch_datasets

    train, val = make_torch_datasets(bundle, image_size=16, in_chans=bundle.in_chans, mean=(0.5,), std=(0.5,))
    fixed = isinstance(train.transform, FixedSizeTransform) and not train.random_transform
    return fixed, tuple(val[0][0].shape)


def test_imagefolder_keys_act(tmp_path):
    root = tmp_path / "pets"
    write_imagefolder(root)
    plain = load_via_suite(tmp_path, {"source": "imagefolder", "path": str(root)})
    assert (plain.name, len(plain.train), len(plain.val)) == ("pets", 6, 4)
    assert (plain.in_chans, plain.image_size, plain.fixed_size) == (3, 224, False)
    assert transform_kind(plain) == (False, (3, 16, 16))

    cut = (root / "validation" / "cat" / "0.png").read_bytes()
    (root / "validation" / "cat" / "9.png").write_bytes(cut[: len(cut) // 2])  # a truncated image
    with pytest.raises(UsageError, match=r"1 unreadable image\(s\): validation/cat/9.png .*skip_unreadable: true"):
        load_via_suite(tmp_path, {**imagefolder_cfg(root), "skip_unreadable": False})
    b = load_via_suite(tmp_path, imagefolder_cfg(root))
    assert (b.name, len(b.train), len(b.val)) == ("pets-v2", 4, 2)  # train_split validation/, val_split holdout/
    assert (b.index["unreadable_skipped"], b.index["unreadable_files"]) == (1, "validation/cat/9.png")
    assert (b.in_chans, b.image_size, b.fixed_size) == (1, 20, True)
    assert transform_kind(b) == (True, (1, 16, 16))  # fixed_size: only converted; in_chans: one channel
    assert sources.describe(imagefolder_cfg(root)) == "pets-v2"


def test_disk_keys_act(tmp_path):
    root = tmp_path / "tiny"
    write_disk(root)
    plain = load_via_suite(tmp_path, {"source": "disk", "path": str(root), "val_split": "test"})
    assert (plain.name, len(plain.train), plain.image_key, plain.label_key, plain.num_classes) == (
        "tiny",
        5,
        "image",
        "label",
        7,
    )

    b = load_via_suite(tmp_path, disk_cfg(root))
    assert (b.name, len(b.train), len(b.val)) == ("tiny-v2", 4, 3)  # train_split extra, val_split test
    assert (b.image_key, b.label_key, b.num_classes) == ("img", "y", 3)  # the columns picked, not image/label
    assert (b.in_chans, b.image_size, b.fixed_size) == (1, 12, True)
    assert transform_kind(b) == (True, (1, 16, 16))


def test_hub_keys_reach_load_dataset(tmp_path, monkeypatch):
    """No hub is reachable from a test: datasets.load_dataset is replaced and its arguments checked."""
    import datasets

    from bench.data import hub

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "probe_hub", lambda endpoint: None)
    feats = datasets.Features({"pixels": datasets.Image(), "cls": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        n = {"tr": 4, "va": 2}[kwargs["split"]]
        images = [np.zeros((12, 12, 3), dtype=np.uint8)] * n
        return datasets.Dataset.from_dict({"pixels": images, "cls": list(range(n))}, features=feats)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    b = load_via_suite(tmp_path, hub_cfg())
    assert [c[0] for c in calls] == [("org/pets", "small")] * 2  # name, subset
    assert [c[1]["split"] for c in calls] == ["tr", "va"]  # train_split, val_split
    for _, kwargs in calls:
        assert kwargs["revision"] == "refs/convert/parquet"
        assert kwargs["cache_dir"] == os.path.expanduser("~/hf-cache") and kwargs["num_proc"] == 3
    assert (b.name, len(b.train), len(b.val), b.num_classes) == ("org/pets", 4, 2, 4)
    assert (b.image_key, b.label_key, b.in_chans, b.image_size, b.fixed_size) == ("pixels", "cls", 1, 12, True)
    assert sources.describe(hub_cfg()) == "org/pets/small"


def test_embedded_keys_act(tmp_path):
    b = load_via_suite(tmp_path, EMBEDDED_CFG)
    assert (b.name, b.image_size, b.in_chans, b.fixed_size) == ("canvas-digits", 16, 1, True)  # options.canvas
    assert len(b.train) < 1797  # train_placements 1: one placement per digit
    assert sources.describe(EMBEDDED_CFG).startswith("canvas-digits(canvas=16,")


def test_bench_validate_reports_a_bad_data_key_in_one_line(tmp_path):
    text = SUITE + "data: {source: disk, path: /x, num_proc: 2}\n"
    (tmp_path / "s.yaml").write_text(textwrap.dedent(text))
    result = subprocess.run(
        [sys.executable, "-m", "bench", "validate", str(tmp_path / "s.yaml")], capture_output=True, text=True, cwd=REPO
    )
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "field data: 'num_proc' is not one of" in lines[0]
