"""The training checkpoint's parts beside the weights and optimiser: every process's random streams (the
method's, torch's, numpy's, Python's, CUDA's) for an exact resume, reading the last epoch checkpoint back, and
the per-epoch log.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import ArtifactError, UnsafeArtifact
from bench.io import atomic_write_text, load_torch
from bench.methods.base import Method


def _rng_state(method: Method, device: torch.device) -> dict[str, Any]:
    # numpy's state as a tensor and plain ints: the checkpoint then loads with weights_only (no pickled objects)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "method": method.train_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python_rng": random.getstate(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _load_rng_state(state: dict[str, Any], method: Method, device: torch.device) -> None:
    method.load_train_state(state["method"])
    torch.set_rng_state(state["torch_rng"])
    if "numpy_rng" in state:  # checkpoints written before Mixup and timm's transforms drew from them lack these
        np_state = state["numpy_rng"]
        np.random.set_state(
            (
                np_state["kind"],
                np_state["keys"].numpy().astype(np.uint32),
                np_state["pos"],
                np_state["has_gauss"],
                np_state["gauss"],
            )
        )
        random.setstate(state["python_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _read_state(path: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The last epoch checkpoint, or None. A damaged one (truncated, another format) is moved aside and training
    starts over; one holding pickled code is refused (loading it would run that code)."""
    if not path.exists():
        return None
    try:
        return load_torch(path)
    except UnsafeArtifact:
        raise
    except ArtifactError as e:
        from bench.artifacts import quarantine

        log(f"{e}: the run starts again from its first epoch")
        quarantine(path, "unreadable")
        return None


def _append_log(path: Path, record: dict[str, Any]) -> None:
    # the log is rewritten whole, so a crash mid-write cannot leave a torn line
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if json.loads(ln).get("epoch", 0) < record["epoch"]] + [json.dumps(record)]
    atomic_write_text(path, "\n".join(lines) + "\n")
