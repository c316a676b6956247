"""Tasks: the papers' benchmarks (VTAB-1k, FGVC, CIFAR-100-LT), image folders and
built-in generated tasks, all loaded as uint8 splits (file-backed ones memory-mapped
from the on-disk cache of :mod:`e2vpt.data.cache`).

A task is named by one string (``TrainConfig.data``), parsed by
:class:`~e2vpt.data.spec.DataSpec`; each format is registered in
:mod:`e2vpt.data.formats`:

* ``builtin:position`` | ``builtin:orientation`` | ``builtin:count`` — generated, no files
* ``vtab:<root>/<task>`` — a VTAB-1k task folder with train800/val200/train800val200/test lists
* ``fgvc:<folder>`` — an FGVC dataset with train/val/test.json
* ``cifar100-lt<ρ>:<cifar-100-python folder>`` — CIFAR-100-LT with imbalance ratio ρ
* any other string — an image folder ``root/{train,val,test}/<class>/**`` (val and test
  optional; ``val_fraction`` holds out part of train when val is missing)

Importing the package imports no torch: each name below comes from its module on first
access, so :mod:`e2vpt.data.spec` and :mod:`e2vpt.data.formats` stay cheap to import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from e2vpt.lazy import lazy_names

if TYPE_CHECKING:
    from e2vpt.data.builtin import builtin_tasks, load_builtin
    from e2vpt.data.cache import cache_root
    from e2vpt.data.core import TRAINVAL, Split, Task
    from e2vpt.data.formats import (
        BUILTIN_PREFIX,
        FGVC_PREFIX,
        VTAB_PREFIX,
        DataFormat,
        get_format,
        list_formats,
        register_format,
    )
    from e2vpt.data.image_folder import IMAGE_EXTENSIONS, load_image_folder
    from e2vpt.data.spec import DataSpec
    from e2vpt.data.tasks import check_task_spec, load_task
    from e2vpt.errors import DataError

# name → the module that is its home
_HOMES = {
    "BUILTIN_PREFIX": "e2vpt.data.formats",
    "FGVC_PREFIX": "e2vpt.data.formats",
    "VTAB_PREFIX": "e2vpt.data.formats",
    "DataFormat": "e2vpt.data.formats",
    "get_format": "e2vpt.data.formats",
    "list_formats": "e2vpt.data.formats",
    "register_format": "e2vpt.data.formats",
    "DataSpec": "e2vpt.data.spec",
    "DataError": "e2vpt.errors",
    "TRAINVAL": "e2vpt.data.core",
    "Split": "e2vpt.data.core",
    "Task": "e2vpt.data.core",
    "cache_root": "e2vpt.data.cache",
    "builtin_tasks": "e2vpt.data.builtin",
    "load_builtin": "e2vpt.data.builtin",
    "IMAGE_EXTENSIONS": "e2vpt.data.image_folder",
    "load_image_folder": "e2vpt.data.image_folder",
    "check_task_spec": "e2vpt.data.tasks",
    "load_task": "e2vpt.data.tasks",
}


__getattr__, __dir__ = lazy_names("e2vpt.data", _HOMES, globals())


__all__ = [
    "BUILTIN_PREFIX",
    "DataError",
    "DataFormat",
    "DataSpec",
    "FGVC_PREFIX",
    "IMAGE_EXTENSIONS",
    "Split",
    "TRAINVAL",
    "Task",
    "VTAB_PREFIX",
    "builtin_tasks",
    "cache_root",
    "check_task_spec",
    "get_format",
    "list_formats",
    "load_builtin",
    "load_image_folder",
    "load_task",
    "register_format",
]
