"""``e2vpt serve``: many tasks on one backbone behind an HTTP API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from e2vpt.cli.flags import add_dataclass_flags, settings_from_args

NAME = "serve"
HELP = "serve many tasks on one backbone over HTTP"
INTERRUPTED = "The server stopped after the requests in flight."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    from e2vpt.serving.settings import TASK_NAME_RULE, ServeSettings

    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="One frozen backbone and every --adapter task behind an HTTP API "
        "(FastAPI + uvicorn; a page to try it in a browser at /, the OpenAPI page at /docs). "
        "Requests for any of the tasks that arrive within --max-wait-ms run as one batch. "
        f"A task name is {TASK_NAME_RULE}.",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a task to serve (repeat the flag for more)",
    )
    add_dataclass_flags(parser, ServeSettings, suppress_defaults=False)
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
    from e2vpt.serving.settings import ServeSettings

    try:
        from e2vpt.serving.app import serve
    except ImportError:
        raise ConfigError(
            "e2vpt serve needs FastAPI, uvicorn and prometheus-client: pip install 'e2vpt[serve]'"
        ) from None
    settings = settings_from_args(ServeSettings, args, adapters=adapters)
    serve(settings)  # validates the settings before loading anything
    return 0
