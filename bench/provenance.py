"""Where a number came from: code version, library versions, hardware."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def git_state(cwd: str | None = None) -> tuple[str | None, bool | None]:
    """(commit sha, dirty flag) of the checkout the harness runs from; (None, None) outside git."""
    cwd = cwd or str(Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def provenance(device: torch.device) -> dict[str, Any]:
    import timm

    sha, dirty = git_state()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "torch_version": str(torch.__version__),
        "timm_version": str(timm.__version__),
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def pick_device(requested: str | None = None) -> torch.device:
    import os

    from bench.errors import UsageError

    name = requested or os.environ.get("TOKENBENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    where = "--device" if requested else "TOKENBENCH_DEVICE"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{where} {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{where} {name!r}: this machine has no usable CUDA GPU (use cpu)")
        if device.index is not None and device.index >= count:
            raise UsageError(f"{where} {name!r}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{where} {name!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{where} {name!r}: unsupported device type {device.type!r} (cpu, cuda or mps)")
    return device
