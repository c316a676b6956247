"""Prompts inside Swin's window attention, pinned down against plain timm and textbook maths."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import e2vpt
from e2vpt.layers.kv_attention import KVPrompts
from e2vpt.layers.swin_prompts import window_attention_with_prompts
from tests.conftest import make_tiny_swin


def timm_logits(backbone: torch.nn.Module, model: e2vpt.PromptedSwin, x: torch.Tensor):
    reference = copy.deepcopy(backbone)
    reference.reset_classifier(model.num_classes)
    reference.head.fc.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        return reference.eval()(x)


@pytest.mark.parametrize(
    "config",
    [
        e2vpt.VPTConfig(tokens=0),
        e2vpt.VPTConfig(tokens=0, deep=True),
        e2vpt.E2VPTConfig(visual_tokens=0, kv_tokens=0),
        e2vpt.LinearConfig(),
    ],
    ids=lambda c: c.method_name,
)
def test_zero_prompts_equal_plain_timm_swin(config: e2vpt.MethodConfig, images: torch.Tensor):
    backbone = make_tiny_swin()
    expected = copy.deepcopy(backbone)
    model = e2vpt.wrap(backbone, config, num_classes=7).eval()
    assert isinstance(model, e2vpt.PromptedSwin)
    with torch.no_grad():
        got = model(images)
    torch.testing.assert_close(got, timm_logits(expected, model, images), rtol=0, atol=1e-5)


def reference_window_attention(
    attn: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    visual: int,
    key_prompt: torch.Tensor,
    value_prompt: torch.Tensor,
) -> torch.Tensor:
    """Explicit softmax; the bias table and the mask apply between window tokens only."""
    B_, T, C = x.shape
    H = attn.num_heads
    hd = C // H
    N = T - visual
    m = key_prompt.shape[1]
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=-1)
    q, k, v = (t.reshape(B_, T, H, hd).transpose(1, 2) for t in (q, k, v))
    k = torch.cat([k, key_prompt.expand(B_, -1, -1, -1)], dim=2)
    v = torch.cat([v, value_prompt.expand(B_, -1, -1, -1)], dim=2)
    scores = (q @ k.transpose(-1, -2)) / hd**0.5
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    bias = table.view(N, N, H).permute(2, 0, 1)
    extra = torch.zeros(B_, H, T, T + m)
    extra[:, :, visual:, visual : visual + N] += bias
    if mask is not None:
        windows = mask.shape[0]
        extra[:, :, visual:, visual : visual + N] += mask.repeat(B_ // windows, 1, 1)[:, None]
    weights = (scores + extra).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B_, T, C)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shifted", [False, True])
def test_prompted_window_attention_equals_reference(shared: bool, shifted: bool) -> None:
    block = make_tiny_swin().layers[0].blocks[1 if shifted else 0]
    base = block.attn
    kv = KVPrompts(base.num_heads, 16, tokens=3, shared=shared)
    mask = block.attn_mask
    assert (mask is not None) == shifted
    visual = 2
    x = torch.randn(2 * 4, visual + 16, 32)  # batch 2 × 4 windows, 2 prompts + 4×4 tokens
    value = kv.key_prompt if shared else kv.value_prompt
    with torch.no_grad():
        got = window_attention_with_prompts(base, x, mask, visual, kv)
        want = reference_window_attention(base, x, mask, visual, kv.key_prompt, value)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_window_attention_uses_fused_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(args[1].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = e2vpt.wrap(make_tiny_swin(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=3), 5)
    model(torch.randn(1, 3, 32, 32))
    # stage 0: 4 windows of 16 tokens (+2 prompts, +3 kv), 2 heads; stage 1: 1 window, 4 heads
    assert calls == [(4, 2, 21, 16)] * 2 + [(1, 4, 21, 16)] * 2


def test_prompts_have_their_stage_width_and_pool_with_the_grid(images: torch.Tensor) -> None:
    model = e2vpt.wrap(make_tiny_swin(), e2vpt.VPTConfig(tokens=3, deep=True), 5).eval()
    shapes = [tuple(p.prompts.shape) for p in model.stage_prompts.stages]
    assert shapes == [(2, 3, 32), (2, 3, 64)]  # (blocks of the stage, tokens, stage width)
    with torch.no_grad():
        grid, prompts = model.forward_features(images)
        pooled = model.forward_pre_logits(images)
    assert grid.shape == (4, 4, 4, 64) and prompts.shape == (4, 3, 64)
    torch.testing.assert_close(pooled, torch.cat([prompts, grid.flatten(1, 2)], 1).mean(1))
    shallow = e2vpt.wrap(make_tiny_swin(), e2vpt.VPTConfig(tokens=3), 5).eval()
    assert [tuple(p.prompts.shape) for p in shallow.stage_prompts.stages] == [(1, 3, 32)]
    with torch.no_grad():
        _, carried = shallow.forward_features(images)
    assert carried is None  # dropped at the first patch merging


def test_swin_prompts_reach_every_window(images: torch.Tensor) -> None:
    """A prompt is joined to all windows: changing it moves the output of every window."""
    model = e2vpt.wrap(make_tiny_swin(depths=(2, 2)), e2vpt.VPTConfig(tokens=1), 5).eval()
    stage0 = model.backbone.layers[0]
    outputs = []

    def grab(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        outputs.append(output.detach().clone())

    handle = stage0.blocks[0].attn.proj.register_forward_hook(grab)  # attention output
    with torch.no_grad():
        model(images)
        prompts = model.stage_prompts.stages[0].prompts
        prompts.add_(torch.randn_like(prompts))  # not a constant: LayerNorm would remove it
        model(images)
    handle.remove()
    moved = (outputs[0][:, 1:] - outputs[1][:, 1:]).abs().amax(dim=(1, 2))
    assert moved.numel() == 4 * 4 and torch.all(moved > 1e-4)  # batch 4 × 4 windows


def test_pruning_is_refused_on_swin_with_a_clear_error() -> None:
    from e2vpt.pruning.importance import prunable_prompts

    model = e2vpt.wrap(make_tiny_swin(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=1), 5)
    with pytest.raises(e2vpt.ConfigError, match="pruning is implemented for ViT"):
        prunable_prompts(model)
