"""``e2vpt serve``: one backbone, many tasks, over HTTP (FastAPI + uvicorn).

Requests for any task that arrive within ``max_wait_ms`` of each other run as one
:class:`~e2vpt.multitask.MultiTaskModel` batch (up to ``max_batch_size`` images): a
batching loop of our own on the server's event loop, the model in a worker thread.
Bad input is a 4xx JSON error naming the problem and one log line; the server keeps
serving.

    settings.py  ServeSettings, the task-name rule (light: the CLI's flags read it)
    server.py    TaskServer: the tasks, the model and the batching loop
    app.py       the HTTP routes, reading every request as hostile; serve()
    images.py    an upload → the model's input, its pixel count checked first
    metrics.py   /metrics, its label values bounded
    page.py      GET /: the browser page (its files in static/)
    errors.py    the answers that are errors, each with its HTTP status

Names are imported on first use: ``from e2vpt.serving import ServeSettings`` needs
neither torch nor FastAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from e2vpt.lazy import lazy_names

if TYPE_CHECKING:
    from e2vpt.serving.app import IMAGE_TYPES, build_app, serve
    from e2vpt.serving.errors import NotAllowed, ServeError, ServerBusy, TaskGone
    from e2vpt.serving.metrics import Metrics
    from e2vpt.serving.server import TaskServer
    from e2vpt.serving.settings import (
        BATCHING_MODES,
        TASK_NAME_PATTERN,
        ServeSettings,
        is_task_name,
    )

_HOMES = {
    "BATCHING_MODES": "e2vpt.serving.settings",
    "IMAGE_TYPES": "e2vpt.serving.app",
    "Metrics": "e2vpt.serving.metrics",
    "NotAllowed": "e2vpt.serving.errors",
    "ServeError": "e2vpt.serving.errors",
    "ServeSettings": "e2vpt.serving.settings",
    "ServerBusy": "e2vpt.serving.errors",
    "TASK_NAME_PATTERN": "e2vpt.serving.settings",
    "TaskGone": "e2vpt.serving.errors",
    "TaskServer": "e2vpt.serving.server",
    "build_app": "e2vpt.serving.app",
    "is_task_name": "e2vpt.serving.settings",
    "serve": "e2vpt.serving.app",
}
__all__ = [
    "BATCHING_MODES",
    "IMAGE_TYPES",
    "Metrics",
    "NotAllowed",
    "ServeError",
    "ServeSettings",
    "ServerBusy",
    "TASK_NAME_PATTERN",
    "TaskGone",
    "TaskServer",
    "build_app",
    "is_task_name",
    "serve",
]

__getattr__, __dir__ = lazy_names("e2vpt.serving", _HOMES, globals())
