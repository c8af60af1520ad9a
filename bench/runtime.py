"""Runtime settings: how a step runs on the hardware it got, never what it computes.

They come from the Snakemake profile (``loader_workers``, ``prefetch_factor``, ``device_batch``,
``channels_last``, ``compile`` in its config file; ``snakemake --config device_batch=128`` overrides one) and
reach ``bench train`` / ``bench evaluate`` as command-line options. None of them is part of a run's identity,
so changing one re-runs nothing; each run record states the values it ran with.

* ``loader_workers``: DataLoader worker processes; ``auto`` (the default) is the job's CPUs minus one for the
  training process (``SLURM_CPUS_PER_TASK``, else the process's CPU affinity), at most ``MAX_AUTO_WORKERS``,
  and none for data already decoded in memory (the embedded set), which workers would only slow down.
* ``prefetch_factor``: batches each worker keeps ready.
* ``device_batch``: the largest per-device micro-batch; a larger per-device batch is reached by accumulating
  gradients, so the suite's batch size (the science) is unchanged.
* ``channels_last``, ``compile``: memory format of the patch embedding's input and ``torch.compile`` (true, or
  a backend name); off by default until measured on the target GPU. The timing step uses them too.
* ``timing_threads``: torch threads of the timing step on a CPU (unset: 1). The step can reserve the whole
  machine (``set-threads``) and still time on one thread: a timing that spans every core is at the mercy of any
  other process on the machine.
* ``timing_precision``: fp32, bf16 or fp16 (autocast) for the timing step; unset: the suite's
  ``evaluate.throughput.precision``. Every timed row records the precision it ran with.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import click

from bench.errors import UsageError

MAX_AUTO_WORKERS = 16
#: upper bounds of the settings, the workflow schema's maxima (a test holds them equal): a count past them is a
#: typo that would fork or allocate before failing
MAX_WORKERS = 256
MAX_PREFETCH_FACTOR = 1024
MAX_DEVICE_BATCH = 2**20
MAX_THREADS = 4096
AUTO = "auto"
#: torch.compile backends a step may ask for (the workflow schema's list): a name from here, or on/off
COMPILE_BACKENDS = ("inductor", "cudagraphs", "aot_eager", "eager", "onnxrt", "openxla", "tvm", "ipex")
#: the profile config keys and the bench CLI option each becomes
PROFILE_KEYS = {
    "loader_workers": "--workers",
    "prefetch_factor": "--prefetch-factor",
    "device_batch": "--device-batch",
    "channels_last": "--channels-last",
    "compile": "--compile",
    "timing_precision": "--timing-precision",
    "timing_threads": "--timing-threads",
}


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def job_cpus() -> int:
    """CPUs this process may use: SLURM's per-task allocation when inside a job, else the CPU affinity."""
    env = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Runtime:
    workers: int | None = None  # None: auto
    prefetch_factor: int = 4
    device_batch: int | None = None
    channels_last: bool = False
    compile: bool | str = False
    timing_precision: str | None = None
    timing_threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and not _int_in(self.workers, 0, MAX_WORKERS):
            raise UsageError(f"loader_workers must be 'auto' or an integer 0-{MAX_WORKERS}, got {self.workers!r}")
        if not _int_in(self.prefetch_factor, 1, MAX_PREFETCH_FACTOR):
            raise UsageError(
                f"prefetch_factor must be an integer 1-{MAX_PREFETCH_FACTOR}, got {self.prefetch_factor!r}"
            )
        if self.device_batch is not None and not _int_in(self.device_batch, 1, MAX_DEVICE_BATCH):
            raise UsageError(
                f"device_batch must be an integer 1-{MAX_DEVICE_BATCH} (or unset), got {self.device_batch!r}"
            )
        if self.timing_threads is not None and not _int_in(self.timing_threads, 1, MAX_THREADS):
            raise UsageError(
                f"timing_threads must be an integer 1-{MAX_THREADS} (or unset), got {self.timing_threads!r}"
            )
        if not isinstance(self.compile, bool) and self.compile not in COMPILE_BACKENDS:
            raise UsageError(f"compile must be on, off or one of {', '.join(COMPILE_BACKENDS)}, got {self.compile!r}")

    def loader_workers(self, in_memory: bool = False) -> int:
        if self.workers is not None:
            return self.workers
        return 0 if in_memory else max(0, min(MAX_AUTO_WORKERS, job_cpus() - 1))

    def record(self, in_memory: bool = False) -> dict[str, Any]:
        """The settings a run used, for its record (workers resolved)."""
        return {
            **asdict(self),
            "workers": self.loader_workers(in_memory),
            "workers_setting": AUTO if self.workers is None else self.workers,
            "job_cpus": job_cpus(),
        }


def parse_workers(value: str | int | None) -> int | None:
    if value is None or value == AUTO:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"loader_workers must be 'auto' or an integer 0-{MAX_WORKERS}, got {value!r}") from None
    if not 0 <= n <= MAX_WORKERS:
        raise UsageError(f"loader_workers must be 'auto' or an integer 0-{MAX_WORKERS}, got {value!r}")
    return n


def micro_batches(local_batch: int, cap: int | None) -> int:
    """How many micro-batches a per-device batch is cut into: the fewest whose equal size fits under ``cap``."""
    if cap is None or local_batch <= cap:
        return 1
    for n in range(-(-local_batch // cap), local_batch + 1):
        if local_batch % n == 0:
            return n
    return local_batch


# ---------------------------------------------------------------- the bench CLI's options for them


def click_options(f: Any) -> Any:
    """How a step runs (bench.runtime); the pipeline passes the profile's values. Never part of a run's identity."""
    options = [
        click.option(
            "--workers",
            default="auto",
            show_default=True,
            help="DataLoader workers: 'auto' (the job's CPUs minus one) or a number.",
        ),
        click.option(
            "--prefetch-factor",
            type=click.IntRange(min=1, max=MAX_PREFETCH_FACTOR),
            default=4,
            show_default=True,
            help="Batches each loader worker keeps ready.",
        ),
        click.option(
            "--device-batch",
            type=click.IntRange(min=1, max=MAX_DEVICE_BATCH),
            default=None,
            help="Largest per-device training micro-batch; larger batches accumulate gradients.",
        ),
        click.option("--channels-last/--no-channels-last", default=False, help="channels_last input memory format."),
        click.option(
            "--compile",
            "compile_",
            type=click.Choice(["off", "on", "false", "true", *COMPILE_BACKENDS], case_sensitive=False),
            default="off",
            show_default=True,
            help="torch.compile the training model: off, on, or a backend name (e.g. inductor).",
        ),
        click.option(
            "--timing-precision",
            type=click.Choice(["fp32", "bf16", "fp16"]),
            default=None,
            help="Precision of the timing step (autocast); default: the suite's throughput precision.",
        ),
        click.option(
            "--timing-threads",
            type=click.IntRange(min=1, max=MAX_THREADS),
            default=None,
            help="torch threads of the timing step on a CPU (default 1; --threads does not apply).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def from_cli(
    workers: str,
    prefetch_factor: int,
    device_batch: int | None,
    channels_last: bool,
    compile_: str,
    timing_precision: str | None = None,
    timing_threads: int | None = None,
) -> Runtime:
    compile_value: bool | str = {"off": False, "false": False, "on": True, "true": True}.get(compile_.lower(), compile_)
    return Runtime(
        parse_workers(workers),
        prefetch_factor,
        device_batch,
        channels_last,
        compile_value,
        timing_precision,
        timing_threads,
    )
