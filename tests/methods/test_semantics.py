"""The semantics of every method, pinned down against plain timm and reference maths."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

import e2vpt
from e2vpt.layers.kv_attention import KVPrompts, attention_with_kv_prompts
from e2vpt.layers.prompts import prompt_init_bound
from tests.conftest import make_tiny_vit

ALL_CONFIGS = {
    "linear": lambda: e2vpt.LinearConfig(),
    "full": lambda: e2vpt.FullConfig(),
    "bias": lambda: e2vpt.BiasConfig(),
    "vpt-shallow": lambda: e2vpt.VPTConfig(tokens=3),
    "vpt-deep": lambda: e2vpt.VPTConfig(tokens=3, deep=True),
    "e2vpt": lambda: e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=2),
    "e2vpt-separate": lambda: e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=2, shared_kv=False),
}


def plain_timm_logits(
    backbone: torch.nn.Module, model: e2vpt.PromptedViT, x: torch.Tensor
) -> torch.Tensor:
    """The same backbone through timm's own forward, with the wrapper's head copied in."""
    reference = copy.deepcopy(backbone)
    reference.reset_classifier(model.num_classes)
    reference.head.load_state_dict(model.head.state_dict())
    reference.eval()
    with torch.no_grad():
        return reference(x)


@pytest.mark.parametrize(
    "config",
    [
        e2vpt.VPTConfig(tokens=0),
        e2vpt.VPTConfig(tokens=0, deep=True),
        e2vpt.E2VPTConfig(visual_tokens=0, kv_tokens=0),
        e2vpt.LinearConfig(),
        e2vpt.BiasConfig(),
    ],
    ids=lambda c: c.method_name,
)
def test_zero_prompts_equal_plain_timm(config: e2vpt.MethodConfig, images: torch.Tensor) -> None:
    backbone = make_tiny_vit()
    expected_backbone = copy.deepcopy(backbone)
    model = e2vpt.wrap(backbone, config, num_classes=7).eval()
    with torch.no_grad():
        got = model(images)
    # logits are O(1) with the official head init (std √(2/C)): float32 agreement
    torch.testing.assert_close(
        got, plain_timm_logits(expected_backbone, model, images), rtol=0, atol=1e-5
    )


def test_nonzero_prompts_change_the_logits(images: torch.Tensor) -> None:
    backbone = make_tiny_vit()
    reference = copy.deepcopy(backbone)
    model = e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=2), 7).eval()
    with torch.no_grad():
        got = model(images)
    assert not torch.allclose(got, plain_timm_logits(reference, model, images), atol=1e-4)


def reference_kv_attention(
    attn: torch.nn.Module, x: torch.Tensor, key_prompt: torch.Tensor, value_prompt: torch.Tensor
) -> torch.Tensor:
    """Textbook attention with an explicit softmax over [keys; key prompts]."""
    B, N, C = x.shape
    H = attn.num_heads
    hd = C // H
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (t.reshape(B, N, H, hd).transpose(1, 2) for t in (q, k, v))
    k = torch.cat([k, key_prompt.expand(B, -1, -1, -1)], dim=2)
    v = torch.cat([v, value_prompt.expand(B, -1, -1, -1)], dim=2)
    scores = (q @ k.transpose(-1, -2)) / hd**0.5
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("shared", [True, False])
def test_kv_prompt_attention_equals_reference(shared: bool) -> None:
    backbone = make_tiny_vit()
    base = backbone.blocks[1].attn
    kv = KVPrompts(base.num_heads, base.head_dim, tokens=3, shared=shared)
    assert kv.key_prompt.shape == (4, 3, 16)  # (heads, m, head_dim)
    x = torch.randn(2, 17, 64)
    value = kv.key_prompt if shared else kv.value_prompt
    with torch.no_grad():
        got = attention_with_kv_prompts(base, x, kv)
        torch.testing.assert_close(got, reference_kv_attention(base, x, kv.key_prompt, value))
        assert got.shape == x.shape  # queries untouched: same sequence length


def test_kv_attention_uses_fused_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=3), 5)
    model(torch.randn(1, 3, 32, 32))
    # 3 blocks; keys = 1 CLS + 2 prompts + 16 patches + 3 key-value prompts
    assert calls == [torch.Size([1, 4, 22, 16])] * 3


def _perturb_prompt_outputs(model: e2vpt.PromptedViT, layer: int, tokens: int):
    npt = model.num_prefix_tokens

    def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, npt : npt + tokens] = torch.randn_like(output[:, npt : npt + tokens]) * 10
        return output

    return model.backbone.blocks[layer].register_forward_hook(hook)


def test_vpt_deep_replaces_previous_prompt_outputs(images: torch.Tensor) -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.VPTConfig(tokens=3, deep=True), 5).eval()
    with torch.no_grad():
        clean = model(images)
        handle = _perturb_prompt_outputs(model, layer=0, tokens=3)
        perturbed = model(images)
        handle.remove()
    torch.testing.assert_close(perturbed, clean, rtol=0, atol=0)


def test_vpt_shallow_keeps_prompt_outputs(images: torch.Tensor) -> None:
    """The control: without replacement the same perturbation does change the result."""
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.VPTConfig(tokens=3), 5).eval()
    with torch.no_grad():
        clean = model(images)
        handle = _perturb_prompt_outputs(model, layer=0, tokens=3)
        perturbed = model(images)
        handle.remove()
    assert not torch.allclose(perturbed, clean, atol=1e-4)


def test_prompts_sit_after_prefix_tokens_and_positional_embedding(images: torch.Tensor) -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.VPTConfig(tokens=2), 5).eval()
    seen = {}
    model.backbone.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault("x", args[0].detach().clone())
    )
    with torch.no_grad():
        model(images)
    x = seen["x"]
    assert x.shape[1] == 1 + 2 + 16
    torch.testing.assert_close(x[:, 1:3], model.visual_prompts.prompts[0].expand(4, -1, -1))
    bb = model.backbone
    with torch.no_grad():
        embedded = bb._pos_embed(bb.patch_embed(images))
    torch.testing.assert_close(x[:, :1], embedded[:, :1])
    torch.testing.assert_close(x[:, 3:], embedded[:, 1:])


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_frozen_backbone_stays_in_eval_mode(name: str, images: torch.Tensor) -> None:
    backbone = make_tiny_vit(drop_rate=0.5, drop_path_rate=0.5, attn_drop_rate=0.5)
    config = ALL_CONFIGS[name]()
    if hasattr(config, "dropout"):
        config.dropout = 0.0
    if hasattr(config, "visual_dropout"):
        config.visual_dropout = 0.0
    model = e2vpt.wrap(backbone, config, 5).train()
    with torch.no_grad():
        first, second = model(images), model(images)
    if name == "full":  # the baseline that does train the backbone: dropout is live
        assert model.backbone.training
        assert not torch.allclose(first, second)
    else:
        assert not model.backbone.training
        assert not any(m.training for m in model.backbone.modules())
        torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_prompt_dropout_is_active_in_train_mode(images: torch.Tensor) -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.VPTConfig(tokens=3, deep=True, dropout=0.5), 5)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(images), model(images))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images))


def test_parameter_counts_match_closed_forms() -> None:
    L, d, C, p, m = 3, 64, 7, 4, 2
    head = d * C + C

    def count(config: e2vpt.MethodConfig) -> e2vpt.ParameterCount:
        return e2vpt.count_parameters(e2vpt.wrap(make_tiny_vit(), config, C))

    assert count(e2vpt.LinearConfig()).tunable == d * C + C
    assert count(e2vpt.VPTConfig(tokens=p)).tunable == p * d + head
    assert count(e2vpt.VPTConfig(tokens=p, deep=True)).tunable == L * p * d + head
    masks = p + p * 16  # token mask γ and segment mask μ, trained (the official default)
    shared = count(e2vpt.E2VPTConfig(visual_tokens=p, kv_tokens=m))
    assert shared.tunable == L * p * d + L * m * d + masks + head
    assert shared.tunable_without_head == L * p * d + L * m * d + masks
    separate = count(e2vpt.E2VPTConfig(visual_tokens=p, kv_tokens=m, shared_kv=False))
    assert separate.tunable == L * p * d + 2 * L * m * d + masks + head
    fixed = count(e2vpt.E2VPTConfig(visual_tokens=p, kv_tokens=m, train_masks=False))
    assert fixed.tunable == L * p * d + L * m * d + head
    backbone = sum(
        q.numel() for n, q in make_tiny_vit().named_parameters() if not n.startswith("head.")
    )
    assert shared.backbone == backbone
    assert shared.percent == pytest.approx(100 * shared.tunable / backbone)
    assert count(e2vpt.FullConfig()).tunable == backbone + head
    biases = sum(
        q.numel()
        for n, q in make_tiny_vit().named_parameters()
        if n.endswith(".bias") and not n.startswith("head.")
    )
    assert count(e2vpt.BiasConfig()).tunable == biases + head


def test_fixed_masks_are_buffers_not_tunable() -> None:
    config = e2vpt.E2VPTConfig(visual_tokens=4, kv_tokens=2, train_masks=False)
    model = e2vpt.wrap(make_tiny_vit(), config, 5)
    names = {n for n, _ in model.named_parameters()}
    assert not any("mask" in n for n in names)
    prompts = model.visual_prompts
    assert prompts.token_mask.shape == (4,)
    assert prompts.segment_mask.shape == (4, 16)
    # masks multiply the prompts once pruning switches them on
    prompts.eval()  # no prompt dropout
    prompts.masks_active = True
    prompts.token_mask[1] = 0
    prompts.segment_mask[0, :8] = 0
    out = prompts(0, 1)[0]
    assert torch.all(out[1] == 0)
    # interleaved segments (the official layout): dimension j belongs to segment j mod 16
    in_dropped = (torch.arange(64) % 16) < 8
    assert torch.all(out[0, in_dropped] == 0) and torch.all(out[0, ~in_dropped] != 0)


def test_trained_masks_are_tunable_and_multiply_the_prompts() -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=4, kv_tokens=2), 5)
    prompts = model.visual_prompts
    assert prompts.masks_trained and prompts.masks_active
    assert prompts.token_mask.requires_grad and prompts.segment_mask.requires_grad
    prompts.eval()
    with torch.no_grad():
        prompts.token_mask[2] = 0.5
    assert torch.equal(prompts(1, 1)[0, 2], 0.5 * prompts.prompts[1, 2].detach())


def test_prompt_init_follows_the_papers() -> None:
    assert prompt_init_bound((16, 16), 768) == pytest.approx(0.0625)
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=50, kv_tokens=50), 5)
    bound = prompt_init_bound((8, 8), 64)
    prompts = model.visual_prompts.prompts
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    kv = model.kv_prompts[0].key_prompt  # (heads, m, head_dim) = (4, 50, 16)
    assert kv.shape == (4, 50, 16)
    # the official init: Kaiming-uniform with fan-in m·head_dim, bound √(6 / (m·head_dim))
    kaiming_bound = (6.0 / (50 * 16)) ** 0.5
    assert kv.abs().max() <= kaiming_bound and kv.abs().max() > 0.9 * kaiming_bound
    width = e2vpt.E2VPTConfig(visual_tokens=1, kv_tokens=50, kv_init="width")
    kv = e2vpt.wrap(make_tiny_vit(), width, 5).kv_prompts[0].key_prompt
    width_bound = (6.0 / 64) ** 0.5  # fan-in = the width of a prompt token, whatever m
    assert kv.abs().max() <= width_bound and kv.abs().max() > 0.9 * width_bound


EXPECTED_TRAINABLE = {
    "linear": lambda n: n.startswith("head."),
    "full": lambda n: True,
    "bias": lambda n: n.startswith("head.") or n.endswith(".bias"),
    "vpt-shallow": lambda n: n.startswith("head.") or n == "visual_prompts.prompts",
    "vpt-deep": lambda n: n.startswith("head.") or n == "visual_prompts.prompts",
    "e2vpt": lambda n: (
        n.startswith("head.")
        or n.startswith("visual_prompts.")  # prompts and the trained masks
        or re.fullmatch(r"kv_prompts\.\d+\.key_prompt", n) is not None
    ),
    "e2vpt-separate": lambda n: (
        n.startswith("head.") or n.startswith("visual_prompts.") or n.startswith("kv_prompts.")
    ),
}


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_one_step_changes_only_tunable_parameters(name: str) -> None:
    from e2vpt.data import load_builtin

    task = load_builtin("builtin:position", image_size=32)
    x = (task.splits["train"].images[:16].float() / 255 - 0.5) / 0.25
    y = task.splits["train"].labels[:16]
    model = e2vpt.wrap(make_tiny_vit(), ALL_CONFIGS[name](), task.num_classes)
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if EXPECTED_TRAINABLE[name](n)}
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    optimizer = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.5)
    model.train()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= trainable
    assert {"head.weight", "head.bias"} <= changed
    if name.startswith(("vpt", "e2vpt")):
        assert "visual_prompts.prompts" in changed
    if name.startswith("e2vpt"):
        assert "kv_prompts.2.key_prompt" in changed


def test_invalid_configs_are_clear_errors() -> None:
    with pytest.raises(e2vpt.ConfigError, match="unknown method 'vpt-deeep'"):
        e2vpt.get_method("vpt-deeep")
    with pytest.raises(e2vpt.ConfigError, match="must be >= 0"):
        e2vpt.wrap(make_tiny_vit(), e2vpt.VPTConfig(tokens=-1), 5)
    with pytest.raises(e2vpt.ConfigError, match="no option"):
        e2vpt.method_config("e2vpt", {"tokens": 3})
    with pytest.raises(e2vpt.ConfigError, match="always has deep=True"):
        e2vpt.method_config("vpt-deep", {"deep": False})
    with pytest.raises(e2vpt.ConfigError, match="num_classes"):
        e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 0)
    with pytest.raises(e2vpt.ConfigError, match="backbone class Linear .* is not supported"):
        e2vpt.wrap(torch.nn.Linear(3, 3), e2vpt.LinearConfig(), 5)
    with pytest.raises(e2vpt.ConfigError, match="dropout"):
        e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_dropout=1.5), 5)


def test_vpt_config_defaults_follow_the_table() -> None:
    # the official VPT code trains shallow and deep prompts without dropout
    assert e2vpt.VPTConfig(tokens=5).dropout == 0.0
    assert e2vpt.VPTConfig(tokens=5, deep=True).dropout == 0.0
    assert e2vpt.method_config("vpt-deep").method_name == "vpt-deep"
    assert e2vpt.list_methods()[:12] == [  # the papers' table order
        "full",
        "linear",
        "partial",
        "mlp",
        "sidetune",
        "bias",
        "adapter",
        "lora",
        "peft",
        "vpt-shallow",
        "vpt-deep",
        "e2vpt",
    ]
