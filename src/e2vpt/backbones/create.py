"""Backbone creation by name: timm hub names, the bundled demo ViT, local weight files."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from e2vpt.backbones.demo import demo_vit_cifar10  # noqa: F401 (registers it with timm)
from e2vpt.backbones.hub import hub_overlay
from e2vpt.backbones.names import DEMO_BACKBONE, canonical_name, check_weights_file
from e2vpt.backbones.weight_files import BackboneError, load_weights_file, looks_like_mae
from e2vpt.errors import ConfigError


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


def check_supported(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse a backbone no family wraps before its weights are fetched: its class is
    read from the architecture built on the meta device (no memory, no download)."""
    from e2vpt.families import family_of

    try:
        with torch.device("meta"):
            skeleton = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - the real creation reports what is wrong
        return
    family_of(skeleton)


def create_backbone(
    name: str = DEMO_BACKBONE,
    pretrained: bool = True,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a backbone by name, with its pretrained weights (hub, bundled or ``weights``)."""
    from e2vpt.families import family_of

    name = canonical_name(name)
    _check_known(name)
    fetch = pretrained and weights is None
    if fetch:
        check_supported(name, kwargs)
    try:
        # a hub that cannot be reached: the cached file, or an error now (no retries)
        overlay = hub_overlay(name, kwargs.get("cache_dir")) if fetch else None
        if overlay is not None:
            overlay = {**kwargs.get("pretrained_cfg_overlay", {}), **overlay}
            kwargs = {**kwargs, "pretrained_cfg_overlay": overlay}
        model = timm.create_model(name, pretrained=fetch, **kwargs)
    except Exception as err:  # noqa: BLE001 - hub, network and config errors alike
        if fetch:
            raise BackboneError(
                f"could not get pretrained weights for {name!r} ({err}). Without network "
                f"access, pass a local weights file with `weights`, or use the bundled "
                f"{DEMO_BACKBONE!r}"
            ) from err
        raise BackboneError(f"could not create {name!r}: {err}") from err
    family_of(model)  # a class no family wraps: one line, before a weights file is read
    if weights is not None:
        load_weights_file(model, weights)
    model.e2vpt_backbone_name = name
    # MAE features are the mean of the patch tokens, normalised after pooling
    model.e2vpt_pool_convention = "avg-fc-norm" if looks_like_mae(name, weights) else None
    # stored absolute in checkpoints, so a run can be evaluated from any folder
    model.e2vpt_backbone_weights = os.path.abspath(weights) if weights is not None else None
    return model


def backbone_for_run(meta: dict[str, Any], weights: str | None, run_dir: Path) -> nn.Module | None:
    """The backbone to load a run onto: from ``weights`` when given; else None (the
    checkpoint rebuilds the one it names), once the weights path it stored is checked to
    exist here, so a run made elsewhere is a one-line error before anything loads."""
    if weights is None:
        check_weights_file(meta.get("backbone_weights"), trained_in=run_dir)
        return None
    check_weights_file(weights)
    return create_backbone(meta["backbone"], weights=weights)
