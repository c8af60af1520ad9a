"""Paired, interleaved timing (bench.measure.paired) on a simulated machine whose speed drifts and jumps.

The models are real modules, but the clock is a simulated one: each forward adds its model's known cost, and the
machine's slowness varies with (simulated) time the way a shared node's does. So the tests assert exact
properties of the protocol (the paired ratio recovers the true cost ratio, the noisy model is re-timed and
marked), never a wall-clock figure of this machine.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from bench.errors import UsageError
from bench.measure.paired import TimingProtocol, device_key, fused_attention, time_paired
from bench.measure.repeats import img_per_s_text, median_ci, spread


class Costly(nn.Module):
    """A model whose forward costs ``cost`` units of work per image on the simulated machine."""

    def __init__(self, cost: float, ledger: list[float], max_batch: int | None = None):
        super().__init__()
        self.cost, self.ledger, self.max_batch = cost, ledger, max_batch
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.ledger.append(self.cost * x.shape[0])
        return x.mean(dim=(1, 2, 3))


class SimulatedMachine:
    """A clock: a repeat takes (work done) x (slowness now) simulated seconds; slowness(t) is any function."""

    cuda = False

    def __init__(
        self, ledger: list[float], slowness, noise: dict[float, float | list[float]] | None = None, seed: int = 0
    ):
        self.ledger, self.slowness, self.now = ledger, slowness, 0.0
        self.noise, self.rng = noise or {}, random.Random(seed)
        self.seen: dict[float, int] = {}  # timed repeats of each disturbed model so far

    def sync(self) -> None:
        pass

    def interval(self, fn, iters: int) -> float:
        start = len(self.ledger)
        for _ in range(iters):
            fn()
        work = sum(self.ledger[start:])
        costs = set(self.ledger[start:])
        factor = 1.0
        for cost, sigma in self.noise.items():  # a model whose repeats are disturbed on their own
            if any(abs(c - cost * 4) < 1e-9 for c in costs) and iters == 3:  # timed repeats, not warm-up
                n = self.seen[cost] = self.seen.get(cost, 0) + 1
                level = sigma[min((n - 1) // PROTO.rounds, len(sigma) - 1)] if isinstance(sigma, list) else sigma
                factor = math.exp(self.rng.gauss(0.0, level))
        dt = work * self.slowness(self.now + work * self.slowness(self.now) / 2) * factor  # slowness mid-repeat
        self.now += dt
        return dt

    def calibrate(self, fn, min_time_s: float, min_iters: int = 1) -> int:
        return 3


def drifting(t: float) -> float:
    """A machine that slows down 2x over the run, with a second job arriving for a while (a 2x step)."""
    return (1.0 + t / 800.0) * (2.0 if 250.0 < t < 500.0 else 1.0)


PROTO = TimingProtocol(batch_sizes=(4,), rounds=7, warmup=1, min_time_s=0.0, max_attempts=3)


def _models(ledger, **extra):
    return {"dense": Costly(1.0, ledger), "half": Costly(0.5, ledger), "double": Costly(2.0, ledger), **extra}


def test_paired_ratio_recovers_the_true_cost_ratio_on_a_drifting_machine():
    ledger: list[float] = []
    machine = SimulatedMachine(ledger, drifting)
    rows = {r["label"]: r for r in time_paired(_models(ledger), "dense", image_size=8, protocol=PROTO, clock=machine)}
    assert rows["dense"]["speedup"] == 1.0
    assert rows["half"]["speedup"] == pytest.approx(2.0, rel=0.01)
    assert rows["double"]["speedup"] == pytest.approx(0.5, rel=0.01)
    for label in ("half", "double"):
        row = rows[label]
        assert row["speedup_ci_low"] <= row["speedup"] <= row["speedup_ci_high"]
        assert row["speedup_rel_iqr"] < 0.01  # the round that straddles the 2x step is one outlier of seven
        assert row["speedup_unreliable"] is False and row["attempts"] == 1
    # the machine's speed moved by far more than 10 %: unpaired medians would not give these ratios
    unpaired = rows["half"]["img_per_s_median"] / rows["dense"]["img_per_s_median"]
    assert rows["dense"]["img_per_s_rel_iqr"] > 0.10
    assert abs(unpaired / 2.0 - 1) > 0.05 or rows["half"]["img_per_s_rel_iqr"] > 0.10


def test_every_round_brackets_each_model_between_two_reference_repeats():
    ledger: list[float] = []
    order: list[float] = []

    class Recording(SimulatedMachine):
        def interval(self, fn, iters):
            start = len(self.ledger)
            dt = super().interval(fn, iters)
            order.append(self.ledger[start] / 4)  # the cost of the model this repeat timed
            return dt

    time_paired(_models(ledger), "dense", image_size=8, protocol=PROTO, clock=Recording(ledger, lambda t: 1.0))
    timed = order[-(PROTO.rounds * 5) :]  # after warm-up: R A R B R per round
    for r in range(PROTO.rounds):
        chunk = timed[r * 5 : (r + 1) * 5]
        assert chunk[0::2] == [1.0, 1.0, 1.0] and sorted(chunk[1::2]) == [0.5, 2.0]


def test_a_noisy_model_is_retimed_up_to_the_bound_then_marked_unreliable():
    ledger: list[float] = []
    machine = SimulatedMachine(ledger, lambda t: 1.0, noise={2.0: 0.5})  # only "double" is disturbed
    rows = {r["label"]: r for r in time_paired(_models(ledger), "dense", image_size=8, protocol=PROTO, clock=machine)}
    assert rows["double"]["attempts"] == PROTO.max_attempts
    assert rows["double"]["speedup_unreliable"] is True
    assert rows["double"]["speedup_rel_iqr"] > PROTO.noise_threshold
    assert rows["half"]["attempts"] == 1 and rows["half"]["speedup_unreliable"] is False
    assert rows["half"]["speedup"] == pytest.approx(2.0, rel=1e-9)


def test_the_least_noisy_attempt_is_kept():
    ledger: list[float] = []
    # "double" is disturbed a lot, then less (still above the threshold), then most: the second attempt is kept
    machine = SimulatedMachine(ledger, lambda t: 1.0, noise={2.0: [0.4, 0.15, 0.9]})
    rows = {r["label"]: r for r in time_paired(_models(ledger), "dense", image_size=8, protocol=PROTO, clock=machine)}
    row = rows["double"]
    assert len(row["attempt_rel_iqrs"]) == 3 and row["attempts"] == 3
    assert row["speedup_rel_iqr"] == min(row["attempt_rel_iqrs"]) == row["attempt_rel_iqrs"][1]
    assert rows["half"]["attempt_rel_iqrs"] == [rows["half"]["speedup_rel_iqr"]]


def test_a_batch_that_does_not_fit_is_halved_timm_style_for_every_model():
    ledger: list[float] = []
    models = _models(ledger, big=Costly(1.5, ledger, max_batch=20))
    proto = TimingProtocol(batch_sizes=(2, 32), rounds=3, warmup=1, min_time_s=0.0)
    rows = time_paired(models, "dense", image_size=8, protocol=proto, clock=SimulatedMachine(ledger, lambda t: 1.0))
    at_32 = [r for r in rows if r["batch_size_requested"] == 32]
    assert {r["batch_size"] for r in at_32} == {16}  # timm's decay_batch_step: 32 -> 24 -> 16, for all models
    assert {r["label"] for r in at_32} == set(models)
    assert {r["batch_size"] for r in rows if r["batch_size_requested"] == 2} == {2}


def test_without_a_reference_only_img_per_s_is_reported():
    ledger: list[float] = []
    rows = time_paired(
        _models(ledger), None, image_size=8, protocol=PROTO, clock=SimulatedMachine(ledger, lambda t: 1.0)
    )
    assert all(r["speedup"] is None for r in rows) and len(rows) == 3


def test_real_models_on_this_cpu_run_through_the_real_clock():
    ledger: list[float] = []
    proto = TimingProtocol(batch_sizes=(2,), rounds=2, warmup=1, min_time_s=0.001)
    rows = time_paired({"a": Costly(1.0, ledger), "b": Costly(1.0, ledger)}, "a", image_size=8, protocol=proto)
    b = next(r for r in rows if r["label"] == "b")
    assert b["iters_per_repeat"] >= 1 and b["repeats"] == 2 and len(b["ratios"]) == 2


@pytest.mark.parametrize(
    "bad",
    [
        dict(rounds=0),
        dict(min_time_s=-1),
        dict(max_attempts=0),
        dict(noise_threshold=0),
        dict(precision="int8"),
        dict(batch_sizes=()),
    ],
)
def test_bad_protocols_are_refused(bad):
    proto = TimingProtocol(**{**dict(batch_sizes=(2,)), **bad})
    with pytest.raises(UsageError):
        time_paired({"a": Costly(1.0, [])}, "a", image_size=8, protocol=proto)


def test_unknown_reference_is_refused():
    with pytest.raises(UsageError, match="reference"):
        time_paired({"a": Costly(1.0, [])}, "dense", image_size=8, protocol=PROTO)


def test_median_confidence_interval_from_order_statistics():
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 7.0, 6.0]
    low, high, level = median_ci(values)
    assert (low, high) == (1.0, 7.0) and level == pytest.approx(1 - 2 / 128)  # n=7: only [min, max] reaches 95 %
    low, high, level = median_ci(list(range(1, 11)))
    assert (low, high) == (2, 9) and level == pytest.approx(1 - 2 * 11 / 1024)
    low, high, level = median_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (low, high) == (1.0, 5.0) and level == pytest.approx(0.9375)  # below 95 %, and it says so
    # coverage holds: for many draws from a known distribution the interval holds the true median >= 95 %
    rng = random.Random(0)
    hits = sum(lo <= 0.0 <= hi for lo, hi, _ in (median_ci([rng.gauss(0, 1) for _ in range(12)]) for _ in range(2000)))
    assert hits / 2000 >= 0.95


def test_spread_and_digits():
    s = spread([10.0, 10.0, 10.0, 12.0])
    assert s["median"] == 10.0 and s["cv"] == pytest.approx(1 / 10.5) and s["iqr"] == pytest.approx(0.5)
    for value in (3.21987, 55.04, 1858.123, 123456.7):
        text = img_per_s_text(value)
        assert abs(float(text) - value) / value < 0.0005  # resolves 0.05 %, ten times finer than asked
    assert img_per_s_text(55.0) == "55.000"


def test_device_key_and_fused_attention():
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    assert fused_attention(model) in ("on", "off")
    model.blocks[0].attn.fused_attn = True
    model.blocks[1].attn.fused_attn = False
    assert fused_attention(model) == "1/2 blocks"
    cpu = {"device_name": "Xeon", "torch_version": "2.4", "cuda_version": None, "driver_version": None, "threads": 2}
    gpu = {
        "device_name": "NVIDIA H100",
        "torch_version": "2.4",
        "cuda_version": "12.4",
        "driver_version": 12040,
        "threads": None,
    }
    assert device_key(cpu) == "Xeon | torch 2.4 | 2 threads"
    assert device_key(gpu) == "NVIDIA H100 | torch 2.4 | CUDA 12.4 | driver 12040"
