"""Pretrained weights from the files their authors released, read offline.

Formats: Google's JAX ``ViT-*.npz``; MAE ``mae_pretrain_vit_*.pth``
(``ckpt["model"]``); MoCo v3 ``*.pth.tar`` (``state_dict``, ``module.`` prefix, and the
pretraining ones' ``base_encoder.``); Microsoft's Swin ``*.pth`` (``ckpt["model"]``,
downsampling at the end of a stage); the Eva family's releases (Meta's DINOv3 and
Perception Encoder, BAAI's EVA-02) and DeiT's; plain ``.pth`` / ``.safetensors`` state
dicts.
timm's own converters (``checkpoint_filter_fn``, ``load_pretrained`` for ``.npz``) do the
renaming; this module unwraps the containers, checks the result against the model and
turns every mismatch into an error that lists the keys. Nothing is unpickled beyond
tensors and plain containers (``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2vpt.errors import BackboneError
from e2vpt.state import diff_state

_NESTING_KEYS = ("model", "state_dict", "module")
# MAE's full pretraining checkpoints also hold the decoder; DINOv2-style detection in
# timm keys on `mask_token`, which MAE's decoder has too.
_MAE_DECODER = re.compile(r"^(decoder_|decoder\.|mask_token$)")


def read_torch_file(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        raise BackboneError(
            f"could not read weights file {path}: {err}. It must be a tensor-only .pth/.pth.tar "
            "(torch.save of a state dict), a .safetensors file or a JAX .npz"
        ) from err


def unwrap_state(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model's state dict inside a training checkpoint, with wrapper prefixes removed."""
    state = raw
    for _ in range(3):
        if not isinstance(state, Mapping):
            break
        nested = next(
            (state[k] for k in _NESTING_KEYS if k in state and isinstance(state[k], Mapping)),
            None,
        )
        if nested is None:
            break
        state = nested
    if not isinstance(state, Mapping) or not state:
        raise BackboneError(f"{path} holds no state dict (found {type(raw).__name__})")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneError(f"{path} holds no tensors")
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    if any(k.startswith("base_encoder.") for k in tensors):
        # MoCo v3 pretraining checkpoint: keep the base encoder; its head is the projector
        tensors = {
            k.removeprefix("base_encoder."): v
            for k, v in tensors.items()
            if k.startswith("base_encoder.") and not k.startswith("base_encoder.head.")
        }
    if any(k.startswith("decoder") for k in tensors):
        tensors = {k: v for k, v in tensors.items() if not _MAE_DECODER.match(k)}
    return tensors


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model family's own timm converter (renames, resampled position tables). What
    it prints (Eva's, on a DINOv3 file with zero qkv biases for a model without them) is
    its own debugging: the library prints nothing."""
    module = sys.modules.get(type(model).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is None:
        return state
    with contextlib.redirect_stdout(io.StringIO()):
        return dict(convert(state, model))


def load_state_file(model: nn.Module, path: Path) -> None:
    state = unwrap_state(read_torch_file(path), path)
    try:
        state = _timm_filter(model, state)
    except Exception as err:  # noqa: BLE001 - timm raises anything on foreign layouts
        raise BackboneError(
            f"weights file {path} could not be converted for {type(model).__name__}: {err}. "
            "Is it a checkpoint for another architecture?"
        ) from err
    own = model.state_dict()
    # the pretrained classifier is never used (e2vpt attaches a new head): drop it
    # when it does not fit, and never require it
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith("head.") and (k not in own or own[k].shape != v.shape))
    }
    diff = diff_state(own, state, may_be_missing=lambda key: key.startswith("head."))
    if diff:
        raise BackboneError(
            f"weights file {path} does not fit {type(model).__name__}: {diff.describe()}. "
            "Is it a checkpoint for another architecture (check --backbone)?"
        )
    model.load_state_dict(state, strict=False)


_JAX_PREFIXES = ("", "opt/target/", "params/")


def load_jax_npz(model: nn.Module, path: Path) -> None:
    """Google's ViT ``.npz`` through timm's loader, after checking the file's structure."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise BackboneError(
            f"{path} is a JAX ViT checkpoint; it needs a ViT backbone, not {type(model).__name__}"
        )
    try:
        with np.load(path) as npz:
            shapes = {k: npz[k].shape for k in npz.files}
    except Exception as err:  # noqa: BLE001 - zip/npy errors of all kinds
        raise BackboneError(f"could not read weights file {path}: {err}") from err
    prefix = next((p for p in _JAX_PREFIXES if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        raise BackboneError(
            f"{path} is not a JAX ViT checkpoint: it has no 'embedding/kernel' "
            f"(keys: {sorted(shapes)[:8]} …)"
        )
    block_pattern = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/")
    in_file = {int(m.group(1)) for k in shapes if (m := block_pattern.match(k))}
    depth = len(model.blocks)
    problems = []
    missing = sorted(set(range(depth)) - in_file)
    unexpected = sorted(in_file - set(range(depth)))
    if missing:
        problems.append(f"missing keys Transformer/encoderblock_{missing}")
    if unexpected:
        problems.append(f"unexpected keys Transformer/encoderblock_{unexpected}")
    width = shapes[f"{prefix}embedding/kernel"][-1]
    if width != model.embed_dim:
        problems.append(f"width {width} in the file vs {model.embed_dim} in the model")
    query = shapes.get(
        f"{prefix}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    )
    heads = model.blocks[0].attn.num_heads
    if query is not None and len(query) == 3 and query[1] != heads:
        problems.append(f"{query[1]} attention heads in the file vs {heads} in the model")
    if problems:
        raise BackboneError(
            f"weights file {path} does not fit {type(model).__name__} "
            f"(depth {depth}, width {model.embed_dim}): {'; '.join(problems)}. "
            "Is it a checkpoint for another architecture (check --backbone)?"
        )
    head = shapes.get(f"{prefix}head/bias")
    if head is not None and head[-1] == 1000:
        warnings.warn(
            f"{path.name} has a 1,000-class head: it is probably the IN-21k model fine-tuned "
            "on ImageNet-1k (e.g. ViT-B_16-224.npz); the papers use the IN-21k-only "
            "ViT-B_16.npz",
            stacklevel=3,
        )
    try:
        with torch.no_grad():
            model.load_pretrained(str(path))
    except (KeyError, RuntimeError, ValueError) as err:
        raise BackboneError(
            f"weights file {path} does not fit {type(model).__name__}: {err}. "
            "Is it a checkpoint for another architecture?"
        ) from err


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load any supported local weights file into ``model`` (a timm model) in place."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist; check the --weights path")
    if path.suffix == ".npz":
        load_jax_npz(model, path)
    else:
        load_state_file(model, path)


def looks_like_mae(name: str, weights: str | Path | None) -> bool:
    """MAE checkpoints are plain ViT state dicts: only the name tells them apart."""
    tag = name.split(".", 1)[1] if "." in name else ""
    file_name = Path(weights).name.lower() if weights is not None else ""
    return "mae" in tag.split("_") or file_name.startswith("mae_")
