"""Throughput harness: what it runs (forward passes counted, inputs and numerics seen from inside the model),
what it reports (img/s and latency of a model with a known cost), and what it refuses (one-line UsageErrors).

Timings are machine dependent: the img/s bounds below use models that sleep a known time per forward, so
they hold on a loaded machine (a sleep is never shorter than asked; it may be longer).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench.errors import UsageError
from bench.measure.flops import count_flops
from bench.measure.throughput import ThroughputReport, measure_throughput

ROW_KEYS = {
    "batch_size",
    "img_per_s_median",
    "img_per_s_iqr",
    "img_per_s_cv",
    "latency_ms_median",
    "peak_mem_mb",
    "repeats",
    "iters_per_repeat",
    "min_time_s",
}
FAST = {"image_size": 32, "warmup": 1, "repeats": 3, "min_time_s": 0.0}


def tiny_vit(embed_dim: int = 64, depth: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=4, embed_dim=embed_dim, depth=depth, num_heads=2, num_classes=10)


class Probe(nn.Module):
    """A conv + linear model that records every forward: input shape and layout, autocast state, output dtype of
    its layers, eval/inference mode and the time of the call. ``sleep_s`` gives it a known, load-independent cost."""

    def __init__(self, sleep_s: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)
        self.sleep_s = sleep_s
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        if self.sleep_s:
            time.sleep(self.sleep_s)
        h = self.conv(x)
        out = self.fc(h.mean(dim=(2, 3)))
        self.calls.append(
            {
                "shape": tuple(x.shape),
                "channels_last_input": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                "conv_weight_channels_last": self.conv.weight.is_contiguous(memory_format=torch.channels_last)
                and not self.conv.weight.is_contiguous(),
                "autocast": torch.is_autocast_enabled(x.device.type),
                "conv_dtype": h.dtype,
                "fc_dtype": out.dtype,
                "training": self.training,
                "inference_mode": torch.is_inference_mode_enabled(),
                "grad": torch.is_grad_enabled(),
                "t0": t0,
                "t1": time.perf_counter(),
            }
        )
        return out


def test_report_structure() -> None:
    report = measure_throughput(tiny_vit(), batch_sizes=(4, 1), **FAST)
    assert isinstance(report, ThroughputReport)
    assert [r["batch_size"] for r in report.rows] == [1, 4]  # sorted
    for row in report.rows:
        assert set(row) == ROW_KEYS
        assert row["repeats"] == 3 and row["iters_per_repeat"] == 1
        assert row["img_per_s_median"] > 0 and row["latency_ms_median"] > 0
        assert row["img_per_s_iqr"] >= 0
        assert row["peak_mem_mb"] >= 0
    assert report.headline()["batch_size"] == 4
    assert report.headline(1)["batch_size"] == 1
    with pytest.raises(UsageError):
        report.headline(2)
    assert report.device == "cpu" and report.precision == "fp32"
    assert report.peak_mem_kind == "cpu_peak_rss_increase"
    assert report.num_threads == torch.get_num_threads()
    assert report.torch_version == torch.__version__
    assert report.device_name
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["rows"][1]["batch_size"] == 4


def test_warmup_and_repeats_are_the_forward_passes_run_per_batch_size() -> None:
    """min_time_s 0: no calibration passes, one pass per repeat, after ``warmup`` untimed passes; each batch size on
    inputs of its own shape, in eval mode under inference_mode, in the order of the sorted batch sizes."""
    model = Probe()
    model.train()
    report = measure_throughput(
        model, batch_sizes=(5, 2, 5), image_size=12, in_chans=3, warmup=4, repeats=7, min_time_s=0.0
    )
    assert [r["batch_size"] for r in report.rows] == [2, 5]  # duplicates measured once
    assert [c["shape"] for c in model.calls] == [(2, 3, 12, 12)] * (4 + 7) + [(5, 3, 12, 12)] * (4 + 7)
    assert all(r["repeats"] == 7 and r["iters_per_repeat"] == 1 and r["min_time_s"] == 0.0 for r in report.rows)
    assert report.warmup == 4 and report.image_size == 12 and report.in_chans == 3
    assert not any(c["training"] or c["grad"] for c in model.calls)
    assert all(c["inference_mode"] for c in model.calls)
    assert model.training  # restored


def test_min_time_calibrates_passes_per_repeat_and_every_repeat_lasts_that_long() -> None:
    """A model of ~10 ms per pass with min_time_s 0.05: a handful of passes per repeat (not one, not hundreds), the
    same number in every repeat, each repeat at least min_time_s long; calibration passes come between warm-up and
    the timed passes."""
    sleep_s, min_time_s, warmup, repeats = 0.01, 0.05, 2, 4
    model = Probe(sleep_s)
    row = measure_throughput(
        model, batch_sizes=(3,), image_size=8, warmup=warmup, repeats=repeats, min_time_s=min_time_s
    ).headline()
    iters = row["iters_per_repeat"]
    assert 2 <= iters <= 5, iters  # ceil(0.05 / per-pass time); a pass never lasts less than the 10 ms sleep
    timed = model.calls[len(model.calls) - repeats * iters :]
    calibration = len(model.calls) - warmup - repeats * iters
    assert 1 <= calibration <= 1 + 8, calibration  # one single pass, then a second look at up to 8
    for r in range(repeats):
        rep = timed[r * iters : (r + 1) * iters]
        assert rep[-1]["t1"] - rep[0]["t0"] >= min_time_s * 0.95
    assert row["min_time_s"] == min_time_s and row["repeats"] == repeats


def test_img_per_s_and_latency_follow_the_cost_of_a_pass() -> None:
    """img/s of a model that sleeps s per pass is at most batch / s (a sleep is never shorter) and not far below it;
    a model 4x as expensive gets about a quarter of the img/s. Latency is the batch's time per pass."""
    rows = {}
    for sleep_s in (0.005, 0.02):
        rows[sleep_s] = measure_throughput(
            Probe(sleep_s), batch_sizes=(8,), image_size=8, warmup=1, repeats=5, min_time_s=0.0
        ).headline()
    for sleep_s, row in rows.items():
        ideal = 8 / sleep_s
        assert ideal / 3 < row["img_per_s_median"] <= ideal * 1.01, (sleep_s, row)
        assert row["latency_ms_median"] == pytest.approx(8 / row["img_per_s_median"] * 1e3)
        assert row["latency_ms_median"] >= sleep_s * 1e3 * 0.99
    ratio = rows[0.005]["img_per_s_median"] / rows[0.02]["img_per_s_median"]
    assert 1.5 < ratio < 6, ratio  # 4 ideally; generous for a loaded machine


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_is_autocast_inside_the_forward(precision: str, dtype: torch.dtype) -> None:
    model = Probe()
    report = measure_throughput(model, batch_sizes=(2,), precision=precision, **FAST)
    assert report.precision == precision
    assert model.calls and all(c["fc_dtype"] == dtype and c["conv_dtype"] == dtype for c in model.calls)
    assert all(c["autocast"] == (precision != "fp32") for c in model.calls)
    assert model.fc.weight.dtype == torch.float32  # autocast, not a cast of the weights


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_applies_to_inputs_and_weights_while_timing_only(channels_last: bool) -> None:
    model = Probe()
    report = measure_throughput(model, batch_sizes=(2,), channels_last=channels_last, **FAST)
    assert report.channels_last is channels_last
    assert all(c["channels_last_input"] is channels_last for c in model.calls)
    assert all(c["conv_weight_channels_last"] is channels_last for c in model.calls)
    assert model.conv.weight.is_contiguous()  # back in the default layout afterwards


def test_training_mode_restored() -> None:
    model = tiny_vit()
    model.train()
    model.blocks[0].eval()
    modes = [m.training for m in model.modules()]
    measure_throughput(model, batch_sizes=(2,), **FAST)
    assert [m.training for m in model.modules()] == modes
    assert model.training


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"precision": "fp16"}, "fp16"),
        ({"precision": "int8"}, "precision must be one of fp32, fp16, bf16"),
        ({"batch_sizes": (0,)}, "batch sizes must be positive"),
        ({"batch_sizes": ()}, "batch sizes must be positive"),
        ({"repeats": 0}, "repeats >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
        ({"min_time_s": -0.5}, "min_time_s >= 0"),
        ({"image_size": 0}, "image_size"),
        ({"device": "nonsense"}, "device"),
        ({"device": "meta"}, "unsupported device type"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors_naming_the_field(kwargs: dict, needle: str) -> None:
    model = Probe()
    with pytest.raises(UsageError) as exc:
        measure_throughput(model, **{**FAST, **kwargs})
    message = str(exc.value)
    assert "\n" not in message and needle in message, message
    assert model.calls == []  # refused before any forward pass


def test_bigger_model_not_cheaper_in_gmacs() -> None:
    x = torch.randn(1, 3, 32, 32)
    small = count_flops(tiny_vit(), x)
    big = count_flops(tiny_vit(embed_dim=128, depth=4), x)
    assert big.gmacs > small.gmacs
    assert big.params > small.params


@pytest.mark.gpu
def test_cuda_fp16() -> None:
    model = Probe()
    report = measure_throughput(model, device="cuda", batch_sizes=(1, 8), precision="fp16", **FAST)
    assert report.peak_mem_kind == "cuda_max_allocated" and report.device.startswith("cuda")
    assert all(r["peak_mem_mb"] > 0 for r in report.rows)
    assert all(c["fc_dtype"] == torch.float16 for c in model.calls)
    assert all(p.device.type == "cpu" for p in model.parameters())  # moved back
