"""What a training step and an inference pass cost, per method, against full fine-tuning
and the physical floor.

    uv run python benchmarks/speed.py --backbones demo vit-b16 --batch-sizes 8
    uv run python benchmarks/speed.py --device cuda --precision bf16 --batch-sizes 64 128

Reference rows: `timm full FT` (plain timm model, AdamW on every weight), `frozen
forward` (no grad), and `floor` = frozen forward + backward to the input activations
with no weight gradients — the least any prompt method must pay. Random weights (the
cost does not depend on them).

Times: all rows' models live in one process and take turns, one timed train step and
one timed inference each per round, the order rotated every round — on a shared machine
a slow spell then hits every row alike (per-row processes, `--no-interleave`, let such
spells land on whichever row ran then). Peak memory (CUDA: max allocated; CPU: peak
RSS) comes from every row alone in a fresh process. Prints a Markdown table per backbone
× batch and writes benchmarks/results/speed_<device>_<backbones>.{json,md}.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
# dinov3-s16: timm's Eva (rotary embeddings, 4 registers, layer scale) at 224, its own
# average pooling
BACKBONES = {
    "demo": "demo_vit_cifar10",
    "vit-b16": "vit_base_patch16_224",
    "dinov3-s16": "vit_small_patch16_dinov3",
}
# (row name, method, options): VPT/E²VPT at the papers' defaults (p = 10, m = 5)
ROWS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("timm full FT", None, {}),
    ("frozen forward", None, {}),
    ("floor", None, {}),
    ("linear", "linear", {}),
    ("partial", "partial", {}),
    ("mlp", "mlp", {}),
    ("sidetune", "sidetune", {}),
    ("bias", "bias", {}),
    ("adapter", "adapter", {}),
    ("lora", "lora", {}),
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
LEVER_ROWS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "checkpointing": ("e2vpt + grad checkpointing", "e2vpt", {"visual_tokens": 10, "kv_tokens": 5}),
    "compile": ("e2vpt + torch.compile", "e2vpt", {"visual_tokens": 10, "kv_tokens": 5}),
}
# glibc malloc: keep freed memory instead of returning it to the OS, so every step after
# warm-up reuses pages instead of faulting fresh ones in (measured: this is what made
# the same work differ by up to 20 % between row processes)
STEADY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**25), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_row(spec: dict[str, Any]) -> tuple[Callable[[], None] | None, Callable[[], None]]:
    """The row's model, as (train step or None, inference pass) closures."""

    import e2vpt
    from e2vpt.backbones import create_backbone
    from e2vpt.inference import autocast
    from e2vpt.training.config import TrainConfig
    from e2vpt.training.optim import build_optimizer

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    precision = spec["precision"]
    backbone = create_backbone(BACKBONES[spec["backbone"]], pretrained=False)  # the demo too
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

    def forward_loss(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            logits = model(inputs)
        return F.cross_entropy(logits.float(), y)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with autocast(device, precision):
            model(x)

    if row == "frozen forward" or spec.get("infer_only"):
        return None, infer
    if row == "floor":
        model.requires_grad_(False)
        leaf = x.clone().requires_grad_(True)

        def floor_step() -> None:
            model.eval()
            forward_loss(leaf).backward()
            leaf.grad = None

        return floor_step, infer
    if method is None:  # plain timm full fine-tuning, as the papers' baseline
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        cfg = TrainConfig(method=method, device=str(device), precision=precision)
        optimizer = build_optimizer(model, cfg.resolve(), device)  # the method's optimizer

    def step() -> None:
        model.train()
        loss = forward_loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, infer


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median_seconds(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn, device) for _ in range(steps))


def _record(
    spec: dict[str, Any], train_s: float | None, infer_s: float, peak_mib: float | None
) -> dict[str, Any]:
    """One measurement of one row, as the table and the JSON carry it."""
    batch = spec["batch"]
    return {
        **{k: spec[k] for k in ("backbone", "batch", "row")},
        "train_step_ms": None if train_s is None else 1000 * train_s,
        "train_img_s": None if train_s is None else batch / train_s,
        "infer_img_s": batch / infer_s,
        "peak_mib": peak_mib,
    }


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row, alone in this process (the parent runs each in a fresh one): its peak
    memory, and (``--no-interleave``) its times."""
    device = torch.device(spec["device"])
    step, infer = build_row(spec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_seconds = None
    if step is not None:
        train_seconds = _median_seconds(step, spec["steps"], spec["warmup"], device)
    infer_seconds = _median_seconds(infer, spec["steps"], spec["warmup"], device)
    return _record(spec, train_seconds, infer_seconds, peak_bytes(device) / 2**20)


def measure_interleaved(specs: list[dict[str, Any]], rounds: int) -> list[list[dict[str, Any]]]:
    """Every row's model in this one process, timed one step at a time in turn, the
    order rotated each round: a slow spell of a shared machine then hits every row alike
    instead of whichever row ran during it. Returns per round, per row, the times."""
    device = torch.device(specs[0]["device"])
    built = [build_row(spec) for spec in specs]
    for step, infer in built:  # warm-up: allocator, kernels, compilation
        for _ in range(specs[0]["warmup"]):
            if step is not None:
                step()
            infer()
    out: list[list[dict[str, Any]]] = []
    for r in range(rounds):
        measured: list[dict[str, Any] | None] = [None] * len(specs)
        order = list(range(len(specs)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            step, infer = built[i]
            train_s = None if step is None else _timed(step, device)
            measured[i] = _record(specs[i], train_s, _timed(infer, device), None)
        out.append([m for m in measured if m is not None])
    return out


def _child(flag: str, payload: Any, what: str, steady_alloc: bool) -> Any:
    """Run this script with ``flag payload`` in a fresh process; its last stdout line."""
    env = {**os.environ, **(STEADY_ENV if steady_alloc else {})}
    done = subprocess.run(
        [sys.executable, __file__, flag, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_row(spec: dict[str, Any], steady_alloc: bool) -> dict[str, Any]:
    return _child("--row", spec, f"row {spec['row']!r}", steady_alloc)


def median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the median over samples; for the times also the interquartile range
    relative to the median (how steady the machine was)."""
    out = dict(samples[0])
    for key in ("train_step_ms", "train_img_s", "infer_img_s", "peak_mib"):
        values = [s[key] for s in samples if s[key] is not None]
        out[key] = statistics.median(values) if values else None
        out[f"{key}_all"] = values
    for key in ("train_step_ms", "infer_img_s"):
        values = out[f"{key}_all"]
        if len(values) >= 2:
            q1, _, q3 = statistics.quantiles(values, n=4)
            out[f"{key}_iqr"] = (q3 - q1) / statistics.median(values)
        else:
            out[f"{key}_iqr"] = None
    out["samples"] = len(samples)
    return out


def run_interleaved(specs: list[dict[str, Any]], rounds: int, steady_alloc: bool) -> list:
    job = {"specs": specs, "rounds": rounds}
    return _child("--interleaved", job, "interleaved timing", steady_alloc)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f} %"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["row"]: r for r in rows}

    def measure(row: str, key: str) -> float | None:
        return by_name[row][key] if row in by_name else None

    full = measure("full", "train_step_ms")
    floor = measure("floor", "train_step_ms")
    frozen = measure("frozen forward", "infer_img_s")
    built = measure("e2vpt p=25 built", "infer_img_s")
    table = []
    for r in rows:
        step = r["train_step_ms"]
        cells = {
            "row": r["row"],
            "train step ms": step,
            "IQR": _percent(r["train_step_ms_iqr"]),
            "train img/s": r["train_img_s"],
            "× full step": _ratio(step, full),
            "× floor": _ratio(step, floor),
            "infer img/s": r["infer_img_s"],
            "infer time × frozen fwd": _ratio(frozen, r["infer_img_s"]),
            "infer IQR": _percent(r["infer_img_s_iqr"]),
            "peak MiB": r["peak_mib"],
        }
        if r["row"] == "e2vpt p=50 pruned→25" and built is not None:
            cells["row"] += f" (infer time × built: {built / r['infer_img_s']:.3f})"
        table.append(cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", help=argparse.SUPPRESS)
    parser.add_argument(
        "--backbones", nargs="+", default=["demo", "vit-b16"], choices=sorted(BACKBONES)
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument(
        "--steps", type=int, default=10, help="timed steps per row (the median is reported)"
    )
    parser.add_argument(
        "--no-interleave",
        dest="interleave",
        action="store_false",
        help="time each row in its own processes (--rounds of them) instead of all rows in "
        "one process taking turns step by step",
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (allocator, kernels)"
    )
    parser.add_argument(
        "--levers",
        nargs="+",
        default=[],
        choices=sorted(LEVER_ROWS),
        help="also the e2vpt row with these levers on",
    )
    parser.add_argument(
        "--no-steady-alloc",
        action="store_true",
        help="leave glibc malloc at its defaults (to see what the allocator setting does)",
    )
    parser.add_argument("--tag", default="", help="suffix of the results files' names")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where they go")
    parser.add_argument("--rows", nargs="+", help="measure only these rows (default: all)")
    parser.add_argument(
        "--infer-only", action="store_true", help="time inference only (no train steps, memory)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --no-interleave: processes per row, interleaved across rows",
    )
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure_row(json.loads(args.row))))
        return
    if args.interleaved:
        job = json.loads(args.interleaved)
        print(json.dumps(measure_interleaved(job["specs"], job["rounds"])))
        return
    from tqdm.auto import tqdm

    from e2vpt.files import atomic_write_text
    from e2vpt.reporting import format_table, write_json

    results: list[dict[str, Any]] = []
    markdown = []
    jobs = [(b, n) for b in args.backbones for n in args.batch_sizes]
    row_specs = ROWS + [LEVER_ROWS[name] for name in args.levers]
    if args.rows:
        unknown = set(args.rows) - {row for row, _, _ in row_specs}
        if unknown:
            names = ", ".join(repr(row) for row, _, _ in row_specs)
            parser.error(f"unknown rows {sorted(unknown)}; choose from {names}")
        row_specs = [spec for spec in row_specs if spec[0] in args.rows]
    steady = not args.no_steady_alloc
    machine = describe_machine(args.device, steady)
    per_job = len(row_specs) + 1 if args.interleave else len(row_specs) * args.rounds
    bar = tqdm(total=len(jobs) * per_job, desc="speed", unit="process")
    for backbone, batch in jobs:
        specs = [
            dict(
                backbone=backbone,
                batch=batch,
                row=row,
                method=method,
                options=options,
                device=args.device,
                precision=args.precision,
                steps=args.steps,
                warmup=args.warmup,
                infer_only=args.infer_only,
            )
            for row, method, options in row_specs
        ]
        if args.interleave:
            samples = run_interleaved(specs, args.steps, steady)  # [round][row]
            bar.update(1)
            memory: list[float | None] = []
            for spec in specs:  # peak memory: every row alone in a fresh process
                if args.infer_only:
                    memory.append(None)
                else:
                    memory.append(run_row({**spec, "steps": 1, "warmup": 1}, steady)["peak_mib"])
                bar.update(1)
            for taken in samples:
                for sample, peak in zip(taken, memory, strict=True):
                    sample["peak_mib"] = peak
        else:
            samples = []
            for _ in range(args.rounds):  # rounds interleaved: drifts hit every row
                samples.append([run_row(spec, steady) for spec in specs])
                bar.update(len(specs))
        rows = [median_row([taken[i] for taken in samples]) for i in range(len(specs))]
        results += rows
        how = (
            f"{args.steps} rounds, one step of every row per round, in one process"
            if args.interleave
            else f"{args.rounds} rounds × {args.steps} steps, a process per row and round"
        )
        memory_note = "inference only" if args.infer_only else "peak memory of each row alone"
        title = (
            f"### {backbone}, batch {batch}, {args.device}, {args.precision}; "
            f"median of {how}; {memory_note}"
        )
        by_name = {r["row"]: r for r in rows}
        check = ""
        if "frozen forward" in by_name and "floor" in by_name:
            same_work = by_name["frozen forward"]["infer_img_s"] / by_name["floor"]["infer_img_s"]
            check = (
                f"Noise check: the floor row's inference is the same computation as the frozen "
                f"forward's; their time ratio here is {same_work:.3f} (1 = no noise)."
            )
        table = format_table(with_ratios(rows), float_digits=2)
        markdown.append(f"{title}\n\n{machine}\n\n{table}\n\n{check}\n")
    bar.close()
    text = "\n".join(markdown)
    print(text)
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"speed_{args.device.split(':')[0]}_{'_'.join(args.backbones)}{args.tag}"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"machine": machine, "settings": settings, "rows": results}
    write_json(results_dir / f"{stem}.json", payload)
    atomic_write_text(results_dir / f"{stem}.md", text)


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
