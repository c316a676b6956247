"""Load on ``e2vpt serve``: requests/s and latency of one server that batches across
tasks, the same server batching per task, and one server process per task.

    uv run python benchmarks/serve.py --quick                # a try: ~2 minutes
    uv run python benchmarks/serve.py                        # tasks 1 4 16 × concurrency 1 8 32
    uv run python benchmarks/serve.py --setups across per-task --tasks 16 --concurrency 32
    uv run python benchmarks/serve.py --device cuda --requests 1024

E²VPT tasks with random tunable weights on the bundled demo backbone (8–12 visual and
3–5 key-value prompt tokens, 10–25 classes), run folders in a temp folder, and a fixed
set of 32×32 PNG images encoded once. Setups, each a real ``e2vpt serve`` subprocess on a
free loopback port (started, waited for on GET /health, stopped with SIGINT after its
concurrency levels):

    across       one server, ``--batching across-tasks``: a batch mixes the tasks
    per-task     the same server, ``--batching per-task``: a batch holds one task
    per-process  one server process per task, each request sent to its task's process
                 (what one does without multi-task serving); each process gets
                 max(1, cores // tasks) torch threads (--per-process-threads) so that
                 N processes do not run N × cores threads

Load: ``--warmup`` requests (not counted), then ``--requests`` requests with tasks drawn
uniformly with a fixed seed, sent by ``concurrency`` clients (httpx.AsyncClient,
keep-alive), each ``POST /v1/tasks/{name}/predict?top_k=1`` with a raw image/png body;
every answer must be a 200 naming its task and one of its classes (else an error).
Measures requests/s over the measured requests' wall time, p50/p95/p99 latency, and the
mean batch size from the servers' /metrics (before and after; summed over processes).

Writes benchmarks/results/serve_<device>.{json,md} (``_quick`` added for --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import e2vpt
from e2vpt.files import atomic_write_text
from e2vpt.reporting import format_table, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BACKBONE = "demo_vit_cifar10"
SETUPS = {
    "across": "one server, cross-task batching",
    "per-task": "one server, per-task batching",
    "per-process": "one process per task",
}
QUICK = {"tasks": [1, 4], "concurrency": [1, 8], "requests": 64, "warmup": 16}
DEFAULTS = {"tasks": [1, 4, 16], "concurrency": [1, 8, 32], "requests": 512, "warmup": 64}
STARTUP_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 120.0


# ---------------------------------------------------------------- tasks and images


def make_runs(root: Path, count: int) -> dict[str, dict[str, Any]]:
    """``count`` E²VPT run folders with random tunable weights; name → folder, classes."""
    torch.manual_seed(0)
    backbone = e2vpt.create_backbone(BACKBONE)
    runs = {}
    for i in range(count):
        name = f"task{i:02d}"
        config = e2vpt.E2VPTConfig(visual_tokens=8 + i % 5, kv_tokens=3 + i % 3)
        classes = 10 + i
        model = e2vpt.wrap(backbone, config, classes)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
        model.class_names = [f"{name}_c{c}" for c in range(classes)]
        e2vpt.save(model, root / name)
        runs[name] = {"folder": str(root / name), "classes": set(model.class_names)}
    return runs


def make_images(count: int, size: int = 32) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


# ---------------------------------------------------------------- servers


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    tasks: list[str]


def start_servers(
    groups: list[dict[str, str]],
    args: argparse.Namespace,
    batching: str,
    threads: int | None,
    logs: Path,
    servers: list[Server],
) -> None:
    """Start one ``e2vpt serve`` per group of tasks (appended to ``servers`` as they
    start, so the caller's ``finally`` stops them), then wait until each answers /health."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    for group, port in zip(groups, free_ports(len(groups)), strict=True):
        command = [sys.executable, "-m", "e2vpt", "serve", "--port", str(port)]
        command += [f"--adapter={name}={folder}" for name, folder in group.items()]
        command += ["--max-batch-size", str(args.max_batch_size)]
        command += ["--max-wait-ms", str(args.max_wait_ms), "--batching", batching]
        command += ["--device", args.device]
        log = logs / f"{batching}_{len(groups)}x_{port}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
            )
        servers.append(Server(process, f"http://127.0.0.1:{port}", log, list(group)))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = list(servers[-len(groups) :])
    while waiting:
        for server in list(waiting):
            if server.process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"e2vpt serve exited ({server.process.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    waiting.remove(server)
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} servers did not start in {STARTUP_TIMEOUT_S} s")
        if waiting:
            time.sleep(0.2)


def stop_servers(servers: list[Server]) -> None:
    """SIGINT (uvicorn drains and exits), then wait; kill what is left after 30 s."""
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    for server in servers:
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    servers.clear()


# ---------------------------------------------------------------- metrics

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Samples summed over their label sets (our own text or prometheus_client's)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                out[match[1]] = out.get(match[1], 0.0) + float(match[3])
    return out


def batch_counters(text: str) -> tuple[float, float] | None:
    """(images batched, batches) from either counter pair or the batch-size histogram."""
    samples = parse_metrics(text)
    for images, batches in (
        ("e2vpt_batched_images_total", "e2vpt_batches_total"),
        ("e2vpt_batch_size_sum", "e2vpt_batch_size_count"),
    ):
        if images in samples and batches in samples:
            return samples[images], samples[batches]
    return None


async def read_batches(clients: dict[str, httpx.AsyncClient]) -> tuple[float, float] | None:
    total = [0.0, 0.0]
    for client in clients.values():
        reply = await client.get("/metrics", follow_redirects=True)
        counters = batch_counters(reply.text) if reply.status_code == 200 else None
        if counters is None:
            return None
        total[0] += counters[0]
        total[1] += counters[1]
    return total[0], total[1]


# ---------------------------------------------------------------- load


@dataclass
class Outcome:
    latencies: list[float]  # seconds, one per measured request answered right
    errors: int
    wall_s: float
    batched: tuple[float, float] | None  # images, batches during the measured requests
    first_error: str | None


async def run_load(
    routes: dict[str, str],
    runs: dict[str, dict[str, Any]],
    images: list[bytes],
    concurrency: int,
    requests: int,
    warmup: int,
    seed: int,
) -> Outcome:
    """``warmup`` then ``requests`` requests from ``concurrency`` clients; ``routes``
    maps a task to the server URL that serves it."""
    names = sorted(routes)
    rng = random.Random(seed)
    jobs = [(rng.choice(names), rng.randrange(len(images))) for _ in range(warmup + requests)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    clients = {
        url: httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)
        for url in sorted(set(routes.values()))
    }
    errors: list[str] = []
    latencies: list[float] = []
    headers = {"content-type": "image/png"}

    async def one(task: str, image: int) -> tuple[float, str | None]:
        start = time.perf_counter()
        try:
            reply = await clients[routes[task]].post(
                f"/v1/tasks/{task}/predict",
                params={"top_k": 1},
                content=images[image],
                headers=headers,
            )
        except httpx.HTTPError as err:
            return time.perf_counter() - start, f"{type(err).__name__}: {err}"
        latency = time.perf_counter() - start
        if reply.status_code != 200:
            return latency, f"HTTP {reply.status_code}: {reply.text[:200]}"
        answer = reply.json()
        classes = answer.get("classes") or [None]
        if answer.get("task") != task or classes[0] not in runs[task]["classes"]:
            return latency, f"wrong answer for {task}: {str(answer)[:200]}"
        return latency, None

    async def phase(chunk: list[tuple[str, int]], record: bool) -> None:
        it = iter(chunk)

        async def worker() -> None:
            for task, image in it:  # the shared iterator: each job goes to one worker
                latency, error = await one(task, image)
                if not record:
                    continue
                if error is None:
                    latencies.append(latency)
                else:
                    errors.append(error)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    try:
        await phase(jobs[:warmup], record=False)
        before = await read_batches(clients)
        start = time.perf_counter()
        await phase(jobs[warmup:], record=True)
        wall = time.perf_counter() - start
        after = await read_batches(clients)
    finally:
        for client in clients.values():
            await client.aclose()
    batched = None
    if before is not None and after is not None:
        batched = (after[0] - before[0], after[1] - before[1])
    return Outcome(latencies, len(errors), wall, batched, errors[0] if errors else None)


def summarize(setup: str, tasks: int, concurrency: int, outcome: Outcome) -> dict[str, Any]:
    ms = np.array(outcome.latencies) * 1000
    p50, p95, p99 = (float(np.percentile(ms, q)) if ms.size else None for q in (50, 95, 99))
    mean_batch = None
    if outcome.batched is not None and outcome.batched[1] > 0:
        mean_batch = round(outcome.batched[0] / outcome.batched[1], 2)
    answered = len(outcome.latencies) + outcome.errors
    return {
        "setup": setup,
        "tasks": tasks,
        "concurrency": concurrency,
        "requests/s": round(answered / outcome.wall_s, 1),
        "p50 ms": None if p50 is None else round(p50, 1),
        "p95 ms": None if p95 is None else round(p95, 1),
        "p99 ms": None if p99 is None else round(p99, 1),
        "mean batch": mean_batch,
        "errors": outcome.errors,
    }


# ---------------------------------------------------------------- report


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    out: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def describe(info: dict[str, Any]) -> str:
    where = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}"
    return f"{where}, GPU {info['gpu']}" if "gpu" in info else where


def targets(rows: list[dict[str, Any]]) -> str:
    """The two targets at 16 tasks and concurrency 32, from the measured rows."""
    found = {
        r["setup"]: r for r in rows if r["tasks"] == 16 and r["concurrency"] == 32 and r["p50 ms"]
    }
    if "across" not in found or "per-task" not in found:
        return (
            "16 tasks, concurrency 32: not measured (the targets need setups across and "
            "per-task at --tasks 16 and --concurrency 32)"
        )
    across, per_task = found["across"], found["per-task"]
    speedup = across["requests/s"] / per_task["requests/s"]
    spread = across["p99 ms"] / across["p50 ms"]
    flags = [
        "met" if speedup >= 2 else "NOT met",
        "met" if spread <= 2 else "NOT met",
    ]
    line = (
        f"16 tasks, concurrency 32: cross-task batching is {speedup:.2f}× the requests/s of "
        f"per-task batching (target ≥ 2×: {flags[0]}); its p99 is {spread:.2f}× its p50 "
        f"(target ≤ 2×: {flags[1]})"
    )
    if across["errors"] or per_task["errors"]:
        line += " — those runs had errors, so the figures do not count"
    return line


# ---------------------------------------------------------------- main


def number_at_least(least: float, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` (int or float) of at least ``least``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if not value >= least:
            raise argparse.ArgumentTypeError(f"{value} must be >= {least:g}")
        return value

    return parse


positive = number_at_least(1)
non_negative = number_at_least(0)
wait_ms = number_at_least(0, float)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a short try: {QUICK}")
    parser.add_argument("--tasks", type=positive, nargs="+", help=f"default {DEFAULTS['tasks']}")
    parser.add_argument(
        "--concurrency", type=positive, nargs="+", help=f"default {DEFAULTS['concurrency']}"
    )
    parser.add_argument(
        "--requests",
        type=positive,
        help=f"measured requests per row (default {DEFAULTS['requests']})",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative,
        help=f"requests before each row, not counted (default {DEFAULTS['warmup']})",
    )
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--max-batch-size", type=positive, default=32)
    parser.add_argument("--max-wait-ms", type=wait_ms, default=5.0)
    parser.add_argument("--device", default="cpu", help="the servers' device (cpu, cuda, cuda:1)")
    parser.add_argument(
        "--per-process-threads",
        type=positive,
        help="torch threads of each per-process server (default max(1, cores // tasks))",
    )
    parser.add_argument(
        "--max-processes",
        type=positive,
        default=16,
        help="skip per-process rows with more tasks than this (default 16)",
    )
    parser.add_argument("--images", type=positive, default=64, help="distinct PNGs (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder ({RESULTS})")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.tasks = list(dict.fromkeys(args.tasks))
    args.concurrency = list(dict.fromkeys(args.concurrency))
    args.setups = list(dict.fromkeys(args.setups))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device_type = torch.device(args.device).type
    stem = args.out / (f"serve_{device_type}" + ("_quick" if args.quick else ""))
    info = machine(args.device)
    cores = os.cpu_count() or 1
    print(describe(info))
    plan = [
        (setup, tasks)
        for setup in args.setups
        for tasks in args.tasks
        if not (setup == "per-process" and tasks > args.max_processes)
    ]
    skipped = [t for t in args.tasks if "per-process" in args.setups and t > args.max_processes]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    starts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="e2vpt-serve-bench-") as tmp:
        root = Path(tmp)
        runs = make_runs(root / "runs", max(args.tasks))
        images = make_images(args.images)
        (root / "logs").mkdir()
        servers: list[Server] = []
        bar = tqdm(total=len(plan) * len(args.concurrency), unit="row", dynamic_ncols=True)
        try:
            for setup, count in plan:
                names = list(runs)[:count]
                folders = {n: runs[n]["folder"] for n in names}
                if setup == "per-process":
                    groups = [{n: folders[n]} for n in names]
                    threads = args.per_process_threads or max(1, cores // count)
                else:
                    groups, threads = [folders], None
                bar.set_postfix_str(f"{setup}, {count} tasks: starting {len(groups)} server(s)")
                t0 = time.perf_counter()
                batching = "per-task" if setup == "per-task" else "across-tasks"
                start_servers(groups, args, batching, threads, root / "logs", servers)
                starts[f"{setup}, {count} tasks"] = round(time.perf_counter() - t0, 1)
                routes = {n: s.url for s in servers for n in s.tasks}
                for concurrency in args.concurrency:
                    bar.set_postfix_str(f"{setup}, {count} tasks, concurrency {concurrency}")
                    outcome = asyncio.run(
                        run_load(
                            routes,
                            runs,
                            images,
                            concurrency,
                            args.requests,
                            args.warmup,
                            args.seed,
                        )
                    )
                    row = summarize(setup, count, concurrency, outcome)
                    if setup == "per-process":
                        row["threads / process"] = threads
                    row["load avg"] = round(os.getloadavg()[0], 1)
                    rows.append(row)
                    if outcome.first_error:
                        tqdm.write(
                            f"{setup}, {count} tasks, c{concurrency}: {outcome.errors} "
                            f"errors, the first: {outcome.first_error}"
                        )
                    bar.update()
                bar.set_postfix_str(f"{setup}, {count} tasks: stopping")
                stop_servers(servers)
        finally:
            stop_servers(servers)
            bar.close()
    total = time.perf_counter() - started
    columns = ["setup", "tasks", "concurrency", "requests/s", "p50 ms", "p95 ms", "p99 ms"]
    columns += ["mean batch", "errors", "load avg"]
    table = format_table(rows, columns)
    verdict = targets(rows)
    threads_note = (
        "max(1, cores // tasks)" if args.per_process_threads is None else args.per_process_threads
    )
    settings = (
        f"{args.requests} requests per row after {args.warmup} warm-up, --max-batch-size "
        f"{args.max_batch_size}, --max-wait-ms {args.max_wait_ms:g}, device {args.device}, "
        f"client and servers on the same machine; per-process: {threads_note} torch threads "
        "per process"
    )
    notes = [f"per-process skipped for {t} tasks (> --max-processes)" for t in skipped]
    if any(r["errors"] for r in rows):
        notes.append("rows with errors > 0 had failed requests: their figures do not count")
    text = "\n\n".join([describe(info), settings, table, verdict, *notes])
    print(f"\n{text}\n\ntotal {total:.0f} s")
    command = " ".join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])])
    write_json(
        stem.with_suffix(".json"),
        {
            "machine": info,
            "command": command,
            "settings": {
                "requests": args.requests,
                "warmup": args.warmup,
                "max_batch_size": args.max_batch_size,
                "max_wait_ms": args.max_wait_ms,
                "device": args.device,
                "images": args.images,
                "seed": args.seed,
                "setups": {s: SETUPS[s] for s in args.setups},
            },
            "rows": rows,
            "targets": verdict,
            "notes": notes,
            "server start s": starts,
            "total s": round(total, 1),
        },
    )
    atomic_write_text(
        stem.with_suffix(".md"),
        f"# e2vpt serve under load\n\n`{command}` ({total:.0f} s)\n\n{text}\n",
    )
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
