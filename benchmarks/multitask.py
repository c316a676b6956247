"""Many E²VPT tasks on one backbone: a mixed batch through ``MultiTaskModel`` against the
same images grouped by task (one model call per task) and against one task's batch
alone. Random weights; tasks differ in prompt counts (8–12 visual, 3–5 key-value
tokens) and class counts.

    uv run python benchmarks/multitask.py                    # demo and ViT-B/16, CPU
    uv run python benchmarks/multitask.py --backbones demo --batch 64 --device cuda

Rows: tasks in the batch (1, 4, 16), img/s of (a) the mixed batch, (b) grouped calls,
(single) one task's model on a batch of the same size; and the memory the weights take:
the shared model (backbone + every task's parts) against one full copy per task.
Writes benchmarks/results/multitask_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import e2vpt
from e2vpt.errors import exit_code_of
from e2vpt.multitask import MultiTaskModel
from e2vpt.reporting import format_table

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = {"demo": "demo_vit_cifar10", "vit-b16": "vit_base_patch16_224"}


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tensor_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct parameters and buffers the modules hold."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def measure(name: str, batch: int, repeats: int, device: torch.device) -> list[dict[str, object]]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    backbone = e2vpt.create_backbone(BACKBONES[name], pretrained=False).to(device)
    size = backbone.patch_embed.img_size[0]
    tasks = {
        f"t{i}": e2vpt.wrap(
            backbone, e2vpt.E2VPTConfig(visual_tokens=8 + i % 5, kv_tokens=3 + i % 3), 10 + i
        )
        .to(device)
        .eval()
        for i in range(16)
    }
    full_copy = sum(p.numel() * p.element_size() for p in backbone.parameters())
    rows = []
    images = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        single = timed(lambda: tasks["t0"](images), repeats, sync)
        for count in (1, 4, 16):
            names = list(tasks)[:count]
            multi = MultiTaskModel(backbone, {n: tasks[n] for n in names})
            assignment = [names[i % count] for i in range(batch)]
            groups = {n: [i for i, t in enumerate(assignment) if t == n] for n in names}
            mixed = timed(lambda m=multi, a=assignment: m(images, a), repeats, sync)
            grouped = timed(
                lambda g=groups: [tasks[n](images[rows]) for n, rows in g.items()], repeats, sync
            )
            shared = tensor_bytes([multi])
            rows.append(
                {
                    "backbone": name,
                    "tasks": count,
                    "images / task": batch // count,
                    "(a) mixed img/s": round(batch / mixed, 1),
                    "(b) grouped img/s": round(batch / grouped, 1),
                    "single-task img/s": round(batch / single, 1),
                    "(a) / single": round(single / mixed, 2),
                    "(a) / (b)": round(grouped / mixed, 2),
                    "weights MiB, shared": round(shared / 2**20, 1),
                    "weights MiB, a copy per task": round(count * full_copy / 2**20, 1),
                    "shared / one model": round(shared / tensor_bytes([tasks["t0"]]), 3),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [r for b in args.backbones for r in measure(b, args.batch, args.repeats, device)]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    table = format_table(rows)
    print(f"{where}, batch {args.batch}\n\n{table}")
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"multitask_{device.type}"
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": where, "batch": args.batch, "rows": rows}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(f"{where}, batch {args.batch}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "multitask.py"))
