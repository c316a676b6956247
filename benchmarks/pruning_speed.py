"""Inference cost of E²VPT before and after pruning, against VPT-deep and the bare backbone.

    uv run python benchmarks/pruning_speed.py                 # CPU, demo + ViT-B/16 geometry
    uv run python benchmarks/pruning_speed.py --device cuda   # GPU (bf16 autocast)

Random weights (speed does not depend on them). Each row: tokens per block, tunable
parameters, prompt values stored, checkpoint size, forward GFLOPs per image, images/s
at --batch-size and latency at batch 1 (medians over interleaved rounds of
torch.utils.benchmark timings). The "masked" row is what the official code does:
pruned prompts multiplied by zero but kept in the sequence, so it costs as much as the
unpruned model.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

import e2vpt
from e2vpt.pruning import ImportanceScores, apply_plan, make_plan
from e2vpt.reporting import format_table, write_csv, write_json
from e2vpt.runs import ADAPTER_TENSORS_FILE

BACKBONES = {"demo": "demo_vit_cifar10", "vit-b16": "vit_base_patch16_224"}


def prune(
    model: e2vpt.PromptedViT, token_fraction: float, segment_fraction: float, mode: str = "remove"
) -> None:
    """Prune by random scores: which tokens go does not change the cost. ``zero``: the
    official code's pruning, dropped tokens kept in the sequence as zeros."""
    prompts = model.visual_prompts
    gen = torch.Generator().manual_seed(0)
    scores = ImportanceScores(
        torch.rand(prompts.tokens, generator=gen),
        torch.rand(prompts.tokens, prompts.mask_segments, generator=gen),
        "random",
        1,
        1,
    )
    apply_plan(model, make_plan(scores, token_fraction, segment_fraction, mode))


def variants(tokens: int, fraction: float) -> list[tuple[str, e2vpt.MethodConfig, Callable]]:
    kv = max(1, tokens // 2)
    e2 = e2vpt.E2VPTConfig(visual_tokens=tokens, kv_tokens=kv)
    pct = f"{fraction:.0%}"
    return [
        ("backbone + head (linear)", e2vpt.LinearConfig(), lambda m: None),
        (f"vpt-deep p={tokens}", e2vpt.VPTConfig(tokens=tokens, deep=True), lambda m: None),
        (f"e2vpt p={tokens} m={kv}", e2, lambda m: None),
        (f"e2vpt, {pct} tokens masked (official)", e2, lambda m: prune(m, fraction, 0.0, "zero")),
        (f"e2vpt, {pct} tokens pruned", e2, lambda m: prune(m, fraction, 0.0)),
        (f"e2vpt, {pct} tokens + 50% segments pruned", e2, lambda m: prune(m, fraction, 0.5)),
    ]


def tokens_per_block(model: e2vpt.PromptedViT, x: torch.Tensor) -> int:
    seen: list[int] = []
    # prompts enter through the family's block function, which calls the block's norm
    hook = model.backbone.blocks[0].norm1.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[1])
    )
    with torch.inference_mode():
        model(x[:1])
    hook.remove()
    return seen[0]


def gflops_per_image(model: torch.nn.Module, one: torch.Tensor) -> float:
    """Forward FLOPs of one image as torch's FlopCounterMode counts them (2 per MAC).
    Counted with autograd on: the counter's module tracker needs it."""
    with FlopCounterMode(display=False) as counter:
        model(one)
    return counter.get_total_flops() / 1e9


def repeats_for(fn: Callable[[], object], target: float) -> int:
    """How many calls make one timing sample last about ``target`` seconds."""
    start = time.perf_counter()
    fn()
    return max(1, round(target / max(time.perf_counter() - start, 1e-6)))


def sample(fn: Callable[[], object], number: int, threads: int) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.timeit(number).mean


def measure(args: argparse.Namespace) -> list[dict]:
    """Models of one backbone × token count are timed in interleaved rounds (median over
    rounds), so drift on a shared machine hits every row alike."""
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    cast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )
    rows = []
    for key in args.backbones:
        name = BACKBONES[key]
        for tokens in args.tokens:
            entries = []
            for label, config, modify in variants(tokens, args.fraction):
                backbone = e2vpt.create_backbone(name, pretrained=False)
                size = backbone.patch_embed.img_size
                model = e2vpt.wrap(backbone, config, num_classes=100)
                modify(model)
                counts = e2vpt.count_parameters(model)
                with tempfile.TemporaryDirectory() as tmp:
                    e2vpt.save(model, tmp)
                    kib = (Path(tmp) / ADAPTER_TENSORS_FILE).stat().st_size / 1024
                model = model.eval().to(device)
                batch = torch.randn(args.batch_size, 3, *size, device=device)
                one = batch[:1].contiguous()
                gflops = gflops_per_image(model, one)

                def run(x: torch.Tensor, model: torch.nn.Module = model) -> None:
                    with torch.inference_mode(), cast():
                        model(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                run(batch)  # warm-up
                on_batch = lambda run=run, batch=batch: run(batch)  # noqa: E731
                on_one = lambda run=run, one=one: run(one)  # noqa: E731
                entries.append(
                    {
                        "label": label,
                        "model": model,
                        "counts": counts,
                        "kib": kib,
                        "gflops": gflops,
                        "one": one,
                        "fns": (on_batch, on_one),
                        "numbers": (
                            repeats_for(on_batch, args.sample_time),
                            repeats_for(on_one, args.sample_time),
                        ),
                        "times": ([], []),
                    }
                )
            for round_index in range(args.rounds):
                for entry in entries:
                    for fn, number, times in zip(
                        entry["fns"], entry["numbers"], entry["times"], strict=True
                    ):
                        times.append(sample(fn, number, threads))
                print(f"  {key} p={tokens}: round {round_index + 1}/{args.rounds}", file=sys.stderr)
            for entry in entries:
                entry["ips"] = args.batch_size / statistics.median(entry["times"][0])
            baseline_ips = next(e["ips"] for e in entries if e["label"].startswith("e2vpt p="))
            for entry in entries:
                ips = entry["ips"]
                latency = statistics.median(entry["times"][1])
                prompts = entry["model"].visual_prompts
                rows.append(
                    {
                        "backbone": key,
                        "model": entry["label"],
                        "tokens/block": tokens_per_block(entry["model"], entry["one"]),
                        "tunable (no head)": entry["counts"].tunable_without_head,
                        "prompt values": 0 if prompts is None else prompts.stored_numel(),
                        "checkpoint KiB": round(entry["kib"], 1),
                        "GFLOPs/img": round(entry["gflops"], 3),
                        f"img/s (bs {args.batch_size})": round(ips, 2),
                        "latency bs1 ms": round(1000 * latency, 2),
                        "img/s vs e2vpt": round(ips / baseline_ips, 3),
                    }
                )
            del entries
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--tokens", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--fraction", type=float, default=0.5, help="token fraction pruned")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 CPU, 256 GPU")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--sample-time", type=float, default=0.5, help="seconds per sample")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pruning_speed"))
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 256 if args.device.startswith("cuda") else 8
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args)
    machine = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"\ndevice: {args.device} ({machine}); torch {torch.__version__}; fp32 on CPU, "
          "bf16 autocast on CUDA; random weights, 100 classes\n")  # fmt: skip
    print(format_table(rows))
    suffix = "gpu" if args.device.startswith("cuda") else "cpu"
    write_json(
        args.out.with_name(f"{args.out.name}_{suffix}.json"), {"machine": machine, "rows": rows}
    )
    write_csv(args.out.with_name(f"{args.out.name}_{suffix}.csv"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
