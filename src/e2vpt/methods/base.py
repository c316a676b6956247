"""Method configs and the registry that maps CLI/method names to them.

Torch-free, like every method's module: a config is read, validated and turned into
flags without torch; only a method's ``apply`` (run on a model) imports it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from e2vpt.errors import ConfigError
from e2vpt.settings import check_values

if TYPE_CHECKING:
    from torch import nn


@dataclass
class MethodConfig:
    """Base of every method's config. Subclasses are plain dataclasses (YAML-friendly)."""

    name: ClassVar[str] = ""
    trains_backbone: ClassVar[bool] = False  # only `full`: backbone in train mode
    optimizer: ClassVar[str] = "sgd"
    # lr = base_lr × batch / 256 when no base_lr is given, per optimizer; the papers grid-
    # search it per task (`e2vpt sweep` does), these were checked on the demo backbone
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 0.04}
    # only the head learns: its inputs (the frozen features) can be computed once
    head_only: ClassVar[bool] = False
    # it changes the backbone's weights or modules, so it takes the backbone object for
    # itself (False: its parts live beside the backbone, which any number of models share)
    changes_backbone: ClassVar[bool] = False
    # the checkpoint holds a backbone's worth of tensors: sweeps keep it for finals only
    large_checkpoint: ClassVar[bool] = False
    # the options that set its size, shown beside its counts (`e2vpt info`)
    size_fields: ClassVar[tuple[str, ...]] = ()
    # options the official recipe fixes: giving another value with it is an error
    official_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def legacy_options(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Options added after a run was saved, set the way such runs behaved (a
        checkpoint or run folder whose options lack them is read with these)."""
        return {}

    @classmethod
    def official_conflicts(cls, values: dict[str, Any]) -> list[str]:
        """The explicitly given options that the official recipe sets otherwise."""
        return [
            f"{key}={values[key]!r} (official: {pinned!r})"
            for key, pinned in cls.official_options.items()
            if key in values and values[key] != pinned
        ]

    def tunes(self, model: nn.Module, name: str) -> bool:
        """Whether this method trains the wrapped ``model``'s parameter ``name`` (every
        method trains the head; contract tests check ``requires_grad`` against this)."""
        return name.startswith("head.")

    def describe_size(self) -> str:
        """``visual_tokens=10, kv_tokens=5``: the options that set the method's size."""
        return ", ".join(f"{k}={getattr(self, k)}" for k in self.size_fields)

    @classmethod
    def size_options(cls, visual_tokens: int | None, kv_tokens: int | None) -> dict[str, Any]:
        """This method's options for `e2vpt info --visual-tokens/--kv-tokens` ({}: none)."""
        return {}

    @classmethod
    def example_options(cls) -> dict[str, Any]:
        """Options for a small working instance, for a method that has no usable defaults
        (the contract tests build every registered method with them)."""
        return {}

    def for_restore(self) -> MethodConfig:
        """The config to rebuild a saved model with, before its tensors are loaded:
        without the options that only say where a new run's starting weights come from
        (a checkpoint or resumed run never needs those files again)."""
        return self

    @property
    def method_name(self) -> str:
        """Registry name of this configuration (what adapter.json and the CLI use)."""
        return self.name

    def validate(self) -> None:
        """Types and ``maximum`` of every option (:func:`e2vpt.settings.check_values`),
        no negative count, dropouts in [0, 1); subclasses add their own checks."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_values(type(self), values, f"{self.name}: ")
        for f in dataclasses.fields(self):
            value = values[f.name]
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{self.name}: {f.name} must be >= 0, got {value}")
            if f.name.endswith("dropout") and value is not None and not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{self.name}: {f.name} must be in [0, 1), got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> MethodConfig:
        """The config from plain values (a YAML file's, a checkpoint's), checked before
        it is built: unknown options, wrong types and values out of range are errors."""
        if values is not None and not isinstance(values, dict):
            raise ConfigError(
                f"{cls.name}: the options must be a mapping of option names to values, "
                f"got {type(values).__name__}"
            )
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, values)) - known)
        if unknown:
            raise ConfigError(
                f"method {cls.name!r} has no option(s) {unknown}; its options are {sorted(known)}"
            )
        check_values(cls, values, f"{cls.name}: ")
        config = cls(**values)  # type: ignore[arg-type]
        config.validate()
        return config


# apply(model, config): the model is an e2vpt.model.PromptedModel (typed loosely here,
# since the model module builds on the method configs, not the other way round)
ApplyFn = Callable[["nn.Module", Any], None]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    apply: ApplyFn
    summary: str
    fixed: tuple[tuple[str, Any], ...] = ()  # options this name pins (vpt-deep: deep=True)
    rank: float = 100.0  # place in lists and tables (the papers' order: full, linear, …)
    # the papers' published ViT-B/16 IN-21k top-1 % (VTAB-1k group means, FGVC mean)
    paper_anchors: tuple[tuple[str, float], ...] = ()

    def make_config(self, values: dict[str, Any] | None = None) -> MethodConfig:
        values = dict(values or {})
        for key, pinned in self.fixed:
            if key in values and values[key] != pinned:
                raise ConfigError(
                    f"method {self.name!r} always has {key}={pinned}; drop that option "
                    f"or pick the other method name"
                )
            values[key] = pinned
        return self.config_cls.from_dict(values)

    def with_legacy_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` saved by an older e2vpt, completed with the values of the options
        added since, as such runs behaved (``MethodConfig.legacy_options``)."""
        legacy = self.config_cls.legacy_options({**dict(self.fixed), **options})
        return {**legacy, **options}


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    config_cls: type[MethodConfig],
    summary: str,
    name: str | None = None,
    fixed: dict[str, Any] | None = None,
    rank: float = 100.0,
    paper_anchors: dict[str, float] | None = None,
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator for a method's ``apply(model, config)`` function: the one line that
    makes a method known to the CLI, checkpoints, sweeps and reports."""

    def decorator(fn: ApplyFn) -> ApplyFn:
        key = name or config_cls.name
        _REGISTRY[key] = MethodSpec(
            key,
            config_cls,
            fn,
            summary,
            tuple((fixed or {}).items()),
            rank,
            tuple((paper_anchors or {}).items()),
        )
        return fn

    return decorator


def list_methods() -> list[str]:
    """Registered names in the papers' table order (baselines first), then any others."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].rank, n))


def registered_methods() -> list[MethodSpec]:
    return [_REGISTRY[n] for n in list_methods()]


def get_method(name: str) -> MethodSpec:
    if not isinstance(name, str):
        raise ConfigError(
            f"a method is named by a string, got {name!r}; choose one of: {', '.join(_REGISTRY)}"
        )
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def method_config(name: str, values: dict[str, Any] | None = None) -> MethodConfig:
    """Build the config for a registry name from plain option values."""
    return get_method(name).make_config(values)
