"""What the serving tests share: tiny run folders, a real server on a loopback port,
PNG bodies, /metrics parsed, and the server's log records."""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import e2vpt
from e2vpt.serving import ServeSettings, TaskServer, build_app

PNG = {"content-type": "image/png"}


def make_runs(root: Path) -> dict[str, str]:
    """Three tasks on the demo backbone (linear, VPT deep, E²VPT), 3 to 5 classes."""
    torch.manual_seed(0)
    configs = {
        "linear": e2vpt.LinearConfig(),
        "vpt": e2vpt.VPTConfig(tokens=3, deep=True),
        "e2vpt": e2vpt.E2VPTConfig(visual_tokens=4, kv_tokens=2),
    }
    out = {}
    for i, (name, config) in enumerate(configs.items()):
        model = e2vpt.wrap(e2vpt.create_backbone("demo_vit_cifar10"), config, 3 + i)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
        model.class_names = [f"{name}_{c}" for c in range(3 + i)]
        e2vpt.save(model, root / name)
        out[name] = str(root / name)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    settings: ServeSettings, task_server: TaskServer | None = None
) -> tuple[str, object, threading.Thread]:
    import uvicorn

    port = free_port()
    app = build_app(task_server or TaskServer(settings))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def read_metrics(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed as Prometheus text: (sample name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    reply = httpx.get(f"{url}/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def png(seed: int, side: int = 40) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def smooth_png(side: int) -> bytes:
    """A gradient: a large image in few bytes."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    array = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, :]), -1)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` pixels over an 8×8 image's data:
    a decompression bomb's header in a few hundred bytes (decoding it would fail as
    truncated, so an answer about its size was given before any decoding)."""
    small = png(0, 8)
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return small[:8] + ihdr + small[8 + 25 :]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, logger: str = "e2vpt.serve") -> list[str]:
        return [r.getMessage() for r in self.records if r.name == logger]

    def tracebacks(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.exc_info]


@contextmanager
def server_log() -> Iterator[Records]:
    """The server's log records (ours and uvicorn's) while the block runs. Enter it
    after the server has started: uvicorn's logging setup drops earlier handlers."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("e2vpt.serve", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
