import os
import warnings
from pathlib import Path

import pytest
import torch

# two cores on CI: tests stay single-threaded so pytest-level parallelism (if any) does not oversubscribe
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TESTS_DIR = Path(__file__).resolve().parent
SLURM_DIR = TESTS_DIR / "slurm"
#: Tests marked ``slow`` here rather than in their files, with the reason: ``file::function`` (every
#: parametrization) or ``file::function[id]``. The end-to-end pipeline and training runs, and heavyweight
#: duplicates of a capability the fast loop still covers (named in the reason). Seconds as measured on the
#: 2-core CI machine with other work on it (``pytest --durations``).
SLOW = {
    "test_pipeline.py::test_finetune_none_schedules_no_finetune_job": "snakemake end to end (~90 s)",
    "test_pipeline.py::test_paths_with_spaces_quotes_and_shell_syntax_reach_commands_as_arguments": "snakemake end to end (~50 s)",
    "test_recipes.py::test_ema_is_trained_saved_and_scored_as_its_own_metrics_keeping_the_weight_budget": "pretrains, fine-tunes and evaluates a run (~8 s)",
    "test_distributed.py::test_accumulation_under_ddp_gives_the_weights_of_the_whole_per_device_batch": "two processes (~6 s); fast loop: test_two_processes_train_what_one_process_trains, and accumulation in "
    "one process (test_data_pipeline)",
    "test_distributed.py::test_non_finite_loss_on_one_rank_stops_every_rank": "two processes (~6 s); fast loop: test_train.py::test_non_finite_loss_stops_the_run",
    "test_paired_timing.py::test_the_least_noisy_attempt_is_kept": "~6.5 s; fast loop: test_a_noisy_model_is_retimed_up_to_the_bound_then_marked_unreliable (same retries)",
    # the resume contract over the whole registry (~2-3 s each); the fast loop keeps the methods whose resume
    # once broke (dynamicvit: frozen groups; svite_plus: temperature) and test_train.py's resume tests
    **{
        f"test_methods_contract.py::test_resume_after_a_kill_is_bit_identical[{m}]": "resume contract, ~2-3 s"
        for m in ("dense", "static", "random", "importance", "grid_pool", "token_pooling", "svite", "s2vite")
    },
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers set here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by place and need (registered in pyproject.toml): every test under tests/slurm is ``slurm``;
    the tests in ``SLOW`` are ``slow``; ``gpu`` tests are skipped, not failed, without a CUDA device. The fast
    loop deselects by marker: ``python -m pytest -m "not slurm and not slow"``."""
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="gpu: needs a CUDA device")
    seen_files, marked = set(), set()
    for item in items:
        path = Path(item.path).resolve()
        if SLURM_DIR in path.parents:
            item.add_marker(pytest.mark.slurm)
        if path.parent == TESTS_DIR:
            seen_files.add(path.name)
            for key in (f"{path.name}::{getattr(item, 'originalname', item.name)}", f"{path.name}::{item.name}"):
                if key in SLOW:
                    item.add_marker(pytest.mark.slow)
                    marked.add(key)
        if skip_gpu is not None and item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
    stale = sorted(k for k in SLOW if k.split("::")[0] in seen_files and k not in marked)
    narrowed = config.getoption("keyword") or config.getoption("deselect") or any("::" in a for a in config.args)
    if stale and not narrowed:
        warnings.warn(
            pytest.PytestWarning(f"tests/conftest.py SLOW names tests that do not exist: {stale}"), stacklevel=1
        )


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
