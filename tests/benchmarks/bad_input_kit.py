"""The kit of the bad-input table: the tiny BASE suite, the Case record, setups that plant files, and how a
case runs (in its own process: bench, or snakemake -n). The cases live in ``bad_inputs*.py`` beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BASE = """name: tiny
data: {source: embedded, name: canvas-digits}
backbones: [tb_vit_pico_patch4_32]
methods: [dense, static, dynamicvit, token_pooling, svite]
keep_ratios: [0.5]
seeds: [0]
pretrain: {init: scratch, recipe: {epochs: 1, batch_size: 64, max_steps_per_epoch: 3}}
finetune: {epochs: 1, batch_size: 64, max_steps_per_epoch: 2}
evaluate: {max_val_images: 64, flops_images: 4, throughput: {batch_sizes: [2], repeats: 2, warmup: 1}}
"""
RUN = "static__tb_vit_pico_patch4_32__k0.50__s0"


def sub(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new)


def method(spec: str) -> str:
    return sub("methods: [dense, static, dynamicvit, token_pooling, svite]", f"methods: [dense, {spec}]")


def recipe(extra: str) -> str:
    return sub("finetune: {epochs: 1,", f"finetune: {{{extra}, epochs: 1,")


@dataclass
class Case:
    name: str
    expect: str  # a substring the message must hold (the field or file named)
    suite: str | bytes | None = BASE  # written to <tmp>/suite.yaml; None: no suite file
    argv: list[str] = field(default_factory=lambda: ["validate", "--build", "{suite}"])
    snakemake: bool = False  # argv are snakemake --config values instead of bench arguments
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)  # environment of the case ({tmp} is its folder)
    kind: str = "earlier"  # the class of bad input it belongs to (counted per class by --by-kind)


def backbones(spec: str, methods: str = "[dense, static]") -> str:
    """BASE with these backbones and methods."""
    return sub("backbones: [tb_vit_pico_patch4_32]", f"backbones: {spec}").replace(
        "methods: [dense, static, dynamicvit, token_pooling, svite]", f"methods: {methods}"
    )


#: a backbone with hub weights, and an empty hub cache: only the hub could give the weights
HUB = backbones("[vit_tiny_patch16_224]").replace("init: scratch", "init: hub")
EMPTY_CACHE = {"HF_HUB_CACHE": "{tmp}/hf-cache", "TORCH_HOME": "{tmp}/torch-home"}


def image_folder(spoil: Callable[[Path], None] | None = None, indexed: bool = False) -> Callable[[Path], None]:
    """A setup: a small JPEG folder <tmp>/pets (train/ and val/, classes cat and dog) read by the suite file,
    spoiled by ``spoil`` (after the index step when ``indexed``: a file rewritten in place)."""

    def setup(tmp: Path) -> None:
        import numpy as np
        from PIL import Image

        root, rng = tmp / "pets", np.random.default_rng(0)
        for split, n in (("train", 4), ("val", 2)):
            for cls in ("cat", "dog"):
                (root / split / cls).mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")
        folder = f"data: {{source: imagefolder, path: '{root}'}}"
        suite = sub("data: {source: embedded, name: canvas-digits}", folder)
        # two epochs: with one, timm's scheduler logs a warning line before the job reaches its first image
        (tmp / "suite.yaml").write_text(suite.replace("recipe: {epochs: 1,", "recipe: {epochs: 2,"))
        if indexed:
            from bench.data.sources import refresh_index

            refresh_index({"source": "imagefolder", "path": str(root)}, tmp / "results/tiny/data/index.parquet")
        if spoil is not None:
            spoil(root)

    return setup


def cut(rel: str) -> Callable[[Path], None]:
    def cut(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])

    return cut


def add(rel: str, data: bytes | None = None) -> Callable[[Path], None]:
    """A file (a copy of train/cat/0.jpg unless ``data``) or, for a path ending in /, a folder."""

    def add(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            (root / rel).mkdir()
        else:
            (root / rel).write_bytes((root / "train/cat/0.jpg").read_bytes() if data is None else data)

    return add


def prepare(case: Case, tmp: Path) -> list[str]:
    """Write the case's files under ``tmp``; returns the argv (bench arguments or snakemake --config values)."""
    suite = tmp / "suite.yaml"
    if case.suite is not None:
        suite.write_bytes(case.suite if isinstance(case.suite, bytes) else case.suite.encode())
    if case.setup:
        case.setup(tmp)
    argv = [a.replace("{suite}", str(suite)).replace("{tmp}", str(tmp)) for a in case.argv]
    if case.snakemake and not any(a.startswith("suite=") for a in argv):
        argv.append(f"suite={suite}")
    return argv


def case_env(case: Case, tmp: Path) -> dict[str, str]:
    return {k: v.replace("{tmp}", str(tmp)) for k, v in case.env.items()}


def run_case(case: Case, tmp: Path) -> tuple[int, list[str]]:
    argv = prepare(case, tmp)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **case_env(case, tmp)}
    if case.snakemake:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp),
            "-n",
            "--workflow-profile",
            "none",
            "--cores",
            "1",
            "--config",
            f"results={tmp / 'results'}",
            *argv,
        ]
    else:
        cmd = [sys.executable, "-m", "bench", *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=300)
    lines = [
        ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(("Using workflow", "Using profile"))
    ]
    return p.returncode, lines
