"""Backbones by timm name, with weights from a local .pth / .safetensors (another head size too)."""

import time

import pytest
import torch
from safetensors.torch import save_file

from bench.errors import UsageError
from bench.models import build_backbone
from bench.models.backbones import check_backbone_name


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_same_head(tmp_path, suffix):
    src = build_backbone("tb_vit_pico_patch4_32", num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"model": src.state_dict(), "epoch": 3}, path)
    else:
        save_file(src.state_dict(), str(path))
    dst = build_backbone("tb_vit_pico_patch4_32", num_classes=10, pretrained=str(path))
    for (k, v), w in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(v, w), k


def test_local_checkpoint_other_head_reinitialises_head(tmp_path):
    src = build_backbone("tb_vit_pico_patch4_32", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = build_backbone("tb_vit_pico_patch4_32", num_classes=10, pretrained=str(path))
    assert dst.head.weight.shape == (10, 64)
    assert torch.equal(dst.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    src = build_backbone("tb_vit_nano_patch4_32", num_classes=10)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(UsageError, match="does not fit"):
        build_backbone("tb_vit_pico_patch4_32", num_classes=10, pretrained=str(path))


def test_missing_checkpoint_file():
    with pytest.raises(UsageError, match="does not exist"):
        build_backbone("tb_vit_pico_patch4_32", num_classes=10, pretrained="/nonexistent/w.pth")


def test_unknown_name_did_you_mean():
    with pytest.raises(UsageError, match="did you mean 'deit_base_patch16_224'"):
        check_backbone_name("deit_bse_patch16_224")


def test_hub_weights_offline_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: only the hub could give the weights
    t0 = time.time()
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set and deit_tiny_patch16_224's hub weights") as e:
        build_backbone("deit_tiny_patch16_224", num_classes=10, pretrained=True)
    assert "\n" not in str(e.value)
    assert time.time() - t0 < 20


def test_hub_weights_unreachable_hub_fail_fast(monkeypatch, tmp_path):
    """No network (here: a hub endpoint nothing listens on): one line naming the hub, before timm's retries."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UsageError, match=r"the hub \(http://127.0.0.1:9\) is unreachable .*no network") as e:
        build_backbone("deit_tiny_patch16_224", num_classes=10, pretrained=True)
    assert "\n" not in str(e.value)


def test_hub_weights_in_the_cache_need_no_hub(monkeypatch, tmp_path):
    """Offline with the weights cached is fine: the check looks in the cache first (as timm will)."""
    from bench.preflight import check_hub_reachable

    snapshot = tmp_path / "models--timm--deit_tiny_patch16_224.fb_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (tmp_path / "models--timm--deit_tiny_patch16_224.fb_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--deit_tiny_patch16_224.fb_in1k" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    check_hub_reachable("deit_tiny_patch16_224")  # no error
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        check_hub_reachable("deit_tiny_patch16_224")


def test_timm_deit_builds_with_other_input():
    m = build_backbone("deit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=64)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 10)
