"""bench.data: the embedded canvas-digits build, the four sources, and the torch side."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import (
    CanvasDigitsConfig,
    DataBundle,
    describe_data,
    embedded,
    load_data,
    make_torch_datasets,
    validate_data_config,
)
from bench.data.transforms import build_transform
from bench.errors import UsageError

N_DIGITS = 1797
PATCH = 4


def _arrays(ds) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in ds.with_format("numpy")[:].items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default canvas-digits, built once into a private cache for the whole module."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENBENCH_CACHE", str(root))
        t0 = time.perf_counter()
        bundle = load_data({"source": "embedded", "name": "canvas-digits"})
        build_s = time.perf_counter() - t0
    return {
        "root": root,
        "bundle": bundle,
        "train": _arrays(bundle.train),
        "val": _arrays(bundle.val),
        "build_s": build_s,
    }


# ---------------------------------------------------------------- embedded dataset


def test_default_bundle_shape(built):
    b: DataBundle = built["bundle"]
    assert (b.name, b.num_classes, b.image_size, b.in_chans, b.fixed_size) == ("canvas-digits", 10, 32, 1, True)
    assert (b.image_key, b.label_key) == ("image", "label")
    assert b.train.features["label"].names == [str(i) for i in range(10)]
    assert set(b.train.column_names) == {"image", "label", "digit_index"}
    assert b.train[0]["image"].mode == "L" and b.train[0]["image"].size == (32, 32)
    assert built["train"]["image"].shape[1:] == (32, 32)
    assert built["train"]["image"].dtype == np.uint8
    assert built["build_s"] < 20  # a few seconds normally; generous for a loaded CI box


def test_split_sizes_and_placements(built):
    tr, va = built["train"]["digit_index"], built["val"]["digit_index"]
    n_train, n_val = len(np.unique(tr)), len(np.unique(va))
    assert n_train + n_val == N_DIGITS and 355 <= n_val <= 364
    assert len(tr) == 4 * n_train and len(va) == 2 * n_val
    assert not set(tr.tolist()) & set(va.tolist())
    assert set(np.bincount(tr)[np.unique(tr)].tolist()) == {4}
    assert set(np.bincount(va)[np.unique(va)].tolist()) == {2}


def test_classes_balanced(built):
    for split in ("train", "val"):
        counts = np.bincount(built[split]["label"], minlength=10)
        assert counts.min() / counts.max() > 0.9, counts


def test_digit_inside_canvas_and_background_dominates(built):
    digits, labels = embedded.load_digit_images()
    for split in ("train", "val"):
        a = built[split]
        assert np.array_equal(a["label"], labels[a["digit_index"]])
        # Every digit pixel made it onto the canvas: nothing clipped at the border.
        assert np.array_equal(
            a["image"].reshape(len(a["image"]), -1).sum(1, dtype=np.int64),
            digits[a["digit_index"]].reshape(len(a["image"]), -1).sum(1, dtype=np.int64),
        )
        ys, xs = np.nonzero(a["image"][0])
        assert ys.max() - ys.min() < 8 and xs.max() - xs.min() < 8
        n = len(a["image"])
        patches = a["image"].reshape(n, 32 // PATCH, PATCH, 32 // PATCH, PATCH).max(axis=(2, 4))
        background = (patches == 0).mean(axis=(1, 2))
        assert background.min() >= (64 - 9) / 64  # an 8x8 digit touches at most 3x3 patches
    positions = [tuple(np.argwhere(img).min(0)) for img in built["train"]["image"][:200]]
    assert len(set(positions)) > 50  # placements really vary


def test_build_is_deterministic(built, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path))
    again = load_data({"source": "embedded"})
    for split, ds in (("train", again.train), ("val", again.val)):
        a = _arrays(ds)
        for key in ("image", "label", "digit_index"):
            assert np.array_equal(a[key], built[split][key]), (split, key)
    other = embedded.build_arrays(CanvasDigitsConfig(seed=1, train_placements=1, val_placements=1))
    assert not np.array_equal(other["validation"]["image"], built["val"]["image"][: len(other["validation"]["image"])])


def test_val_set_independent_of_train_placements(built):
    arrays = embedded.build_arrays(CanvasDigitsConfig(train_placements=1))
    assert np.array_equal(arrays["validation"]["image"], built["val"]["image"])
    assert len(arrays["train"]["image"]) == len(built["train"]["image"]) // 4


def test_scale_and_canvas_options():
    cfg = CanvasDigitsConfig(canvas=24, scale=2, train_placements=1, val_placements=1)
    arrays = embedded.build_arrays(cfg)
    img = arrays["train"]["image"]
    assert img.shape[1:] == (24, 24)
    ys, xs = np.nonzero(img[0])
    assert ys.max() - ys.min() < 16 and xs.max() - xs.min() < 16
    assert describe_data({"source": "embedded", "options": {"canvas": 24, "scale": 2}}).startswith(
        "canvas-digits(canvas=24,scale=2,"
    )


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"canvas": 12, "scale": 2}, "does not fit"),
        ({"canvs": 40}, "did you mean 'canvas'"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"train_placements": 0}, "train_placements"),
        ({"seed": "zero"}, "seed"),
    ],
)
def test_bad_options(options, needle):
    with pytest.raises(UsageError, match=needle):
        validate_data_config({"source": "embedded", "name": "canvas-digits", "options": options})


def test_cache_is_reused_and_clean(built, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(built["root"]))

    def no_rebuild(cfg):
        raise AssertionError("rebuilt despite a cache hit")

    monkeypatch.setattr(embedded, "build_canvas_digits", no_rebuild)
    again = load_data({})
    assert len(again.train) == len(built["train"]["label"])
    entries = sorted(p.name for p in (built["root"] / "datasets").iterdir())
    assert entries == [f"canvas-digits-{CanvasDigitsConfig().cache_key()}"]  # no temp leftovers
    assert CanvasDigitsConfig(seed=1).cache_key() != CanvasDigitsConfig().cache_key()


def test_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path))

    def boom(cfg):
        raise RuntimeError("crash mid-build")

    monkeypatch.setattr(embedded, "build_canvas_digits", boom)
    with pytest.raises(RuntimeError):
        load_data({"source": "embedded"})
    assert list((tmp_path / "datasets").iterdir()) == []


# ---------------------------------------------------------------- local sources


def _write_imagefolder(root: Path, val_dir: str = "validation") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), (val_dir, 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")


@pytest.mark.parametrize("val_dir", ["validation", "val"])
def test_imagefolder_round_trip(tmp_path, monkeypatch, val_dir):
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "pets"
    _write_imagefolder(root, val_dir)
    b = load_data({"source": "imagefolder", "path": str(root)})
    assert (b.name, len(b.train), len(b.val), b.num_classes) == ("pets", 6, 4, 2)
    assert (b.in_chans, b.image_size, b.fixed_size) == (3, 224, False)
    assert describe_data({"source": "imagefolder", "path": str(root), "name": "pets-v2"}) == "pets-v2"
    train, val = make_torch_datasets(b, image_size=16, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, y = val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y in (0, 1)
    assert train[5][0].shape == (3, 16, 16)
    gray, _ = make_torch_datasets(b, image_size=16, in_chans=1, mean=(0.485, 0.456, 0.406), std=(0.2, 0.2, 0.2))
    assert gray[0][0].shape == (1, 16, 16)


def test_disk_round_trip(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})

    def split(n):
        images = [rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": images, "y": [i % 3 for i in range(n)]}, features=feats)

    datasets.DatasetDict({"train": split(6), "test": split(3)}).save_to_disk(str(tmp_path / "tiny"))
    cfg = {"source": "disk", "path": str(tmp_path / "tiny"), "val_split": "test", "image_key": "img", "label_key": "y"}
    validate_data_config(cfg)
    b = load_data(cfg)
    assert (b.name, len(b.train), len(b.val), b.num_classes) == ("tiny", 6, 3, 3)
    assert b.val[2]["y"] == 2
    with pytest.raises(UsageError, match="no split 'validation'.*splits: test, train"):
        load_data({**cfg, "val_split": "validation"})
    with pytest.raises(UsageError, match="no column 'image'"):
        load_data({**cfg, "image_key": "image"})


# ---------------------------------------------------------------- errors


def test_unknown_source_suggests():
    with pytest.raises(UsageError, match=r"'imagefoldr'.*did you mean 'imagefolder'.*valid: embedded, hub"):
        load_data({"source": "imagefoldr", "path": "/x"})


def test_unknown_key_and_embedded_name():
    with pytest.raises(UsageError, match="'val_splt'.*did you mean 'val_split'"):
        validate_data_config({"source": "disk", "path": "/x", "val_splt": "v"})
    with pytest.raises(UsageError, match="'canvas-digit'.*did you mean 'canvas-digits'"):
        validate_data_config({"source": "embedded", "name": "canvas-digit"})


@pytest.mark.parametrize("source", ["imagefolder", "disk"])
def test_missing_path_names_it(tmp_path, source):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match=f"{source} path '{missing}' does not exist"):
        validate_data_config({"source": source, "path": str(missing)})
    with pytest.raises(UsageError, match="nowhere"):
        load_data({"source": source, "path": str(missing)})
    with pytest.raises(UsageError, match="needs a path"):
        validate_data_config({"source": source})


def test_not_a_saved_dataset(tmp_path):
    with pytest.raises(UsageError, match="is not a saved dataset"):
        load_data({"source": "disk", "path": str(tmp_path)})


def _clear_hub_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))  # guaranteed cache miss


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_fails_fast(tmp_path, monkeypatch, var):
    _clear_hub_env(monkeypatch, tmp_path)
    monkeypatch.setenv(var, "1")
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match="imagenet-1k.*not in the local Hugging Face cache.*imagefolder") as info:
        load_data({"source": "hub", "name": "imagenet-1k"})
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(info.value)


def test_hub_unreachable_fails_fast(tmp_path, monkeypatch):
    _clear_hub_env(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match=r"hub at http://127.0.0.1:9 is unreachable.*imagefolder.*disk") as info:
        load_data({"source": "hub", "name": "imagenet-1k"})
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(info.value)


def test_hub_config_checks_without_network():
    validate_data_config({"source": "hub", "name": "imagenet-1k", "train_split": "train"})
    assert describe_data({"source": "hub", "name": "imagenet-1k"}) == "imagenet-1k"
    with pytest.raises(UsageError, match="needs a dataset name"):
        validate_data_config({"source": "hub"})


# ---------------------------------------------------------------- torch side


def test_embedded_torch_datasets_fast_and_normalized(built):
    b = built["bundle"]
    train, val = make_torch_datasets(b, image_size=32, in_chans=1, mean=(0.5,), std=(0.25,))
    assert len(train) == len(b.train) and len(val) == len(b.val)
    x, y = train[0]
    assert x.shape == (1, 32, 32) and isinstance(y, int) and y == int(built["train"]["label"][0])
    expected = (torch.from_numpy(built["train"]["image"][0]).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[0], expected)
    t0 = time.perf_counter()
    n = sum(len(yb) for _, yb in torch.utils.data.DataLoader(train, batch_size=256, shuffle=True))
    assert n == len(train) and time.perf_counter() - t0 < 5  # ~0.1 s unloaded
    # A model at another size / RGB input gets a nearest upscale and repeated channels.
    big, _ = make_torch_datasets(b, image_size=64, in_chans=3, mean=(0.5,), std=(0.5,))
    xb, _ = big[0]
    assert xb.shape == (3, 64, 64) and torch.equal(xb[0], xb[2])
    assert torch.equal(xb[0, ::2, ::2], (torch.from_numpy(built["train"]["image"][0]).float() / 255 - 0.5) / 0.5)


def test_deit_transforms():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    kwargs = dict(image_size=24, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3, native_size=None)
    assert build_transform(train=True, **kwargs)(img).shape == (3, 24, 24)
    val_t = build_transform(train=False, **kwargs)
    assert torch.equal(val_t(img), val_t(img))  # evaluation is deterministic
    assert build_transform(train=False, **{**kwargs, "in_chans": 1})(img).shape == (1, 24, 24)
    with pytest.raises(UsageError, match="2 values"):
        build_transform(train=False, **{**kwargs, "mean": (0.5, 0.5)})
