"""The last block computed for the class token alone, and gradient checkpointing: the
same logits and gradients as computing everything, with less work or memory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import ResPostBlock

import e2vpt
from e2vpt.layers.class_token_block import supports_class_token_block
from tests.conftest import make_tiny_clip_vit, make_tiny_register_vit, make_tiny_vit
from tests.methods.test_semantics import ALL_CONFIGS

VIT_FAMILIES: dict[str, Callable[..., torch.nn.Module]] = {
    "vit": make_tiny_vit,
    "register-vit": make_tiny_register_vit,
    "clip-vit": make_tiny_clip_vit,
    "qk-norm-vit": lambda: make_tiny_vit(qk_norm=True, init_values=0.1),
}
LABELS = torch.tensor([0, 1, 2, 3])


def logits_and_grads(
    model: e2vpt.PromptedViT, images: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same prompt-dropout draws for both computations
    logits = model(images)
    F.cross_entropy(logits, LABELS).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def rows_through_last_mlp(model: e2vpt.PromptedViT, images: torch.Tensor) -> int:
    seen: list[int] = []
    fc1 = model.backbone.blocks[-1].mlp.fc1
    handle = fc1.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[1]))
    with torch.no_grad():
        model(images)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", list(VIT_FAMILIES))
@pytest.mark.parametrize("method", list(ALL_CONFIGS))
def test_class_token_last_block_equals_every_token(
    family: str, method: str, images: torch.Tensor
) -> None:
    model = e2vpt.wrap(VIT_FAMILIES[family](), ALL_CONFIGS[method](), 5)
    if method.startswith("e2vpt"):  # non-zero key-value prompts, so they matter
        for name, p in model.named_parameters():
            if name.endswith(("key_prompt", "value_prompt")):
                torch.nn.init.normal_(p, std=1.0)
    model.train()
    assert supports_class_token_block(model.backbone.blocks[-1])
    assert rows_through_last_mlp(model, images) == 1  # only the class token
    fast_logits, fast_grads = logits_and_grads(model, images)
    model.class_token_shortcut = False
    assert rows_through_last_mlp(model, images) > 1
    logits, grads = logits_and_grads(model, images)
    torch.testing.assert_close(fast_logits, logits, atol=1e-5, rtol=1e-4)
    assert fast_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_average_pooling_runs_every_token(images: torch.Tensor) -> None:
    config = e2vpt.E2VPTConfig(visual_tokens=3)
    model = e2vpt.wrap(make_tiny_vit(), config, 5, global_pool="avg").eval()
    assert rows_through_last_mlp(model, images) > 1
    with torch.no_grad():
        pooled = model(images)
        model.class_token_shortcut = False
        torch.testing.assert_close(pooled, model(images))


def test_other_block_types_run_in_full(images: torch.Tensor) -> None:
    """A post-norm block (not timm's pre-norm Block) is computed as it is."""
    model = e2vpt.wrap(make_tiny_vit(block_fn=ResPostBlock), e2vpt.VPTConfig(tokens=2), 5)
    assert not supports_class_token_block(model.backbone.blocks[-1])
    assert rows_through_last_mlp(model, images) > 1


def saved_bytes(model: e2vpt.PromptedViT, images: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one forward pass."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(images), LABELS)
    loss.backward()
    return total


@pytest.mark.parametrize("method", ["vpt-deep", "e2vpt"])
def test_gradient_checkpointing_same_gradients_less_saved(
    method: str, images: torch.Tensor
) -> None:
    model = e2vpt.wrap(make_tiny_vit(depth=4), ALL_CONFIGS[method](), 5).train()
    logits, grads = logits_and_grads(model, images)
    plain_saved = saved_bytes(model, images)
    model.grad_checkpointing = True
    ckpt_logits, ckpt_grads = logits_and_grads(model, images)
    ckpt_saved = saved_bytes(model, images)
    torch.testing.assert_close(ckpt_logits, logits)
    for name, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, msg=name)
    assert ckpt_saved < plain_saved / 2, (ckpt_saved, plain_saved)


class LowRankQKV(torch.nn.Module):
    """A stand-in for a LoRA layer: the Linear it wraps plus a low-rank update."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.normal_(self.up.weight, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def test_a_wrapped_qkv_is_called_not_read(images: torch.Tensor) -> None:
    """A method that replaces qkv (LoRA) changes the class-token path as the full one."""
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=2), 5)
    attn = model.backbone.blocks[-1].attn
    base = attn.base if hasattr(attn, "base") else attn
    base.qkv = LowRankQKV(base.qkv)
    model.eval()
    assert supports_class_token_block(model.backbone.blocks[-1])
    assert rows_through_last_mlp(model, images) == 1
    with torch.no_grad():
        fast = model(images)
        model.class_token_shortcut = False
        full = model(images)
        base.qkv.up.weight.zero_()  # without the update the logits differ: it was used
        plain = model(images)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full, plain, atol=1e-4)
