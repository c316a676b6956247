"""What a training step and an inference pass cost, per method, against full fine-tuning
and the physical floor (issue 7). Every row runs in its own process, so peak memory
(CUDA: max allocated; CPU: peak RSS) is that row's alone.

    uv run python benchmarks/speed.py --backbones demo vit-b16 --batch-sizes 8
    uv run python benchmarks/speed.py --device cuda --precision bf16 --batch-sizes 64 128

Reference rows, same process layout: `timm full FT` (plain timm model, AdamW on every
weight), `frozen forward` (no grad), and `floor` = frozen forward + backward to the input
activations with no weight gradients — the least any prompt method must pay. Random
weights (the cost does not depend on them). Prints a Markdown table per backbone × batch
and writes benchmarks/results/speed_<device>_<backbones>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
BACKBONES = {"demo": "demo_vit_cifar10", "vit-b16": "vit_base_patch16_224"}
# (row name, method, options): VPT/E²VPT at the papers' defaults (p = 10, m = 5)
ROWS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("timm full FT", None, {}),
    ("frozen forward", None, {}),
    ("floor", None, {}),
    ("linear", "linear", {}),
    ("bias", "bias", {}),
    ("full", "full", {}),
    ("vpt-shallow", "vpt-shallow", {"tokens": 10}),
    ("vpt-deep", "vpt-deep", {"tokens": 10}),
    ("e2vpt", "e2vpt", {"visual_tokens": 10, "kv_tokens": 5}),
    ("e2vpt p=50 pruned→25", "e2vpt", {"visual_tokens": 50, "kv_tokens": 5, "prune_to": 25}),
    ("e2vpt p=25 built", "e2vpt", {"visual_tokens": 25, "kv_tokens": 5}),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Any, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row, in this process (the parent runs each in a fresh one)."""
    import timm

    import e2vpt
    from e2vpt.training.config import TrainConfig
    from e2vpt.training.optim import build_optimizer
    from e2vpt.training.trainer import autocast

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    precision = spec["precision"]
    name = BACKBONES[spec["backbone"]]
    backbone = timm.create_model(name, pretrained=False)
    size = backbone.pretrained_cfg["input_size"][-1]
    batch = spec["batch"]
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    row, method, options = spec["row"], spec["method"], dict(spec["options"])
    if method is None:
        model = backbone
        model.reset_classifier(100)
    else:
        prune_to = options.pop("prune_to", None)
        model = e2vpt.wrap(backbone, e2vpt.method_config(method, options), 100)
        if prune_to is not None:
            prompts = model.visual_prompts
            kept = torch.linspace(0, prompts.tokens - 1, prune_to).round().long()
            prompts.prune(kept, torch.ones(prune_to, prompts.mask_segments))
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward_loss(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            logits = model(inputs)
        return F.cross_entropy(logits.float(), y)

    train_seconds = None
    if row == "frozen forward":
        model.eval()
    elif row == "floor":
        model.eval().requires_grad_(False)
        leaf = x.clone().requires_grad_(True)

        def step() -> None:
            forward_loss(leaf).backward()
            leaf.grad = None

        train_seconds = _median_seconds(step, spec["steps"], spec["warmup"], device)
    else:
        if method is None:  # plain timm full fine-tuning, as the papers' baseline
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        else:
            model.train()
            cfg = TrainConfig(method=method, device=str(device), precision=precision)
            config = model.method_config
            assert config is not None
            optimizer = build_optimizer(model, cfg, config.optimizer, device)

        def step() -> None:
            loss = forward_loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        train_seconds = _median_seconds(step, spec["steps"], spec["warmup"], device)
    model.eval()

    @torch.no_grad()
    def infer() -> None:
        with autocast(device, precision):
            model(x)

    infer_seconds = _median_seconds(infer, spec["steps"], spec["warmup"], device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        **{k: spec[k] for k in ("backbone", "batch", "row")},
        "train_step_ms": None if train_seconds is None else 1000 * train_seconds,
        "train_img_s": None if train_seconds is None else batch / train_seconds,
        "infer_img_s": batch / infer_seconds,
        "peak_mib": peak / 2**20,
    }


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--row", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the median over rounds."""
    out = dict(samples[0])
    for key in ("train_step_ms", "train_img_s", "infer_img_s", "peak_mib"):
        values = [s[key] for s in samples if s[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["rounds"] = len(samples)
    return out


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["row"]: r for r in rows}
    full = by_name["full"]["train_step_ms"]
    floor = by_name["floor"]["train_step_ms"]
    frozen = by_name["frozen forward"]["infer_img_s"]
    built = by_name["e2vpt p=25 built"]["infer_img_s"]
    table = []
    for r in rows:
        step = r["train_step_ms"]
        cells = {
            "row": r["row"],
            "train step ms": step,
            "train img/s": r["train_img_s"],
            "× full step": None if step is None else step / full,
            "× floor": None if step is None else step / floor,
            "infer img/s": r["infer_img_s"],
            "infer time × frozen fwd": frozen / r["infer_img_s"],
            "peak MiB": r["peak_mib"],
        }
        if r["row"] == "e2vpt p=50 pruned→25":
            cells["row"] += f" (infer time × built: {built / r['infer_img_s']:.3f})"
        table.append(cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--backbones", nargs="+", default=["demo", "vit-b16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (allocator, kernels)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="every row once per round, rounds interleaved; the median round is reported",
    )
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure_row(json.loads(args.row))))
        return
    from tqdm.auto import tqdm

    from e2vpt.reporting import format_table

    results: list[dict[str, Any]] = []
    markdown = []
    jobs = [(b, n) for b in args.backbones for n in args.batch_sizes]
    bar = tqdm(total=len(jobs) * len(ROWS) * args.rounds, desc="speed", unit="row")
    for backbone, batch in jobs:
        rounds: list[list[dict[str, Any]]] = []
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit every row
            measured = []
            for row, method, options in ROWS:
                spec = dict(
                    backbone=backbone,
                    batch=batch,
                    row=row,
                    method=method,
                    options=options,
                    device=args.device,
                    precision=args.precision,
                    steps=args.steps,
                    warmup=args.warmup,
                )
                measured.append(run_row(spec))
                bar.update(1)
            rounds.append(measured)
        rows = [median_row([r[i] for r in rounds]) for i in range(len(ROWS))]
        results += rows
        title = (
            f"### {backbone}, batch {batch}, {args.device}, {args.precision}, "
            f"median of {args.rounds} rounds × {args.steps} steps"
        )
        markdown.append(f"{title}\n\n{format_table(with_ratios(rows), float_digits=2)}\n")
    bar.close()
    text = "\n".join(markdown)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = f"speed_{args.device.split(':')[0]}_{'_'.join(args.backbones)}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
