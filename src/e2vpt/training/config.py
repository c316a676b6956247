"""The run configuration: one plain dataclass, read from YAML and/or CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2vpt.backbones.demo import DEMO_BACKBONE
from e2vpt.data.augment import AUGMENTATIONS
from e2vpt.methods.base import ConfigError, MethodConfig, method_config

# Starting points for lr = base_lr × batch / 256 when none is given, per optimizer.
# The papers grid-search base_lr per task (the sweep command does); these were
# checked on the demo backbone and its built-in tasks.
DEFAULT_BASE_LR = {
    "sgd": {
        "linear": 0.2,
        "bias": 0.2,
        "vpt-shallow": 0.25,
        "vpt-deep": 0.25,
        "e2vpt": 0.25,
        "full": 0.05,
    },
    "adamw": {
        "linear": 0.04,
        "bias": 0.04,
        "vpt-shallow": 0.04,
        "vpt-deep": 0.04,
        "e2vpt": 0.04,
        "full": 5e-4,
    },
}


# `e2vpt train` with no arguments: the defaults below (the papers' schedule) plus these,
# sized to finish in minutes on two CPU cores. AdamW because on the small demo backbone
# it needs no per-task lr search, unlike the papers' SGD recipe.
QUICKSTART: dict[str, Any] = {
    "optimizer": "adamw",
    "epochs": 15,
    "batch_size": 32,
    "base_lr": 0.08,
    "compare_linear": True,
}


@dataclass
class TrainConfig:
    backbone: str = DEMO_BACKBONE  # timm name, or the bundled demo backbone
    weights: str | None = None  # local weights file for the backbone (.npz/.pth/.safetensors)
    method: str = "e2vpt"  # linear | full | bias | vpt-shallow | vpt-deep | e2vpt
    method_config: dict[str, Any] = field(default_factory=dict)  # the method's options
    data: str = (
        "builtin:count"  # builtin:*, vtab:DIR, fgvc:DIR, cifar100-lt<ρ>:DIR or an image folder
    )
    data_seed: int = 0  # seed of a built-in task's generator
    output_dir: str = "runs/quickstart"  # run folder: checkpoint, metrics, results
    epochs: int = 100  # training epochs
    batch_size: int = 64  # images per step
    base_lr: float | None = None  # lr = base_lr × batch / 256; None: the method's default
    weight_decay: float = 1e-4  # L2 on everything tuned but the head bias
    warmup_epochs: int | None = None  # None: 10 % of epochs (the papers' 10 of 100)
    optimizer: str = "auto"  # auto (SGD; AdamW for full, as the papers) | sgd | adamw
    momentum: float = 0.9  # SGD momentum
    seed: int = 42  # init, shuffling and dropout
    augment: str = "auto"  # auto (the task's protocol) | none | flip | crop-flip | random-crop-flip
    global_pool: str | None = None  # None: backbone convention | token | avg | avg-fc-norm | map
    train_split: str = "train"
    val_split: str | None = "val"  # evaluated every epoch when the task has it
    eval_split: str | None = "test"  # final top-1 (None: none, as in a sweep's grid trials)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    cache_features: bool = True  # linear probing: run the frozen backbone once per image
    grad_checkpointing: bool = False  # recompute activations in the backward: less memory
    compile: bool = False  # torch.compile the model: slow first steps, pays on long GPU runs
    compare_linear: bool = False  # also train a linear probe and show both
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(
                f"warmup_epochs must be between 0 and epochs ({self.epochs}), "
                f"got {self.warmup_epochs}"
            )
        if self.base_lr is not None and self.base_lr <= 0:
            raise ConfigError(f"base_lr must be > 0, got {self.base_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.augment != "auto" and self.augment not in AUGMENTATIONS:
            raise ConfigError(
                f"augment must be auto or one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"
            )
        if self.optimizer not in ("auto", "sgd", "adamw"):
            raise ConfigError(f"optimizer must be auto, sgd or adamw, got {self.optimizer!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        self.build_method_config()

    def build_method_config(self) -> MethodConfig:
        return method_config(self.method, self.method_config)

    def resolved_optimizer(self) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return self.build_method_config().optimizer

    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return round(0.1 * self.epochs)

    def resolved_base_lr(self) -> float:
        if self.base_lr is not None:
            return self.base_lr
        table = DEFAULT_BASE_LR[self.resolved_optimizer()]
        return table.get(self.build_method_config().method_name, 0.1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        return cls.from_dict(values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
