"""The torch-free device-name check agrees with torch's own parser."""

from __future__ import annotations

import pytest
import torch

from e2vpt.devices import DEVICE_TYPES, check_device_name
from e2vpt.errors import ConfigError
from e2vpt.inference import parse_device

NAMES = ["cpu", "cuda", "cuda:0", "cuda:10", "mps", "meta", "xpu:1", "cpu:0"]
NOT_NAMES = ["gpu", "CUDA", "cuda:", "cuda:01", "cuda:-1", "cuda:0:1", " cuda", "cuda:1a", ""]


@pytest.mark.parametrize("name", NAMES)
def test_a_name_torch_parses_passes(name: str) -> None:
    assert check_device_name(name) == name
    assert parse_device(name) == torch.device(name)


@pytest.mark.parametrize("name", NOT_NAMES)
def test_a_name_torch_rejects_is_one_error(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown device"):
        check_device_name(name)
    with pytest.raises(ConfigError, match="unknown device"):
        parse_device(name)


def test_every_listed_type_is_one_torch_knows() -> None:
    for kind in DEVICE_TYPES:
        if kind != "mkldnn":  # still parsed, with a deprecation warning
            assert torch.device(kind).type == kind
    assert check_device_name("auto") == "auto" and parse_device("auto") == torch.device("cpu")
