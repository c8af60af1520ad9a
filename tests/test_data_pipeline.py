"""The cluster data path: the folder index, loaders whose settings never change a result, gradient accumulation
that equals the big batch, the requeue budget, hub errors as one line, and runtime settings out of the suite."""

import glob
import json
import os
import pathlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bench.config import DEFAULT_RECIPE, load_suite
from bench.data import folder_checks as FC
from bench.data import index as I
from bench.data import load_data, make_torch_datasets
from bench.data.sources import refresh_index
from bench.errors import UsageError
from bench.methods import create_method
from bench.runtime import Runtime, job_cpus, micro_batches
from bench.train import train_model


def write_folder(root, splits=(("train", 6), ("val", 3)), classes=("cat", "dog", "eel"), size=(20, 28)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png"
                )
    return root


# ---------------------------------------------------------------- the index


def test_index_lists_splits_classes_and_labels(tmp_path):
    root = write_folder(tmp_path / "pets")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / "deep").mkdir()
    (root / "train" / "cat" / "deep" / "x.PNG").write_bytes((root / "train" / "cat" / "0.png").read_bytes())
    idx = I.build_index(root)
    assert idx.classes == ["cat", "dog", "eel"] and idx.counts == {"train": 19, "val": 9} and idx.files == 28
    train = idx.split_table("train").to_pylist()
    assert {"path": "train/cat/deep/x.PNG", "label": 0} in train and {"path": "train/eel/5.png", "label": 2} in train
    assert all(r["path"].split("/")[1] == idx.classes[r["label"]] for r in train)
    path = I.write_index(idx, tmp_path / "index.parquet")
    back = I.read_index(path)
    assert back.classes == idx.classes and back.fingerprint == idx.fingerprint
    assert back.table.equals(idx.table)
    assert I.is_fresh(I.read_meta(path), root)


def test_a_changed_tree_invalidates_the_index_and_an_unchanged_one_does_not(tmp_path):
    root = write_folder(tmp_path / "pets")
    path = I.write_index(I.build_index(root), tmp_path / "index.parquet")
    fingerprint = I.read_meta(path)["fingerprint"]
    assert I.current_fingerprint(I.read_meta(path)) == fingerprint and not I.drop_if_stale(path, root)
    assert path.exists()  # unchanged: kept, never re-listed
    time.sleep(0.01)
    (root / "train" / "dog" / "new.png").write_bytes((root / "train" / "dog" / "0.png").read_bytes())
    assert I.current_fingerprint(I.read_meta(path)) != fingerprint and not I.is_fresh(I.read_meta(path), root)
    with pytest.raises(UsageError, match="is stale.*bench index"):
        I.ensure_index(root, path, build=False)
    assert I.drop_if_stale(path, root) and not path.exists()
    path = I.write_index(I.build_index(root), path)
    time.sleep(0.01)
    (root / "val" / "eel" / "1.png").unlink()
    assert I.drop_if_stale(path, root)
    other = write_folder(tmp_path / "other")
    path = I.write_index(I.build_index(root), path)
    assert I.drop_if_stale(path, other)  # an index of another folder


def test_a_job_with_the_index_never_lists_a_directory(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "pets")
    path = I.write_index(I.build_index(root), tmp_path / "index.parquet")

    def listing(*a, **k):
        raise AssertionError("a directory was listed")

    for mod, name in (
        (os, "scandir"),
        (os, "listdir"),
        (os, "walk"),
        (glob, "glob"),
        (glob, "iglob"),
        (pathlib.Path, "iterdir"),
        (pathlib.Path, "glob"),
        (pathlib.Path, "rglob"),
    ):
        monkeypatch.setattr(mod, name, listing)
    t0 = time.perf_counter()
    bundle = load_data({"source": "imagefolder", "path": str(root)}, path)
    assert time.perf_counter() - t0 < 5
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (18, 9, 3)
    assert bundle.index["fingerprint"] == I.read_meta(path)["fingerprint"]
    train, val = make_torch_datasets(
        bundle,
        image_size=16,
        in_chans=3,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        recipe={**DEFAULT_RECIPE, "hflip": 0.5, "scale": [0.5, 1.0]},
    )
    x, y = train[17]
    assert x.shape == (3, 16, 16) and y == 2 and val[0][1] == 0 and train.random_transform and not val.random_transform


def test_folder_layouts_as_users_hold_them(tmp_path):
    both = write_folder(tmp_path / "a", splits=(("train", 2), ("val", 1), ("validation", 2)))
    assert len(load_data({"source": "imagefolder", "path": str(both)}).val) == 6  # validation/ first
    assert len(load_data({"source": "imagefolder", "path": str(both), "val_split": "val"}).val) == 3
    only_val = write_folder(tmp_path / "b", splits=(("train", 2), ("val", 1)))
    assert len(load_data({"source": "imagefolder", "path": str(only_val)}).val) == 3
    assert load_data({"source": "imagefolder", "path": str(only_val), "name": "imagenet-1k"}).name == "imagenet-1k"
    with pytest.raises(UsageError, match=r"no split 'tset'.*did you mean 'test'|no split 'tset'.*splits: train, val"):
        load_data({"source": "imagefolder", "path": str(only_val), "val_split": "tset"})
    flat = write_folder(tmp_path / "c", splits=(("train", 2),))
    (flat / "val").mkdir()
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(UsageError, match=r"split 'val' holds 1 images but no class folders.*valprep"):
        load_data({"source": "imagefolder", "path": str(flat)})
    with pytest.raises(UsageError, match="unknown key 'image_key' for source 'imagefolder'"):
        load_data({"source": "imagefolder", "path": str(flat), "image_key": "img"})


# ---------------------------------------------------------------- the folder checks


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty_class(root):
    for f in (root / "train" / "eel").iterdir():
        f.unlink()
    (root / "train" / "eel" / "README.txt").write_text("no images: still an empty class folder")


def _move(src, dst):
    def move(root):
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        (root / src).rename(root / dst)

    return move


def _add_class(split, cls):
    def add(root):
        (root / split / cls).mkdir(parents=True)
        (root / split / cls / "0.png").write_bytes((root / "train" / "cat" / "0.png").read_bytes())

    return add


@pytest.mark.parametrize(
    "spoil, message",
    [
        (_empty_class, r"1 empty class folder\(s\) \(no images, a label no image has\): train/eel; add images"),
        (_move("train/dog", "train/Cat"), r"differ only in case: train/Cat, train/cat, val/cat \(one class would"),
        (_move("val/dog", "val/Dog"), r"differ only in case: train/dog, val/Dog"),
        (_add_class("val", "fox"), r"1 class\(es\) with no images in train/ \(never trained; found in val/\): fox"),
        (_add_class("train", "fox"), r"with no images in val/ \(never evaluated; found in train/\): fox"),
        (_add_class("holdout", "fox"), r"with no images in train/ \(never trained; found in holdout/\): fox"),
        (_move("val", "valid"), r"has no split 'validation'; did you mean 'valid'"),
    ],
    ids=[
        "empty class",
        "case clash in a split",
        "case clash across splits",
        "val-only",
        "train-only",
        "extra split",
        "split gone",
    ],
)
def test_the_index_step_refuses_a_bad_folder_naming_the_folders(tmp_path, spoil, message):
    root = write_folder(tmp_path / "pets")
    spoil(root)
    with pytest.raises(UsageError, match=message) as e:
        refresh_index({"source": "imagefolder", "path": str(root)}, tmp_path / "res" / "index.parquet")
    assert "\n" not in str(e.value) and not (tmp_path / "res" / "index.parquet").exists()


def test_a_split_the_suite_does_not_read_is_not_checked(tmp_path):
    root = write_folder(tmp_path / "pets", splits=(("train", 2), ("val", 1), ("test", 1)), classes=("cat", "dog"))
    for f in (root / "test" / "dog").iterdir():
        f.unlink()  # test/dog empty, test/ lacks a class: neither is read
    _truncate(root / "test" / "cat" / "0.png")
    line = refresh_index({"source": "imagefolder", "path": str(root)}, tmp_path / "index.parquet")
    assert "decoded 6 images of train/, val/" in line


def test_an_unchanged_folder_is_not_decoded_again(tmp_path, monkeypatch):
    decoded = []
    real = FC.decode_error
    monkeypatch.setattr(FC, "decode_error", lambda p: decoded.append(p) or real(p))
    root = write_folder(tmp_path / "pets")
    index, cfg = tmp_path / "res" / "index.parquet", {"source": "imagefolder", "path": str(root)}
    assert "decoded 27 images" in refresh_index(cfg, index) and len(decoded) == 27
    assert refresh_index(cfg, index).endswith("up to date") and len(decoded) == 27
    index.unlink()  # the index rebuilt (as after a folder change): the verdicts come from the cache
    assert "decoded 0 images of train/, val/ (27 unchanged" in refresh_index(cfg, index) and len(decoded) == 27
    time.sleep(0.01)
    (root / "train" / "dog" / "new.png").write_bytes((root / "train" / "dog" / "0.png").read_bytes())
    _truncate(root / "val" / "eel" / "2.png")  # rewritten in place: a new size and mtime
    with pytest.raises(UsageError, match=r"1 unreadable image\(s\): val/eel/2.png \(OSError: image file is trunc"):
        refresh_index(cfg, index)
    assert sorted(decoded[27:]) == sorted(str(root.resolve() / p) for p in ("train/dog/new.png", "val/eel/2.png"))
    with pytest.raises(UsageError, match="val/eel/2.png"):  # the failed verdict is cached too
        refresh_index(cfg, index)
    assert len(decoded) == 29


def test_skip_unreadable_leaves_images_out_and_records_them(tmp_path, capsys):
    import pandas as pd

    from bench.report.table import provenance_section
    from bench.results.row import flatten

    root = write_folder(tmp_path / "pets")
    _truncate(root / "train" / "dog" / "3.png")
    (root / "val" / "cat" / "notes.jpg").write_text("a text file named like an image")
    index, cfg = tmp_path / "res" / "index.parquet", {"source": "imagefolder", "path": str(root)}
    with pytest.raises(UsageError, match=r"2 unreadable image\(s\): train/dog/3.png \(.*\); val/cat/notes.jpg "):
        refresh_index(cfg, index)
    line = refresh_index({**cfg, "skip_unreadable": True}, index)
    assert "warning: skipped 2 unreadable image(s) (skip_unreadable): train/dog/3.png, val/cat/notes.jpg" in line
    assert I.read_index(index).skipped == ["train/dog/3.png", "val/cat/notes.jpg"]
    bundle = load_data({**cfg, "skip_unreadable": True}, index)
    assert (len(bundle.train), len(bundle.val)) == (17, 9)
    row = flatten({"data_index": bundle.index}, "r")
    assert row["data_index_unreadable_skipped"] == 2
    assert row["data_index_unreadable_files"] == "train/dog/3.png; val/cat/notes.jpg"
    provenance = provenance_section(
        pd.DataFrame([{**row, "git_sha": "0" * 40, "git_dirty": False, "created_at": None}])
    )
    assert "- **Images left out as unreadable (skip_unreadable):** `2`" in provenance  # the report says so
    with pytest.raises(UsageError, match="was checked with other data keys"):  # a job never reads it unchecked
        load_data(cfg, index)
    for f in (root / "val" / "eel").iterdir():
        _truncate(f)  # every val image of a class skipped: the class is missing from val/ now
    index.unlink()
    with pytest.raises(UsageError, match=r"no images in val/ \(never evaluated; found in train/\): eel"):
        refresh_index({**cfg, "skip_unreadable": True}, index)


def test_many_unreadable_images_are_listed_in_a_file_beside_the_index(tmp_path):
    root = write_folder(tmp_path / "pets")
    bad = sorted(f"train/cat/{i}.png" for i in range(6)) + ["val/dog/0.png"]
    for rel in bad:
        (root / rel).write_bytes(b"")
    with pytest.raises(UsageError) as e:
        refresh_index({"source": "imagefolder", "path": str(root)}, tmp_path / "res" / "index.parquet")
    listed = tmp_path / "res" / FC.UNREADABLE_LIST
    assert "7 unreadable image(s): train/cat/0.png (not an image PIL can read); train/cat/1.png" in str(e.value)
    assert f"(+2 more, all listed in {listed})" in str(e.value) and "\n" not in str(e.value)
    assert [ln.split("\t")[0] for ln in listed.read_text().splitlines()] == bad


@pytest.mark.parametrize("plant", ["symlink", "garbage", "other folder", "a regular file (trusted)"])
def test_a_planted_decode_cache_is_never_followed(tmp_path, plant):
    """The results folder is shared: a cache that is a link, not parquet, or of another folder is ignored. A
    regular cache file of this folder is trusted (the control: the planted verdict would otherwise be used)."""
    root = write_folder(tmp_path / "pets", classes=("cat", "dog")).resolve()
    bad = root / "train" / "cat" / "1.png"
    _truncate(bad)
    st = bad.stat()
    crafted = tmp_path / "crafted.parquet"  # "train/cat/1.png decodes", for its size and mtime
    FC.write_cache(
        crafted,
        str(tmp_path / "other" if plant == "other folder" else root),
        [("train/cat/1.png", st.st_size, st.st_mtime_ns, None, True)],
    )
    res = tmp_path / "res"
    res.mkdir()
    if plant == "symlink":
        (res / FC.CACHE_NAME).symlink_to(crafted)
    elif plant == "garbage":
        (res / FC.CACHE_NAME).write_bytes(b"PAR1 not a parquet file PAR1")
    else:
        (res / FC.CACHE_NAME).write_bytes(crafted.read_bytes())
    run = lambda: refresh_index({"source": "imagefolder", "path": str(root)}, res / "index.parquet")  # noqa: E731
    if plant.endswith("(trusted)"):
        assert "decoded 17 images of train/, val/ (1 unchanged" in run()
    else:
        with pytest.raises(UsageError, match=r"1 unreadable image\(s\): train/cat/1.png"):
            run()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_fails_in_training_is_named_in_one_line(tmp_path, workers):
    from bench.data.transforms import UnreadableImage
    from bench.train.loaders import EpochBatches, eval_loader, train_loader

    root = write_folder(tmp_path / "pets")
    bundle = load_data({"source": "imagefolder", "path": str(root)}, tmp_path / "index.parquet")
    train, val = make_torch_datasets(bundle, image_size=16, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    _truncate(root / "train" / "dog" / "4.png")  # rewritten in place after the index step
    (root / "val" / "eel" / "1.png").write_bytes(b"")
    runtime = Runtime(workers=workers, prefetch_factor=2)
    sampler = EpochBatches(len(train), 6, sample_seeds=False)
    for loader, name in (
        (train_loader(train, sampler, runtime), "train/dog/4.png"),
        (eval_loader(val, 4, runtime), "val/eel/1.png"),
    ):
        with pytest.raises(UnreadableImage) as e:
            for _ in loader:
                pass
        assert str(e.value).startswith(f"data: image {str(root.resolve() / name)!r} does not decode (")
        assert "\n" not in str(e.value) and "skip_unreadable: true" in str(e.value)


# ---------------------------------------------------------------- runtime settings


def test_workers_come_from_the_jobs_cpus(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "9")
    assert job_cpus() == 9 and Runtime().loader_workers() == 8 and Runtime().loader_workers(in_memory=True) == 0
    assert Runtime(workers=3).loader_workers(in_memory=True) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    assert Runtime().loader_workers() == 16
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert job_cpus() == len(os.sched_getaffinity(0))
    assert [micro_batches(1024, c) for c in (None, 2048, 1024, 256, 300, 1000)] == [1, 1, 1, 4, 4, 2]
    assert micro_batches(6, 4) == 2 and micro_batches(7, 3) == 7
    with pytest.raises(UsageError, match="device_batch must be an integer 1-"):
        Runtime(device_batch=0)


def test_a_suite_refuses_runtime_settings(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\nbackbones: [tb_vit_pico_patch4_32]\nmethods: [dense]\nkeep_ratios: [1.0]\n"
        "seeds: [0]\ndata: {source: embedded}\nfinetune: {epochs: 1, num_workers: 8}\n"
    )
    with pytest.raises(
        UsageError, match=r"field finetune.num_workers: a runtime setting.*loader_workers in the profile"
    ):
        load_suite(suite)


def _augmented_photos(tmp_path):
    root = write_folder(tmp_path / "photos", splits=(("train", 4), ("val", 1)), size=(40, 36))
    bundle = load_data({"source": "imagefolder", "path": str(root)}, tmp_path / "index.parquet")
    recipe = {
        **DEFAULT_RECIPE,
        "epochs": 2,
        "batch_size": 6,
        "lr": 1e-3,
        "hflip": 0.5,
        "scale": [0.3, 1.0],
        "color_jitter": 0.4,
        "re_prob": 0.5,
    }
    train, _ = make_torch_datasets(bundle, image_size=32, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3, recipe=recipe)
    return train, recipe


def test_loader_workers_change_no_weight(tiny_vit, tmp_path):
    """Augmentations are seeded per sample slot, so 0 or 2 workers (which draw from their own streams) train
    the same weights: the loader settings are runtime settings, not part of a result."""
    train, recipe = _augmented_photos(tmp_path)
    models = []
    for workers in (0, 2):
        model = tiny_vit(in_chans=3)
        res = train_model(
            model,
            create_method("dense"),
            train,
            recipe,
            seed=3,
            out_dir=tmp_path / f"w{workers}",
            device=torch.device("cpu"),
            runtime=Runtime(workers=workers, prefetch_factor=2),
            log=lambda s: None,
        )
        assert res.runtime["workers"] == workers and res.accumulation_steps == 1
        models.append(model.state_dict())
    for k, v in models[0].items():
        assert torch.equal(v, models[1][k]), k


def test_compile_and_channels_last_act_and_change_no_weight(tiny_vit, tmp_path):
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    recipe = {**DEFAULT_RECIPE, "epochs": 1, "batch_size": 8, "opt": "sgd", "lr": 0.05}
    states = []
    for runtime in (Runtime(), Runtime(compile="eager", channels_last=True)):  # eager: no compiler on CI
        model = tiny_vit(in_chans=3)
        method = create_method("static", 0.5)
        method.apply(model)
        frames = counters["frames"]["ok"]
        res = train_model(
            model,
            method,
            data,
            recipe,
            seed=0,
            out_dir=tmp_path / str(runtime.compile),
            device=torch.device("cpu"),
            runtime=runtime,
            log=lambda s: None,
        )
        assert (counters["frames"]["ok"] > frames) == bool(runtime.compile)  # dynamo traced the step
        assert model.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last) == runtime.channels_last
        assert (res.runtime["compile"], res.runtime["channels_last"]) == (runtime.compile, runtime.channels_last)
        states.append(model.state_dict())
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------- gradient accumulation


def _fit(tiny_vit, tmp_path, name, method_name, device_batch, data, sampler=None, **recipe):
    model = tiny_vit()
    method = create_method(method_name, 0.5) if method_name != "dense" else create_method("dense")
    method.apply(model)
    if sampler is not None:
        method.sampler = sampler(method)
    teacher = tiny_vit() if method.needs_teacher() else None
    # SGD: an update linear in the gradient (Adam's first steps are ~sign(g), which turns float noise in a
    # near-zero gradient into a full-size difference); clipping acts on the accumulated gradient
    r = {
        **DEFAULT_RECIPE,
        "epochs": 2,
        "batch_size": 8,
        "opt": "sgd",
        "lr": 0.05,
        "clip_grad": 0.5,
        "label_smoothing": 0.1,
        **recipe,
    }
    res = train_model(
        model,
        method,
        data,
        r,
        seed=0,
        out_dir=tmp_path / name,
        device=torch.device("cpu"),
        teacher=teacher,
        runtime=Runtime(device_batch=device_batch),
        log=lambda s: None,
    )
    return model.state_dict(), res


def keep_by_score(log_probs, prev, stage):
    """Keep where the keep score wins, straight through to the predictor (as the Gumbel sampler): deterministic,
    a count that varies per image, and a gradient for every prediction module (DDP needs one)."""
    soft = log_probs[..., :1].exp()
    return (log_probs[..., :1] > log_probs[..., 1:]).float() + soft - soft.detach()


def _by_score(method):
    """A deterministic keep decision whose count varies per image (keep where the keep score wins), so a
    term normalised by the batch's kept tokens differs between a micro-batch and the whole batch."""
    return keep_by_score


@pytest.mark.parametrize("method_name", ["dense", "dynamicvit"])
def test_accumulated_micro_batches_give_the_weights_of_one_big_batch(tiny_vit, tmp_path, method_name):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    sampler = _by_score if method_name == "dynamicvit" else None
    big, res_big = _fit(tiny_vit, tmp_path, "big", method_name, None, data, sampler)
    small, res_small = _fit(tiny_vit, tmp_path, "small", method_name, 2, data, sampler)
    assert (res_big.accumulation_steps, res_small.accumulation_steps, res_small.micro_batch_size) == (1, 4, 2)
    assert res_small.global_batch_size == res_big.global_batch_size == 8 and res_small.steps == 4
    moved = 0
    for k, v in big.items():
        torch.testing.assert_close(small[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
        moved += not torch.equal(v, tiny_vit().state_dict().get(k, v))
    assert moved and res_small.final_loss == pytest.approx(res_big.final_loss, rel=1e-5)
    if method_name == "dynamicvit":
        log = [json.loads(ln) for ln in (tmp_path / "small" / "train_log.jsonl").read_text().splitlines()]
        assert log[0]["loss_token_distill"] > 0 and log[0]["loss_kl"] > 0, log


def test_accumulation_keeps_mixup_on_the_whole_batch(tiny_vit, tmp_path):
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    big, _ = _fit(tiny_vit, tmp_path, "big", "dense", None, data, mixup=0.8, cutmix=1.0)
    small, _ = _fit(tiny_vit, tmp_path, "small", "dense", 4, data, mixup=0.8, cutmix=1.0)
    for k, v in big.items():
        torch.testing.assert_close(small[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_out_of_gpu_memory_names_the_cap_to_set(tiny_vit, tmp_path, monkeypatch):
    import bench.train.loop as loop
    from bench.errors import RunFailed

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop, "forward_backward", oom)
    data = TensorDataset(torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,)))
    with pytest.raises(
        RunFailed,
        match=r"out of GPU memory at a per-device micro-batch of 4 images \(global batch 8 on 1 "
        r"device\(s\)\); cap it in the profile: device_batch: 2",
    ):
        _fit(tiny_vit, tmp_path, "oom", "dense", 4, data)


# ---------------------------------------------------------------- long runs: the requeue budget


def test_requeue_budget_follows_epochs_and_epoch_time(tmp_path):
    from bench.launch import BenchStep
    from bench.requeue import REQUEUE_SLACK, requeue_budget, requeue_refusal

    # SViTE: 600 epochs at ~85 min each under 24 h limits needs ~40 requeues, twice the old fixed 20
    assert requeue_budget(600, 85 * 60, 24 * 60) == 40 - 1 + REQUEUE_SLACK
    assert requeue_budget(30, 600, 24 * 60) == REQUEUE_SLACK  # fits in one job
    # warned 120 s before a 3-minute limit: 60 s of each attempt train, 12 epochs of 4.5 s, 4 attempts
    assert requeue_budget(45, 4.5, 3, signal_delay_s=120) == 3 + REQUEUE_SLACK
    out = tmp_path / "run" / "model.pth"
    out.parent.mkdir()
    step = BenchStep(["train", "s.yaml", "--run", "r"], outputs=[str(out)], time_min=60)
    step._attempt = (time.time() - 3600, 0)
    log = out.parent / "train_log.jsonl"
    assert "no epoch finished" in requeue_refusal(step, 0) if log.exists() else requeue_refusal(step, 0) is None
    log.write_text("".join(json.dumps({"epoch": e, "epochs_total": 100, "epoch_s": 900.0}) + "\n" for e in (1, 2, 3)))
    budget = requeue_budget(100, 900, 60)
    assert requeue_refusal(step, budget - 1) is None
    assert "budget (100 epochs x 900 s" in requeue_refusal(step, budget)
    step._attempt = (time.time() - 3600, 3)  # this attempt ran its whole hour and finished no epoch
    assert "no epoch finished within the job's 60-minute time limit" in requeue_refusal(step, 1)
    step.max_requeues = 1
    step._attempt = (time.time() - 3600, 2)
    assert "the profile's max_requeues" in requeue_refusal(step, 1)
    # launched without --output (by hand): the log is found where the runner writes it
    from bench.requeue import train_log_path

    suite = tmp_path / "s.yaml"
    suite.write_text("name: mine\n")
    argv = ["train", str(suite), "--run", "r1", "--results", str(tmp_path / "res")]
    assert train_log_path(argv) == tmp_path / "res" / "mine" / "runs" / "r1" / "train_log.jsonl"
    assert train_log_path(["train", str(suite), "--pretrain", "b"]) == Path("results/mine/pretrain/b/train_log.jsonl")
    assert train_log_path(["evaluate", str(suite), "r1"]) is None


# ---------------------------------------------------------------- the hub


HUB_FAILURES = [
    (
        RuntimeError("Dataset scripts are no longer supported, but found imagenet-1k.py"),
        "cannot run loading scripts.*ILSVRC/imagenet-1k.*refs/convert/parquet",
    ),
    ("gated-401", "gated dataset.*Set HF_TOKEN.*accepted the terms at https://huggingface.co/datasets/imagenet-1k"),
    ("gated-403", "no access yet: accept the terms"),
    (ValueError("Unknown split \"validation\". Should be one of ['train']."), "Set data.train_split / data.val_split"),
    (ConnectionError("Couldn't reach 'imagenet-1k' on the Hub (LocalEntryNotFoundError)"), "unreachable from here"),
    ("missing", "Check data.name"),
]


@pytest.mark.parametrize("error,needle", HUB_FAILURES)
def test_hub_failures_are_one_line_naming_the_fix(monkeypatch, error, needle):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    from bench.data import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "probe_hub", lambda endpoint: None)
    named = {
        "gated-401": DatasetNotFoundError(
            "Dataset 'imagenet-1k' is a gated dataset on the Hub. You must be authenticated to access it."
        ),
        "gated-403": DatasetNotFoundError(
            "Dataset 'imagenet-1k' is a gated dataset on the Hub. Visit the dataset "
            "page at https://huggingface.co/datasets/imagenet-1k to ask for access."
        ),
        "missing": DatasetNotFoundError("Dataset 'imagenet-1k' doesn't exist on the Hub or cannot be accessed."),
    }
    calls = []

    def fail(*args, **kwargs):
        calls.append(kwargs)
        raise named.get(error, error) if isinstance(error, str) else error

    monkeypatch.setattr(datasets, "load_dataset", fail)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with pytest.raises(UsageError, match=needle) as info:
        load_data({"source": "hub", "name": "imagenet-1k", "cache_dir": "~/hf", "num_proc": 8})
    assert "\n" not in str(info.value) and "hf_secret" not in str(info.value)
    assert calls[0]["token"] == "hf_secret" and calls[0]["num_proc"] == 8
    assert calls[0]["cache_dir"] == os.path.expanduser("~/hf")


def test_hub_fetch_settings_are_not_part_of_a_runs_identity():
    from bench.data.sources import identity

    cfg = {"source": "hub", "name": "imagenet-1k", "cache_dir": "/scratch/hf", "num_proc": 16}
    assert identity(cfg) == {"source": "hub", "name": "imagenet-1k"}


# ---------------------------------------------------------------- the workflow config and validate --runs


def test_workflow_config_is_checked_and_runtime_settings_become_options():
    from bench.workflow import check_config, runtime_args

    check_config({"suite": "smoke", "loader_workers": "auto", "device_batch": 128, "compile": "inductor"})
    with pytest.raises(UsageError, match=r"unknown config key 'device_bach'; did you mean 'device_batch'"):
        check_config({"device_bach": 1})
    with pytest.raises(UsageError, match=r"config loader_workers='many': not allowed \(expected 'auto' or an integer"):
        check_config({"loader_workers": "many"})
    assert runtime_args(
        {"suite": "x", "loader_workers": 6, "device_batch": 64, "channels_last": True, "compile": False}
    ) == ["--workers", "6", "--device-batch", "64", "--channels-last", "--compile", "off"]
    # the timing step's settings: threads and precision, from the profile; words read as YAML would
    config = check_config({"timing_threads": 1, "timing_precision": "bf16"})
    assert runtime_args(config) == ["--timing-precision", "bf16", "--timing-threads", "1"]
    assert check_config({"timing_precision": "null"})["timing_precision"] is None
    with pytest.raises(UsageError, match="timing_threads=0"):
        check_config({"timing_threads": 0})


def test_dynamicvit_suite_states_its_batch_plan_on_the_slurm_profile(capsys):
    from bench.cli import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["validate", "suites/dynamicvit.yaml", "--runs", "--profile", "slurm"], prog_name="bench")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "finetune on 1 GPU(s) per job, device_batch 256" in out
    assert (
        "dynamicvit__deit_small_patch16_224__k0.70__s0  [batch 1024 = 1 GPU x 4 accumulated micro-batches "
        "of 256 (device_batch 256)]" in out
    )
