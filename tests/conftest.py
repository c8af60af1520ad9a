import os

import pytest
import torch

# two cores on CI: tests stay single-threaded so pytest-level parallelism (if any) does not oversubscribe
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test shares one session cache dir, never the user's ~/.cache."""
    monkeypatch.setenv("TOKENBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tiny_vit():
    from bench.models import build_backbone

    def make(depth: int = 8, **kw):
        torch.manual_seed(0)
        name = "tb_vit_nano_patch4_32" if depth == 12 else "tb_vit_pico_patch4_32"
        return build_backbone(name, num_classes=10, **kw).eval()

    return make


class Killed(BaseException):
    """The process dying mid-run (a BaseException, as a signal: no training code may catch it)."""


@pytest.fixture
def dying_log():
    """``dying_log(n)``: a training log callback that kills the run at its n-th line (``dying_log.Killed``)."""

    def make(n: int):
        calls = []

        def log(line: str) -> None:
            calls.append(line)
            if len(calls) == n:
                raise Killed

        return log

    make.Killed = Killed
    return make
