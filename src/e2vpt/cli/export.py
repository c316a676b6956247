"""``e2vpt export``: a run's whole model as one ONNX / TorchScript / ExportedProgram file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2vpt.cli.shared_flags import add_weights_flag

NAME = "export"
HELP = "write a run's model as one ONNX / TorchScript / ExportedProgram file"
INTERRUPTED = "The output file was not written (an existing one is untouched)."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="The whole model (backbone, prompts, head) and its input normalisation "
        "in one file: input float32 (N, 3, S, S) RGB pixels 0-255, resized as `e2vpt "
        "predict` resizes; output logits. The file is run on sample inputs and compared "
        "with PyTorch before it is kept.",
    )
    parser.add_argument("run_dir", type=Path, help="the run folder to export")
    parser.add_argument(
        "--format",
        default="onnx",
        help="onnx | exported-program (.pt2, torch.export) | torchscript (deprecated by "
        "PyTorch: kept as long as torch keeps torch.jit; onnx and exported-program are the "
        "formats to build on)",
    )
    parser.add_argument("--output", type=Path, help="file to write (default: RUN_DIR/model.<ext>)")
    parser.add_argument("--batch", default="dynamic", help="dynamic, or a fixed batch size")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_weights_flag(parser)
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.backbones import backbone_for_run
    from e2vpt.checkpoint import load
    from e2vpt.errors import ConfigError
    from e2vpt.export import EXPORT_FORMATS, check_output, deployable, export_model, parse_batch
    from e2vpt.inference import model_data_settings
    from e2vpt.reporting import format_table
    from e2vpt.runs import read_adapter_config, require_complete

    if args.format not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown --format {args.format!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    output = args.output or args.run_dir / f"model{EXPORT_FORMATS[args.format]}"
    batch = parse_batch(args.batch)
    check_output(output, args.format, args.overwrite)
    require_complete(args.run_dir, "export")
    meta = read_adapter_config(args.run_dir)
    model = load(args.run_dir, backbone=backbone_for_run(meta, args.weights, args.run_dir))
    size, normalizer = model_data_settings(model.eval())
    mean = tuple(normalizer.mean.flatten().div(255).tolist())
    std = tuple(normalizer.std.flatten().div(255).tolist())
    print(f"exporting {args.run_dir} ({meta['method']}) as {args.format} …", file=sys.stderr)
    report = export_model(
        deployable(model, mean, std), size, args.format, output, batch, args.opset, args.overwrite
    )
    row = {
        "format": report.format,
        "file": report.output,
        "MiB": round(report.bytes / 2**20, 2),
        "batch": report.batch,
        "input": f"float32 (N, 3, {size}, {size}), 0-255",
        "max |Δlogit| vs PyTorch": f"{report.max_abs_logit_error:.2e}",
        "s": report.seconds,
    }
    print(format_table([row]))
    return 0
