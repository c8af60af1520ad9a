"""Files a suite points at, checked before compute: a planted index never makes a job open a file outside the
data root, image links out of the root are never opened (skip_unreadable leaves them out), unreadable images
are named, and checkpoints are matched to the model (good ones still pass, replaced ones are checked again)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from bad_input_kit import BASE, image_folder, sub  # noqa: E402
from bad_inputs_files import INDEXES, _plant, _through_link  # noqa: E402

from bench.cli import main  # noqa: E402

#: files opened by this process while ``_watch`` is on (an audit hook cannot be removed: it is switched)
_OPENED: list[str] | None = None


def _hook(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)


def _run_watched(argv: list[str]) -> tuple[int, list[str]]:
    global _OPENED
    _OPENED = []
    try:
        code = main(argv)
    finally:
        opened, _OPENED = _OPENED, None
    return code, opened


PRETRAIN = ["train", "suite.yaml", "--pretrain", "tb_vit_pico_patch4_32", "--results", "results"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda paths, t: ["../secret.jpg"] * len(paths),
        lambda paths, t: [str(t / "secret.jpg")] * len(paths),
        lambda paths, t: paths[:-1] + ["train/cat/../../../secret.jpg"],
        _through_link,
    ],
    ids=["dotdot", "absolute", "dotdot-inside", "linked-folder"],
)
def test_planted_index_is_refused_and_the_outside_file_never_opened(edit, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(BASE)
    _plant(edit)(tmp_path)
    secret = str(tmp_path / "secret.jpg")
    code, opened = _run_watched(PRETRAIN)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "index.parquet: refused: image path" in err[0] and "leaves the data root" in err[0], err
    assert not any(os.path.realpath(p) == secret for p in opened), [p for p in opened if "secret" in p]
    assert not list((tmp_path / "results").rglob("model.pth"))  # no compute started


def test_index_cases_cover_the_planted_index_class():
    assert len(INDEXES) >= 5 and {c.kind for c in INDEXES} == {"planted index"}


def test_an_honest_index_is_read_and_trains(tmp_path, capsys, monkeypatch):
    """The path check refuses nothing the index step writes: the kit's folder, indexed, pretrains."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(BASE)
    image_folder(indexed=True)(tmp_path)
    assert main(PRETRAIN) == 0, capsys.readouterr().err
    assert list((tmp_path / "results").rglob("model.pth"))


def test_image_linked_outside_is_left_out_unopened_with_skip_unreadable(tmp_path, capsys, monkeypatch):
    from bench.data.index import read_index

    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(BASE)
    image_folder()(tmp_path)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((tmp_path / "pets/train/cat/0.jpg").read_bytes())
    os.symlink(secret, tmp_path / "pets/train/cat/out.jpg")
    suite = tmp_path / "suite.yaml"
    suite.write_text(suite.read_text().replace("source: imagefolder,", "source: imagefolder, skip_unreadable: true,"))
    code, opened = _run_watched(["index", "suite.yaml", "--results", "results"])
    assert code == 0, capsys.readouterr().err
    assert not any(os.path.realpath(p) == str(secret) for p in opened)
    index = read_index(tmp_path / "results/tiny/data/index.parquet", tmp_path / "pets")
    assert index.skipped == ["train/cat/out.jpg"] and "train/cat/out.jpg" not in index.table["path"].to_pylist()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a file of mode 000")
def test_unreadable_image_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(BASE)
    image_folder(lambda root: os.chmod(root / "val/dog/1.jpg", 0))(tmp_path)
    assert main(["index", "suite.yaml", "--results", "results"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val/dog/1.jpg (PermissionError" in err[0], err


# -- checkpoints


def _pico(**kwargs):
    from bench.models import build_backbone

    return build_backbone("tb_vit_pico_patch4_32", num_classes=kwargs.pop("num_classes", 10), in_chans=1, **kwargs)


def test_good_checkpoints_pass_validate_build(tmp_path, capsys, monkeypatch):
    """A harness model.pth, a bare state_dict at another image size with a 1000-class head (resampled and
    replaced), half precision and .safetensors all load, so none is refused."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    files = {
        "model.pth": {"model": _pico().state_dict(), "meta": {"epochs": 1}},
        "big.pth": _pico(num_classes=1000, img_size=64).state_dict(),
        "half.pth": {k: v.half() for k, v in _pico().state_dict().items()},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(_pico().state_dict(), tmp_path / "w.safetensors")
    for name in [*files, "w.safetensors"]:
        (tmp_path / "suite.yaml").write_text(sub("init: scratch", f"init: {tmp_path / name}"))
        assert main(["validate", "--build", "suite.yaml"]) == 0, (name, capsys.readouterr().err)


def test_mismatch_names_keys_shapes_and_dtype():
    import torch

    from bench.models.checkpoint_checks import mismatch

    own = {"a.weight": torch.empty(4, 4, device="meta"), "b.weight": torch.empty(4, device="meta")}
    assert mismatch({"a.weight": torch.zeros(4, 4)}, own, head_free=False, pos_embed_free=False) == (
        "1 key(s) missing (b.weight)"
    )
    sd = {"a.weight": torch.zeros(4, 4), "b.weight": torch.zeros(5)}
    assert "b.weight is (5,) where the model has (4,)" in mismatch(sd, own, head_free=False, pos_embed_free=False)
    sd = {"a.weight": torch.zeros(4, 4, dtype=torch.int64), "b.weight": torch.zeros(4)}
    assert "dtype int64 where the model has float32" in mismatch(sd, own, head_free=False, pos_embed_free=False)
    sd = {"a.weight": torch.zeros(4, 4), "b.weight": torch.zeros(4)}
    assert mismatch(sd, own, head_free=False, pos_embed_free=False) is None


def test_a_replaced_checkpoint_is_checked_again(tmp_path):
    """The pipeline reuses a suite's passed checks (a marker keyed by its content): the key holds each checkpoint
    file's size and mtime, so a file swapped after validation is matched again."""
    import time

    from bench.models.checkpoint_checks import files_stamp

    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"x" * 10)
    raw = {"pretrain": {"init": str(ckpt)}, "backbones": ["tb_vit_pico_patch4_32"], "methods": ["dense"]}
    before = files_stamp(raw)
    time.sleep(0.01)
    ckpt.write_bytes(b"y" * 11)
    assert files_stamp(raw) != before


def test_the_index_step_rebuilds_a_planted_index(tmp_path, capsys, monkeypatch):
    """`bench index` does not call a planted index (fingerprint intact, paths outside) up to date: it rebuilds it."""
    from bench.data.index import read_index

    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(BASE)
    _plant(lambda paths, t: ["../secret.jpg"] * len(paths))(tmp_path)
    assert main(["index", "suite.yaml", "--results", "results"]) == 0, capsys.readouterr().err
    assert "up to date" not in capsys.readouterr().out
    index = read_index(tmp_path / "results/tiny/data/index.parquet", tmp_path / "pets")
    assert sorted(index.table["path"].to_pylist())[0] == "train/cat/0.jpg"


@pytest.mark.skipif(not hasattr(os, "chown") or os.geteuid() != 0, reason="needs root to give a file away")
def test_another_users_decode_cache_is_not_trusted(tmp_path, capsys, monkeypatch):
    """A co-user's decode_cache.parquet saying a truncated image is readable does not let it into the index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.data.folder_checks import CACHE_NAME

    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text(BASE)
    image_folder(indexed=True)(tmp_path)
    data = tmp_path / "results/tiny/data"
    bad = tmp_path / "pets/train/cat/1.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    (data / "index.parquet").unlink()  # rebuilt, with the cache's verdicts
    cache = pq.read_table(data / CACHE_NAME)
    rows = cache.to_pylist()
    st = bad.stat()
    for r in rows:
        if r["path"] == "train/cat/1.jpg":
            r.update(size=st.st_size, mtime_ns=st.st_mtime_ns, error=None)  # "readable"
    pq.write_table(pa.Table.from_pylist(rows, schema=cache.schema), data / CACHE_NAME)
    os.chown(data / CACHE_NAME, 12345, 12345)
    assert main(["index", "suite.yaml", "--results", "results"]) == 2
    assert "train/cat/1.jpg" in capsys.readouterr().err
