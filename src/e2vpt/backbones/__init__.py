"""Backbones by name: timm hub names, the bundled demo ViT, local weight files.

Importing the package imports no torch or timm: each name below comes from its module on
first access (:mod:`e2vpt.backbones.names` is torch-free; :mod:`e2vpt.backbones.create`
imports timm and registers the demo backbone with it), so a config or the command line
can read :data:`DEMO_BACKBONE` for nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from e2vpt.lazy import lazy_names

if TYPE_CHECKING:
    from e2vpt.backbones.create import backbone_for_run, create_backbone
    from e2vpt.backbones.names import ALIASES, DEMO_BACKBONE, canonical_name, check_weights_file
    from e2vpt.backbones.weight_files import load_weights_file
    from e2vpt.errors import BackboneError

# name → the module that is its home
_HOMES = {
    "ALIASES": "e2vpt.backbones.names",
    "DEMO_BACKBONE": "e2vpt.backbones.names",
    "canonical_name": "e2vpt.backbones.names",
    "check_weights_file": "e2vpt.backbones.names",
    "backbone_for_run": "e2vpt.backbones.create",
    "create_backbone": "e2vpt.backbones.create",
    "load_weights_file": "e2vpt.backbones.weight_files",
    "BackboneError": "e2vpt.errors",
}


__getattr__, __dir__ = lazy_names("e2vpt.backbones", _HOMES, globals())


__all__ = [
    "ALIASES",
    "DEMO_BACKBONE",
    "BackboneError",
    "backbone_for_run",
    "canonical_name",
    "check_weights_file",
    "create_backbone",
    "load_weights_file",
]
