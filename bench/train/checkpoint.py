"""The training checkpoint's parts beside the weights and optimiser: every process's random streams (the
method's, torch's, numpy's, Python's, CUDA's) for an exact resume, what the checkpoint was trained for (the key
of its step's spec and inputs, as ``.kept`` uses it), reading the last epoch checkpoint back, and the per-epoch
log.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import ArtifactError, UnsafeArtifact, clip
from bench.io import atomic_write_text, check_no_link, load_torch, read_text
from bench.methods.base import Method


def rng_state(method: Method, device: torch.device) -> dict[str, Any]:
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


def load_rng_state(state: dict[str, Any], method: Method, device: torch.device) -> None:
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
    except FileNotFoundError:  # moved aside by rank 0 meanwhile (a stale checkpoint): a fresh start here too
        return None
    except UnsafeArtifact:
        raise
    except ArtifactError as e:
        from bench.artifacts import quarantine

        log(f"{e}: the run starts again from its first epoch")
        quarantine(path, "unreadable")
        return None


STALE_SUFFIX = ".stale"


def made_for(spec: dict[str, Any], inputs: list[Path]) -> dict[str, Any]:
    """What a training run is for: the key of its step's result in ``.kept`` (the spec and the size and mtime of
    the files it reads, ``bench.outputs.step_key``), and the same as named fields, to say what changed."""
    from bench.outputs import step_key

    fields: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            fields[prefix] = json.dumps(value, sort_keys=True, default=str)

    walk("", spec)
    for p in inputs:
        st = os.stat(p) if os.path.exists(p) else None
        fields[f"input {Path(p).parent.name}/{Path(p).name}"] = f"{st.st_size}:{st.st_mtime_ns}" if st else "-"
    return {"key": step_key(spec, inputs), "fields": fields}


def _what_changed(saved: Any, now: dict[str, Any]) -> str:
    if not isinstance(saved, dict) or not isinstance(saved.get("key"), str):
        return "it records none: written before checkpoints carried their spec's key"
    old, new = saved.get("fields") or {}, now["fields"]
    names = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "the key differs"


def set_aside(path: Path) -> Path:
    """Move ``path`` to ``<name>.stale`` (one copy, for a post-mortem; the link itself if it is one)."""
    aside = path.with_name(path.name + STALE_SUFFIX)
    os.replace(path, aside)
    return aside


def read_state(
    path: Path, purpose: dict[str, Any] | None, log: Callable[[str], None], *, main: bool = True
) -> dict[str, Any] | None:
    """The last epoch checkpoint if it was trained for ``purpose`` (``made_for``), else None. One made for
    another spec or other inputs is never continued (its weights would match neither spec): rank 0 moves it
    aside, with one line saying why, and training starts from epoch 0. ``purpose`` None (a caller outside the
    pipeline's steps) takes any checkpoint, as before checkpoints carried a key."""
    state = _read_state(path, log)
    if state is None or purpose is None:
        return state
    saved = state.get("made_for")
    if isinstance(saved, dict) and saved.get("key") == purpose["key"]:
        return state
    if main:
        aside = set_aside(path)
        log(
            f"{path.name} was made for another spec ({_what_changed(saved, purpose)}); moved to {aside.name}, "
            f"starting from epoch 0"
        )
    return None


def fresh_log(path: Path) -> None:
    """A fresh start writes a log of its own: the epochs of a checkpoint that is gone (stale, damaged, never
    written) are moved aside, not appended to."""
    if os.path.lexists(path):
        set_aside(check_no_link(path))  # a planted symlink is refused (bench.io), not moved as if it were a log


def read_log(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The per-epoch records of a training log. A torn line (half-written by another tool, a full disk) is
    dropped with one warning line, never fatal: the next epoch's rewrite leaves it out."""
    records = []
    lines = read_text(path, errors="replace").splitlines() if os.path.lexists(path) else []  # no link followed
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and isinstance(rec.get("epoch", 0), int):
            records.append(rec)
        elif warn is not None:
            warn(f"warning: {path}: line {n} is torn (not a JSON record), dropped: {clip(ln, 60)!r}")
    return records


def append_log(path: Path, record: dict[str, Any], warn: Callable[[str], None] | None = None) -> None:
    # the log is rewritten whole, so a crash mid-write cannot leave a torn line
    lines = [json.dumps(r) for r in read_log(path, warn) if r.get("epoch", 0) < record["epoch"]]
    atomic_write_text(path, "\n".join([*lines, json.dumps(record)]) + "\n")
