"""Every method is one module with a config dataclass; importing them fills the registry."""

from e2vpt.methods.adapter import AdapterConfig
from e2vpt.methods.base import (
    ConfigError,
    MethodConfig,
    MethodSpec,
    get_method,
    list_methods,
    method_config,
    register_method,
)
from e2vpt.methods.bias import BiasConfig
from e2vpt.methods.e2vpt import E2VPTConfig
from e2vpt.methods.full import FullConfig
from e2vpt.methods.linear import LinearConfig
from e2vpt.methods.lora import LoRAConfig
from e2vpt.methods.mlp import MLPConfig
from e2vpt.methods.partial import PartialConfig
from e2vpt.methods.peft_tuner import PeftTunerConfig
from e2vpt.methods.sidetune import SidetuneConfig
from e2vpt.methods.vpt import VPTConfig

__all__ = [
    "AdapterConfig",
    "BiasConfig",
    "ConfigError",
    "E2VPTConfig",
    "FullConfig",
    "LinearConfig",
    "LoRAConfig",
    "MLPConfig",
    "PartialConfig",
    "PeftTunerConfig",
    "SidetuneConfig",
    "MethodConfig",
    "MethodSpec",
    "VPTConfig",
    "get_method",
    "list_methods",
    "method_config",
    "register_method",
]
