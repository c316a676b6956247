"""Backbones by name, the bundled demo ViT, and local weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import e2vpt
from e2vpt.backbones import BackboneError, load_weights_file
from e2vpt.backbones.demo import weights_path
from tests.conftest import make_tiny_vit


def test_demo_backbone_loads_its_bundled_weights() -> None:
    a = e2vpt.create_backbone("demo-vit-cifar10")
    b = timm.create_model("demo_vit_cifar10", pretrained=True)
    random_init = timm.create_model("demo_vit_cifar10", pretrained=False)
    assert torch.equal(a.pos_embed, b.pos_embed)
    assert not torch.equal(a.pos_embed, random_init.pos_embed)
    assert Path(weights_path()).stat().st_size < 8 * 2**20
    assert a.pretrained_cfg["input_size"] == (3, 32, 32)


def test_unknown_backbone_name_suggests_close_matches() -> None:
    with pytest.raises(e2vpt.ConfigError, match="vit_base_patch16_224"):
        e2vpt.create_backbone("vit_base_patch16_244")


def test_hub_failure_points_to_local_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr("e2vpt.backbones.create.hub_overlay", lambda *args: None)  # it answers
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneError, match="local weights file with `weights`"):
        e2vpt.create_backbone("vit_tiny_patch16_224.augreg_in21k")


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-nested"])
def test_local_weight_files_round_trip(fmt: str, tmp_path: Path) -> None:
    source = make_tiny_vit(seed=3)
    state = source.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    else:  # MAE / MoCo style: nested under a key, DDP `module.` prefix
        path = tmp_path / "w.pth.tar"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    target = make_tiny_vit(seed=4)
    load_weights_file(target, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target.eval()(x))


def test_weights_for_another_architecture_list_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(make_tiny_vit(depth=2).state_dict(), path)
    with pytest.raises(BackboneError, match=r"missing keys \['blocks.2"):
        load_weights_file(make_tiny_vit(depth=3), path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="could not read"):
        load_weights_file(make_tiny_vit(), bad)
    with pytest.raises(BackboneError, match="does not exist"):
        load_weights_file(make_tiny_vit(), tmp_path / "missing.pth")
