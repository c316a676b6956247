"""The original checkpoint formats (SPEC §2), each written by the test in that exact
layout from a small timm model, loaded back through e2vpt with identical outputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import e2vpt
from e2vpt.backbones import BackboneError, load_weights_file
from tests.conftest import make_tiny_swin, make_tiny_vit

TINY_TIMM_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0)


def write_jax_npz(model: nn.Module, path: Path, head_classes: int = 21843) -> None:
    """Google's ViT .npz layout (big_vision / vit_jax): HWIO kernels, per-head q/k/v."""
    D = model.embed_dim
    H = model.blocks[0].attn.num_heads
    hd = D // H
    n = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    w: dict[str, np.ndarray] = {
        "embedding/kernel": n(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
        "embedding/bias": n(model.patch_embed.proj.bias),
        "cls": n(model.cls_token),
        "Transformer/posembed_input/pos_embedding": n(model.pos_embed),
        "Transformer/encoder_norm/scale": n(model.norm.weight),
        "Transformer/encoder_norm/bias": n(model.norm.bias),
        "pre_logits/kernel": np.zeros((D, D), np.float32),  # IN-21k files have one
        "pre_logits/bias": np.zeros((D,), np.float32),
        "head/kernel": np.zeros((D, head_classes), np.float32),
        "head/bias": np.zeros((head_classes,), np.float32),
    }
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"] = n(block.norm1.weight)
        w[p + "LayerNorm_0/bias"] = n(block.norm1.bias)
        w[p + "LayerNorm_2/scale"] = n(block.norm2.weight)
        w[p + "LayerNorm_2/bias"] = n(block.norm2.bias)
        for name, weight, bias in zip(
            ("query", "key", "value"),
            block.attn.qkv.weight.split(D),
            block.attn.qkv.bias.split(D),
            strict=True,
        ):
            w[mha + f"{name}/kernel"] = n(weight.T.reshape(D, H, hd))
            w[mha + f"{name}/bias"] = n(bias.reshape(H, hd))
        w[mha + "out/kernel"] = n(block.attn.proj.weight.reshape(D, H, hd).permute(1, 2, 0))
        w[mha + "out/bias"] = n(block.attn.proj.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = n(fc.weight.T)
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = n(fc.bias)
    np.savez(path, **w)


def write_swin_original(model: nn.Module, path: Path) -> None:
    """Microsoft's Swin .pth: {"model": ...}, patch merging at the end of a stage, a plain
    `head`, and the relative-position index and shifted-window masks stored as buffers."""
    state = {}
    for key, value in model.state_dict().items():
        key = re.sub(
            r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key
        )
        state[key.replace("head.fc.", "head.")] = value
    for s, stage in enumerate(model.layers):
        for b, block in enumerate(stage.blocks):
            prefix = f"layers.{s}.blocks.{b}."
            state[prefix + "attn.relative_position_index"] = block.attn.relative_position_index
            if block.attn_mask is not None:
                state[prefix + "attn_mask"] = block.attn_mask
    state["head.weight"] = torch.zeros(21841, model.num_features)
    state["head.bias"] = torch.zeros(21841)
    torch.save({"model": state}, path)


def same_features(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.forward_features(x), b.eval().forward_features(x))


def test_jax_npz_loads_through_timms_converter(tmp_path: Path) -> None:
    source = make_tiny_vit(seed=1)
    path = tmp_path / "ViT-T_8.npz"
    write_jax_npz(source, path)
    target = e2vpt.create_backbone("vit_tiny_patch16_224", weights=path, **TINY_TIMM_VIT)
    same_features(source, target)


def test_jax_npz_errors_list_what_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "ViT-T_8.npz"
    write_jax_npz(make_tiny_vit(depth=2), path)
    with pytest.raises(BackboneError, match=r"missing keys Transformer/encoderblock_\[2\]"):
        load_weights_file(make_tiny_vit(depth=3), path)
    with pytest.raises(BackboneError, match=r"unexpected keys Transformer/encoderblock_\[1\]"):
        load_weights_file(make_tiny_vit(depth=1), path)
    with pytest.raises(BackboneError, match="width 64 in the file vs 32"):
        load_weights_file(make_tiny_vit(depth=2, embed_dim=32), path)
    with pytest.raises(BackboneError, match="needs a ViT backbone"):
        load_weights_file(make_tiny_swin(), path)
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BackboneError, match="could not read"):
        load_weights_file(make_tiny_vit(), tmp_path / "corrupt.npz")
    in1k = tmp_path / "ViT-T_8-224.npz"
    write_jax_npz(make_tiny_vit(depth=3), in1k, head_classes=1000)
    with pytest.warns(UserWarning, match="fine-tuned on ImageNet-1k"):
        load_weights_file(make_tiny_vit(depth=3), in1k)


def test_mae_checkpoint_and_its_pooling(tmp_path: Path) -> None:
    source = make_tiny_vit(seed=2)
    encoder = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    decoder = {  # full MAE pretraining checkpoints carry the decoder as well
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.zeros(32, 64),
        "decoder_blocks.0.norm1.weight": torch.ones(32),
        "decoder_pred.weight": torch.zeros(192, 32),
    }
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": {**encoder, **decoder}}, path)
    backbone = e2vpt.create_backbone("vit_tiny_patch16_224", weights=path, **TINY_TIMM_VIT)
    same_features(source, backbone)
    model = e2vpt.wrap(backbone, e2vpt.LinearConfig(), 5)
    assert model.global_pool == "avg-fc-norm"  # SPEC §1.4: MAE's convention
    # the final norm normalises the mean of the un-normed patch tokens (the backbone's
    # modules stay where they are)
    assert model.norm_after_pool and isinstance(model.backbone.fc_norm, nn.Identity)
    bb = model.backbone
    x = torch.randn(2, 3, *bb.patch_embed.img_size)
    with torch.no_grad():
        tokens = bb.blocks(bb.norm_pre(bb._pos_embed(bb.patch_embed(x))))
        expected = bb.norm(tokens[:, bb.num_prefix_tokens :].mean(dim=1))
        torch.testing.assert_close(model.eval().forward_pre_logits(x), expected)
    hub_name = e2vpt.create_backbone("vit_base_patch16_224.mae", pretrained=False, **TINY_TIMM_VIT)
    assert e2vpt.wrap(hub_name, e2vpt.LinearConfig(), 5).global_pool == "avg-fc-norm"


@pytest.mark.parametrize("kind", ["linear", "pretrain"])
def test_moco_v3_checkpoints(kind: str, tmp_path: Path) -> None:
    source = make_tiny_vit(seed=3)
    encoder = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    if kind == "linear":  # linear-vit-b-300ep.pth.tar: DDP prefix, ImageNet-1k head
        state = {f"module.{k}": v for k, v in encoder.items()}
        state["module.head.weight"] = torch.zeros(1000, 64)
        state["module.head.bias"] = torch.zeros(1000)
    else:  # vit-b-300ep.pth.tar: base and momentum encoders, projector heads, predictor
        state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
        state.update({f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()})
        state["module.base_encoder.head.0.weight"] = torch.zeros(128, 64)
        state["module.predictor.0.weight"] = torch.zeros(128, 128)
    path = tmp_path / f"{kind}-vit-t-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_tiny", "state_dict": state, "best_acc1": 1.0}, path)
    backbone = e2vpt.create_backbone("vit_tiny_patch16_224", weights=path, **TINY_TIMM_VIT)
    same_features(source, backbone)
    assert e2vpt.wrap(backbone, e2vpt.LinearConfig(), 5).global_pool == "token"


def test_swin_original_checkpoint(tmp_path: Path) -> None:
    source = make_tiny_swin(seed=4)
    path = tmp_path / "swin_tiny_patch4_window4_32_22k.pth"
    write_swin_original(source, path)
    target = make_tiny_swin(seed=5)
    load_weights_file(target, path)
    same_features(source, target)
    via_name = e2vpt.create_backbone(
        "swin_tiny_patch4_window7_224",
        weights=path,
        img_size=32,
        embed_dim=32,
        depths=(2, 2),
        num_heads=(2, 4),
        window_size=4,
    )
    same_features(source, via_name)


def test_checkpoints_for_another_architecture_are_refused(tmp_path: Path) -> None:
    swin = tmp_path / "swin.pth"
    write_swin_original(make_tiny_swin(), swin)
    with pytest.raises(BackboneError, match=r"does not fit VisionTransformer: missing keys \["):
        load_weights_file(make_tiny_vit(), swin)
    vit = tmp_path / "vit.pth"
    torch.save({"model": make_tiny_vit().state_dict()}, vit)
    with pytest.raises(BackboneError, match="SwinTransformer"):
        load_weights_file(make_tiny_swin(), vit)
    deeper = tmp_path / "deeper.pth"
    torch.save({"state_dict": make_tiny_vit(depth=4).state_dict()}, deeper)
    with pytest.raises(BackboneError, match=r"unexpected keys \['blocks.3"):
        load_weights_file(make_tiny_vit(depth=3), deeper)
    pickled = tmp_path / "arbitrary.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": Path("/etc")}, pickled)
    with pytest.raises(BackboneError, match="could not read"):
        load_weights_file(make_tiny_vit(), pickled)  # weights_only refuses the object
