"""Many tasks, one frozen backbone, one batch: :class:`MultiTaskModel`.

Every sample of a batch brings its own task's parts into one pass of the shared ViT:
its visual prompts (tasks with fewer prompt tokens are padded, the padding masked out
of attention), its key-value prompts (padded and masked the same way) and its own head
with its own class count. A sample's logits equal its task's model alone (tested).

Tasks whose method keeps the backbone as it is and whose parts are per sample can
share the pass: linear, mlp, sidetune, VPT shallow and deep, E²VPT (pruned or not).
A method that changes backbone weights or modules (full, bias, partial, adapter, LoRA,
peft) cannot: its samples would need a backbone of their own."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn

from e2vpt.checkpoint import load, read_config
from e2vpt.errors import ConfigError
from e2vpt.families.vit import PromptedViT
from e2vpt.methods.base import get_method
from e2vpt.model import PromptedModel

# the pooling a shared pass computes once for every task
SHARED_POOLS = ("token",)


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
        self.tasks = nn.ModuleDict()
        for name, source in (tasks or {}).items():
            self.add_task(name, source)

    # -- tasks -------------------------------------------------------------------------
    def add_task(self, name: str, source: str | os.PathLike[str] | PromptedModel) -> None:
        """Add a task from its run folder (loaded onto the shared backbone, whose
        architecture and weights it must have been trained on) or a wrapped model."""
        if name in self.tasks:
            raise ConfigError(f"task {name!r} is already in the model; remove_task it first")
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
            model = load(folder, backbone=self.backbone)
        self._check_method(name, model.method_name)
        if not isinstance(model, PromptedViT):
            raise ConfigError(
                f"task {name!r}: MultiTaskModel batches tasks on a ViT; a {model.family} "
                "model runs on its own (e2vpt.load)"
            )
        if model.global_pool not in SHARED_POOLS:
            raise ConfigError(
                f"task {name!r} pools by {model.global_pool!r}; a shared batch pools by the "
                "class token: run this task on its own model"
            )
        self.tasks[name] = model.eval()

    @staticmethod
    def _check_method(name: str, method: str) -> None:
        if get_method(method).config_cls.changes_backbone:
            raise ConfigError(
                f"task {name!r} is a {method} model, which changes the backbone's weights or "
                "modules, so its samples cannot share a backbone pass; serve it as a model of "
                "its own (e2vpt.load with its own backbone)"
            )

    def remove_task(self, name: str) -> None:
        if name not in self.tasks:
            raise ConfigError(f"no task {name!r}; the tasks are {', '.join(self.tasks)}")
        del self.tasks[name]

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    # -- forward -----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images: torch.Tensor, tasks: Sequence[str]) -> list[torch.Tensor]:
        """Normalised images (B, 3, S, S) and each sample's task → each sample's logits
        (their lengths are the tasks' class counts)."""
        if len(tasks) != images.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {len(tasks)} task names")
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise ConfigError(
                f"unknown task(s) {', '.join(map(repr, unknown))}; the model has "
                f"{', '.join(self.tasks) or 'no tasks'} (add_task adds one)"
            )
        groups = {t: [i for i, s in enumerate(tasks) if s == t] for t in dict.fromkeys(tasks)}
        features = self._shared_pass(images, groups)
        out: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
        for name, rows in groups.items():
            model = self.tasks[name]
            index = torch.tensor(rows, device=images.device)
            feats = features[index]
            if model.side_branch is not None:
                feats = model.side_branch(feats, images[index])
            for row, logits in zip(rows, model.forward_head(feats), strict=True):
                out[row] = logits
        return out

    def _shared_pass(self, images: torch.Tensor, groups: dict[str, list[int]]) -> torch.Tensor:
        bb = self.backbone
        batch, device = images.shape[0], images.device
        models = {t: self.tasks[t] for t in groups}
        prompt_counts = {t: _prompt_count(m) for t, m in models.items()}
        kv_counts = {t: _kv_count(m) for t, m in models.items()}
        slots, kv_slots = max(prompt_counts.values()), max(kv_counts.values())
        npt = bb.num_prefix_tokens
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))
        width, patches = x.shape[-1], x.shape[1] - npt
        # which keys each sample attends to: prefix, its own prompts, patches, its KV
        keys = torch.ones(batch, npt + slots + patches + kv_slots, dtype=torch.bool, device=device)
        deep = torch.zeros(batch, 1, 1, dtype=torch.bool, device=device)
        for t, rows in groups.items():
            keys[rows, npt + prompt_counts[t] : npt + slots] = False
            keys[rows, npt + slots + patches + kv_counts[t] :] = False
            prompts = models[t].visual_prompts
            deep[rows] = prompts is not None and prompts.num_layers > 1
        mask = keys[:, None, None, :]  # (B, 1, queries, keys)
        for layer, block in enumerate(bb.blocks):
            if slots:
                fresh = x.new_zeros(batch, slots, width)
                for t, rows in groups.items():
                    prompts = models[t].visual_prompts
                    if prompt_counts[t] and (layer == 0 or prompts.num_layers > 1):
                        fresh[rows, : prompt_counts[t]] = prompts(layer, len(rows)).to(x.dtype)
                if layer == 0:
                    x = torch.cat([x[:, :npt], fresh, x[:, npt:]], dim=1)
                else:
                    kept = x[:, npt : npt + slots]
                    x = torch.cat(
                        [x[:, :npt], torch.where(deep, fresh, kept), x[:, npt + slots :]], 1
                    )
            extra = None
            if kv_slots:
                extra = _kv_batch(block.attn, models, groups, layer, kv_slots, batch, x)
            x = _block(block, x, extra, mask)
        return bb.norm(x)[:, 0]


def _prompt_count(model: PromptedModel) -> int:
    prompts = model.visual_prompts
    if prompts is None or prompts.tokens == 0:
        return 0
    return int(prompts(0, 1).shape[1])


def _kv_count(model: PromptedModel) -> int:
    kv = getattr(model, "kv_prompts", None)
    return 0 if kv is None else int(kv[0].tokens)


def _kv_batch(
    attn: Attention,
    models: dict[str, PromptedModel],
    groups: dict[str, list[int]],
    layer: int,
    slots: int,
    batch: int,
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's key-value prompts for this block, padded: (B, heads, slots, hd) ×2."""
    shape = (batch, attn.num_heads, slots, attn.head_dim)
    keys, values = x.new_zeros(shape), x.new_zeros(shape)
    for t, rows in groups.items():
        kv = getattr(models[t], "kv_prompts", None)
        if kv is None:
            continue
        prompts = kv[layer]
        value = prompts.key_prompt if prompts.value_prompt is None else prompts.value_prompt
        keys[rows, :, : prompts.tokens] = prompts.key_prompt.to(x.dtype)
        values[rows, :, : prompts.tokens] = value.to(x.dtype)
    return keys, values


def _block(
    block: nn.Module,
    x: torch.Tensor,
    extra: tuple[torch.Tensor, torch.Tensor] | None,
    mask: torch.Tensor,
) -> torch.Tensor:
    """timm's pre-norm ``Block`` with per-sample extra keys/values and a key mask."""
    if type(block) is not Block or not isinstance(block.attn, Attention):
        raise ConfigError(
            f"MultiTaskModel needs timm's standard Block and Attention; the backbone has "
            f"{type(block).__name__}"
        )
    x = x + block.drop_path1(block.ls1(_attention(block.attn, block.norm1(x), extra, mask)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _attention(
    attn: Attention,
    x: torch.Tensor,
    extra: tuple[torch.Tensor, torch.Tensor] | None,
    mask: torch.Tensor,
) -> torch.Tensor:
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if extra is not None:
        k, v = torch.cat([k, extra[0]], dim=2), torch.cat([v, extra[1]], dim=2)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask[..., : k.shape[2]],
        scale=getattr(attn, "scale", 1.0 / math.sqrt(attn.head_dim)),
    )
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim))
    return attn.proj_drop(attn.proj(out))
