"""Contracts every registered method keeps on every backbone family, by iterating the
registries: a method added with one registration gets these tests at once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import e2vpt
from e2vpt.checkpoint import tunable_state
from e2vpt.methods.base import list_methods, method_config
from tests.conftest import BACKBONE_FAMILIES

LABELS = torch.tensor([0, 1, 2, 3])


def small(name: str) -> e2vpt.MethodConfig:
    """The method at its defaults, prompt counts small so the tiny backbones stay fast."""
    spec = e2vpt.get_method(name)
    return method_config(name, spec.config_cls.size_options(2, 2))


@pytest.mark.parametrize("family", list(BACKBONE_FAMILIES))
@pytest.mark.parametrize("name", list_methods())
def test_every_method_on_every_family(
    family: str, name: str, images: torch.Tensor, tmp_path: Path
) -> None:
    backbone = BACKBONE_FAMILIES[family]()
    fresh = copy.deepcopy(backbone)
    config = small(name)
    model = e2vpt.wrap(backbone, config, 5)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    # what requires grad is exactly what the method says it tunes
    assert trainable == {n for n in params if config.tunes(model, n)}
    # the accounting counts what the checkpoint stores
    counts = e2vpt.count_parameters(model)
    assert counts.tunable == sum(p.numel() for n, p in params.items() if n in trainable)
    stored = tunable_state(model)
    assert set(trainable) <= set(stored)

    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD([params[n] for n in sorted(trainable)], lr=0.5)
    model.train()
    F.cross_entropy(model(images), LABELS).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed <= trainable and {"head.weight", "head.bias"} <= changed

    model.eval()
    e2vpt.save(model, tmp_path)
    loaded = e2vpt.load(tmp_path, backbone=fresh).eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


@pytest.mark.parametrize("name", list_methods())
def test_a_wrapped_backbone_is_refused_with_a_message(name: str, tmp_path: Path) -> None:
    """Wrapping rewires the backbone object; a second model on it is a clear error (not
    an AttributeError deep in timm), for wrap and for load(backbone=...)."""
    backbone = BACKBONE_FAMILIES["vit"]()
    model = e2vpt.wrap(backbone, small(name), 5)
    with pytest.raises(e2vpt.ConfigError, match="already wrapped"):
        e2vpt.wrap(backbone, small(name), 5)
    e2vpt.save(model, tmp_path)
    with pytest.raises(e2vpt.ConfigError, match="already wrapped"):
        e2vpt.load(tmp_path, backbone=backbone)
