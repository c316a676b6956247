"""Every method on every backbone family (ViT, register-token ViT, CLIP-style ViT, Swin):
one training step moves only what the method tunes, and checkpoints round-trip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import e2vpt
from tests.conftest import BACKBONE_FAMILIES, make_tiny_vit
from tests.methods.test_semantics import ALL_CONFIGS


def tuned_by(method: str, name: str) -> bool:
    """What a method may tune, by parameter name, on any family."""
    prompt = name.startswith(("visual_prompts.", "stage_prompts."))
    kv = name.startswith("kv_prompts.")
    return (
        name.startswith("head.")
        or {
            "linear": False,
            "full": True,
            "bias": name.endswith((".bias", "_bias")),  # Eva: q_bias, v_bias
            "vpt-shallow": prompt,
            "vpt-deep": prompt,
            "e2vpt": prompt or kv,
            "e2vpt-separate": prompt or kv,
        }[method]
    )


@pytest.mark.parametrize("family", list(BACKBONE_FAMILIES))
@pytest.mark.parametrize("method", list(ALL_CONFIGS))
def test_one_step_and_round_trip(
    family: str, method: str, images: torch.Tensor, tmp_path: Path
) -> None:
    backbone = BACKBONE_FAMILIES[family]()
    fresh = copy.deepcopy(backbone)
    model = e2vpt.wrap(backbone, ALL_CONFIGS[method](), 5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if tuned_by(method, n)}
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed <= trainable and {"head.weight", "head.bias"} <= changed
    if method.startswith(("vpt", "e2vpt")):
        assert any(n.startswith(("visual_prompts.", "stage_prompts.")) for n in changed)
    if method.startswith("e2vpt"):
        assert any(n.startswith("kv_prompts.") and n.endswith(".key_prompt") for n in changed)

    model.eval()
    e2vpt.save(model, tmp_path)
    loaded = e2vpt.load(tmp_path, backbone=fresh).eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_register_tokens_stay_ahead_of_the_prompts(images: torch.Tensor) -> None:
    model = e2vpt.wrap(BACKBONE_FAMILIES["register-vit"](), e2vpt.VPTConfig(tokens=2), 5)
    assert model.num_prefix_tokens == 3  # CLS + 2 registers
    seen = []
    hook = model.backbone.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model.eval()(images)
    hook.remove()
    x = seen[0]
    assert x.shape[1] == 3 + 2 + 16
    prompts = model.visual_prompts(0, images.shape[0])
    torch.testing.assert_close(x[:, 3:5], prompts)


def test_pooling_follows_the_convention_and_can_be_overridden(images: torch.Tensor) -> None:
    backbone = make_tiny_vit()
    reference = copy.deepcopy(backbone)
    backbone.e2vpt_pool_convention = "avg-fc-norm"  # what create_backbone sets for MAE
    model = e2vpt.wrap(backbone, e2vpt.LinearConfig(), 5).eval()
    assert model.global_pool == "avg-fc-norm"
    with torch.no_grad():
        tokens = reference.blocks(
            reference.norm_pre(reference._pos_embed(reference.patch_embed(images)))
        )
        want = F.layer_norm(
            tokens[:, 1:].mean(1), (64,), reference.norm.weight, reference.norm.bias, 1e-6
        )
        torch.testing.assert_close(model.forward_pre_logits(images), want)
    cls = e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 5, global_pool="token").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            cls.forward_pre_logits(images), reference.forward_features(images)[:, 0]
        )
    with pytest.raises(e2vpt.ConfigError, match="no class token"):
        e2vpt.wrap(
            make_tiny_vit(class_token=False, global_pool="avg"),
            e2vpt.LinearConfig(),
            5,
            global_pool="token",
        )
    with pytest.raises(e2vpt.ConfigError, match="unknown pooling"):
        e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 5, global_pool="cls")
    with pytest.raises(e2vpt.ConfigError, match="Swin backbones pool by averaging"):
        e2vpt.wrap(BACKBONE_FAMILIES["swin"](), e2vpt.LinearConfig(), 5, global_pool="token")
