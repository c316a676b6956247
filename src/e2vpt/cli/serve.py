"""``e2vpt serve``: many tasks on one backbone behind an HTTP API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from e2vpt.cli.flags import settings_from_args
from e2vpt.cli.shared_flags import DEVICE_HELP

NAME = "serve"
HELP = "serve many tasks on one backbone over HTTP"
INTERRUPTED = "The server stopped after the requests in flight."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="One frozen backbone and every --adapter task behind an HTTP API "
        "(FastAPI + uvicorn; OpenAPI page at /docs). Requests for any of the tasks that "
        "arrive within --max-wait-ms run as one batch.",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a task to serve (repeat the flag for more)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="images per forward at most (default: 32)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more requests after its first (default: 5)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=20 * 2**20,
        help="larger uploads get 413 (default: 20 MiB)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=1024,
        help="requests waiting for a batch beyond which new ones get 503 (default: 1024)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--batching",
        choices=("across-tasks", "per-task"),
        default="across-tasks",
        help="across-tasks: one batch mixes every task's requests (default); per-task: a "
        "batch holds one task's requests (for comparison)",
    )
    parser.add_argument(
        "--adapters-dir",
        help="the only folder POST /v1/tasks may load run folders from (default: none)",
    )
    parser.set_defaults(run_command=run)


def parse_adapters(items: list[str]) -> dict[str, str]:
    """``NAME=RUN_DIR`` flags as a mapping; a malformed or repeated one is an error."""
    from e2vpt.errors import ConfigError

    adapters: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--adapter {item!r}: write NAME=RUN_DIR, e.g. pets=runs/pets")
        if name in adapters:
            raise ConfigError(f"--adapter: task name {name!r} given twice")
        adapters[name] = folder
    return adapters


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.errors import ConfigError

    adapters = parse_adapters(args.adapter)
    try:
        from e2vpt.serving import ServeSettings, serve
    except ImportError:
        raise ConfigError(
            "e2vpt serve needs FastAPI, uvicorn and prometheus-client: pip install 'e2vpt[serve]'"
        ) from None
    settings = settings_from_args(ServeSettings, args, adapters=adapters)
    serve(settings)  # validates the settings before loading anything
    return 0
