"""Memory of ``e2vpt serve`` over thousands of ordinary and hostile requests: the server
process's resident memory (RSS, from /proc) after a warm-up and after each block.

    uv run --frozen python benchmarks/serve_memory.py                    # 24000 requests
    uv run --frozen python benchmarks/serve_memory.py --requests 2000 --block 500

A real ``e2vpt serve`` subprocess serves two tasks (linear and E²VPT) on the bundled
demo backbone with ``--max-image-bytes 1048576 --max-image-pixels 4000000``. Requests
come from ``--concurrency`` clients, drawn in a fixed proportion from MIX: images
answered (32×32 and 64×64 random PNGs, a 1500×1500 gradient, a multipart upload), bodies
over the byte limit (with and without Content-Length), decompression bombs (a header
declaring 20000×20000 pixels), images over the pixel limit, truncated and unreadable
files, unknown tasks, a bad ``top_k``, a bad content type, bad task names, clients that
disconnect mid-body, and every 250 requests a task added and removed again. Each answer's
status is checked against the one expected.

Writes benchmarks/results/serve_memory_<device>.{json,md}."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

import e2vpt
from e2vpt.files import atomic_write_text
from e2vpt.reporting import format_table, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MAX_IMAGE_BYTES = 2**20
MAX_IMAGE_PIXELS = 4_000_000


def make_runs(root: Path) -> dict[str, str]:
    torch.manual_seed(0)
    backbone = e2vpt.create_backbone("demo_vit_cifar10")
    configs = {"lin": e2vpt.LinearConfig(), "e2": e2vpt.E2VPTConfig(visual_tokens=8, kv_tokens=4)}
    out = {}
    for name, config in configs.items():
        e2vpt.save(e2vpt.wrap(backbone, config, 10), root / name)
        out[name] = str(root / name)
    return out


def encode(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
    return encode(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def gradient_png(side: int) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    return encode(np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, :]), -1))


def header_only_png(width: int, height: int) -> bytes:
    """An 8×8 PNG whose header declares width × height pixels."""
    small = noise_png(8)
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return small[:8] + ihdr + small[8 + 25 :]


PNG = {"content-type": "image/png"}
SMALL, MEDIUM, LARGE = noise_png(32), noise_png(64, 1), gradient_png(1500)
OVER = b"\0" * (MAX_IMAGE_BYTES + 4096)


async def chunks_over_limit() -> AsyncIterator[bytes]:
    for _ in range(MAX_IMAGE_BYTES // 65536 + 2):
        yield b"\0" * 65536


# name → (weight, how to send it, the status expected)
Send = Callable[[httpx.AsyncClient], Any]
LIN, E2 = "/v1/tasks/lin/predict", "/v1/tasks/e2/predict"
MIX: dict[str, tuple[int, Send, int]] = {
    "small image": (6, lambda c: c.post(LIN, content=SMALL, headers=PNG), 200),
    "64 px image": (3, lambda c: c.post(E2, content=MEDIUM, headers=PNG), 200),
    "1500 px image": (2, lambda c: c.post(E2, content=LARGE, headers=PNG), 200),
    "multipart": (2, lambda c: c.post(LIN, files={"image": ("a", MEDIUM)}), 200),
    "over bytes": (2, lambda c: c.post(LIN, content=OVER, headers=PNG), 413),
    "over bytes, chunked": (1, lambda c: c.post(LIN, content=chunks_over_limit()), 413),
    "bomb": (2, lambda c: c.post(LIN, content=header_only_png(20000, 20000), headers=PNG), 413),
    "over pixels": (1, lambda c: c.post(E2, content=header_only_png(3000, 3000)), 413),
    "truncated": (2, lambda c: c.post(LIN, content=MEDIUM[:300], headers=PNG), 400),
    "garbage": (1, lambda c: c.post(LIN, content=os.urandom(2000), headers=PNG), 400),
    "unknown task": (2, lambda c: c.post(f"/v1/tasks/t{random.random()}/predict"), 404),
    "bad top_k": (1, lambda c: c.post(f"{LIN}?top_k=x", content=SMALL), 400),
    "bad type": (1, lambda c: c.post(LIN, json={"a": 1}), 415),
    "bad name": (1, lambda c: c.post("/v1/tasks", json={"name": "a.b", "run": "lin"}), 400),
}


async def disconnect_mid_body(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/tasks/lin/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\0" * 1000
    )
    await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def churn(client: httpx.AsyncClient) -> None:
    added = await client.post("/v1/tasks", json={"name": "tmp", "run": "lin"})
    removed = await client.delete("/v1/tasks/tmp")
    if (added.status_code, removed.status_code) != (200, 200):
        raise RuntimeError(f"add/remove: {added.status_code} {removed.status_code}")


async def send_block(url: str, port: int, count: int, concurrency: int, seed: int) -> Counter:
    """``count`` requests drawn from MIX (plus mid-body disconnects and add/remove);
    the statuses seen, and every unexpected one raises."""
    rng = random.Random(seed)
    names = [n for n, (w, _, _) in MIX.items() for _ in range(w)] + ["disconnect"]
    jobs = [rng.choice(names) for _ in range(count)]
    seen: Counter = Counter()
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for job in enumerate(jobs):
        queue.put_nowait(job)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, name = queue.get_nowait()
            if i % 250 == 0:
                await churn(client)
            if name == "disconnect":
                await disconnect_mid_body(port)
                seen["499 (disconnect)"] += 1
                continue
            _, send, expected = MIX[name]
            try:
                reply = await send(client)
            except httpx.TransportError:  # the server answered 413 mid-upload and closed
                if name != "over bytes, chunked":
                    raise
                seen["413 (mid-upload)"] += 1
                continue
            if reply.status_code != expected:
                raise RuntimeError(f"{name}: {reply.status_code} {reply.text[:200]}")
            seen[str(reply.status_code)] += 1

    timeout = httpx.Timeout(60)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return seen


def rss_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of process ``pid``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def start_server(runs: dict[str, str], root: Path, device: str, log: Path) -> tuple[Any, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = [sys.executable, "-m", "e2vpt", "serve", "--port", str(port), "--device", device]
    command += [f"--adapter={name}={folder}" for name, folder in runs.items()]
    command += ["--adapters-dir", str(root), "--max-image-bytes", str(MAX_IMAGE_BYTES)]
    command += ["--max-image-pixels", str(MAX_IMAGE_PIXELS)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with log.open("wb") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"e2vpt serve exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, port
        time.sleep(0.2)
    raise RuntimeError("e2vpt serve did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24000, help="measured requests")
    parser.add_argument("--block", type=int, default=3000, help="requests between readings")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    totals: Counter = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="e2vpt-serve-memory-") as tmp:
        root = Path(tmp)
        runs = make_runs(root)
        process, port = start_server(runs, root, args.device, root / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            rows.append({"after requests": 0, "RSS MiB": rss_mib(process.pid)[0]})
            totals += asyncio.run(send_block(url, port, args.warmup, args.concurrency, 0))
            first = rss_mib(process.pid)[0]
            rows.append({"after requests": args.warmup, "RSS MiB": first, "note": "warm-up"})
            sent = args.warmup
            for block in range(1, -(-args.requests // args.block) + 1):
                count = min(args.block, args.warmup + args.requests - sent)
                totals += asyncio.run(send_block(url, port, count, args.concurrency, block))
                sent += count
                rss, _ = rss_mib(process.pid)
                rows.append({"after requests": sent, "RSS MiB": rss, "vs warm-up": rss - first})
            peak = rss_mib(process.pid)[1]
            metrics = httpx.get(f"{url}/metrics").text
            labels = {line.split('task="')[1].split('"')[0] for line in metrics.splitlines()
                      if 'task="' in line and not line.startswith("#")}  # fmt: skip
            errors_logged = sum(
                1 for line in (root / "server.log").read_text().splitlines() if "Traceback" in line
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    total = time.perf_counter() - started
    table = format_table(rows, ["after requests", "RSS MiB", "vs warm-up", "note"], 1)
    growth = rows[-1]["RSS MiB"] - first
    summary = (
        f"{sum(totals.values())} requests, answers: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(totals.items()))
        + f". RSS after the warm-up {first:.1f} MiB, after the last block {rows[-1]['RSS MiB']:.1f}"
        f" MiB ({growth:+.1f}), peak {peak:.1f} MiB; tracebacks in the server log: "
        f"{errors_logged}; task label values in /metrics: {sorted(labels)}. Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, device "
        f"{args.device}, concurrency {args.concurrency}."
    )
    print(f"\n{table}\n\n{summary}\n\ntotal {total:.0f} s")
    command = " ".join(["python", "benchmarks/serve_memory.py", *(argv or sys.argv[1:])])
    stem = RESULTS / f"serve_memory_{args.device.split(':')[0]}"
    write_json(stem.with_suffix(".json"), {"command": command, "rows": rows,
                                           "answers": dict(totals), "peak MiB": peak,
                                           "tracebacks": errors_logged, "labels": sorted(labels),
                                           "total s": round(total, 1)})  # fmt: skip
    atomic_write_text(
        stem.with_suffix(".md"),
        f"# e2vpt serve: memory over mixed requests\n\n`{command}` ({total:.0f} s)\n\n"
        f"{table}\n\n{summary}\n",
    )
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
