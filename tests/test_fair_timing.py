"""Fair timing: no method's evaluation forward makes host tensors, builds generators or waits on the device.

On an accelerator each of these stalls the timed loop: a tensor made on the host (a factory call without
``device=``) must be copied to the device, blocking; a generator built per forward is host work; ``.item()``,
``.tolist()``, ``bool(tensor)``, ``torch.equal``, ``nonzero``, ``one_hot``'s range check... read device values
on the host, a synchronisation. On the CPU these are all cheap or invisible (``.to(device)`` of a CPU tensor to
the CPU is a no-op), so the checks look at *calls*, device-independently:

* torch-function level (a :class:`TorchFunctionMode`): factory functions called without a device, device moves
  (``.to(device)``, ``.cpu()``, ``.cuda()``) and host reads (``.item()``, ``.tolist()``, ``__bool__``, ...);
* ``torch.Generator`` constructions (the constructor is wrapped for the duration);
* dispatch level (a :class:`TorchDispatchMode`): a copy (``_to_copy`` / ``copy_``) whose source was made by a
  factory op during the forward;
* the profiler's aten ops: host syncs (``aten::item``, ``aten::_local_scalar_dense``, ``aten::nonzero``,
  ``aten::equal``, ...).

Every registered method is checked after warm-up forwards (a method may build what it needs once, as a timing's
warm-up does), against the dense backbone: what timm itself does (dense) is allowed, a method adds nothing.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._device import _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode

from bench.methods import METHODS, create_method, list_methods

#: tensor methods / functions that read device values on the host (a synchronisation on an accelerator)
HOST_READS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "equal",
        "nonzero",
        "argwhere",
        "unique",
        "unique_consecutive",
        "masked_select",
        "bincount",
        "repeat_interleave",
        "allclose",
        "is_nonzero",
    }
)
#: aten ops that synchronise with the host on an accelerator
SYNC_OPS = frozenset(
    {
        "aten::item",
        "aten::_local_scalar_dense",
        "aten::nonzero",
        "aten::nonzero_static",
        "aten::equal",
        "aten::is_nonzero",
        "aten::_unique",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::masked_select",
        "aten::aminmax",
        "aten::bincount",
    }
)
#: dispatch-level ops that make a fresh tensor
FACTORY_OPS = (
    "rand",
    "randn",
    "randint",
    "randperm",
    "normal",
    "bernoulli",
    "zeros",
    "ones",
    "full",
    "empty",
    "arange",
    "eye",
    "linspace",
    "logspace",
    "scalar_tensor",
    "lift_fresh",
    "tensor",
)


class HostCalls(TorchFunctionMode):
    """Records host-made tensors, device moves and host reads, by the name of the torch call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in _device_constructors() and kwargs.get("device") is None:
            self.calls[f"host-made tensor: torch.{name} without device="] += 1
        elif name in ("cpu", "cuda") or (name == "to" and _moves_device(args[1:], kwargs)):
            self.calls[f"device move: Tensor.{name}"] += 1
        elif name in HOST_READS:
            self.calls[f"host read: {name}"] += 1
        return func(*args, **kwargs)


def _moves_device(args: tuple, kwargs: dict) -> bool:
    return "device" in kwargs or any(isinstance(a, (str, torch.device, torch.Tensor)) for a in args)


class DeviceCopies(TorchDispatchMode):
    """Records copies between devices (``_to_copy`` to another device, ``copy_`` from another device), naming
    whether their source was made by a factory op during the forward (a fresh host tensor sent to the device).
    On a CPU-only run there are none to see (the host checks above stand in); on an accelerator, every one."""

    def __init__(self) -> None:
        super().__init__()
        self.fresh: set[int] = set()  # storages made by factory ops (tensor objects are re-wrapped)
        self.keep: list[torch.Tensor] = []  # so their memory is not reused
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = func.overloadpacket.__name__
        source, target = None, None
        if op == "_to_copy" and kwargs.get("device") is not None:
            source, target = args[0], torch.device(kwargs["device"])
        elif op == "copy_" and len(args) > 1 and isinstance(args[1], torch.Tensor):
            source, target = args[1], args[0].device
        if isinstance(source, torch.Tensor) and source.device != target:
            what = "fresh " if _storage(source) in self.fresh else ""
            self.calls[f"copy of a {what}tensor {source.device.type} -> {target.type}: aten::{op}"] += 1
        out = func(*args, **kwargs)
        if op.rstrip("_") in FACTORY_OPS and isinstance(out, torch.Tensor) and out.numel():
            self.fresh.add(_storage(out))
            self.keep.append(out)
        return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.numel() else 0


def audit(
    model: torch.nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch, forwards: int = 2
) -> dict[str, Counter[str]]:
    """What ``forwards`` evaluation forwards of ``model`` on ``x`` do, after two warm-up forwards."""
    with torch.no_grad():
        for _ in range(2):
            model(x)
    generators: Counter[str] = Counter()
    real = torch.Generator

    def counting_generator(*args: Any, **kwargs: Any) -> torch.Generator:
        generators["torch.Generator()"] += 1
        return real(*args, **kwargs)

    host, copies = HostCalls(), DeviceCopies()
    with ExitStack() as stack:
        monkeypatch.setattr(torch, "Generator", counting_generator)
        prof = stack.enter_context(profile(activities=[ProfilerActivity.CPU]))
        stack.enter_context(torch.no_grad())
        stack.enter_context(host)
        stack.enter_context(copies)
        for _ in range(forwards):
            model(x)
    monkeypatch.setattr(torch, "Generator", real)
    syncs = Counter(e.name for e in prof.events() if e.name in SYNC_OPS)
    return {"generators": generators, "host": host.calls, "device copies": copies.calls, "sync ops": syncs}


#: the CPU always; an accelerator where there is one (there the copies and syncs are real)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KINDS = ("generators", "host", "device copies", "sync ops")


def patched(tiny_vit, name: str, seed: int = 0, device: str = "cpu"):
    model = tiny_vit()
    keep = 0.5 if METHODS.get(name).reduces_tokens else 1.0
    method = create_method(name, keep, seed)
    method.apply(model)
    return method.prepare_inference(model).eval().to(device), method


def images(device: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)


_DENSE: dict[str, dict[str, Counter[str]]] = {}


@pytest.fixture
def dense_audit(tiny_vit, monkeypatch):
    """What the dense backbone's evaluation forward does, per device (computed once)."""

    def get(device: str) -> dict[str, Counter[str]]:
        if device not in _DENSE:
            model, _ = patched(tiny_vit, "dense", device=device)
            _DENSE[device] = audit(model, images(device), monkeypatch)
        return _DENSE[device]

    return get


def added(found: dict[str, Counter[str]], dense: dict[str, Counter[str]] | None = None) -> dict[str, list[str]]:
    """What ``found`` has beyond dense's set, per kind."""
    dense = dense or {k: Counter() for k in KINDS}
    return {
        kind: sorted(set(calls) - set(dense[kind])) for kind, calls in found.items() if set(calls) - set(dense[kind])
    }


@pytest.mark.parametrize("device", DEVICES)
def test_dense_itself_is_clean(dense_audit, device: str) -> None:
    # timm's ViT does none of these either: the comparison below is against an empty set
    assert not any(dense_audit(device).values()), dense_audit(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_methods())
def test_eval_forward_is_fair_to_time(tiny_vit, name: str, device: str, dense_audit, monkeypatch) -> None:
    model, _ = patched(tiny_vit, name, device=device)
    found = added(audit(model, images(device), monkeypatch), dense_audit(device))
    assert not found, f"{name} on {device}: {found}"


@pytest.mark.parametrize("device", DEVICES)
def test_the_audit_catches_a_per_forward_generator(tiny_vit, monkeypatch, device: str) -> None:
    """The planted bug: the former ``random`` (a host generator built every evaluation forward, its draw copied
    to the device), put back for this test."""
    model, method = patched(tiny_vit, "random", device=device)

    def per_forward_draw(model, stage, patches, positions):
        return torch.rand(patches.shape[:2], generator=torch.Generator().manual_seed(1)).to(patches.device)

    monkeypatch.setattr(method, "score", per_forward_draw)
    found = added(audit(model, images(device), monkeypatch))
    assert found["generators"] == ["torch.Generator()"]
    assert found["host"] == ["device move: Tensor.to", "host-made tensor: torch.rand without device="]
    if device != "cpu":  # the blocking copy itself
        assert found["device copies"] == [f"copy of a fresh tensor cpu -> {device}: aten::_to_copy"]


def test_the_audit_catches_host_reads_syncs_and_copies(tiny_vit, monkeypatch) -> None:
    """Host reads (``.item()``, ``torch.equal`` as the former clustering's convergence test, ``one_hot``'s range
    check) and copies of fresh tensors to another device are caught too."""
    model, method = patched(tiny_vit, "static")
    original = method.score

    def reading_score(model, stage, patches, positions):
        scores = original(model, stage, patches, positions)
        if torch.equal(scores, scores) and scores.max().item() > -1e9:
            torch.nn.functional.one_hot(positions[:, :1] * 0, 2)
        torch.zeros(scores.shape, device=scores.device).to("meta")  # a CPU-only stand-in for a device transfer
        return scores

    monkeypatch.setattr(method, "score", reading_score)
    found = audit(model, images("cpu"), monkeypatch)
    assert set(found["host"]) == {"host read: equal", "host read: item", "device move: Tensor.to"}
    assert set(found["sync ops"]) >= {"aten::equal", "aten::item", "aten::_local_scalar_dense", "aten::aminmax"}
    assert set(found["device copies"]) == {"copy of a fresh tensor cpu -> meta: aten::_to_copy"}


def test_random_eval_draws_are_seeded_cached_and_unchanged(tiny_vit) -> None:
    """The evaluation draws are what a host generator seeded with seed + 1 at each forward's start gives (the
    former per-forward draw, bit for bit), made once per batch size and reused."""
    model, method = patched(tiny_vit, "random", seed=3)
    method.record_kept = True
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model(x)
        first = [k.clone() for k in method.last_kept]
        cached = [d for d in method._eval_draws[(x.device, 2)]]
        model(torch.randn(2, 1, 32, 32))
    assert all(a is b for a, b in zip(cached, method._eval_draws[(x.device, 2)]))  # reused, not redrawn
    assert [k.tolist() for k in method.last_kept] == [k.tolist() for k in first]
    gen = torch.Generator().manual_seed(3 + 1)
    n = model.patch_embed.num_patches
    expected = []
    for _, keep in method.stages(model):
        expected.append(torch.rand((2, n), generator=gen))
        n = keep
    assert all(torch.equal(a, b) for a, b in zip(cached, expected)) and len(cached) == len(expected)
    with torch.no_grad():  # another batch size: its own draws, from the same seeded stream
        model(torch.randn(3, 1, 32, 32))
    assert torch.equal(
        method._eval_draws[(x.device, 3)][0][:, :5],
        torch.rand((3, 64), generator=torch.Generator().manual_seed(4))[:, :5],
    )
