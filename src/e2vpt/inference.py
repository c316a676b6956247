"""Running a model on images, for training and for everything after it: the device,
the precision, the input normalisation a model expects, and batched prediction."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from timm.data import resolve_data_config
from torch import nn

from e2vpt.data import Split
from e2vpt.devices import check_device_name, unknown_device
from e2vpt.errors import ConfigError
from e2vpt.model import PromptedModel


def parse_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (… any name torch knows) as a device;
    a name torch does not know is a clear error (:func:`e2vpt.devices.check_device_name`
    checks the name without torch). ``auto`` is the CPU here."""
    if check_device_name(name) == "auto":
        return torch.device("cpu")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise unknown_device(name) from None


def resolve_device(name: str) -> torch.device:
    """The device a run uses; one that does not exist here is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"`device` {name}: CUDA is not available on this machine; use cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"`device` {name}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0 … cuda:{torch.cuda.device_count() - 1}"
            )
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Normalizer(nn.Module):
    """uint8 images → float, scaled with the backbone's own mean/std. Images stored larger
    than the input (FGVC keeps 256/224 of it for random crops) are centre-cropped."""

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], image_size: int | None = None
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if size is not None and (x.shape[-1] > size or x.shape[-2] > size):
            top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x = x[..., top : top + size, left : left + size]
        return (x.float() - self.mean) / self.std


InputNorm = tuple[tuple[float, ...], tuple[float, ...]]


def data_settings(backbone: nn.Module, norm: InputNorm | None = None) -> tuple[int, Normalizer]:
    """The backbone's input size and a normaliser: with ``norm`` (mean, std), or the
    backbone's own statistics."""
    cfg = resolve_data_config({}, model=backbone)
    size = int(cfg["input_size"][-1])
    mean, std = norm if norm is not None else (tuple(cfg["mean"]), tuple(cfg["std"]))
    return size, Normalizer(tuple(mean), tuple(std), size)


def model_data_settings(model: PromptedModel) -> tuple[int, Normalizer]:
    """Input size and normaliser a trained model expects: the statistics it was trained
    with (stored in its checkpoint), else its backbone's own (runs saved before e2vpt
    recorded them trained with those)."""
    return data_settings(model.backbone, model.input_norm)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def predict(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    device: torch.device,
    precision: str,
    batch_size: int = 256,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    outs = []
    for idx in batches(len(inputs), batch_size, None):
        x = inputs[idx].to(device, non_blocking=True)
        if prepare is not None:
            x = prepare(x)
        with autocast(device, precision):
            outs.append(forward(x).float())
    return torch.cat(outs)


def top1(
    model: PromptedModel,
    split: Split,
    normalizer: Normalizer,
    device: torch.device,
    precision: str,
    batch_size: int = 256,
) -> float:
    model.eval()
    logits = predict(model, split.images, device, precision, batch_size, normalizer)
    return (logits.argmax(-1).cpu() == split.labels).float().mean().item()
