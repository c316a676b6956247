"""ONNX through onnxruntime against PyTorch eager, for an exported E²VPT model (10 visual
+ 5 key-value tokens, class-token last block): latency at batch 1 and throughput at a
larger batch, on the CPU. Random weights (the cost does not depend on them).

    uv run python benchmarks/export_speed.py                     # demo and ViT-B/16
    uv run python benchmarks/export_speed.py --backbones demo --batch 32

Prints a Markdown table and writes benchmarks/results/export_speed_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import e2vpt
from e2vpt.errors import exit_code_of
from e2vpt.export import deployable, export_model
from e2vpt.inference import model_data_settings
from e2vpt.reporting import format_table

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = {"demo": "demo_vit_cifar10", "vit-b16": "vit_base_patch16_224"}


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, batch: int, repeats: int, threads: int) -> list[dict[str, object]]:
    import onnxruntime

    torch.manual_seed(0)
    backbone = e2vpt.create_backbone(BACKBONES[name], pretrained=False)
    model = e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=10, kv_tokens=5), 100).eval()
    size, normalizer = model_data_settings(model)
    mean = tuple(normalizer.mean.flatten().div(255).tolist())
    std = tuple(normalizer.std.flatten().div(255).tolist())
    module = deployable(model, mean, std)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        report = export_model(module, size, "onnx", path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        rows = []
        for n in (1, batch):
            images = torch.rand(n, 3, size, size) * 255
            feed = {"images": images.numpy()}
            with torch.inference_mode():
                eager = timed(lambda x=images: module(x), repeats)
            ort = timed(lambda f=feed: session.run(None, f), repeats)
            for runtime, seconds in (("PyTorch eager", eager), ("onnxruntime", ort)):
                rows.append(
                    {
                        "backbone": name,
                        "runtime": runtime,
                        "batch": n,
                        "ms / batch": round(1000 * seconds, 2),
                        "img/s": round(n / seconds, 1),
                        "max abs Δlogit": f"{report.max_abs_logit_error:.1e}",
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for b in args.backbones for r in measure(b, args.batch, args.repeats, args.threads)]
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, CPU"
    table = format_table(rows)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_speed_cpu.json").write_text(
        json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / "export_speed_cpu.md").write_text(
        f"{machine}, torch {torch.__version__}\n\n{table}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "export_speed.py"))
