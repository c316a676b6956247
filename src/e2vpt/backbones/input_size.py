"""A backbone's input size from its pretrained config, without loading any weights.

A task is decoded at the size its backbone expects, often before (or without) the
backbone itself being built: a sweep or a comparison decodes the task once for many runs.
Building a whole pretrained backbone to read one number costs a download or a weights
file read; timm's registered pretrained config already holds it."""

from __future__ import annotations

import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg

from e2vpt.backbones import canonical_name, create_backbone


def backbone_input_size(name: str) -> int:
    """The square input size (pixels) of backbone ``name``, as ``data_settings`` reads it
    from a built one. A local weights file does not change it: the size belongs to the
    architecture's pretrained config, which loading a file leaves as it is."""
    name = canonical_name(name)
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # a known architecture with an unknown tag: creating it says so
        cfg = None
    if cfg is not None and cfg.input_size is not None:
        return int(cfg.input_size[-1])
    # registered without a pretrained config (the bundled demo backbone sets its own when
    # built): build it on the meta device, which allocates no memory and reads no weights
    with torch.device("meta"):
        backbone = create_backbone(name, pretrained=False)
    return int(resolve_data_config({}, model=backbone)["input_size"][-1])
