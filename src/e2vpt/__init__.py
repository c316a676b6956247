"""e2vpt: prompt tuning (VPT, E²VPT) for pretrained vision transformers.

import timm, e2vpt
backbone = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=True)
model = e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=10, kv_tokens=5), num_classes=100)
print(e2vpt.count_parameters(model))
e2vpt.save(model, "runs/cifar100")
model = e2vpt.load("runs/cifar100")
"""

from e2vpt.accounting import ParameterCount, count_parameters
from e2vpt.backbones import DEMO_BACKBONE, create_backbone
from e2vpt.checkpoint import load, save
from e2vpt.errors import (
    BackboneError,
    CheckpointError,
    DataError,
    DivergedError,
    E2VPTError,
    SweepError,
)
from e2vpt.families import PromptedSwin, PromptedViT
from e2vpt.methods import (
    BiasConfig,
    ConfigError,
    E2VPTConfig,
    FullConfig,
    LinearConfig,
    MethodConfig,
    VPTConfig,
    get_method,
    list_methods,
    method_config,
    register_method,
)
from e2vpt.model import PromptedModel
from e2vpt.multitask import MultiTaskModel
from e2vpt.wrapping import wrap

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``e2vpt.Predictor`` without importing the training stack on ``import e2vpt``."""
    if name == "Predictor":
        from e2vpt.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'e2vpt' has no attribute {name!r}")


__all__ = [
    "DEMO_BACKBONE",
    "MultiTaskModel",
    "Predictor",
    "BackboneError",
    "BiasConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "E2VPTError",
    "E2VPTConfig",
    "FullConfig",
    "LinearConfig",
    "MethodConfig",
    "ParameterCount",
    "PromptedModel",
    "PromptedSwin",
    "PromptedViT",
    "SweepError",
    "VPTConfig",
    "count_parameters",
    "create_backbone",
    "get_method",
    "list_methods",
    "load",
    "method_config",
    "register_method",
    "save",
    "wrap",
]
