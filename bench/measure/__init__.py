"""Cost measurements: FLOPs (fvcore, GMACs) and model-only throughput."""

from bench.measure.flops import (
    EXTRA_HANDLES,
    ZERO_COST_OPS,
    FlopReport,
    add_op_handle,
    count_flops,
    eval_mode,
    mean_flops,
    register_handles,
    sdpa_flop_handle,
    zero_cost_handle,
)
from bench.measure.throughput import ThroughputReport, cpu_name, measure_throughput

__all__ = [
    "EXTRA_HANDLES",
    "ZERO_COST_OPS",
    "FlopReport",
    "ThroughputReport",
    "add_op_handle",
    "count_flops",
    "cpu_name",
    "eval_mode",
    "mean_flops",
    "measure_throughput",
    "register_handles",
    "sdpa_flop_handle",
    "zero_cost_handle",
]
