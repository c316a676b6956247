"""Any Hugging Face peft tuner that works on ``nn.Linear`` layers (LoRA, DoRA, IA³, LoHa,
LoKr, VeRA, OFT, BOFT, FourierFT …), from a peft config: ``--peft-config FILE`` reads a
JSON/YAML mapping with ``peft_type`` and the tuner's own options, e.g.

    {"peft_type": "IA3", "target_modules": ["qkv", "fc2"], "feedforward_modules": ["fc2"]}

The options are kept in the run's config and checkpoint, so a run never depends on the
file again. The tuner is injected with ``peft.inject_adapter_in_model``; the model trains
what peft marks trainable, plus the head. Needs ``pip install 'e2vpt[peft]'``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from e2vpt.layers.settings import MAX_LAYER_WIDTH
from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel

# timm's Linear layers, for the messages: attention qkv / proj, MLP fc1 / fc2
TIMM_LINEARS = "qkv, proj (attention), fc1, fc2 (MLP)"


def read_peft_config_file(path: str) -> dict[str, Any]:
    """``--peft-config FILE``: the file's mapping (JSON or YAML); argparse reports a bad
    file as a one-line error naming it."""
    file = Path(path)
    if not file.is_file():
        raise argparse.ArgumentTypeError(f"peft config file {path} not found")
    try:
        values = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        raise argparse.ArgumentTypeError(f"{path} is not valid JSON or YAML: {first}") from err
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError(
            f"{path} must hold a mapping with peft_type and the tuner's options, "
            f'e.g. {{"peft_type": "LORA", "r": 8, "target_modules": ["qkv"]}}'
        )
    return values


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError(
            "method peft needs Hugging Face peft: pip install 'e2vpt[peft]' (or peft)"
        ) from None
    return peft


def _tuner_prefix(peft_type: str) -> str | None:
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    return None if tuner is None else getattr(tuner, "prefix", None)


@dataclass
class PeftTunerConfig(MethodConfig):
    """A peft tuner from its peft config (``peft_type`` + options), plus a new head."""

    name: ClassVar[str] = "peft"
    changes_backbone: ClassVar[bool] = True
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 1e-3}
    size_fields: ClassVar[tuple[str, ...]] = ("peft_config",)
    peft_config: dict[str, Any] = setting(
        {},
        "a JSON/YAML file: peft_type + the tuner's options",
        parse=read_peft_config_file,
        metavar="FILE",
    )

    @classmethod
    def example_options(cls) -> dict[str, Any]:
        return {"peft_config": {"peft_type": "LOHA", "r": 2, "target_modules": ["qkv"]}}

    @property
    def peft_type(self) -> str:
        return str(self.peft_config.get("peft_type", "")).upper()

    def validate(self) -> None:
        super().validate()
        options = dict(self.peft_config)
        if not options:
            raise ConfigError(
                "method peft needs a peft config: --peft-config FILE (JSON or YAML with "
                'peft_type and its options, e.g. {"peft_type": "IA3", "target_modules": '
                '["qkv", "fc2"], "feedforward_modules": ["fc2"]})'
            )
        peft = _peft()
        known = sorted(t.value for t in peft.PeftType)
        if self.peft_type not in known:
            raise ConfigError(
                f"peft config: peft_type {options.get('peft_type')!r} is not a peft tuner; "
                f"peft {peft.__version__} has {', '.join(known)}"
            )
        if _tuner_prefix(self.peft_type) is None:
            raise ConfigError(
                f"peft config: {self.peft_type} is a prompt-learning tuner for language models, "
                "not one that adapts Linear layers; for visual prompts use vpt-deep or e2vpt, "
                "or pick e.g. LORA, IA3, LOHA, LOKR or VERA"
            )
        if not options.get("target_modules"):
            raise ConfigError(
                f"peft config: name the Linear layers to adapt in target_modules (timm "
                f'ViT / Swin: {TIMM_LINEARS}), e.g. "target_modules": ["qkv"]'
            )
        rank = options.get("r")
        if rank is not None and (
            not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank <= MAX_LAYER_WIDTH
        ):
            raise ConfigError(
                f"peft config: r must be an integer from 1 to {MAX_LAYER_WIDTH}, got {rank!r}"
            )
        if options.get("modules_to_save"):
            raise ConfigError(
                "peft config: drop modules_to_save; e2vpt trains a new head of its own"
            )
        try:
            self.build()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"peft config for {self.peft_type} is invalid: {err}") from err

    def build(self) -> Any:
        """The peft config object (``peft.get_peft_config``)."""
        return _peft().get_peft_config({**self.peft_config, "peft_type": self.peft_type})

    def tunes(self, model: nn.Module, name: str) -> bool:
        prefix = _tuner_prefix(self.peft_type)
        return name.startswith("head.") or (prefix is not None and prefix in name)

    def describe_size(self) -> str:
        shown = ("r", "target_modules", "feedforward_modules")
        parts = [f"{k}={self.peft_config[k]}" for k in shown if k in self.peft_config]
        return ", ".join([self.peft_type, *parts])


@register_method(
    PeftTunerConfig, "any peft tuner on the Linear layers + head (--peft-config)", rank=8
)
def apply_peft(model: PromptedModel, config: PeftTunerConfig) -> None:
    peft = _peft()
    model.freeze_backbone()
    try:
        peft.inject_adapter_in_model(config.build(), model.backbone)
    except ValueError as err:  # e.g. no module matched target_modules
        raise ConfigError(
            f"peft could not apply {config.peft_type} to {type(model.backbone).__name__}: "
            f"{str(err).splitlines()[0]} (its Linear layers: {TIMM_LINEARS})"
        ) from None
    for name, param in model.backbone.named_parameters():
        param.requires_grad_(config.tunes(model, f"backbone.{name}"))
