"""Tunable-only checkpoints: ``adapter.safetensors`` (tensors) + ``adapter.json`` (what to
rebuild). Both are written to temp files and renamed, so a crash never leaves a
half-written checkpoint behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from e2vpt.errors import CheckpointError
from e2vpt.families import backbone_signature
from e2vpt.files import atomic_write_bytes, atomic_write_text, check_writable
from e2vpt.model import PromptedModel, backbone_fingerprint
from e2vpt.notices import note
from e2vpt.runs import ADAPTER_CONFIG_FILE, ADAPTER_TENSORS_FILE, inspect_folder
from e2vpt.runs import read_adapter_config as read_config
from e2vpt.runs.integrity import check_tensor_file, tensor_bytes_hash, unverified_notice
from e2vpt.runs.schema import CHECKPOINT_FORMAT, method_config_of
from e2vpt.state import diff_state
from e2vpt.wrapping import wrap

FORMAT_VERSION = CHECKPOINT_FORMAT  # the format e2vpt.runs.schema reads
# the atomic file helpers and the recipe reader, re-exported for code written against
# this module (the file names live in e2vpt.runs)
__all__ = ["atomic_write_bytes", "atomic_write_text", "check_writable", "read_config"]


SPARSE_PREFIX = "visual_prompts."


def tunable_state(model: PromptedModel) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: trained parameters plus the method's own buffers (masks).

    A pruned model stores its visual prompts sparsely: the surviving values plus the
    index of the kept tokens and of their kept segments."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    prompts = model.visual_prompts
    if prompts is not None and prompts.pruned:
        del state["visual_prompts.prompts"]
        state.update({SPARSE_PREFIX + k: v for k, v in prompts.sparse_state().items()})
    elif prompts is not None and prompts.mask_segments is not None:
        state["visual_prompts.token_mask"] = prompts.token_mask
        state["visual_prompts.segment_mask"] = prompts.segment_mask
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _pruning_summary(model: PromptedModel) -> dict[str, Any] | None:
    prompts = model.visual_prompts
    if prompts is None or not prompts.pruned or prompts.kept_tokens is None:
        return None
    return {
        "mode": prompts.prune_mode,
        "original_tokens": prompts.original_tokens,
        "kept_tokens": prompts.kept_tokens.tolist(),
        "kept_segments_per_token": prompts.kept_segment_rows().sum(dim=1).tolist(),
        "stored_prompt_values": prompts.stored_numel(),
    }


def save(model: PromptedModel, directory: str | os.PathLike[str]) -> Path:
    """Write the tunable tensors and the rebuild recipe into ``directory``."""
    if not isinstance(model, PromptedModel):
        raise TypeError("e2vpt.save expects a model made by e2vpt.wrap")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = tunable_state(model)
    blob = safetensors_bytes(
        tensors, metadata={"format": "pt", "e2vpt_format": str(FORMAT_VERSION)}
    )
    config = model.method_config
    assert config is not None
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backbone": model.backbone_name,
        "backbone_weights": getattr(model.backbone, "e2vpt_backbone_weights", None),
        "backbone_signature": model.backbone_signature,
        "backbone_fingerprint": model.backbone_fingerprint,
        "global_pool": model.global_pool,
        "method": config.method_name,
        "method_config": config.to_dict(),
        "num_classes": model.num_classes,
        "input_norm": None if model.input_norm is None else list(map(list, model.input_norm)),
        "class_names": model.class_names,
        "masks_active": bool(model.visual_prompts and model.visual_prompts.masks_active),
        "pruning": _pruning_summary(model),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "sha256": tensor_bytes_hash(blob),
    }
    # tensors first, recipe last: a folder with the recipe has the tensors it hashes
    atomic_write_bytes(directory / ADAPTER_TENSORS_FILE, blob)
    atomic_write_text(directory / ADAPTER_CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def load(
    directory: str | os.PathLike[str],
    backbone: nn.Module | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
    check_fingerprint: bool = True,
) -> PromptedModel:
    """Rebuild a model from a checkpoint folder.

    Without ``backbone`` the one named in adapter.json is created (with its pretrained
    weights). ``num_classes`` given and different from the checkpoint's is an error.
    adapter.json is checked whole before anything is built (:mod:`e2vpt.runs.schema`),
    and the tensor file against the hash it records (a checkpoint without one loads
    with a notice that it cannot be verified)."""
    from e2vpt.backbones import create_backbone

    directory = Path(directory)
    meta = _finished_checkpoint(directory, num_classes)
    tensors = _read_tensors(directory, meta)
    if backbone is None:
        if not meta["backbone"]:
            raise CheckpointError(
                f"{ADAPTER_CONFIG_FILE} names no backbone; pass backbone= (the model it was "
                "trained on)"
            )
        backbone = create_backbone(meta["backbone"], weights=meta.get("backbone_weights"))
    _check_backbone(directory, meta, backbone, check_fingerprint)
    config = method_config_of(meta, directory / ADAPTER_CONFIG_FILE)
    model = wrap(
        backbone,
        config.for_restore(),
        int(meta["num_classes"]),
        backbone_name=meta["backbone"],
        global_pool=meta.get("global_pool"),
    )
    model.method_config = config
    tensors = {model.rename_legacy(name): value for name, value in tensors.items()}
    _restore_tensors(model, tensors, meta, directory / ADAPTER_TENSORS_FILE)
    if meta.get("input_norm"):
        mean, std = meta["input_norm"]
        model.input_norm = (tuple(mean), tuple(std))
    if meta.get("class_names") is not None:
        model.class_names = [str(c) for c in meta["class_names"]]
    return model.to(map_location)


def _finished_checkpoint(directory: Path, num_classes: int | None) -> dict[str, Any]:
    """The rebuild recipe of a finished checkpoint whose head fits ``num_classes``."""
    folder = inspect_folder(directory)
    if folder.kind == "incomplete":
        raise CheckpointError(
            f"{directory} holds {folder.describe()}, not a finished checkpoint; finish it with "
            f"`e2vpt train --resume --output-dir {directory}`"
        )
    meta = read_config(directory)
    saved_classes = int(meta["num_classes"])
    if num_classes is not None and num_classes != saved_classes:
        raise CheckpointError(
            f"checkpoint {directory} has a {saved_classes}-class head but {num_classes} "
            f"classes were asked for; evaluate on a dataset with {saved_classes} classes or "
            "train a new head"
        )
    return meta


def _read_tensors(directory: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The stored tensors, checked against what the recipe records (their shapes, the
    file's hash; a recipe without a hash is said to be unverifiable)."""
    tensors_path = directory / ADAPTER_TENSORS_FILE
    if not check_tensor_file(directory, meta):
        note(unverified_notice(directory))
    try:
        return load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{tensors_path} is corrupt: {err}") from err


def _check_backbone(
    directory: Path, meta: dict[str, Any], backbone: nn.Module, check_fingerprint: bool
) -> None:
    """The backbone must be the architecture, and the weights, the run trained on."""
    signature = backbone_signature(backbone)
    saved_signature = meta.get("backbone_signature")
    if saved_signature and signature != saved_signature:
        diff = {
            k: (saved_signature.get(k), signature.get(k))
            for k in signature
            if saved_signature.get(k) != signature.get(k)
        }
        raise CheckpointError(
            f"checkpoint {directory} was trained on backbone {meta['backbone']!r} but the "
            f"backbone given differs (checkpoint vs given: {diff}). Pass the backbone it was "
            f"trained on, or omit backbone= to rebuild it from {ADAPTER_CONFIG_FILE}"
        )
    fingerprint = backbone_fingerprint(backbone)
    saved_fp = meta.get("backbone_fingerprint")
    if check_fingerprint and saved_fp and fingerprint and fingerprint != saved_fp:
        raise CheckpointError(
            f"checkpoint {directory} was trained on {meta['backbone']!r} with other pretrained "
            "weights than the backbone given (weight fingerprints differ). Load the same "
            "weights, or pass check_fingerprint=False if you know what you are doing"
        )


def _restore_tensors(
    model: PromptedModel, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path
) -> None:
    """Copy the stored tensors into the rebuilt model; pruned prompts are first pruned
    to the stored structure, then filled from their sparse values."""
    sparse = SPARSE_PREFIX + "kept_tokens" in tensors
    if sparse:
        prompts = model.visual_prompts
        if prompts is None or prompts.mask_segments is None:
            raise CheckpointError(
                f"{path} holds pruned visual prompts but method {meta['method']!r} "
                "has no prunable prompts; the checkpoint is corrupt"
            )
        try:
            prompts.prune(
                tensors[SPARSE_PREFIX + "kept_tokens"],
                tensors.get(SPARSE_PREFIX + "kept_segments", torch.empty(0)),
                mode=(meta.get("pruning") or {}).get("mode") or "remove",
            )
        except ValueError as err:
            raise CheckpointError(f"{path}: invalid pruning structure: {err}") from err
    diff = diff_state(tunable_state(model), tensors)
    if diff:
        raise CheckpointError(
            f"{path} does not fit method {meta['method']!r} on this backbone: {diff.describe(8)}"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for key, value in tensors.items():
            if sparse and key.startswith(SPARSE_PREFIX):
                continue
            target = params.get(key, buffers.get(key))
            target.copy_(value.to(target.dtype))
    if sparse:
        assert model.visual_prompts is not None
        sparse_state = {k[len(SPARSE_PREFIX) :]: v for k, v in tensors.items()}
        model.visual_prompts.load_sparse_state(sparse_state)
    elif model.visual_prompts is not None:
        model.visual_prompts.masks_active = bool(meta.get("masks_active", False))
