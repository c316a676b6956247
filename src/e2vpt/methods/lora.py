"""LoRA (Hu et al. 2022) on the attention projections, through Hugging Face peft
(``peft.inject_adapter_in_model`` with a ``LoraConfig``) rather than a LoRA of our own;
``use_dora`` gives DoRA the same way. The low-rank B starts at zero, so the model starts
as the backbone. Needs the optional extra: ``pip install 'e2vpt[peft]'``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.layers.settings import MAX_LAYER_WIDTH
from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel

# which Linear layers of every attention get a low-rank update
# (Eva's split projections: q_proj, k_proj, v_proj)
LORA_TARGETS = {
    "qkv": r".*\.attn\.(qkv|q_proj|k_proj|v_proj)",
    "qkv,proj": r".*\.attn\.(qkv|q_proj|k_proj|v_proj|proj)",
}


@dataclass
class LoRAConfig(MethodConfig):
    name: ClassVar[str] = "lora"
    changes_backbone: ClassVar[bool] = True
    # starting points for `e2vpt sweep`'s grid search, not tuned values
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 1e-3}
    size_fields: ClassVar[tuple[str, ...]] = ("rank", "targets")
    rank: int = setting(8, "r: the update's rank", maximum=MAX_LAYER_WIDTH)
    alpha: float = setting(16.0, "the update is scaled by alpha / r (peft's lora_alpha)")
    lora_dropout: float = setting(0.0, "dropout on the update's input")
    targets: str = setting("qkv", "qkv | qkv,proj: the attention projections that get updates")
    use_dora: bool = setting(False, "DoRA: a learned magnitude per output on top of LoRA (peft)")

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise ConfigError(f"lora: rank must be >= 1, got {self.rank}")
        if self.targets not in LORA_TARGETS:
            raise ConfigError(
                f"lora: targets must be one of {', '.join(LORA_TARGETS)}, got {self.targets!r}"
            )

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith("head.") or ".lora_" in name


@register_method(LoRAConfig, "low-rank updates of the attention projections + head (LoRA)", rank=7)
def apply_lora(model: PromptedModel, config: LoRAConfig) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError(
            "method lora needs Hugging Face peft: pip install 'e2vpt[peft]' (or peft)"
        ) from None
    model.freeze_backbone()
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LORA_TARGETS[config.targets],
        use_dora=config.use_dora,
    )
    inject_adapter_in_model(peft_config, model.backbone)
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(".lora_" in name)
