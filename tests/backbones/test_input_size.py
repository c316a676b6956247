"""A backbone's input size read from its pretrained config, with no weights loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

import e2vpt
from e2vpt.backbones.input_size import backbone_input_size
from e2vpt.inference import data_settings
from e2vpt.training.config import TrainConfig
from e2vpt.training.trainer import load_task_for


@pytest.mark.parametrize(
    "name",
    [
        "demo_vit_cifar10",
        "demo-vit-cifar10",
        "e2vpt_test_swin",  # registered by the tests without a pretrained config
        "vit_tiny_patch16_224.augreg_in21k",
        "vit_base_patch16_384",  # no tag: the architecture's default one
        "vit_base_patch14_dinov2.lvd142m",
    ],
)
def test_the_size_is_the_one_a_built_backbone_reports(name: str) -> None:
    built, _ = data_settings(e2vpt.create_backbone(name, pretrained=False))
    assert backbone_input_size(name) == built


def test_a_local_weights_file_is_not_read(tmp_path: Path) -> None:
    weights = tmp_path / "demo.safetensors"
    state = timm.create_model("demo_vit_cifar10").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    built, _ = data_settings(e2vpt.create_backbone("demo_vit_cifar10", weights=weights))
    assert backbone_input_size("demo_vit_cifar10") == built == 32
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")  # building the backbone would fail on it
    cfg = TrainConfig(data="builtin:count", weights=str(garbage), progress=False)
    assert load_task_for(cfg).split("train").images.shape[-1] == 32


def test_an_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(e2vpt.ConfigError, match="vit_base_patch16_224"):
        backbone_input_size("vit_base_patch16_244")
