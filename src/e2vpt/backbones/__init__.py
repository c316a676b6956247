"""Backbone creation by name: timm hub names, the bundled demo ViT, local weight files."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from e2vpt.backbones.demo import DEMO_BACKBONE, demo_vit_cifar10  # noqa: F401 (registers)
from e2vpt.methods.base import ConfigError
from e2vpt.state import diff_state

ALIASES = {"demo-vit-cifar10": DEMO_BACKBONE, "demo": DEMO_BACKBONE}


class BackboneError(RuntimeError):
    """A backbone could not be created or its weights could not be loaded."""


def canonical_name(name: str) -> str:
    return ALIASES.get(name.strip(), name.strip())


def _check_known(name: str) -> None:
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return
    candidates = timm.list_models()
    close = difflib.get_close_matches(arch, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown backbone {name!r}.{hint} Use a timm model name (see timm.list_models()), "
        f"e.g. 'vit_base_patch16_224.augreg_in21k', or the bundled {DEMO_BACKBONE!r}"
    )


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a local ``.safetensors`` / ``.pth`` state dict or a Google JAX ``.npz``.

    Never unpickles arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist; check the --weights path")
    if path.suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise BackboneError(f"{type(model).__name__} cannot load JAX .npz weights")
        model.load_pretrained(str(path))
        return
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        raise BackboneError(f"could not read weights file {path}: {err}") from err
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    ignore_head = {
        k for k in state if k.startswith("head.") and k in own and own[k].shape != state[k].shape
    }
    state = {k: v for k, v in state.items() if k not in ignore_head}
    diff = diff_state(own, state, may_be_missing=lambda key: key.startswith("head."))
    if diff:
        raise BackboneError(
            f"weights file {path} does not fit {type(model).__name__}: {diff.describe()}. "
            "Is it a checkpoint for another architecture?"
        )
    model.load_state_dict(state, strict=False)


def create_backbone(
    name: str = DEMO_BACKBONE,
    pretrained: bool = True,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a backbone by name, with its pretrained weights (hub, bundled or ``weights``)."""
    name = canonical_name(name)
    _check_known(name)
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, **kwargs)
    except Exception as err:  # noqa: BLE001 - hub, network and config errors alike
        if weights is None and pretrained:
            raise BackboneError(
                f"could not get pretrained weights for {name!r} ({err}). Without network "
                f"access, pass a local file with --weights PATH (or weights=...), or use the "
                f"bundled {DEMO_BACKBONE!r}"
            ) from err
        raise BackboneError(f"could not create {name!r}: {err}") from err
    if weights is not None:
        load_weights_file(model, weights)
    model.e2vpt_backbone_name = name
    model.e2vpt_backbone_weights = str(weights) if weights is not None else None
    return model


__all__ = ["DEMO_BACKBONE", "BackboneError", "create_backbone", "load_weights_file"]
