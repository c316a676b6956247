"""Many tasks, one frozen backbone, one batch: :class:`MultiTaskModel`.

Every sample of a batch brings its own task's parts into one pass of the shared ViT or
Swin: its visual prompts (tasks with fewer prompt tokens are padded, the padding masked
out of attention), its key-value prompts (padded and masked the same way) and its own
head with its own class count. A sample's logits equal its task's model alone (tested).
The pass itself is the backbone family's (``multitask_pass`` in ``e2vpt.families``);
this module keeps the tasks: adding and removing them, grouping a batch, the heads.

Tasks whose method keeps the backbone as it is and whose parts are per sample can
share the pass: linear, mlp, sidetune, VPT shallow and deep, E²VPT (pruned or not).
A method that changes backbone weights or modules (full, bias, partial, adapter, LoRA,
peft) cannot: its samples would need a backbone of their own. ViT tasks share the
pass with class-token pooling, Swin tasks with their average pooling."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from e2vpt.checkpoint import load, read_config
from e2vpt.errors import ConfigError
from e2vpt.families import SharedPassFamily, TaskRows, get_family, list_families
from e2vpt.methods.base import get_method
from e2vpt.model import PromptedModel


class MultiTaskModel(nn.Module):
    """``MultiTaskModel(backbone, {"pets": "runs/pets", "cars": model, ...})`` and
    ``model(images, ["pets", "cars", ...])`` → one logits tensor per sample."""

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Mapping[str, str | os.PathLike[str] | PromptedModel] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # the task models under keys of our own ("task0", "task1", …): a task's name is
        # any string (a dot in it, or "backbone", would break a ModuleDict key)
        self.task_modules = nn.ModuleDict()
        self._keys: dict[str, str] = {}  # task name → its key in task_modules
        self._next_key = 0
        for name, source in (tasks or {}).items():
            self.add_task(name, source)

    # -- tasks -------------------------------------------------------------------------
    def add_task(self, name: str, source: str | os.PathLike[str] | PromptedModel) -> None:
        """Add a task from its run folder (loaded onto the shared backbone, whose
        architecture and weights it must have been trained on) or a wrapped model."""
        if name in self._keys:
            raise ConfigError(f"task {name!r} is already in the model; remove_task it first")
        model = self.prepare_task(name, source)
        key = f"task{self._next_key}"
        self._next_key += 1
        self.task_modules[key] = model
        self._keys[name] = key

    def prepare_task(
        self, name: str, source: str | os.PathLike[str] | PromptedModel
    ) -> PromptedModel:
        """The model ``add_task(name, source)`` would add, checked and loaded but not
        added: this MultiTaskModel stays as it is (a server loads while batches run)."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a task name is a non-empty string, got {name!r}")
        if isinstance(source, PromptedModel):
            model = source
            if model.backbone is not self.backbone:
                raise ConfigError(
                    f"task {name!r}: its model wraps another backbone object; wrap or load "
                    "it onto this MultiTaskModel's backbone (e2vpt.load(dir, backbone=...))"
                )
        else:
            folder = Path(source)
            method = read_config(folder)["method"]
            self._check_method(name, method)
            # onto the backbone's device: load's default, the CPU, would move the shared
            # backbone there (under the other tasks' feet)
            device = next(self.backbone.parameters()).device
            model = load(folder, backbone=self.backbone, map_location=device)
        self._check_method(name, model.method_name)
        family = _shared_pass_family(model.family)
        if family is None:
            sharing = [f for f in list_families() if _shared_pass_family(f) is not None]
            raise ConfigError(
                f"task {name!r}: MultiTaskModel batches tasks on a {' or '.join(sharing)}; "
                f"a {model.family} model runs on its own (e2vpt.load)"
            )
        if model.global_pool not in family.shared_pools:
            raise ConfigError(
                f"task {name!r} pools by {model.global_pool!r}; a shared {model.family} batch "
                f"pools by {' or '.join(family.shared_pools)}: run this task on its own model"
            )
        return model.eval()

    @staticmethod
    def _check_method(name: str, method: str) -> None:
        if get_method(method).config_cls.changes_backbone:
            raise ConfigError(
                f"task {name!r} is a {method} model, which changes the backbone's weights or "
                "modules, so its samples cannot share a backbone pass; serve it as a model of "
                "its own (e2vpt.load with its own backbone)"
            )

    def remove_task(self, name: str) -> None:
        if name not in self._keys:
            raise ConfigError(f"no task {name!r}; the tasks are {', '.join(self._keys)}")
        del self.task_modules[self._keys.pop(name)]

    @property
    def tasks(self) -> dict[str, PromptedModel]:
        """Task name → its model (a new dict: changing it changes nothing here)."""
        return {name: self._task(name) for name in self._keys}

    @property
    def task_names(self) -> list[str]:
        return list(self._keys)

    def _task(self, name: str) -> PromptedModel:
        model = self.task_modules[self._keys[name]]
        assert isinstance(model, PromptedModel)
        return model

    # -- forward -----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Normalised images (B, 3, S, S) and each sample's task → each sample's logits
        (their lengths are the tasks' class counts)."""
        if len(tasks) != images.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {len(tasks)} task names")
        unknown = sorted(set(tasks) - set(self._keys))
        if unknown:
            raise ConfigError(
                f"unknown task(s) {', '.join(map(repr, unknown))}; the model has "
                f"{', '.join(self._keys) or 'no tasks'} (add_task adds one)"
            )
        groups = {t: [i for i, s in enumerate(tasks) if s == t] for t in dict.fromkeys(tasks)}
        parts: list[TaskRows] = [(self._task(t), rows) for t, rows in groups.items()]
        family = _shared_pass_family(self._task(tasks[0]).family)
        assert family is not None  # add_task admits only such families
        features = family.multitask_pass(self.backbone, parts, images)
        out: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
        for name, rows in groups.items():
            model = self._task(name)
            index = torch.tensor(rows, device=images.device)
            feats = features[index]
            if model.side_branch is not None:
                feats = model.side_branch(feats, images[index])
            for row, logits in zip(rows, model.forward_head(feats), strict=True):
                out[row] = logits
        return out


def _shared_pass_family(name: str) -> SharedPassFamily | None:
    """The registered family ``name`` where its tasks can share a backbone pass."""
    family = get_family(name)
    return family if isinstance(family, SharedPassFamily) else None
