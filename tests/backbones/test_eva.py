"""The Eva family (timm's ``Eva``: DINOv3, EVA-02, Perception Encoder, RoPE ViTs) against
timm's own forward, on tiny random-init models with the options those backbones use;
and their released weight files, written by the tests in those layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from timm.models.eva import Eva

import e2vpt
from e2vpt.backbones import load_weights_file
from e2vpt.families import PromptedEva
from e2vpt.layers.attention import block_forward
from tests.conftest import TINY_EVA, make_tiny_eva

BASE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_KWARGS = dict(BASE, ref_feat_shape=(4, 4))
# the options of the released models, each on the tiny size
VARIANTS: dict[str, dict[str, Any]] = {
    "dinov3-token": {},  # conftest's: registers, rope, layer scale, SwiGLU, q/v biases
    "dinov3-avg": dict(qkv_bias=False, swiglu_mlp=False, scale_mlp=False, global_pool="avg"),
    "eva02": dict(
        BASE, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4)
    ),
    "eva02-split-qkv": dict(
        BASE,
        qkv_fused=False,
        swiglu_mlp=True,
        scale_mlp=True,
        scale_attn_inner=True,
        use_rot_pos_emb=True,
    ),
    "pe": dict(
        BASE,
        global_pool="map",
        attn_type="rope",
        use_pre_transformer_norm=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(4, 4),
        rope_grid_offset=1.0,
        rope_grid_indexing="xy",
        attn_pool_num_heads=2,
    ),
    "rope-mixed": dict(
        BASE,
        attn_type="rope",
        init_values=0.1,
        global_pool="token",
        use_abs_pos_emb=False,
        use_rot_pos_emb=True,
        rope_grid_indexing="xy",
        rope_temperature=10.0,
        rope_type="mixed",
    ),
    "post-norm": dict(BASE, use_post_norm=True, global_pool="token", use_rot_pos_emb=True),
    "grouped-kv": dict(
        BASE,
        num_heads=4,
        num_kv_heads=2,
        attn_type="rope",
        qkv_fused=False,
        use_rot_pos_emb=True,
        rope_type="dinov3",
        use_abs_pos_emb=False,
        global_pool="token",
        init_values=1.0,
        attn_only_layer_scale=True,
    ),
}


def variant(name: str) -> Eva:
    options = VARIANTS[name]
    backbone = make_tiny_eva(**options) if "img_size" not in options else tiny(options)
    if name == "pe":  # and timm's explicit softmax path (TIMM_FUSED_ATTN=0)
        for block in backbone.blocks:
            block.attn.fused_attn = False
    return backbone


def tiny(options: dict[str, Any]) -> Eva:
    torch.manual_seed(0)
    model = Eva(num_classes=10, **options).eval()
    with torch.no_grad():  # off timm's zero init, so every bias counts
        for name, param in model.named_parameters():
            if name.endswith(("bias", "_bias")):
                param.normal_(std=0.2)
    model.e2vpt_backbone_name = "tiny_test_eva"
    return model


def timm_pre_logits(backbone: Eva, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def perturbed(model: e2vpt.PromptedModel) -> e2vpt.PromptedModel:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_linear_and_zero_prompts_read_timms_pre_logits(name: str, images: torch.Tensor) -> None:
    backbone = variant(name)
    want = timm_pre_logits(backbone, images)
    for config in (
        e2vpt.LinearConfig(),
        e2vpt.VPTConfig(tokens=0, deep=True),
        e2vpt.E2VPTConfig(visual_tokens=0, kv_tokens=0),
    ):
        model = e2vpt.wrap(backbone, config, 5).eval()
        assert model.family == "eva"
        with torch.no_grad():
            got = model.forward_pre_logits(images)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prompts_without_influence_leave_timms_tokens(name: str, images: torch.Tensor) -> None:
    """With every query blind to the prompts (visual and key-value), the class, register
    and patch tokens are timm's: the rotary embedding reaches the patches where timm
    puts it, behind the prompts, and the prompts carry no position of their own."""
    backbone = variant(name)
    model = perturbed(e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=2), 5))
    bb, npt, p = backbone, backbone.num_prefix_tokens, 3

    def run(blind: bool) -> torch.Tensor:
        x, positions = PromptedEva.embed(bb, images)
        for index, block in enumerate(bb.blocks):
            x = model._insert_prompts(x, index)
            keys = torch.ones(x.shape[0], 1, 1, x.shape[1] + 2, dtype=torch.bool)
            keys[..., npt : npt + p] = keys[..., -2:] = not blind
            rope = PromptedEva.rotary(bb, positions, index, npt + p)
            kv = model.kv_prompts[index].keys_values()
            x = block_forward(block, x, kv, keys, rope=rope)
        return bb.norm(torch.cat([x[:, :npt], x[:, npt + p :]], dim=1))

    with torch.no_grad():
        want = bb.forward_features(images)
        torch.testing.assert_close(run(blind=True), want, rtol=0, atol=1e-5)
        seen = run(blind=False)
        assert (seen - want).abs().max() > 1e-3  # the prompts do act when they are seen
        tokens = model.forward_features(images)  # which is the model's own forward
        torch.testing.assert_close(torch.cat([tokens[:, :npt], tokens[:, npt + p :]], 1), seen)


@pytest.mark.parametrize("name", ["dinov3-token", "rope-mixed", "grouped-kv"])
def test_the_class_token_shortcut_equals_every_token(name: str, images: torch.Tensor) -> None:
    model = perturbed(e2vpt.wrap(variant(name), e2vpt.E2VPTConfig(visual_tokens=3), 5))
    with torch.no_grad():
        full = model.forward_features(images)[:, :1]
        torch.testing.assert_close(model.forward_class_token(images), full, rtol=0, atol=1e-5)


# (conftest's DINOv3-style model goes through every method's contract tests)
@pytest.mark.parametrize("name", ["eva02-split-qkv", "pe", "rope-mixed", "grouped-kv"])
def test_e2vpt_learns_only_its_prompts_and_head(name: str, images: torch.Tensor) -> None:
    model = e2vpt.wrap(variant(name), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=2), 5)
    model.train()
    F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("kv_prompts.") for n in grads)
    heads = model.backbone.blocks[0].attn.num_heads  # grouped-kv: prompts per query head
    assert model.kv_prompts[0].key_prompt.shape[0] == heads


def test_a_pruned_eva_model_equals_one_built_with_the_surviving_prompts(
    images: torch.Tensor,
) -> None:
    """Pruned tokens leave the sequence: the image tokens, and so their rotation, start
    earlier, exactly as in a model built with fewer prompts."""
    config = e2vpt.E2VPTConfig(visual_tokens=4, kv_tokens=2, train_masks=False)
    model = perturbed(e2vpt.wrap(make_tiny_eva(), config, 5))
    kept = [0, 2, 3]
    survivors = model.visual_prompts.prompts.detach()[:, kept].clone()
    model.visual_prompts.prune(torch.tensor(kept), torch.ones(len(kept), 16))
    smaller = e2vpt.E2VPTConfig(visual_tokens=len(kept), kv_tokens=2, train_masks=False)
    fresh = e2vpt.wrap(make_tiny_eva(), smaller, 5).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("visual_prompts.")}
    fresh.load_state_dict(state, strict=False)
    with torch.no_grad():
        fresh.visual_prompts.prompts.copy_(survivors)
        torch.testing.assert_close(model(images), fresh(images), rtol=0, atol=1e-6)


def test_a_dynamic_size_backbone_rotates_at_the_image_size() -> None:
    backbone = make_tiny_eva()  # DINOv3: dynamic image size, rotary grid from the input
    images = torch.randn(2, 3, 48, 40)
    model = e2vpt.wrap(backbone, e2vpt.LinearConfig(), 5).eval()
    with torch.no_grad():
        got = model.forward_pre_logits(images)
    torch.testing.assert_close(got, timm_pre_logits(backbone, images), rtol=0, atol=1e-5)


def test_bitfit_and_lora_reach_evas_own_biases_and_projections() -> None:
    bias = e2vpt.wrap(variant("dinov3-token"), e2vpt.BiasConfig(), 5)
    tuned = {n for n, p in bias.named_parameters() if p.requires_grad}
    assert {"backbone.blocks.0.attn.q_bias", "backbone.blocks.0.attn.v_bias"} <= tuned
    lora = e2vpt.wrap(variant("eva02-split-qkv"), e2vpt.LoRAConfig(rank=2), 5)
    tuned = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any(".q_proj.lora_A" in n for n in tuned) and any(".v_proj.lora_B" in n for n in tuned)


# -- the released weight files, in the layouts timm's eva.checkpoint_filter_fn maps ------
def same_features(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.forward_features(x), b.eval().forward_features(x))


def dinov3_original(model: Eva) -> dict[str, torch.Tensor]:
    """Meta's DINOv3 .pth: storage tokens, ls1/ls2.gamma, one qkv bias (k part zero) with
    its mask, the rope periods and the pretraining mask token."""
    state: dict[str, torch.Tensor] = {"mask_token": torch.zeros(1, model.embed_dim)}
    for key, value in model.state_dict().items():
        key = key.replace("reg_token", "storage_tokens")
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if key.endswith(".q_bias"):
            attn = key.removesuffix(".q_bias")
            v_bias = model.get_parameter(f"{attn}.v_bias")
            state[f"{attn}.qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
            state[f"{attn}.qkv.bias_mask"] = torch.ones(3 * value.numel())
            continue
        if not key.endswith(".v_bias"):
            state[key] = value
    if not any(k.endswith("qkv.bias") for k in state):  # the S/16 file: zero biases
        for i in range(len(model.blocks)):
            state[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * model.embed_dim)
    state["rope_embed.periods"] = torch.ones(model.embed_dim // model.blocks[0].attn.num_heads)
    return state


def eva02_original(model: Eva) -> dict[str, Any]:
    """BAAI's EVA-02 MIM .pt: {"module": ...}, q_bias/v_bias beside split projections,
    mlp.w1/w2/w3 and ffn_ln, the encoder's final norm (timm's fc_norm), the MIM head."""
    names = [
        ("q_proj.bias", "q_bias"),
        ("v_proj.bias", "v_bias"),
        ("mlp.fc1_g", "mlp.w1"),
        ("mlp.fc1_x", "mlp.w2"),
        ("mlp.fc2", "mlp.w3"),
        ("mlp.norm", "mlp.ffn_ln"),
        ("fc_norm.", "norm."),
    ]
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        for ours, theirs in names:
            key = key.replace(ours, theirs)
        state[key] = value
    state["mask_token"] = torch.zeros(1, 1, model.embed_dim)
    state["lm_head.weight"] = torch.zeros(8, model.embed_dim)
    state["lm_head.bias"] = torch.zeros(8)
    state["rope.freqs_cos"] = torch.zeros(16, 8)  # a fixed buffer: timm computes its own
    return {"module": state}


def pe_original(model: Eva) -> dict[str, torch.Tensor]:
    """Meta's Perception Encoder (open_clip layout, ``visual.`` prefix): conv1, class and
    positional embeddings without batch dims, resblocks with ln_/ls_/in_proj_/out_proj,
    the attention pool's probe and packed in_proj, the projection as ``proj``."""
    names = [
        ("patch_embed.proj", "conv1"),
        ("norm_pre", "ln_pre"),
        ("blocks.", "transformer.resblocks."),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("gamma_1", "ls_1.gamma"),
        ("gamma_2", "ls_2.gamma"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
        ("attn_pool.latent", "attn_pool.probe"),
        ("attn_pool.proj", "attn_pool.attn.out_proj"),
        ("attn_pool.norm", "attn_pool.layernorm"),
    ]
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        if key.startswith(("attn_pool.q.", "attn_pool.kv.", "head.")):
            continue
        key = "ln_post." + key[5:] if key.startswith("norm.") else key
        for ours, theirs in names:
            key = key.replace(ours, theirs)
        state[key] = value
    state["class_embedding"] = state.pop("cls_token")[0, 0]
    state["positional_embedding"] = state.pop("pos_embed")[0]
    for part in ("weight", "bias"):
        packed = torch.cat([own[f"attn_pool.q.{part}"], own[f"attn_pool.kv.{part}"]])
        state[f"attn_pool.attn.in_proj_{part}"] = packed
    state["proj"] = own["head.weight"].T
    return {f"visual.{k}": v for k, v in state.items()}


RELEASED = {
    # timm name, its small options, how the authors' file lays it out
    "dinov3": ("vit_small_patch16_dinov3", dict(BASE, qkv_bias=True), dinov3_original),
    "dinov3-no-bias": ("vit_small_patch16_dinov3", BASE, dinov3_original),
    "eva02": ("eva02_large_patch14_448", TINY_KWARGS, eva02_original),
    "pe": ("vit_pe_core_tiny_patch16_384", dict(TINY_KWARGS, attn_pool_num_heads=2), pe_original),
}


@pytest.mark.parametrize("release", list(RELEASED))
def test_released_weight_files_load_offline(
    release: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, options, layout = RELEASED[release]
    torch.manual_seed(1)
    source = e2vpt.create_backbone(name, pretrained=False, **options)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(std=0.1)
    path = tmp_path / f"{release}.pth"
    torch.save(layout(source), path)
    loaded = e2vpt.create_backbone(name, weights=path, **options)
    same_features(source, loaded)
    assert capsys.readouterr().out == ""  # timm's converter prints; the library never does
    target = e2vpt.create_backbone(name, pretrained=False, **options)
    load_weights_file(target, path)  # onto a model made elsewhere, as `e2vpt.load` does
    same_features(source, target)


def test_tiny_eva_is_dinov3_shaped() -> None:
    backbone = make_tiny_eva()
    assert backbone.num_prefix_tokens == 1 + TINY_EVA["num_reg_tokens"]
    assert backbone.pos_embed is None and backbone.rope is not None
