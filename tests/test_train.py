"""Training loop: exact resume from the per-epoch checkpoint, and non-finite loss recorded as a failure."""

import pytest
import torch
from torch.utils.data import TensorDataset

from bench.config import DEFAULT_RECIPE
from bench.errors import RunFailed
from bench.methods import create_method
from bench.train import train_model
from bench.train.loop import LOG_FILE, STATE_FILE


def data(n=96, nan=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 32, 32, generator=g)
    if nan:
        x[:] = float("nan")
    return TensorDataset(x, torch.randint(0, 10, (n,), generator=g))


RECIPE = {**DEFAULT_RECIPE, "epochs": 3, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 1}


def fit(tiny_vit, out, log=lambda s: None, method="random", recipe=RECIPE):
    model = tiny_vit()
    m = create_method(method, 0.5, seed=0)
    m.apply(model)
    res = train_model(model, m, data(), recipe, seed=0, out_dir=out, device=torch.device("cpu"), log=log)
    return model, res


# frozen_params with clip_grad (on by default): a frozen parameter's gradient, never cleared by the optimiser,
# used to carry over steps into the clipped norm without being checkpointed
@pytest.mark.parametrize("extra", [{}, {"frozen_params": ["cls_token", "pos_embed"]}], ids=["all", "frozen"])
def test_resume_is_exact(tiny_vit, tmp_path, dying_log, extra):
    recipe = {**RECIPE, **extra}
    straight, _ = fit(tiny_vit, tmp_path / "a", recipe=recipe)
    # the process dies at the end of epoch 2, before its checkpoint is written
    with pytest.raises(dying_log.Killed):
        fit(tiny_vit, tmp_path / "b", log=dying_log(2), recipe=recipe)
    state = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert state["epoch"] == 0
    assert not list((tmp_path / "b").glob(".*.tmp"))  # no half-written file left behind
    resumed, res = fit(tiny_vit, tmp_path / "b", recipe=recipe)
    assert res.resumed_from_epoch == 1
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k
    log = (tmp_path / "b" / LOG_FILE).read_text().splitlines()
    assert len(log) == 3


def test_training_reduces_loss(tiny_vit, tmp_path):
    model = tiny_vit()
    m = create_method("dense")
    ds = data(64)
    res = train_model(
        model,
        m,
        ds,
        {**RECIPE, "epochs": 8, "label_smoothing": 0.0},
        seed=0,
        out_dir=tmp_path,
        device=torch.device("cpu"),
        log=lambda s: None,
    )
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    import json

    first, last = json.loads(lines[0])["loss"], json.loads(lines[-1])["loss"]
    assert last < first
    assert res.peak_mem_mb > 0


def test_non_finite_loss_stops_the_run(tiny_vit, tmp_path):
    model = tiny_vit()
    with pytest.raises(RunFailed, match="non-finite loss"):
        train_model(
            model,
            create_method("dense"),
            data(nan=True),
            RECIPE,
            seed=0,
            out_dir=tmp_path,
            device=torch.device("cpu"),
            log=lambda s: None,
        )
    assert not (tmp_path / STATE_FILE).exists()
