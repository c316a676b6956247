"""Contracts every registered method keeps on every backbone family, by iterating the
registries: a method added with one registration gets these tests at once."""

from __future__ import annotations

import copy
import gc
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
    options = spec.config_cls.example_options() | spec.config_cls.size_options(2, 2)
    return method_config(name, options)


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


@pytest.mark.parametrize("family", list(BACKBONE_FAMILIES))
def test_linear_reads_timms_pre_logits(family: str, images: torch.Tensor) -> None:
    """On every family, the features the head reads are timm's own pre-logits."""
    backbone = BACKBONE_FAMILIES[family]()
    model = e2vpt.wrap(backbone, small("linear"), 5).eval()
    with torch.no_grad():
        want = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        torch.testing.assert_close(model.forward_pre_logits(images), want, rtol=0, atol=1e-5)


def backbone_state(backbone: torch.nn.Module) -> dict[str, object]:
    """Everything wrapping could change about a backbone: tensors, module types, flags."""
    return {
        "tensors": {k: v.clone() for k, v in backbone.state_dict().items()},
        "modules": [(n, type(m)) for n, m in backbone.named_modules()],
        "grads": {n: p.requires_grad for n, p in backbone.named_parameters()},
    }


def same_state(a: dict[str, object], b: dict[str, object]) -> bool:
    ta, tb = a["tensors"], b["tensors"]
    assert isinstance(ta, dict) and isinstance(tb, dict)
    tensors_equal = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    return tensors_equal and a["modules"] == b["modules"]


@pytest.mark.parametrize("family", list(BACKBONE_FAMILIES))
@pytest.mark.parametrize(
    "name", [n for n in list_methods() if not e2vpt.get_method(n).config_cls.changes_backbone]
)
def test_models_that_leave_the_backbone_share_one(
    family: str, name: str, images: torch.Tensor, tmp_path: Path
) -> None:
    """Three models of a method on one backbone object, each trained a step: the
    backbone is untouched and each model equals the same model on a backbone of its own."""
    backbone = BACKBONE_FAMILIES[family]()
    pristine = copy.deepcopy(backbone)
    before = backbone_state(backbone)
    shared, alone = [], []
    for seed in range(3):
        for models, bb in ((shared, backbone), (alone, copy.deepcopy(pristine))):
            torch.manual_seed(seed)
            model = e2vpt.wrap(bb, small(name), 5)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(trainable, lr=0.5)
            model.train()
            F.cross_entropy(model(images), LABELS).backward()
            optimizer.step()
            models.append(model.eval())
    assert same_state(backbone_state(backbone), before)
    with torch.no_grad():
        for one, own in zip(shared, alone, strict=True):
            assert one.backbone is backbone
            torch.testing.assert_close(one(images), own(images), rtol=0, atol=0)
        assert not torch.equal(shared[0](images), shared[1](images))
    # a checkpoint loads onto the backbone the others use, and they stay as they were
    e2vpt.save(shared[0], tmp_path)
    loaded = e2vpt.load(tmp_path, backbone=backbone).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), alone[0](images), rtol=0, atol=0)
        torch.testing.assert_close(shared[1](images), alone[1](images), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", [n for n in list_methods() if e2vpt.get_method(n).config_cls.changes_backbone]
)
def test_a_method_that_changes_the_backbone_takes_it_alone(name: str, tmp_path: Path) -> None:
    """It is refused on a backbone in use, and nothing can be wrapped or loaded onto the
    backbone it changed: one-line errors naming the fix, not an AttributeError in timm."""
    in_use = BACKBONE_FAMILIES["vit"]()
    user = e2vpt.wrap(in_use, small("linear"), 5)
    with pytest.raises(e2vpt.ConfigError, match="share this backbone object.*deepcopy"):
        e2vpt.wrap(in_use, small(name), 5)
    del user  # once the sharing model is gone the backbone is free again
    gc.collect()
    e2vpt.wrap(in_use, small(name), 5)
    backbone = BACKBONE_FAMILIES["vit"]()
    model = e2vpt.wrap(backbone, small(name), 5)
    for other in (name, "linear"):
        with pytest.raises(e2vpt.ConfigError, match=f"carries the changes a '{name}' model made"):
            e2vpt.wrap(backbone, small(other), 5)
    e2vpt.save(model, tmp_path)
    with pytest.raises(e2vpt.ConfigError, match="carries the changes"):
        e2vpt.load(tmp_path, backbone=backbone)
    e2vpt.load(tmp_path, backbone=BACKBONE_FAMILIES["vit"]())  # a backbone of its own loads
