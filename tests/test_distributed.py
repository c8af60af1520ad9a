"""Multi-process training: two gloo CPU processes must train exactly what one process trains on the same
global batch, write files from rank 0 only, resume from rank 0's checkpoint, and stop together on a
non-finite loss."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from bench.config import DEFAULT_RECIPE
from bench.errors import RunFailed, UsageError
from bench.methods import create_method
from bench.models import build_backbone
from bench.runtime import Runtime
from bench.train import distributed as D
from bench.train import train_model
from bench.train.loaders import EpochBatches
from bench.train.loop import LOG_FILE, STATE_FILE
from tests.test_data_pipeline import keep_by_score

RECIPE = {
    **DEFAULT_RECIPE,
    "epochs": 2,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_epochs": 1,
    "drop_path": 0.0,
    "label_smoothing": 0.0,
}
CPU = torch.device("cpu")
WORLD = 2


def data(n: int = 128, nan: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 32, 32, generator=g)
    if nan:
        x[:] = float("nan")
    return TensorDataset(x, torch.randint(0, 10, (n,), generator=g))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("tb_vit_pico_patch4_32", num_classes=10)


class Killed(Exception):
    pass


def _dense_dying_at_epoch_2():
    method = create_method("dense")

    def on_epoch_start(model, epoch, epochs):  # every rank stops here, after epoch 1's checkpoint
        if epoch == 1:
            raise Killed

    method.on_epoch_start = on_epoch_start
    return method


def _fit(out: Path, recipe: dict[str, Any] = RECIPE, ds: TensorDataset | None = None, method=None):
    net, lines = model(), []
    result = train_model(
        net, method or create_method("dense"), ds or data(), recipe, seed=0, out_dir=out, device=CPU, log=lines.append
    )
    return net, result, lines


def _train_scenario(rank: int, tmp: Path) -> dict[str, Any]:
    # each rank gets its own directory here, to see which rank writes files
    net, result, _ = _fit(tmp / f"ddp_rank{rank}")
    report: dict[str, Any] = {"weights": net.state_dict(), "result": result.__dict__}
    # resume: both ranks share one directory, as on a cluster's shared file system
    with pytest.raises(Killed):
        _fit(tmp / "resume", method=_dense_dying_at_epoch_2())
    net, result, lines = _fit(tmp / "resume")
    report.update(resumed_weights=net.state_dict(), resumed_from=result.resumed_from_epoch, resume_log=lines)
    with pytest.raises(UsageError, match="divisible") as err:
        _fit(tmp / "odd", {**RECIPE, "batch_size": 33})
    report["odd_batch_error"] = str(err.value)
    return report


def _dynamicvit_fit(out: Path, device_batch: int | None) -> dict[str, torch.Tensor]:
    net = model()
    method = create_method("dynamicvit", 0.5)
    method.apply(net)
    # keep where the keep score wins: counts vary per image, so the token term's batch-wide count matters
    method.sampler = keep_by_score
    recipe = {**RECIPE, "epochs": 1, "opt": "sgd", "lr": 0.05, "warmup_epochs": 0}
    train_model(
        net,
        method,
        data(64),
        recipe,
        seed=0,
        out_dir=out,
        device=CPU,
        teacher=model(),
        runtime=Runtime(device_batch=device_batch),
        log=lambda s: None,
    )
    return net.state_dict()


def _accumulate_scenario(rank: int, tmp: Path) -> dict[str, Any]:
    # per-device batch 16: one batch, then 4 accumulated micro-batches of 4 (no_sync on the first three)
    return {"big": _dynamicvit_fit(tmp / "big", None), "micro": _dynamicvit_fit(tmp / "micro", 4)}


def _nan_scenario(rank: int, tmp: Path) -> dict[str, Any]:
    try:  # only rank 1 sees non-finite images
        _fit(tmp / "nan", ds=data(nan=rank == 1))
    except RunFailed as e:
        return {"error": str(e)}
    return {"error": None}


def _worker(rank: int, port: int, tmp: Path, scenario: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    env = D.init_distributed("cpu")
    assert (env.rank, env.world_size, env.backend) == (rank, WORLD, "gloo")
    assert D.init_distributed("cpu") == env  # idempotent
    try:
        report = {"train": _train_scenario, "nan": _nan_scenario, "accumulate": _accumulate_scenario}[scenario](
            rank, tmp
        )
    finally:
        D.cleanup()
    torch.save(report, tmp / f"report{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(scenario: str, tmp: Path, timeout_s: float = 90) -> list[dict[str, Any]]:
    ctx = mp.spawn(_worker, args=(_free_port(), tmp, scenario), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{scenario}: the ranks did not finish within {timeout_s} s (a rank hangs)")
    return [torch.load(tmp / f"report{r}.pt", weights_only=False) for r in range(WORLD)]


def _losses(path: Path) -> list[dict[str, float]]:
    return [
        {k: v for k, v in json.loads(ln).items() if k not in ("elapsed_s", "epoch_s")}
        for ln in path.read_text().splitlines()
    ]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_two_processes_train_what_one_process_trains(tmp_path):
    single, single_result, _ = _fit(tmp_path / "single")
    r0, r1 = _spawn("train", tmp_path)

    _assert_close(r0["weights"], single.state_dict())
    for k, v in r0["weights"].items():  # gradients are all-reduced, so the replicas stay identical
        assert torch.equal(v, r1["weights"][k]), k
    res = r0["result"]
    assert (res["world_size"], res["per_device_batch_size"], res["global_batch_size"]) == (2, 16, 32)
    assert res["lr"] == res["lr_effective"] == 1e-3 and res["steps"] == single_result.steps == 8
    assert res["final_loss"] == pytest.approx(single_result.final_loss, rel=1e-5)

    assert (tmp_path / "ddp_rank0" / LOG_FILE).exists() and (tmp_path / "ddp_rank0" / STATE_FILE).exists()
    assert not (tmp_path / "ddp_rank1" / LOG_FILE).exists() and not (tmp_path / "ddp_rank1" / STATE_FILE).exists()
    ddp_log, single_log = _losses(tmp_path / "ddp_rank0" / LOG_FILE), _losses(tmp_path / "single" / LOG_FILE)
    assert len(ddp_log) == len(single_log) == 2
    for d, s in zip(ddp_log, single_log):
        assert d.keys() == s.keys()
        assert d == pytest.approx(s, rel=1e-5)

    # resume from the epoch-1 checkpoint written by rank 0 and read by both ranks
    assert r0["resumed_from"] == r1["resumed_from"] == 1
    _assert_close(r0["resumed_weights"], single.state_dict())
    for k, v in r0["resumed_weights"].items():
        assert torch.equal(v, r1["resumed_weights"][k]), k
    assert any("resuming from the checkpoint of epoch 0" in ln for ln in r0["resume_log"])
    assert r1["resume_log"] == []  # only rank 0 logs
    assert len((tmp_path / "resume" / LOG_FILE).read_text().splitlines()) == 2
    state = torch.load(tmp_path / "resume" / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert "33" in r0["odd_batch_error"] and "2 processes" in r0["odd_batch_error"]


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    reports = _spawn("nan", tmp_path)
    for r in reports:
        assert r["error"] is not None and "non-finite loss" in r["error"] and "step 1" in r["error"]
    assert not (tmp_path / "nan" / STATE_FILE).exists()


def test_accumulation_under_ddp_gives_the_weights_of_the_whole_per_device_batch(tmp_path):
    r0, r1 = _spawn("accumulate", tmp_path)
    _assert_close(r0["micro"], r0["big"])
    for k, v in r0["micro"].items():  # the accumulated gradients are all-reduced once, at the last micro-batch
        assert torch.equal(v, r1["micro"][k]), k


def test_epoch_batches_split_the_single_process_batches():
    """Epoch e of a run seeded s is DataLoader(shuffle=True)'s order under seed s * 100003 + e (the harness's
    order before its loader persisted across epochs); N ranks' slices make up each single-process batch."""
    n, batch, seed, epoch = 100, 32, 2, 7
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    reference = [b.tolist() for b in DataLoader(range(n), batch_size=batch, shuffle=True, drop_last=True, generator=g)]
    for world in (1, 2, 4):
        shards = []
        for rank in range(world):
            sampler = EpochBatches(n, batch, seed, rank, world)
            sampler.set_epoch(epoch)
            shards.append(list(DataLoader(range(n), batch_sampler=sampler)))
        assert all(len(s) == len(reference) == 3 for s in shards)
        for step, full in enumerate(reference):
            assert [i for s in shards for i in s[step].tolist()] == full


def test_single_process_env_and_linear_lr_scaling(tmp_path, monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(k, raising=False)
    env = D.init_distributed("cpu")
    assert env == D.DistEnv(0, 0, 1, None, CPU) and not D.is_initialized() and D.is_main()
    D.barrier()  # a no-op without a process group

    recipe = {**RECIPE, "epochs": 1, "warmup_epochs": 0, "lr_base_batch": 256}
    _, result, lines = _fit(tmp_path, recipe, ds=data(32))
    assert result.lr == 1e-3 and result.lr_effective == pytest.approx(1e-3 * 32 / 256)
    assert json.loads(lines[-1])["lr"] == pytest.approx(result.lr_effective)  # the optimizer ran at it


def test_submitit_tasks_become_the_torch_environment(monkeypatch):
    """Inside a submitit job of several tasks the job's ranks are exported before the group starts."""
    submitit_env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_JOB_ID": "1234",
    }
    for k, v in submitit_env.items():
        monkeypatch.setenv(k, v)
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(k, "-")  # set then deleted: the test's undo removes whatever export() writes
        monkeypatch.delenv(k)
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))
    env = D.init_distributed("cpu")
    assert calls == [{"backend": "gloo", "rank": 1, "world_size": 2}]
    assert (env.rank, env.local_rank, env.world_size, env.device) == (1, 1, 2, CPU)
    assert os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"]) > 0
