"""The run configuration: one plain dataclass, read from YAML and/or CLI flags.

Torch-free (its imports are the other settings and their value lists), so the command
line builds its flags and checks a config before torch is imported."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2vpt.backbones.names import DEMO_BACKBONE
from e2vpt.data.formats import AUGMENTATIONS
from e2vpt.data.spec import DataSpec
from e2vpt.devices import DEVICE_CHOICES, check_device_name
from e2vpt.layers.settings import HEAD_INITS
from e2vpt.methods.base import ConfigError, MethodConfig, get_method, method_config
from e2vpt.recipes import (
    AUTO,
    TRAIN_CHOICES,
    check_method_options,
    check_recipe,
    resolve_choice,
)
from e2vpt.runs.folder import fresh_folder, readable_name
from e2vpt.runs.names import TRAIN_CONFIG_FILE
from e2vpt.runs.schema import read_yaml_mapping
from e2vpt.settings import check_values, setting

LR_SCHEDULE_UNITS = ("update", "epoch")
# fields that change where, how fast or how visibly a run trains, not what it learns
# (gradient checkpointing and compile are tested to give the same losses): a run may be
# resumed with other values, and a sweep trial's identity ignores them
RUNTIME_FIELDS = (
    "progress",
    "tensorboard",
    "device",
    "output_dir",
    "grad_checkpointing",
    "compile",
    "state_every",
    "data_cache",
)
# task: the task's protocol (ImageNet mean/std for VTAB-1k and FGVC, the backbone's own
# statistics elsewhere); imagenet; backbone: the backbone's pretrained_cfg mean/std
NORMALIZATIONS = ("task", "imagenet", "backbone")
# how runs trained before recipes existed (their train_config.yaml has no `recipe`)
LEGACY_TRAIN_FIELDS: dict[str, Any] = {
    "lr_schedule_unit": "update",
    "head_init": "trunc-normal",
    "normalize": "backbone",
}

# `e2vpt train` with no arguments: the defaults below (the papers' schedule) plus these,
# sized to finish in minutes on two CPU cores. AdamW because on the small demo backbone
# it needs no per-task lr search, unlike the papers' SGD recipe; timm's small head init
# because with AdamW for 15 epochs the official head (std √(2/C), logits of ~8 on the
# demo's features) cost 5 test points here (README: Recipes).
QUICKSTART: dict[str, Any] = {
    "optimizer": "adamw",
    "epochs": 15,
    "batch_size": 32,
    "base_lr": 0.08,
    "head_init": "trunc-normal",
    "compare_linear": True,
}


@dataclass
class TrainConfig:
    recipe: str = setting(
        "default", "default (e2vpt's) | official (exactly the official VPT/E²VPT code)"
    )
    backbone: str = setting(DEMO_BACKBONE, "timm name, or the bundled demo backbone")
    weights: str | None = setting(
        None, "local weights file for the backbone (.npz/.pth/.safetensors)"
    )
    method: str = setting("e2vpt", "a registered method (`e2vpt info` lists them)")
    method_config: dict[str, Any] = setting({}, "the method's options", cli=False)
    data: str = setting(
        "builtin:count", "builtin:*, vtab:DIR, fgvc:DIR, cifar100-lt<ρ>:DIR, image folder"
    )
    data_seed: int = setting(0, "seed of a built-in task's generator and of --val-fraction's draw")
    val_fraction: float | None = setting(
        None, "image folder without val/: hold out this share of train"
    )
    data_cache: bool = setting(
        True, "decode files once into a memory-mapped cache ($E2VPT_CACHE_DIR)"
    )
    output_dir: str | None = setting(None, "run folder (None: a new runs/<task>-<method>[-N])")
    epochs: int = setting(100, "training epochs")
    batch_size: int = setting(64, "images per step")
    base_lr: float | None = setting(None, "lr = base_lr × batch / 256; None: the method's default")
    weight_decay: float = setting(1e-4, "L2 on everything tuned but the head bias")
    warmup_epochs: int | None = setting(None, "None: 10 % of epochs (the papers' 10 of 100)")
    lr_schedule_unit: str = setting(
        AUTO, "auto (the recipe's) | update | epoch (official: per epoch)"
    )
    head_init: str = setting(
        AUTO, "auto (the recipe's) | kaiming (official) | trunc-normal (timm's)"
    )
    normalize: str = setting(AUTO, "auto (the recipe's) | task | imagenet (official) | backbone")
    optimizer: str = setting("auto", "auto (SGD; AdamW for full, as the papers) | sgd | adamw")
    momentum: float = setting(0.9, "SGD momentum")
    seed: int = setting(42, "init, shuffling and dropout")
    augment: str = setting("auto", " | ".join(("auto (the task's protocol)", *AUGMENTATIONS)))
    global_pool: str | None = setting(
        None, "None: backbone convention | token | avg | avg-fc-norm | map"
    )
    train_split: str = setting("train", "the split trained on (a sweep's final seeds: trainval)")
    val_split: str | None = setting("val", "evaluated every epoch when the task has it")
    eval_split: str | None = setting(
        "test", "final top-1 (None: none, as in a sweep's grid trials)"
    )
    device: str = setting("auto", DEVICE_CHOICES)
    precision: str = setting("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    cache_features: bool = setting(True, "linear probing: run the frozen backbone once per image")
    grad_checkpointing: bool = setting(False, "recompute activations in the backward: less memory")
    compile: bool = setting(
        False, "torch.compile the model: slow first steps, pays on long GPU runs"
    )
    compare_linear: bool = setting(False, "also train a linear probe and show both")
    progress: bool = setting(True, "progress bars on stderr (in a log file: a line per epoch)")
    tensorboard: bool = setting(
        True, "training curves in <run>/tb for `tensorboard --logdir` (needs e2vpt[tensorboard])"
    )
    state_every: int = setting(
        1, "epochs between resumable training states (0: none; not resumable)"
    )

    def validate(self) -> None:
        check_recipe(self.recipe)
        for name, allowed in (
            ("lr_schedule_unit", LR_SCHEDULE_UNITS),
            ("head_init", HEAD_INITS),
            ("normalize", NORMALIZATIONS),
        ):
            value = getattr(self, name)
            if value != AUTO and value not in allowed:
                raise ConfigError(
                    f"{name} must be auto or one of {', '.join(allowed)}, got {value!r}"
                )
            self.resolved(name)  # a value the chosen recipe contradicts fails here
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
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        check_device_name(self.device)
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.state_every < 0:
            raise ConfigError(f"state_every must be >= 0, got {self.state_every}")
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
        spec = get_method(self.method)
        conflicts = spec.config_cls.official_conflicts(self.method_config or {})
        check_method_options(self.recipe, spec.name, conflicts)
        return method_config(self.method, self.method_config)

    def resolved(self, name: str) -> Any:
        """A recipe-governed field's value: as given, or the recipe's when ``auto``."""
        return resolve_choice(self.recipe, TRAIN_CHOICES[name], getattr(self, name))

    def resolved_optimizer(self) -> str:
        return _optimizer_of(self, self.build_method_config())

    def resolved_warmup_epochs(self) -> int:
        return _warmup_epochs_of(self)

    def resolved_base_lr(self) -> float:
        method = self.build_method_config()
        return _base_lr_of(self, method, _optimizer_of(self, method))

    def resolve(self) -> ResolvedTrainConfig:
        """Every ``auto`` settled at once (see :class:`ResolvedTrainConfig`)."""
        return ResolvedTrainConfig.of(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def default_output_dir(self) -> str:
        """Where a run without ``output_dir`` goes: a new ``runs/<task>-<method>[-N]``."""
        task = re.split(r"[:/\\]", self.data.rstrip("/\\"))[-1]
        return str(fresh_folder(Path("runs") / readable_name(f"{task}-{self.method}")))

    def with_absolute_paths(self) -> TrainConfig:
        """The config with ``weights``, the data folder and ``output_dir`` made absolute,
        so a stored run can be evaluated, pruned or resumed from anywhere (and compared:
        :func:`e2vpt.runs.setting_differences`)."""
        weights = None if self.weights is None else os.path.abspath(self.weights)
        output_dir = None if self.output_dir is None else os.path.abspath(self.output_dir)
        return dataclasses.replace(
            self, weights=weights, data=absolute_data_spec(self.data), output_dir=output_dir
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config from plain values (YAML's): unknown keys and values of the wrong
        type are errors naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, values)) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}")
        check_values(cls, values)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        values = _read_mapping(path)
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    @classmethod
    def from_run_folder(cls, run_dir: str | Path) -> TrainConfig:
        """The config a run folder was trained with, checked whole (types, ranges, the
        method's options): an edited or damaged ``train_config.yaml`` is one error
        naming the file and the field. A run saved before recipes existed is read the
        way it trained then (per-update schedule, timm's head init, the backbone's
        statistics, and its method's options of the time)."""
        path = Path(run_dir) / TRAIN_CONFIG_FILE
        values = _read_mapping(path)
        try:
            check_values(cls, values)
            if "recipe" not in values:
                values = {**values, **LEGACY_TRAIN_FIELDS}
                method = get_method(values.get("method", cls.method))
                values["method_config"] = method.with_legacy_options(
                    dict(values.get("method_config") or {})
                )
            config = cls.from_dict(values)
            config.validate()
        except ConfigError as err:
            raise ConfigError(
                f"{path} is invalid: {err}; the file was changed since e2vpt wrote it: "
                "restore it, or train the run again"
            ) from None
        return config

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def absolute_data_spec(spec: str) -> str:
    """``vtab:rel/path`` → ``vtab:/abs/rel/path`` (every folder-backed kind); built-in
    task names are left as they are. Kept for its callers: :class:`DataSpec` is the home."""
    return str(DataSpec.parse(spec).absolute())


def _read_mapping(path: Path) -> dict[str, Any]:
    """A config file's fields (an empty ``method_config:`` is no options)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    values = read_yaml_mapping(path)
    if "method_config" in values and values["method_config"] is None:
        values["method_config"] = {}
    return values


def _optimizer_of(cfg: TrainConfig, method: MethodConfig) -> str:
    """``auto``: the method's (SGD; AdamW for full fine-tuning, as the papers)."""
    return method.optimizer if cfg.optimizer == AUTO else cfg.optimizer


def _base_lr_of(cfg: TrainConfig, method: MethodConfig, optimizer: str) -> float:
    """None: the method's default for the optimiser."""
    if cfg.base_lr is not None:
        return cfg.base_lr
    return type(method).default_base_lr.get(optimizer, 0.1)


def _warmup_epochs_of(cfg: TrainConfig) -> int:
    """None: 10 % of the epochs (the papers' 10 of 100)."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return round(0.1 * cfg.epochs)


@dataclass(frozen=True)
class ResolvedTrainConfig:
    """A run's config with every recipe-governed and ``auto`` field settled, made once
    (by the trainer's preflight) so that the trainer and the optimiser read values instead
    of resolving them again. ``config`` is the config as given, what train_config.yaml
    stores: read the fields below from here, the others from it."""

    config: TrainConfig
    method: MethodConfig
    optimizer: str
    base_lr: float
    warmup_epochs: int
    lr_schedule_unit: str
    head_init: str
    normalize: str  # may be ``task``: the task's protocol, settled with the task
    augment: str | None  # None: the task's protocol, known once the task is loaded

    @classmethod
    def of(cls, cfg: TrainConfig) -> ResolvedTrainConfig:
        method = cfg.build_method_config()
        optimizer = _optimizer_of(cfg, method)
        return cls(
            config=cfg,
            method=method,
            optimizer=optimizer,
            base_lr=_base_lr_of(cfg, method, optimizer),
            warmup_epochs=_warmup_epochs_of(cfg),
            augment=None if cfg.augment == AUTO else cfg.augment,
            **{name: cfg.resolved(name) for name in ("lr_schedule_unit", "head_init", "normalize")},
        )

    @property
    def lr(self) -> float:
        """The peak learning rate: base_lr × batch / 256."""
        return self.base_lr * self.config.batch_size / 256

    @property
    def per_epoch_schedule(self) -> bool:
        """The official schedule: one lr for a whole epoch (else one per update)."""
        return self.lr_schedule_unit == "epoch"

    def augment_for(self, task_augment: str) -> str:
        """The augmentation trained with, given the task's protocol (``task.augment``)."""
        return task_augment if self.augment is None else self.augment
