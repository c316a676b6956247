"""Checkpoints written by an earlier e2vpt (commit cd8cde2, before backbone families and
methods got their own modules) still load and give the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import e2vpt
from tests.conftest import make_tiny_swin, make_tiny_vit

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
BACKBONES = {"vit": make_tiny_vit, "swin": make_tiny_swin}


@pytest.mark.parametrize("name", ["vit-e2vpt", "vit-vpt-deep", "vit-bias", "swin-e2vpt"])
def test_an_older_checkpoint_loads_with_the_same_logits(name: str) -> None:
    expected = load_file(FIXTURES / "logits.safetensors")
    backbone = BACKBONES[name.split("-")[0]]()
    model = e2vpt.load(FIXTURES / name, backbone=backbone).eval()
    with torch.no_grad():
        logits = model(expected["images"])
    torch.testing.assert_close(logits, expected[name], rtol=1e-5, atol=1e-6)
