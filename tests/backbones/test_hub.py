"""A hub backbone without a network: one request, no retries, then the cached file or
one line at once (huggingface_hub alone retries each file five times, 8 s apart at the
end). No test here reaches the network: every hub call is simulated."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

import e2vpt
from e2vpt.backbones import hub
from e2vpt.cli.main import main
from e2vpt.errors import BackboneError

NAME = "vit_tiny_patch16_224.augreg_in21k"
HF_WEIGHTS = "pytorch_model.bin"


class ConnectError(OSError):
    """What httpx raises when the name does not resolve."""


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hub requests made (each fails as without a network); nothing is cached, and
    timm is never asked to fetch (it would retry)."""
    made: list[str] = []

    def no_network(url: str, **kwargs: object) -> None:
        made.append(url)
        raise ConnectError("[Errno -2] Name or service not known")

    def not_cached(*args: object, **kwargs: object) -> None:
        return None

    def fetch(*args: object, **kwargs: object) -> None:
        raise AssertionError("timm was asked to fetch from an unreachable hub")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", not_cached)
    monkeypatch.setattr(timm, "create_model", fetch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return made


def test_an_unreachable_hub_fails_at_the_first_connection_error(requests: list[str]) -> None:
    with pytest.raises(BackboneError) as caught:
        e2vpt.create_backbone(NAME)
    assert len(requests) == 1 and requests[0].endswith(f"{NAME}/resolve/main/model.safetensors")
    message = str(caught.value)
    assert message.startswith(f"could not get pretrained weights for {NAME!r} (the hub cannot ")
    assert "ConnectError: [Errno -2] Name or service not known" in message
    assert (
        "not in the local hub cache" in message and "local weights file with `weights`" in message
    )


def test_hf_hub_offline_fails_without_any_request(
    requests: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported
    with pytest.raises(BackboneError, match=r"\(HF_HUB_OFFLINE is set and they are not in"):
        e2vpt.create_backbone(NAME)
    assert requests == []
    # the command line: one line, exit 2, the setting named as its flag
    argv = ["train", "--backbone", NAME, "--output-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("e2vpt train: error: could not get pretrained weights")
    assert "local weights file with --weights" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "run").exists()


def test_cached_weights_load_offline_when_the_hub_is_unreachable(
    requests: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from timm.models import create_model as timm_create  # timm.create_model is the fixture's

    torch.manual_seed(0)
    saved = timm_create(NAME, pretrained=False).state_dict()
    cached = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, str(cached))
    asked: list[tuple[str, str | None]] = []

    def in_cache(repo: str, filename: str, **kwargs: object) -> str | None:
        asked.append((repo, filename))
        return str(cached) if filename == "model.safetensors" else None

    def create(name: str, **kwargs: object) -> torch.nn.Module:
        assert kwargs["pretrained_cfg_overlay"] == {"file": str(cached)}
        return timm_create(name, **kwargs)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", in_cache)
    monkeypatch.setattr(timm, "create_model", create)
    model = e2vpt.create_backbone(NAME)
    assert asked == [(f"timm/{NAME}", "model.safetensors")] and len(requests) == 1
    assert torch.equal(model.pos_embed, saved["pos_embed"])


def test_a_hub_that_answers_is_left_to_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    class NotFound(HfHubHTTPError):  # a 404: an answer, the hub is there
        def __init__(self) -> None:
            Exception.__init__(self, "404 Client Error")

    def answers(url: str, **kwargs: object) -> None:
        raise NotFound

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", answers)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub.hub_overlay(NAME) is None
    # weights that do not come from the hub: nothing is asked
    assert hub.hub_weights(e2vpt.DEMO_BACKBONE) is None
    weights = hub.hub_weights(NAME)
    assert weights == hub.HubWeights(f"timm/{NAME}", None, ("model.safetensors", HF_WEIGHTS))
