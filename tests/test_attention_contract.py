"""The one attention (``e2vpt.layers.attention``) against timm's, on every timm attention
variant: plain, q/k-normed, gated and unfused. Without extras it is timm's forward; its
class-token-only path is the full block's class token; and every method that can share
a backbone, on every family that shares passes, gives the same logits alone as inside a
:class:`~e2vpt.multitask.MultiTaskModel` batch. Methods and families come from their
registries, so a new one is covered at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import ResPostBlock

import e2vpt
from e2vpt.families import SharedPassFamily, family_of, get_family, list_families
from e2vpt.layers.attention import attention_forward, block_forward, is_timm_attention
from e2vpt.methods.base import registered_methods
from e2vpt.multitask import MultiTaskModel
from tests.conftest import BACKBONE_FAMILIES, make_tiny_vit

TOLERANCE = 1e-5  # max |Δ| between two computations of the same logits


class GatedAttention(Attention):
    """timm's own gate (``Attention(gated=True)``: a sigmoid gate on the attention output
    per channel), which ``VisionTransformer`` has no option for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, gated=True, **kwargs)
        torch.nn.init.normal_(self.gate.weight, std=0.5)  # far from a constant half


class UnfusedAttention(Attention):
    """timm's explicit softmax(q·kᵀ)·v path, as ``TIMM_FUSED_ATTN=0`` would choose."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fused_attn = False


ATTENTION_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "qk-norm": {"qk_norm": True},
    "gated": {"attn_layer": GatedAttention},
    "unfused": {"attn_layer": UnfusedAttention},
    "gated-post-norm": {"attn_layer": GatedAttention, "block_fn": ResPostBlock},
    "layer-scale": {"init_values": 0.1, "qk_norm": True},
}


def variant_vit(variant: str) -> torch.nn.Module:
    return make_tiny_vit(**ATTENTION_VARIANTS[variant])


def distilled_vit() -> torch.nn.Module:
    """DeiT distilled: token pooling averages the class and distillation tokens."""
    torch.manual_seed(0)
    tiny = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0)
    return VisionTransformerDistilled(num_classes=10, **tiny).eval()


# every backbone the shared-pass test runs on: each attention variant on a ViT, DeiT
# distilled, and each family conftest builds (their own attention)
SHARED_BACKBONES: dict[str, Callable[[], torch.nn.Module]] = {
    **{f"vit-{variant}": lambda v=variant: variant_vit(v) for variant in ATTENTION_VARIANTS},
    "vit-distilled": distilled_vit,
    **{name: make for name, make in BACKBONE_FAMILIES.items() if name != "vit"},
}


def padding_mask(batch: int, keys: int, dtype: torch.dtype) -> torch.Tensor:
    """A key mask as a shared batch has: sample 1 misses its last keys, sample 2 some in
    the middle; bool (true = attend) or additive."""
    valid = torch.ones(batch, keys, dtype=torch.bool)
    valid[1, -3:] = False
    valid[2 % batch, 2:5] = False
    mask = valid[:, None, None, :]
    if dtype == torch.bool:
        return mask
    return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_without_extras_it_is_timms_attention_and_block(variant: str) -> None:
    backbone = variant_vit(variant)
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        for block in backbone.blocks:
            attn = block.attn
            assert is_timm_attention(attn)
            torch.testing.assert_close(attention_forward(attn, x), attn(x), rtol=0, atol=1e-6)
            torch.testing.assert_close(block_forward(block, x), block(x), rtol=0, atol=1e-6)
            for dtype in (torch.bool, torch.float32):
                mask = padding_mask(3, 17, dtype)
                want = attn(x, attn_mask=mask)
                got = attention_forward(attn, x, attn_mask=mask)
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_extras", [False, True])
@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_class_token_only_is_the_full_blocks_class_token(variant: str, with_extras: bool) -> None:
    backbone = variant_vit(variant)
    x = torch.randn(3, 17, 64)
    extra_kv, mask = None, None
    if with_extras:  # per-sample key-value prompts, some of them padding
        attn = backbone.blocks[0].attn
        extra_kv = (torch.randn(3, attn.num_heads, 4, attn.head_dim),) * 2
        mask = padding_mask(3, 17 + 4, torch.bool)
    with torch.no_grad():
        for block in backbone.blocks:
            full = block_forward(block, x, extra_kv, mask)
            cls = block_forward(block, x, extra_kv, mask, class_token_only=True)
            assert cls.shape == (3, 1, 64)
            torch.testing.assert_close(cls, full[:, :1], rtol=0, atol=TOLERANCE)


def sharing_methods() -> list[str]:
    """Every registered method whose tasks can share a backbone pass."""
    return [s.name for s in registered_methods() if not s.config_cls.changes_backbone]


def perturbed(model: e2vpt.PromptedModel) -> e2vpt.PromptedModel:
    """Every trainable part moved off its init (zero-initialised ones too)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def task_models(backbone: torch.nn.Module) -> dict[str, e2vpt.PromptedModel]:
    """One task per sharing method, prompt counts differing (so the batch pads), and a
    pruned E²VPT where the family's prompts can be pruned."""
    torch.manual_seed(0)
    models: dict[str, e2vpt.PromptedModel] = {}
    for index, name in enumerate(sharing_methods()):
        spec = e2vpt.get_method(name)
        options = spec.config_cls.size_options(2 + index % 3, 1 + index % 2)
        config = e2vpt.method_config(name, spec.config_cls.example_options() | options)
        models[name] = perturbed(e2vpt.wrap(backbone, config, 3 + index % 4))
    e2vpt_config = e2vpt.E2VPTConfig(visual_tokens=6, kv_tokens=3)
    pruned = perturbed(e2vpt.wrap(backbone, e2vpt_config, 4))
    prompts = pruned.visual_prompts
    if prompts is not None and prompts.mask_segments is not None:
        segments = torch.ones(2, prompts.mask_segments, dtype=torch.bool)
        segments[1, ::3] = False
        prompts.prune(torch.tensor([1, 4]), segments, mode="remove")
        models["e2vpt-pruned"] = pruned
    return models


def max_logit_gap(backbone: torch.nn.Module, images: torch.Tensor) -> float:
    """Max |Δlogit| between each sample alone and in a mixed MultiTaskModel batch."""
    models = task_models(backbone)
    multi = MultiTaskModel(backbone, models)
    names = list(models)
    batch = images.repeat(3, 1, 1, 1)[: 2 * len(names)]
    tasks = [names[(3 * i) % len(names)] for i in range(len(batch))]
    gap = 0.0
    with torch.no_grad():
        got = multi(batch, tasks)
        for i, task in enumerate(tasks):
            alone = models[task](batch[i : i + 1])[0]
            assert got[i].shape == alone.shape
            gap = max(gap, (got[i] - alone).abs().max().item())
    return gap


@pytest.mark.parametrize("backbone_name", list(SHARED_BACKBONES))
def test_alone_equals_inside_a_multitask_batch(backbone_name: str, images: torch.Tensor) -> None:
    assert max_logit_gap(SHARED_BACKBONES[backbone_name](), images) <= TOLERANCE


def test_every_family_that_shares_passes_is_tested() -> None:
    tested = {family_of(make()).family for make in SHARED_BACKBONES.values()}
    sharing = {f for f in list_families() if isinstance(get_family(f), SharedPassFamily)}
    assert sharing and sharing <= tested
