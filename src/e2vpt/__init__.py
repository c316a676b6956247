"""e2vpt: prompt tuning (VPT, E²VPT) for pretrained vision transformers.

import timm, e2vpt
backbone = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=True)
model = e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=10, kv_tokens=5), num_classes=100)
print(e2vpt.count_parameters(model))
e2vpt.save(model, "runs/cifar100")
model = e2vpt.load("runs/cifar100")
print(e2vpt.evaluate("runs/cifar100"))

Names are imported on first use, so ``import e2vpt`` (and the command line's ``--help``)
costs nothing until a name that needs torch is touched.
"""

from __future__ import annotations

from e2vpt.lazy import lazy_names

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "ParameterCount": "e2vpt.accounting",
    "count_parameters": "e2vpt.accounting",
    "DEMO_BACKBONE": "e2vpt.backbones",
    "create_backbone": "e2vpt.backbones",
    "load": "e2vpt.checkpoint",
    "save": "e2vpt.checkpoint",
    "BackboneError": "e2vpt.errors",
    "CheckpointError": "e2vpt.errors",
    "ConfigError": "e2vpt.errors",
    "DataError": "e2vpt.errors",
    "DiskFullError": "e2vpt.errors",
    "DivergedError": "e2vpt.errors",
    "E2VPTError": "e2vpt.errors",
    "ExportError": "e2vpt.errors",
    "SweepError": "e2vpt.errors",
    "EvalResult": "e2vpt.evaluation",
    "evaluate": "e2vpt.evaluation",
    "PromptedEva": "e2vpt.families",
    "PromptedSwin": "e2vpt.families",
    "PromptedViT": "e2vpt.families",
    "AdapterConfig": "e2vpt.methods",
    "BiasConfig": "e2vpt.methods",
    "E2VPTConfig": "e2vpt.methods",
    "FullConfig": "e2vpt.methods",
    "LinearConfig": "e2vpt.methods",
    "LoRAConfig": "e2vpt.methods",
    "MLPConfig": "e2vpt.methods",
    "MethodConfig": "e2vpt.methods",
    "PartialConfig": "e2vpt.methods",
    "PeftTunerConfig": "e2vpt.methods",
    "SidetuneConfig": "e2vpt.methods",
    "VPTConfig": "e2vpt.methods",
    "get_method": "e2vpt.methods",
    "list_methods": "e2vpt.methods",
    "method_config": "e2vpt.methods",
    "register_method": "e2vpt.methods",
    "PromptedModel": "e2vpt.model",
    "MultiTaskModel": "e2vpt.multitask",
    "Predictor": "e2vpt.predict",
    "TrainConfig": "e2vpt.training.config",
    "train": "e2vpt.training.trainer",
    "wrap": "e2vpt.wrapping",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_names("e2vpt", _EXPORTS, globals())
