"""Bad inputs of one class: files a suite points at: checkpoints, image folders, planted indexes.

Checkpoints (a backbone's ``init``, a method's ``weights``) are opened and matched to the built model by
``bench validate --build``; image folders are checked by the index step (``bench index``); a planted index is
refused by the step that reads it (here a pretrain), before any image is opened.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_kit import BASE, Case, add, cut, image_folder, method, sub  # noqa: E402

PICO = "tb_vit_pico_patch4_32"
INDEX = ["index", "{suite}", "--results", "{tmp}/results"]
PRETRAIN = ["train", "{suite}", "--pretrain", PICO, "--results", "{tmp}/results"]


# -- checkpoints: written under <tmp>/ckpt by a setup, named by the suite as init or weights


def _init(name: str) -> str:
    return sub("init: scratch", f"init: '{{tmp}}/ckpt/{name}'")


def _weights(name: str) -> str:
    return method(f"{{name: dynamicvit, finetune: none, weights: '{{tmp}}/ckpt/{name}'}}")


def _state_dict(model: str = PICO, method_name: str | None = None, **kwargs):
    from bench.methods import create_method
    from bench.models import build_backbone

    net = build_backbone(model, num_classes=kwargs.pop("num_classes", 10), in_chans=kwargs.pop("in_chans", 1), **kwargs)
    if method_name:
        create_method(method_name, 0.5, 0).apply(net)
    return net.state_dict()


def _ckpt(name: str, make: Callable[[], object]) -> Callable[[Path], None]:
    """A setup writing <tmp>/ckpt/<name>: bytes as they are, anything else through torch.save."""

    def setup(tmp: Path) -> None:
        import torch

        path = tmp / "ckpt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = make()
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        # the suite names the file through {tmp}: the suite file is written before the setup runs
        suite = tmp / "suite.yaml"
        suite.write_text(suite.read_text().replace("{tmp}", str(tmp)))

    return setup


def _torch_bytes(obj: object) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _zip_of_text() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes/readme.txt", "not weights")
    return buf.getvalue()


def _safetensors_cut() -> bytes:
    from safetensors.torch import save

    return save(_state_dict())[:3000]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _special(make: Callable[[Path], None], name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "ckpt").mkdir(exist_ok=True)
        make(tmp / "ckpt" / name)
        suite = tmp / "suite.yaml"
        suite.write_text(suite.read_text().replace("{tmp}", str(tmp)))

    return setup


def _folder_weights(tmp: Path) -> None:
    """The kit's two-class image folder (RGB) and a dynamicvit evaluated from weights with a 10-class head."""
    import torch

    image_folder()(tmp)
    suite = tmp / "suite.yaml"
    weights = tmp / "ckpt/m.pth"
    weights.parent.mkdir()
    torch.save({"model": _state_dict(method_name="dynamicvit", in_chans=3)}, weights)
    line = "methods: [dense, static, dynamicvit, token_pooling, svite]"
    spec = f"methods: [dense, {{name: dynamicvit, finetune: none, weights: '{weights}'}}]"
    suite.write_text(suite.read_text().replace(line, spec))


CK = "checkpoint"
CHECKPOINTS: list[Case] = [
    Case(
        "init: a text file", "is a text file", _init("w.pth"), setup=_ckpt("w.pth", lambda: b"ViT-S weights\n"), kind=CK
    ),
    Case("init: one byte 'K' (was IndexError)", "w.pth", _init("w.pth"), setup=_ckpt("w.pth", lambda: b"K"), kind=CK),
    Case("init: an empty file", "is empty", _init("w.pth"), setup=_ckpt("w.pth", lambda: b""), kind=CK),
    Case(
        "init: a truncated torch file",
        "truncated",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: _torch_bytes(_state_dict())[:20000]),
        kind=CK,
    ),
    Case(
        "init: a truncated .safetensors",
        "w.safetensors",
        _init("w.safetensors"),
        setup=_ckpt("w.safetensors", _safetensors_cut),
        kind=CK,
    ),
    Case(
        "init: a zip of text files",
        "not a torch checkpoint",
        _init("w.pth"),
        setup=_ckpt("w.pth", _zip_of_text),
        kind=CK,
    ),
    Case(
        "init: a ViT of another depth and width",
        "unexpected key",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: _state_dict("tb_vit_nano_patch4_32")),
        kind=CK,
    ),
    Case(
        "init: a timm ResNet's state_dict",
        "another architecture",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: __import__("timm").create_model("test_resnet", num_classes=10).state_dict()),
        kind=CK,
    ),
    Case(
        "init: integer tensors",
        "dtype int64",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: {k: (v * 100).long() for k, v in _state_dict().items()}),
        kind=CK,
    ),
    Case(
        "init: RGB weights for grayscale data",
        "patch_embed.proj.weight",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: _state_dict(in_chans=3)),
        kind=CK,
    ),
    Case(
        "init: a pickle with objects",
        "Python objects",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: {"model": _Evil()}),
        kind=CK,
    ),
    Case("init: a pickled list", "holds a list", _init("w.pth"), setup=_ckpt("w.pth", lambda: [1, 2, 3]), kind=CK),
    Case(
        "init: a training log, no tensors",
        "holds no tensors",
        _init("w.pth"),
        setup=_ckpt("w.pth", lambda: {"epoch": 3, "lr": 0.001}),
        kind=CK,
    ),
    Case(
        "init: a directory named .pth",
        "backbones[0].init",
        _init("w.pth"),
        setup=_special(lambda p: p.mkdir(), "w.pth"),
        kind=CK,
    ),
    Case(
        "init: a FIFO named .pth",
        "backbones[0].init",
        _init("w.pth"),
        setup=_special(lambda p: os.mkfifo(p), "w.pth"),
        kind=CK,
    ),
    Case(
        "init: a symlink loop",
        "backbones[0].init",
        _init("w.pth"),
        setup=_special(lambda p: os.symlink(p.name, p), "w.pth"),
        kind=CK,
    ),
    Case("weights: a text file", "is a text file", _weights("m.pth"), setup=_ckpt("m.pth", lambda: b"{}\n"), kind=CK),
    Case("weights: an empty file", "methods[1].weights", _weights("m.pth"), setup=_ckpt("m.pth", lambda: b""), kind=CK),
    Case(
        "weights: the plain backbone's, no method modules",
        "key(s) missing (dynamicvit_predictors",
        _weights("m.pth"),
        setup=_ckpt("m.pth", lambda: {"model": _state_dict()}),
        kind=CK,
    ),
    Case(
        "weights: integer tensors",
        "dtype int64",
        _weights("m.pth"),
        setup=_ckpt(
            "m.pth", lambda: {"model": {k: v.long() for k, v in _state_dict(method_name="dynamicvit").items()}}
        ),
        kind=CK,
    ),
    Case(
        "weights: NaN in a block",
        "NaN",
        _weights("m.pth"),
        setup=_ckpt(
            "m.pth",
            lambda: {
                "model": {
                    k: v.fill_(float("nan")) if k == "blocks.0.attn.qkv.weight" else v
                    for k, v in _state_dict(method_name="dynamicvit").items()
                }
            },
        ),
        kind=CK,
    ),
    Case(
        "weights: a 1000-class head for 10 classes",
        "head.weight",
        _weights("m.pth"),
        setup=_ckpt("m.pth", lambda: {"model": _state_dict(method_name="dynamicvit", num_classes=1000)}),
        kind=CK,
    ),
    Case(
        "weights: saved from DDP (module. prefix)",
        "'module.' prefix",
        _weights("m.pth"),
        setup=_ckpt(
            "m.pth", lambda: {"model": {f"module.{k}": v for k, v in _state_dict(method_name="dynamicvit").items()}}
        ),
        kind=CK,
    ),
    Case(
        "weights: a .safetensors file (the evaluate step reads torch files)",
        "m.safetensors' is a .safetensors file",
        _weights("m.safetensors"),
        setup=_ckpt(
            "m.safetensors", lambda: __import__("safetensors.torch").torch.save(_state_dict(method_name="dynamicvit"))
        ),
        kind=CK,
    ),
    Case(
        "weights: a 10-class head for a 2-class image folder",
        "head.weight is (10, 64) where the model has (2, 64)",
        BASE,
        setup=_folder_weights,
        kind=CK,
    ),
    Case(
        "weights: a pickle with objects",
        "Python objects",
        _weights("m.pth"),
        setup=_ckpt("m.pth", lambda: _Evil()),
        kind=CK,
    ),
]


# -- image folders: the kit's pets folder, spoiled; the index step refuses it


def _png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` RGB pixels, with a few bytes of data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _link(rel: str, target: str | Callable[[Path], str]) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target(root) if callable(target) else target, root / rel)

    return spoil


def _outside_file(root: Path) -> str:
    secret = root.parent / "secret.jpg"
    secret.write_bytes((root / "train/cat/0.jpg").read_bytes())
    return str(secret)


def _outside_folder(root: Path) -> str:
    elsewhere = root.parent / "elsewhere" / "eel"
    elsewhere.mkdir(parents=True, exist_ok=True)
    (elsewhere / "0.jpg").write_bytes((root / "train/cat/0.jpg").read_bytes())
    return str(elsewhere)


def _both(*spoils: Callable[[Path], None]) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        for s in spoils:
            s(root)

    return spoil


def _png_file(root: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "val/dog/red.png")


def _rename(old: str, new: str) -> Callable[[Path], None]:
    return lambda root: (root / old).rename(root / new)


def _all_unreadable(cls: str) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        for f in (root / cls).iterdir():
            f.write_bytes(b"not an image")

    return spoil


IF = "image folder"


def _skip_unreadable(spoil: Callable[[Path], None]) -> Callable[[Path], None]:
    """image_folder(spoil), with skip_unreadable: true under data:."""

    def setup(tmp: Path) -> None:
        image_folder(spoil)(tmp)
        suite = tmp / "suite.yaml"
        suite.write_text(
            suite.read_text().replace("source: imagefolder,", "source: imagefolder, skip_unreadable: true,")
        )

    return setup


def _val_split(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        image_folder()(tmp)
        suite = tmp / "suite.yaml"
        suite.write_text(suite.read_text().replace("source: imagefolder,", f"source: imagefolder, val_split: {name},"))

    return setup


FOLDERS: list[Case] = [
    Case(
        "PNG claiming 100000 x 100000 pixels",
        "train/cat/big.png",
        BASE,
        INDEX,
        setup=image_folder(add("train/cat/big.png", _png(100_000, 100_000))),
        kind=IF,
    ),
    Case(
        "PNG of 12000 x 12000 pixels, under PIL's hard limit",
        "val/dog/big.png",
        BASE,
        INDEX,
        setup=image_folder(add("val/dog/big.png", _png(12_000, 12_000))),
        kind=IF,
    ),
    Case(
        "image linked to itself",
        "train/cat/self.jpg",
        BASE,
        INDEX,
        setup=image_folder(_link("train/cat/self.jpg", "self.jpg")),
        kind=IF,
    ),
    Case(
        "two images linked to each other",
        "train/dog/a.jpg",
        BASE,
        INDEX,
        setup=image_folder(_both(_link("train/dog/a.jpg", "b.jpg"), _link("train/dog/b.jpg", "a.jpg"))),
        kind=IF,
    ),
    Case(
        "folder link loop in a nested class folder",
        "train/cat/sub/loop",
        BASE,
        INDEX,
        setup=image_folder(_both(add("train/cat/sub/1.jpg"), _link("train/cat/sub/loop", ".."))),
        kind=IF,
    ),
    Case(
        "image linked outside the data root",
        "outside the data root",
        BASE,
        INDEX,
        setup=image_folder(_link("train/cat/out.jpg", _outside_file)),
        kind=IF,
    ),
    Case(
        "class folder linked outside the data root",
        "train/eel is a symbolic link",
        BASE,
        INDEX,
        setup=image_folder(_both(_link("train/eel", _outside_folder), _link("val/eel", _outside_folder))),
        kind=IF,
    ),
    Case(
        "split folder linked outside the data root",
        "val is a symbolic link",
        BASE,
        INDEX,
        setup=image_folder(_both(_rename("val", "../val"), _link("val", lambda root: str(root.parent / "val")))),
        kind=IF,
    ),
    Case(
        "dangling image link",
        "train/cat/gone.jpg",
        BASE,
        INDEX,
        setup=image_folder(_link("train/cat/gone.jpg", "missing.jpg")),
        kind=IF,
    ),
    Case(
        "FIFO named .jpg",
        "not a regular file",
        BASE,
        INDEX,
        setup=image_folder(lambda r: os.mkfifo(r / "train/cat/pipe.jpg")),
        kind=IF,
    ),
    Case(
        "HTML error page saved as .JPEG",
        "train/cat/n01.JPEG",
        BASE,
        INDEX,
        setup=image_folder(add("train/cat/n01.JPEG", b"<html><body>404 Not Found</body></html>")),
        kind=IF,
    ),
    Case(
        "truncated PNG",
        "val/dog/red.png",
        BASE,
        INDEX,
        setup=image_folder(_both(_png_file, cut("val/dog/red.png"))),
        kind=IF,
    ),
    Case("zero-byte PNG in val/", "val/cat/x.png", BASE, INDEX, setup=image_folder(add("val/cat/x.png", b"")), kind=IF),
    Case("empty class folder in val/", "val/eel", BASE, INDEX, setup=image_folder(add("val/eel/")), kind=IF),
    Case(
        "class folder of text files",
        "train/eel",
        BASE,
        INDEX,
        setup=image_folder(add("train/eel/readme.txt", b"x")),
        kind=IF,
    ),
    Case(
        "class folder of hidden images", "train/eel", BASE, INDEX, setup=image_folder(add("train/eel/.0.jpg")), kind=IF
    ),
    Case(
        "val/ classes named differently (cats)",
        "with no images in train/ (never trained; found in val/): cats",
        BASE,
        INDEX,
        setup=image_folder(_rename("val/cat", "val/cats")),
        kind=IF,
    ),
    Case("val_split naming no folder", "no split 'test'", BASE, INDEX, setup=_val_split("test"), kind=IF),
    Case(
        "skip_unreadable leaves a class without images",
        "no images in val/",
        BASE,
        INDEX,
        setup=_skip_unreadable(_all_unreadable("val/dog")),
        kind=IF,
    ),
]


# -- a planted index: results/tiny/data/index.parquet rewritten with paths outside the data root; its footer,
# columns and fingerprint stay valid, so only the path check stands between the job and the outside file


def _plant(edit: Callable[[list[str], Path], list[str]]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        image_folder(indexed=True)(tmp)
        secret = tmp / "secret.jpg"
        secret.write_bytes((tmp / "pets/train/cat/0.jpg").read_bytes())
        path = tmp / "results/tiny/data/index.parquet"
        table = pq.read_table(path)
        paths = edit(table["path"].to_pylist(), tmp)
        planted = table.set_column(table.column_names.index("path"), "path", pa.array(paths, pa.string()))
        pq.write_table(planted.replace_schema_metadata(table.schema.metadata), path)

    return setup


def _every(new: Callable[[str, Path], str]) -> Callable[[list[str], Path], list[str]]:
    return lambda paths, tmp: [new(p, tmp) for p in paths]


def _through_link(paths: list[str], tmp: Path) -> list[str]:
    """A link out of the data root planted beside the index, the folder's mtime put back (the fingerprint holds)."""
    st = os.stat(tmp / "pets")
    os.symlink(tmp, tmp / "pets/.out")
    os.utime(tmp / "pets", ns=(st.st_atime_ns, st.st_mtime_ns))
    return [".out/secret.jpg", *paths[1:]]


def _swap_labels(tmp: Path) -> None:
    """The index's class names reversed in its metadata: every image keeps its path, cats are labelled dogs."""
    import json

    import pyarrow.parquet as pq

    image_folder(indexed=True)(tmp)
    path = tmp / "results/tiny/data/index.parquet"
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"tokenbench_index"])
    meta["classes"] = meta["classes"][::-1]
    pq.write_table(table.replace_schema_metadata({b"tokenbench_index": json.dumps(meta).encode()}), path)


PI = "planted index"
INDEXES: list[Case] = [
    Case(
        "index with ../ paths",
        "../secret.jpg",
        BASE,
        PRETRAIN,
        setup=_plant(_every(lambda p, t: "../secret.jpg")),
        kind=PI,
    ),
    Case(
        "index with ../ inside a path",
        "train/cat/../../../secret.jpg",
        BASE,
        PRETRAIN,
        setup=_plant(_every(lambda p, t: "train/cat/../../../secret.jpg")),
        kind=PI,
    ),
    Case(
        "index with absolute paths",
        "secret.jpg' leaves the data root",
        BASE,
        PRETRAIN,
        setup=_plant(_every(lambda p, t: str(t / "secret.jpg"))),
        kind=PI,
    ),
    Case(
        "index with one outside path among good ones",
        "/etc/passwd",
        BASE,
        PRETRAIN,
        setup=_plant(lambda paths, t: paths[:-1] + ["/etc/passwd"]),
        kind=PI,
    ),
    Case(
        "index through a folder linked outside",
        "leaves the data root",
        BASE,
        PRETRAIN,
        setup=_plant(_through_link),
        kind=PI,
    ),
    Case(
        "index with an empty path",
        "leaves the data root",
        BASE,
        PRETRAIN,
        setup=_plant(lambda paths, t: [""] + paths[1:]),
        kind=PI,
    ),
]

INDEXES.append(
    Case("index with labels swapped between classes", "with label 'dog'", BASE, PRETRAIN, setup=_swap_labels, kind=PI)
)

CASES: list[Case] = [*CHECKPOINTS, *FOLDERS, *INDEXES]
