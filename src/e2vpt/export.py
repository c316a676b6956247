"""``e2vpt export``: a run folder as one file a deployment stack runs without e2vpt.

The file holds the whole model (backbone, prompts — pruned ones with their reduced
count —, head) and its input normalisation: input ``images`` float32 (N, 3, S, S), RGB
pixel values 0–255 resized as ``e2vpt predict`` resizes them; output ``logits`` (N,
classes). Every export is checked before it is kept: the file is run on sample inputs
(ONNX through onnxruntime) and compared with PyTorch."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2vpt.errors import ConfigError, ExportError
from e2vpt.files import check_writable, publish, temp_path
from e2vpt.model import PromptedModel
from e2vpt.notices import note

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
MAX_LOGIT_ERROR = 1e-4  # fp32: what an export may differ from PyTorch eager by
# TorchScript stays as long as the torch we support keeps torch.jit; its successors are
# the ExportedProgram (.pt2) and ONNX
TORCHSCRIPT_NOTICE = (
    "TorchScript is deprecated by PyTorch (torch.jit): its successors are `format` "
    "exported-program (.pt2, torch.export.load) and onnx; e2vpt keeps torchscript as long "
    "as PyTorch does"
)
TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"  # torch's FutureWarning


class Deployable(nn.Module):
    """0–255 RGB pixels → logits: the normalisation the model was trained with, then
    the model."""

    def __init__(self, model: PromptedModel, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", std.view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@dataclass
class ExportReport:
    format: str
    output: str
    bytes: int
    batch: str
    max_abs_logit_error: float
    checked_batches: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_batch(value: str) -> int | None:
    """``dynamic`` → None, else a fixed batch size >= 1."""
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise ConfigError(f"`batch` must be 'dynamic' or a batch size >= 1, got {value!r}")
    return batch


def check_output(output: Path, fmt: str, overwrite: bool) -> None:
    """Before any work: a known format, an output that is new (or --overwrite) and
    writable."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    if output.is_dir():
        raise ConfigError(f"`output` {output} is a folder; name the file to write")
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} exists; pass `overwrite` to replace it or another `output`")
    check_writable(output.parent, flag="`output`")
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ConfigError(
                "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'e2vpt[export]'"
            ) from None


def deployable(model: PromptedModel, mean: tuple[float, ...], std: tuple[float, ...]) -> Deployable:
    module = Deployable(model, torch.tensor(mean), torch.tensor(std)).eval()
    return module.requires_grad_(False)


def export_model(
    module: Deployable,
    image_size: int,
    fmt: str,
    output: Path,
    batch: int | None = None,
    opset: int | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export, check against PyTorch, then publish ``output`` (never half-written: a
    failed export or check leaves no file)."""
    check_output(output, fmt, overwrite)
    if fmt == "torchscript":
        note(TORCHSCRIPT_NOTICE)
    start = time.perf_counter()
    if any(t.device.type != "cpu" for t in (*module.parameters(), *module.buffers())):
        # the file runs anywhere; exported and checked from a CPU copy, the caller's
        # model stays where it is
        module = copy.deepcopy(module).cpu()
    sample = _images(batch or 2, image_size, seed=0)
    tmp = temp_path(output, suffix=f".tmp{EXPORT_FORMATS[fmt]}")
    try:
        try:
            with warnings.catch_warnings(), _quiet("onnxscript"):
                warnings.simplefilter("ignore")  # the exporters' advice is for their developers
                _write(module, sample, fmt, tmp, dynamic=batch is None, opset=opset)
        except Exception as err:  # the exporters raise many types; the message is what helps
            method = module.model.method_name
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            others = ", ".join(f for f in EXPORT_FORMATS if f != fmt)
            raise ExportError(
                f"{fmt} cannot express this {method} model: {first[:300]}; try `format` {others}"
            ) from err
        checked = [batch] if batch is not None else [1, 3]
        error = 0.0
        run = _runner(fmt, tmp)
        for n in checked:
            images = _images(n, image_size, seed=n)
            with torch.no_grad():
                expected = module(images)
            got = run(images)
            error = max(error, float((got - expected).abs().max()))
        if not error <= MAX_LOGIT_ERROR:
            raise ExportError(
                f"the {fmt} export differs from PyTorch by up to {error:.2e} in the logits "
                f"(allowed {MAX_LOGIT_ERROR:g}); nothing was written. Try another `format`"
            )
        size = tmp.stat().st_size
        publish(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        format=fmt,
        output=str(output),
        bytes=size,
        batch="dynamic" if batch is None else str(batch),
        max_abs_logit_error=error,
        checked_batches=checked,
        seconds=round(time.perf_counter() - start, 2),
    )


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """The logger ``name`` keeps its warnings to itself (onnxscript's optimizer logs one
    per rotary embedding's split it does not fold)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 255.0


def _write(
    module: nn.Module, sample: torch.Tensor, fmt: str, path: Path, dynamic: bool, opset: int | None
) -> None:
    dims = {"images": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic else None
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, sample, check_trace=False)
        traced.save(str(path))
    elif fmt == "exported-program":
        program = torch.export.export(module, (sample,), dynamic_shapes=dims)
        torch.export.save(program, str(path))
    else:
        program = torch.export.export(module, (sample,), dynamic_shapes=dims)
        torch.onnx.export(
            program,
            (sample,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _runner(fmt: str, path: Path) -> Any:
    """The exported file, loaded back by its own runtime: images → logits (CPU)."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            # what torch says on every load; export_model has told the user, once, in
            # words that name the successors (torch's 3.14 warning still shows)
            warnings.filterwarnings("ignore", TORCHSCRIPT_DEPRECATED, FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        return lambda x: loaded(x).detach()
    program = torch.export.load(str(path)).module()
    return lambda x: program(x).detach()


def file_size(path: str | os.PathLike[str]) -> str:
    size = Path(path).stat().st_size
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
