"""Many tasks, one frozen backbone, one batch: :class:`MultiTaskModel`.

Every sample of a batch brings its own task's parts into one pass of the shared ViT or
Swin:
its visual prompts (tasks with fewer prompt tokens are padded, the padding masked out
of attention), its key-value prompts (padded and masked the same way) and its own head
with its own class count. A sample's logits equal its task's model alone (tested).

Tasks whose method keeps the backbone as it is and whose parts are per sample can
share the pass: linear, mlp, sidetune, VPT shallow and deep, E²VPT (pruned or not).
A method that changes backbone weights or modules (full, bias, partial, adapter, LoRA,
peft) cannot: its samples would need a backbone of their own. ViT tasks share the
pass with class-token pooling, Swin tasks with their average pooling."""

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
from e2vpt.families.swin import PromptedSwin
from e2vpt.families.vit import PromptedViT
from e2vpt.layers.kv_attention import KVPrompts
from e2vpt.layers.swin_prompts import prompted_block_forward
from e2vpt.methods.base import get_method
from e2vpt.model import PromptedModel

# the pooling a shared pass computes once for every task, per family
SHARED_POOLS = {"vit": ("token",), "swin": ("avg",)}


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
        if not isinstance(model, (PromptedViT, PromptedSwin)):
            raise ConfigError(
                f"task {name!r}: MultiTaskModel batches tasks on a ViT or Swin; a "
                f"{model.family} model runs on its own (e2vpt.load)"
            )
        if model.global_pool not in SHARED_POOLS[model.family]:
            raise ConfigError(
                f"task {name!r} pools by {model.global_pool!r}; a shared {model.family} batch "
                f"pools by {' or '.join(SHARED_POOLS[model.family])}: run this task on its "
                "own model"
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
        if isinstance(self.tasks[tasks[0]], PromptedSwin):
            features = self._swin_pass(images, groups)
        else:
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
                of = {t: _kv_at(models[t], layer) for t in groups}
                attn = block.attn
                extra = _kv_rows(of, groups, kv_slots, attn.num_heads, attn.head_dim, x)
            last = layer == len(bb.blocks) - 1
            x = _block(block, x, extra, mask, class_token_only=last)
        return bb.norm(x)[:, 0]

    def _swin_pass(self, images: torch.Tensor, groups: dict[str, list[int]]) -> torch.Tensor:
        """Swin: each sample's prompts joined to its windows, padded and masked; pooled
        as each task's model pools (the mean over its prompts and the last grid)."""
        bb = self.backbone
        batch = images.shape[0]
        models = {t: self.tasks[t] for t in groups}
        x = bb.patch_embed(images)
        carried = x.new_zeros(batch, 0, x.shape[-1])
        counts = dict.fromkeys(groups, 0)
        for s, stage in enumerate(bb.layers):
            x = stage.downsample(x)
            if s > 0:  # a new width: no prompt carries over
                carried, counts = x.new_zeros(batch, 0, x.shape[-1]), dict.fromkeys(groups, 0)
            for b, block in enumerate(stage.blocks):
                fresh = {}
                for t, rows in groups.items():
                    prompts = models[t].stage_prompts
                    new = None if prompts is None else prompts.at(s, b, len(rows))
                    if new is not None:
                        fresh[t], counts[t] = new.to(x.dtype), new.shape[1]
                slots = max(counts.values())
                prompts = x.new_zeros(batch, slots, x.shape[-1])
                prompts[:, : carried.shape[1]] = carried[:, :slots]
                for t, new in fresh.items():
                    prompts[groups[t]] = F.pad(new, (0, 0, 0, slots - new.shape[1]))
                kv_counts = {t: _kv_tokens(_kv_at(models[t], s, b)) for t in groups}
                kv_slots = max(kv_counts.values())
                if slots == 0 and kv_slots == 0:
                    x = block(x)
                    continue
                valid = torch.ones(batch, slots + kv_slots, dtype=torch.bool, device=x.device)
                kv = None
                if kv_slots:
                    attn = block.attn
                    head_dim = attn.qkv.out_features // 3 // attn.num_heads
                    of = {t: _kv_at(models[t], s, b) for t in groups}
                    kv = _kv_rows(of, groups, kv_slots, attn.num_heads, head_dim, x)
                for t, rows in groups.items():
                    valid[rows, counts[t] : slots] = False
                    valid[rows, slots + kv_counts[t] :] = False
                x, carried = prompted_block_forward(block, x, prompts, kv, valid)
        grid = bb.norm(x).flatten(1, 2)
        total = grid.sum(dim=1)
        size = torch.full((batch, 1), grid.shape[1], dtype=grid.dtype, device=grid.device)
        if carried.shape[1]:
            normed = bb.norm(carried)
            keep = torch.zeros(batch, carried.shape[1], 1, dtype=grid.dtype, device=grid.device)
            for t, rows in groups.items():
                keep[rows, : counts[t]] = 1
                size[rows] += counts[t]
            total = total + (normed * keep).sum(dim=1)
        return total / size


def _kv_at(model: PromptedModel, *where: int) -> KVPrompts | None:
    """The model's key-value prompts of block ``where`` (ViT: layer; Swin: stage, block)."""
    kv = getattr(model, "kv_prompts", None)
    for index in where:
        if kv is None:
            return None
        kv = kv[index]
    return kv


def _kv_tokens(prompts: KVPrompts | None) -> int:
    return 0 if prompts is None else int(prompts.tokens)


def _kv_rows(
    prompts_of: dict[str, KVPrompts | None],
    groups: dict[str, list[int]],
    slots: int,
    heads: int,
    head_dim: int,
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's key-value prompts for one attention, padded to ``slots``:
    keys and values (B, heads, slots, head_dim)."""
    keys = x.new_zeros(x.shape[0], heads, slots, head_dim)
    values = torch.zeros_like(keys)
    for t, rows in groups.items():
        prompts = prompts_of[t]
        if prompts is None:
            continue
        value = prompts.key_prompt if prompts.value_prompt is None else prompts.value_prompt
        keys[rows, :, : prompts.tokens] = prompts.key_prompt.to(x.dtype)
        values[rows, :, : prompts.tokens] = value.to(x.dtype)
    return keys, values


def _prompt_count(model: PromptedModel) -> int:
    prompts = model.visual_prompts
    if prompts is None or prompts.tokens == 0:
        return 0
    return int(prompts(0, 1).shape[1])


def _kv_count(model: PromptedModel) -> int:
    return _kv_tokens(_kv_at(model, 0))


def _block(
    block: nn.Module,
    x: torch.Tensor,
    extra: tuple[torch.Tensor, torch.Tensor] | None,
    mask: torch.Tensor,
    class_token_only: bool = False,
) -> torch.Tensor:
    """timm's pre-norm ``Block`` with per-sample extra keys/values and a key mask;
    ``class_token_only``: the class token's output alone (B, 1, D), all that class-token
    pooling reads (keys and values still come from every token)."""
    if type(block) is not Block or not isinstance(block.attn, Attention):
        raise ConfigError(
            f"MultiTaskModel needs timm's standard Block and Attention; the backbone has "
            f"{type(block).__name__}"
        )
    attended = _attention(block.attn, block.norm1(x), extra, mask, class_token_only)
    x = (x[:, :1] if class_token_only else x) + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _attention(
    attn: Attention,
    x: torch.Tensor,
    extra: tuple[torch.Tensor, torch.Tensor] | None,
    mask: torch.Tensor,
    class_token_only: bool = False,
) -> torch.Tensor:
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if class_token_only:
        q, N = q[:, :, :1], 1
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
