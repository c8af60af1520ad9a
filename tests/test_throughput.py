"""Throughput harness: report structure and bookkeeping (no timed assertions: machine dependent)."""

from __future__ import annotations

import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from bench.errors import UsageError
from bench.measure.flops import count_flops
from bench.measure.throughput import ThroughputReport, measure_throughput

ROW_KEYS = {"batch_size", "img_per_s_median", "img_per_s_iqr", "img_per_s_cv", "latency_ms_median",
            "peak_mem_mb", "repeats", "iters_per_repeat", "min_time_s"}
FAST = {"image_size": 32, "warmup": 1, "repeats": 3, "min_time_s": 0.0}


def tiny_vit(embed_dim: int = 64, depth: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=4, embed_dim=embed_dim, depth=depth,
                             num_heads=2, num_classes=10)


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


def test_training_mode_restored() -> None:
    model = tiny_vit()
    model.train()
    model.blocks[0].eval()
    modes = [m.training for m in model.modules()]
    measure_throughput(model, batch_sizes=(2,), **FAST)
    assert [m.training for m in model.modules()] == modes
    assert model.training


def test_fp16_on_cpu_is_usage_error() -> None:
    with pytest.raises(UsageError) as exc:
        measure_throughput(tiny_vit(), precision="fp16", **FAST)
    assert "\n" not in str(exc.value)
    with pytest.raises(UsageError):
        measure_throughput(tiny_vit(), precision="int8", **FAST)


@pytest.mark.parametrize("kwargs", [{"batch_sizes": (0,)}, {"batch_sizes": ()}, {"repeats": 0},
                                    {"warmup": -1}, {"device": "nonsense"}])
def test_bad_arguments_are_usage_errors(kwargs: dict) -> None:
    args = {**FAST, **kwargs}
    with pytest.raises(UsageError):
        measure_throughput(tiny_vit(), **args)


def test_bf16_channels_last_and_min_time() -> None:
    model = tiny_vit()
    report = measure_throughput(model, batch_sizes=(2,), precision="bf16", channels_last=True,
                                **{**FAST, "min_time_s": 0.01})
    row = report.headline()
    assert report.precision == "bf16" and report.channels_last
    assert row["iters_per_repeat"] >= 1 and row["img_per_s_iqr"] >= 0
    # The patch-embedding conv weight is back in the default layout afterwards.
    assert model.patch_embed.proj.weight.is_contiguous()
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_bigger_model_not_cheaper_in_gmacs() -> None:
    x = torch.randn(1, 3, 32, 32)
    small = count_flops(tiny_vit(), x)
    big = count_flops(tiny_vit(embed_dim=128, depth=4), x)
    assert big.gmacs > small.gmacs
    assert big.params > small.params


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16() -> None:
    model = tiny_vit()
    report = measure_throughput(model, device="cuda", batch_sizes=(1, 8), precision="fp16", **FAST)
    assert report.peak_mem_kind == "cuda_max_allocated"
    assert all(r["peak_mem_mb"] > 0 for r in report.rows)
    assert all(p.device.type == "cpu" for p in model.parameters())  # moved back
