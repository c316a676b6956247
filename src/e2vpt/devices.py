"""Device names as settings take them (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` …),
checked without torch, so a config or flag with a mistyped device fails before torch is
imported. Turning a name into a ``torch.device`` that exists here is
:func:`e2vpt.inference.resolve_device`'s part."""

from __future__ import annotations

import re

from e2vpt.errors import ConfigError

# how the settings' help text names the usual choices
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
# the device types torch's parser takes (c10 DeviceType names)
DEVICE_TYPES = (
    "cpu",
    "cuda",
    "ipu",
    "xpu",
    "mkldnn",
    "opengl",
    "opencl",
    "ideep",
    "hip",
    "ve",
    "fpga",
    "maia",
    "xla",
    "lazy",
    "vulkan",
    "mps",
    "meta",
    "hpu",
    "mtia",
    "privateuseone",
)
# a type, then optionally :N with no leading zero (as torch parses device strings)
_DEVICE_NAME = re.compile(rf"(?:{'|'.join(DEVICE_TYPES)})(?::(?:0|[1-9][0-9]*))?")


def unknown_device(name: str) -> ConfigError:
    return ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N (e.g. cuda:0)")


def check_device_name(name: str) -> str:
    """``name`` when it is ``auto`` or a device name torch would parse; else the one-line
    error. Whether the device exists here is checked when a run starts."""
    if name == "auto" or _DEVICE_NAME.fullmatch(name):
        return name
    raise unknown_device(name)
