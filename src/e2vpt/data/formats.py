"""The data formats a ``data`` string can name, one registration each: how its spec is
written (prefix, pattern, template), where its loader and cheap pre-check live, and the
protocol it brings (input statistics, training augmentation, metric).

Torch-free: loaders and pre-checks are named by ``"module:function"`` and imported on
first use, so parsing a spec (:mod:`e2vpt.data.spec`) costs no heavy import. A new format
is its own module with a ``load_spec`` function plus one :func:`register_format` call."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from e2vpt.errors import ConfigError

if TYPE_CHECKING:
    from e2vpt.data.core import Task

BUILTIN_PREFIX = "builtin:"
VTAB_PREFIX = "vtab:"
FGVC_PREFIX = "fgvc:"
CIFAR_LT_PREFIX = "cifar100-lt"

# the training augmentations (a format's protocol names one; `augment` of a run
# config another), implemented by e2vpt.data.augment
AUGMENTATIONS = ("none", "flip", "crop-flip", "random-crop-flip")


class ParsedSpec(Protocol):
    """What a format's loader is given: a parsed ``data`` string (the concrete class is
    :class:`e2vpt.data.spec.DataSpec`, which builds on this module, so it is not imported
    here)."""

    kind: str
    path: str | None
    name: str | None
    ratio: int | None


# the formats' kinds (DataSpec.kind)
BUILTIN, FOLDER, VTAB, FGVC, CIFAR100_LT = "builtin", "folder", "vtab", "fgvc", "cifar100-lt"


@dataclass(frozen=True)
class LoadOptions:
    """What every loader is told besides the spec and the input size."""

    seed: int = 0
    progress: bool = True
    val_fraction: float | None = None
    cache: bool = True
    quiet: bool = False


@dataclass(frozen=True)
class DataFormat:
    """One data format. ``pattern`` must match a whole well-formed spec, with the named
    groups ``path`` (a folder), ``name`` (a built-in task) and/or ``ratio`` (an integer);
    ``template`` writes a spec back from those fields. ``prefix`` picks the format for a
    string (the longest registered prefix wins; the one format with prefix ``""`` takes
    every other string). ``loader`` and ``check`` are ``"module:function"``: loader
    ``(spec, image_size, options) -> Task``, check ``(spec, val_fraction) -> None``."""

    kind: str
    prefix: str
    pattern: re.Pattern[str]
    template: str
    syntax: str  # how to write it, for messages: vtab:<root>/<task>
    example: str  # a well-formed spec, for messages
    loader: str
    check: str | None = None  # the format's own pre-check beyond "the folder exists"
    val_fraction: bool = False  # may hold out part of train (no val split of its own)
    normalization: str = "backbone"  # backbone (its own mean/std) | imagenet
    augment: str = "none"  # the protocol's training augmentation
    metric: str = "top1"  # top1 | error

    def protocol(self) -> dict[str, str]:
        """The :class:`~e2vpt.data.core.Task` fields this format's protocol sets."""
        return {"normalization": self.normalization, "augment": self.augment, "metric": self.metric}

    def load(self, spec: ParsedSpec, image_size: int, options: LoadOptions) -> Task:
        """The task ``spec`` names, by this format's loader (imported now)."""
        loader: Callable[[ParsedSpec, int, LoadOptions], Task] = _resolve(self.loader)
        return loader(spec, image_size, options)

    def precheck(self, spec: ParsedSpec, val_fraction: float | None) -> None:
        """This format's cheap checks (no decoding), when it has any."""
        if self.check is not None:
            check: Callable[[ParsedSpec, float | None], None] = _resolve(self.check)
            check(spec, val_fraction)


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, DataFormat] = {}


def register_format(fmt: DataFormat) -> DataFormat:
    """Make ``fmt`` known to :class:`~e2vpt.data.spec.DataSpec`, ``load_task`` and
    ``check_task_spec``; registering a kind again replaces it (like methods do)."""
    for other in _REGISTRY.values():
        if other.kind != fmt.kind and other.prefix == fmt.prefix:
            raise ConfigError(
                f"data format {fmt.kind!r} uses the prefix {fmt.prefix!r} of {other.kind!r}; "
                "give each format its own prefix"
            )
    _REGISTRY[fmt.kind] = fmt
    return fmt


def get_format(kind: str) -> DataFormat:
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown data format {kind!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[kind]


def list_formats() -> list[DataFormat]:
    return list(_REGISTRY.values())


def format_of(text: str) -> DataFormat:
    """The format a spec string belongs to by its prefix (well-formed or not)."""
    prefixed = [f for f in _REGISTRY.values() if f.prefix and text.startswith(f.prefix)]
    if prefixed:
        return max(prefixed, key=lambda f: len(f.prefix))
    fallback = [f for f in _REGISTRY.values() if not f.prefix]
    if not fallback:
        raise ConfigError(f"no data format takes {text!r} (none is registered without a prefix)")
    return fallback[0]


register_format(
    DataFormat(
        kind=BUILTIN,
        prefix=BUILTIN_PREFIX,
        pattern=re.compile(r"builtin:(?P<name>.+)", re.DOTALL),
        template="builtin:{name}",
        syntax="builtin:<task>",
        example="builtin:count",
        loader="e2vpt.data.builtin:load_spec",
        check="e2vpt.data.builtin:check_spec",
    )
)
register_format(
    DataFormat(
        kind=VTAB,
        prefix=VTAB_PREFIX,
        pattern=re.compile(r"vtab:(?P<path>.+)", re.DOTALL),
        template="vtab:{path}",
        syntax="vtab:<root>/<task>",
        example="vtab:data/vtab-1k/dtd",
        loader="e2vpt.data.vtab:load_spec",
        normalization="imagenet",
    )
)
register_format(
    DataFormat(
        kind=FGVC,
        prefix=FGVC_PREFIX,
        pattern=re.compile(r"fgvc:(?P<path>.+)", re.DOTALL),
        template="fgvc:{path}",
        syntax="fgvc:<folder with train/val/test.json>",
        example="fgvc:data/CUB_200_2011",
        loader="e2vpt.data.fgvc:load_spec",
        normalization="imagenet",
        augment="random-crop-flip",
    )
)
register_format(
    DataFormat(
        kind=CIFAR100_LT,
        prefix=CIFAR_LT_PREFIX,
        pattern=re.compile(r"cifar100-lt(?P<ratio>\d+):(?P<path>.+)", re.DOTALL),
        template="cifar100-lt{ratio}:{path}",
        syntax="cifar100-lt<ρ>:<cifar-100-python folder> (ρ an integer >= 1)",
        example="cifar100-lt100:data/cifar-100-python",
        loader="e2vpt.data.cifar_lt:load_spec",
        metric="error",
    )
)
register_format(
    DataFormat(
        kind=FOLDER,
        prefix="",
        pattern=re.compile(r"(?P<path>.+)", re.DOTALL),
        template="{path}",
        syntax="<folder with train/<class>/ images>",
        example="data/pets",
        loader="e2vpt.data.image_folder:load_spec",
        check="e2vpt.data.image_folder:check_spec",
        val_fraction=True,
    )
)
