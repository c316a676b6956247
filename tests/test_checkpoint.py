"""Tunable-only checkpoints: bit-identical round trips, small files, clear errors."""

from __future__ import annotations

import copy
import errno
import json
from pathlib import Path

import pytest
import torch

import e2vpt
from e2vpt.errors import DiskFullError
from e2vpt.runs import ADAPTER_CONFIG_FILE, ADAPTER_TENSORS_FILE
from tests.conftest import make_tiny_vit
from tests.methods.test_semantics import ALL_CONFIGS


def trained_like(model: e2vpt.PromptedViT) -> e2vpt.PromptedViT:
    """Perturb every tunable tensor so a round trip that drops one would show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_save_load_is_bit_identical(name: str, tmp_path: Path, images: torch.Tensor) -> None:
    backbone = make_tiny_vit()
    fresh_backbone = copy.deepcopy(backbone)
    model = trained_like(e2vpt.wrap(backbone, ALL_CONFIGS[name](), 7)).eval()
    e2vpt.save(model, tmp_path)
    loaded = e2vpt.load(tmp_path, backbone=fresh_backbone).eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert loaded.method_name == model.method_name


def test_file_holds_only_the_tunable_tensors(tmp_path: Path) -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=4, kv_tokens=2), 7)
    e2vpt.save(model, tmp_path)
    tunable = e2vpt.count_parameters(model).tunable
    masks = 4 + 4 * 16
    size = (tmp_path / ADAPTER_TENSORS_FILE).stat().st_size
    assert 4 * (tunable + masks) <= size <= 4 * (tunable + masks) + 2048
    backbone_bytes = 4 * e2vpt.count_parameters(model).backbone
    assert size < backbone_bytes / 10
    meta = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert meta["method"] == "e2vpt" and meta["num_classes"] == 7
    assert meta["backbone"] == "tiny_test_vit"
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left behind


def test_load_rebuilds_the_named_demo_backbone(tmp_path: Path, images: torch.Tensor) -> None:
    backbone = e2vpt.create_backbone("demo-vit-cifar10")
    model = trained_like(e2vpt.wrap(backbone, e2vpt.VPTConfig(tokens=2, deep=True), 3)).eval()
    e2vpt.save(model, tmp_path)
    loaded = e2vpt.load(tmp_path).eval()  # no backbone= : rebuilt from adapter.json
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_wrong_backbone_architecture_is_a_clear_error(tmp_path: Path) -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=1), 7)
    e2vpt.save(model, tmp_path)
    with pytest.raises(e2vpt.CheckpointError, match="depth"):
        e2vpt.load(tmp_path, backbone=make_tiny_vit(depth=2))


def test_other_pretrained_weights_are_a_clear_error(tmp_path: Path) -> None:
    model = e2vpt.wrap(make_tiny_vit(seed=0), e2vpt.LinearConfig(), 7)
    e2vpt.save(model, tmp_path)
    with pytest.raises(e2vpt.CheckpointError, match="fingerprints differ"):
        e2vpt.load(tmp_path, backbone=make_tiny_vit(seed=1))
    e2vpt.load(tmp_path, backbone=make_tiny_vit(seed=1), check_fingerprint=False)


def test_wrong_class_count_is_a_clear_error(tmp_path: Path) -> None:
    e2vpt.save(e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 7), tmp_path)
    with pytest.raises(e2vpt.CheckpointError, match="7-class head but 9 classes"):
        e2vpt.load(tmp_path, backbone=make_tiny_vit(), num_classes=9)


def test_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    e2vpt.save(e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 7), tmp_path)
    tensors = tmp_path / ADAPTER_TENSORS_FILE
    blob = tensors.read_bytes()
    tensors.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(e2vpt.CheckpointError, match="corrupt"):
        e2vpt.load(tmp_path, backbone=make_tiny_vit())
    meta = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    meta.pop("sha256")
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(e2vpt.CheckpointError, match="corrupt"):
        e2vpt.load(tmp_path, backbone=make_tiny_vit())
    (tmp_path / ADAPTER_CONFIG_FILE).write_text("{not json")
    with pytest.raises(e2vpt.CheckpointError, match="not valid JSON"):
        e2vpt.load(tmp_path, backbone=make_tiny_vit())
    with pytest.raises(e2vpt.CheckpointError, match="not an e2vpt checkpoint"):
        e2vpt.load(tmp_path / "nowhere")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    good = e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 7)
    e2vpt.save(good, tmp_path)
    files = tmp_path / ADAPTER_TENSORS_FILE, tmp_path / ADAPTER_CONFIG_FILE
    before = files[0].read_bytes(), files[1].read_text()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("e2vpt.files.os.fsync", full)  # the tensors' write fails
    with pytest.raises(DiskFullError, match=f"in {tmp_path}: no space left on device"):
        e2vpt.save(trained_like(good), tmp_path)
    after = files[0].read_bytes(), files[1].read_text()
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER_CONFIG_FILE, ADAPTER_TENSORS_FILE]
