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
import os
import platform
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
    # what the class-token last block buys: the same model computing every token there
    ("e2vpt, every token in last block", "e2vpt", {"visual_tokens": 10, "kv_tokens": 5}),
]
# opt-in rows (--levers): each lever's effect on the e2vpt row
LEVER_ROWS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("e2vpt + grad checkpointing", "e2vpt", {"visual_tokens": 10, "kv_tokens": 5}),
    ("e2vpt + torch.compile", "e2vpt", {"visual_tokens": 10, "kv_tokens": 5}),
]
# glibc malloc: keep freed memory instead of returning it to the OS, so every step after
# warm-up reuses pages instead of faulting fresh ones in (measured: this is what made
# the same work differ by up to 20 % between row processes)
STEADY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**25), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


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
        if row == "e2vpt, every token in last block":
            model.class_token_shortcut = False
        if row == "e2vpt + grad checkpointing":
            model.grad_checkpointing = True
    model.to(device)
    if row == "e2vpt + torch.compile":
        model.compile()
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


def run_row(spec: dict[str, Any], steady_alloc: bool) -> dict[str, Any]:
    env = {**os.environ, **(STEADY_ENV if steady_alloc else {})}
    done = subprocess.run(
        [sys.executable, __file__, "--row", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"row {spec['row']!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the median over rounds, and the spread (max/min − 1) for the times."""
    out = dict(samples[0])
    for key in ("train_step_ms", "train_img_s", "infer_img_s", "peak_mib"):
        values = [s[key] for s in samples if s[key] is not None]
        out[key] = statistics.median(values) if values else None
        out[f"{key}_all"] = values
    for key in ("train_step_ms", "infer_img_s"):
        values = out[f"{key}_all"]
        out[f"{key}_spread"] = max(values) / min(values) - 1 if values else None
    out["rounds"] = len(samples)
    return out


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f} %"


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
            "spread": _percent(r["train_step_ms_spread"]),
            "train img/s": r["train_img_s"],
            "× full step": None if step is None else step / full,
            "× floor": None if step is None else step / floor,
            "infer img/s": r["infer_img_s"],
            "infer time × frozen fwd": frozen / r["infer_img_s"],
            "infer spread": _percent(r["infer_img_s_spread"]),
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
        "--levers",
        action="store_true",
        help="also the e2vpt row with gradient checkpointing and with torch.compile",
    )
    parser.add_argument(
        "--no-steady-alloc",
        action="store_true",
        help="leave glibc malloc at its defaults (to see what the allocator setting does)",
    )
    parser.add_argument("--tag", default="", help="suffix of the results files' names")
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
    row_specs = ROWS + (LEVER_ROWS if args.levers else [])
    machine = describe_machine(args.device, not args.no_steady_alloc)
    bar = tqdm(total=len(jobs) * len(row_specs) * args.rounds, desc="speed", unit="row")
    for backbone, batch in jobs:
        rounds: list[list[dict[str, Any]]] = []
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit every row
            measured = []
            for row, method, options in row_specs:
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
                measured.append(run_row(spec, steady_alloc=not args.no_steady_alloc))
                bar.update(1)
            rounds.append(measured)
        rows = [median_row([r[i] for r in rounds]) for i in range(len(row_specs))]
        results += rows
        title = (
            f"### {backbone}, batch {batch}, {args.device}, {args.precision}, "
            f"median of {args.rounds} rounds × {args.steps} steps"
        )
        by_name = {r["row"]: r for r in rows}
        same_work = by_name["frozen forward"]["infer_img_s"] / by_name["floor"]["infer_img_s"]
        check = (
            f"Noise check: the floor row's inference is the frozen forward's work in "
            f"another process; its time ratio here is {same_work:.3f}."
        )
        table = format_table(with_ratios(rows), float_digits=2)
        markdown.append(f"{title}\n\n{machine}\n\n{table}\n\n{check}\n")
    bar.close()
    text = "\n".join(markdown)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = f"speed_{args.device.split(':')[0]}_{'_'.join(args.backbones)}{args.tag}"
    payload = {"machine": machine, "settings": vars(args), "rows": results}
    write_atomic(RESULTS / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    write_atomic(RESULTS / f"{stem}.md", text)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def describe_machine(device: str, steady_alloc: bool) -> str:
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        model = ""
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            names = [
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.read_text().splitlines()
                if ln.startswith("model name")
            ]
            model = names[0] if names else ""
        where = f"{os.cpu_count()} × {model or platform.processor() or 'CPU'}"
        where += ", glibc malloc " + ("kept (steady)" if steady_alloc else "defaults")
    return f"Machine: {where}; torch {torch.__version__}."


if __name__ == "__main__":
    main()
