"""Pretrained weights from the Hugging Face hub, with a quick answer when it cannot be
reached.

With nothing cached, huggingface_hub meets a failed request by retrying it five times
with growing pauses (1, 2, 4, 8, 8 s), and timm asks for two files in turn (the
safetensors file, then the pickle): without a network, ``timm.create_model(...,
pretrained=True)`` took 45 s or more to fail. :func:`hub_overlay` asks the hub once
first (one request, no retries): a hub that answers is left to timm as before; one that
does not, or ``HF_HUB_OFFLINE``, means the weights file already in the local hub cache,
loaded as a local file, or an error at once."""

from __future__ import annotations

import os
from dataclasses import dataclass

# the file name timm asks the hub for unless a model's config names another
HF_WEIGHTS_NAME = "pytorch_model.bin"
# huggingface_hub's spelling of "true" for its environment switches
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubUnreachable(Exception):
    """The hub cannot be reached and the weights are not cached (the reason, in words)."""


@dataclass(frozen=True)
class HubWeights:
    """Where a timm model's pretrained weights live on the hub: the repository, its
    revision, and the file names timm tries, in its order."""

    repo: str
    revision: str | None
    filenames: tuple[str, ...]


def hub_weights(name: str) -> HubWeights | None:
    """Where timm would fetch ``name``'s weights from on the hub; None when they come from
    elsewhere (a URL, a local file, a model with no pretrained config)."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - no config is the answer, whatever timm raises
        return None
    if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict:
        return None
    if cfg.source == "local-dir":
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or HF_WEIGHTS_NAME
    return HubWeights(repo, revision or None, (*_safe_alternatives(filename), filename))


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    """The safetensors files timm tries before a pickle of that name."""
    if filename == HF_WEIGHTS_NAME:
        return ("model.safetensors",)
    if filename == "open_clip_pytorch_model.bin":
        return ("open_clip_model.safetensors",)
    if filename.endswith(".bin"):
        return (filename[: -len(".bin")] + ".safetensors",)
    return ()


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now: huggingface_hub reads
    it once, at import."""
    from huggingface_hub import constants

    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    set_now = any(os.environ.get(var, "").upper() in _TRUE for var in variables)
    return set_now or constants.is_offline_mode()


def unreachable(weights: HubWeights) -> str | None:
    """Why the hub does not answer (one request, no retries), or None when it answers:
    any HTTP answer counts, a 404 included."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError
    url = huggingface_hub.hf_hub_url(weights.repo, weights.filenames[0], revision=weights.revision)
    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return None  # an answer: the hub is there
    except Exception as err:  # noqa: BLE001 - connection, DNS, TLS, timeout, offline mode
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first}" if first else type(err).__name__
    return None


def cached_file(weights: HubWeights, cache_dir: str | None = None) -> str | None:
    """The first of the weights' files already in the local hub cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    for filename in weights.filenames:
        found = try_to_load_from_cache(
            weights.repo, filename, cache_dir=cache_dir, revision=weights.revision
        )
        if isinstance(found, str):
            return found
    return None


def hub_overlay(name: str, cache_dir: str | None = None) -> dict[str, str] | None:
    """What ``timm.create_model(name, pretrained=True)`` needs so that it does not wait on
    a hub it cannot reach: None (let timm fetch as it does: the hub answers, or the
    weights come from elsewhere) or ``{"file": path}`` (its ``pretrained_cfg_overlay``:
    the cached file, loaded offline). Raises :class:`HubUnreachable` when the hub cannot
    be reached (or ``HF_HUB_OFFLINE`` is set) and nothing is cached."""
    weights = hub_weights(name)
    if weights is None:
        return None
    is_offline = offline()
    reason = None if is_offline else unreachable(weights)
    if not is_offline and reason is None:
        return None
    cached = cached_file(weights, cache_dir)
    if cached is not None:
        return {"file": cached}
    why = "HF_HUB_OFFLINE is set" if is_offline else f"the hub cannot be reached ({reason})"
    raise HubUnreachable(f"{why} and they are not in the local hub cache")
