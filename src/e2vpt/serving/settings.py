"""What ``e2vpt serve`` is started with, and the rule a task name follows. Light: no
torch, FastAPI or PIL at import (the command line builds its flags from these fields)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from e2vpt.devices import DEVICE_CHOICES
from e2vpt.errors import ConfigError
from e2vpt.settings import setting

BATCHING_MODES = ("across-tasks", "per-task")
# a task name is a URL path segment, a metrics label value and a log word: short, plain
TASK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
TASK_NAME_RULE = "1 to 64 letters, digits, '_' or '-', the first a letter or digit"
_TASK_NAME = re.compile(TASK_NAME_PATTERN)


def is_task_name(name: object) -> bool:
    """Whether ``name`` may name a served task (:data:`TASK_NAME_PATTERN`)."""
    return isinstance(name, str) and _TASK_NAME.fullmatch(name) is not None


def shown(text: object, most: int = 64) -> str:
    """A client's string as a message or log line may quote it: ``repr`` (no line
    breaks or control characters get through) and at most ``most`` characters."""
    value = str(text)
    return repr(value) if len(value) <= most else repr(value[:most]) + f"… ({len(value)} chars)"


@dataclass
class ServeSettings:
    """How ``e2vpt serve`` runs (every field but ``adapters`` is a flag of its own)."""

    adapters: dict[str, str] = setting(help="task name → its run folder", cli=False)
    host: str = setting("127.0.0.1", "address to bind", metavar="ADDRESS")
    port: int = setting(8000, "TCP port", metavar="N")
    max_batch_size: int = setting(32, "images per forward at most", metavar="N")
    max_wait_ms: float = setting(
        5.0, "how long a batch waits for more requests after its first", metavar="MS"
    )
    device: str = setting("auto", DEVICE_CHOICES)
    max_image_bytes: int = setting(
        20 * 2**20,
        "an upload of more bytes gets 413, read no further than the limit",
        metavar="BYTES",
    )
    max_image_pixels: int = setting(
        25_000_000,
        "an image whose header declares more pixels (width × height) gets 413, before any "
        "pixel is decoded",
        metavar="N",
    )
    adapters_dir: str | None = setting(
        None,
        "the only folder POST /v1/tasks may load run folders from (default: none)",
        metavar="DIR",
    )
    batching: str = setting(
        "across-tasks",
        "across-tasks: one batch mixes every task's requests; per-task: a batch holds one "
        "task's requests (for comparison)",
        choices=BATCHING_MODES,
    )
    max_queue: int = setting(
        1024, "predict requests waiting for a batch beyond which new ones get 503", metavar="N"
    )
    max_in_flight: int = setting(
        512,
        "predict requests handled at once (uploading, decoding, waiting, running) beyond "
        "which new ones get 503 before their upload is read",
        metavar="N",
    )
    max_tasks: int = setting(
        256, "tasks served at most; POST /v1/tasks beyond it gets 409", metavar="N"
    )

    def validate(self) -> None:
        from e2vpt.runs import holds_checkpoint, read_adapter_config

        if not self.adapters:
            raise ConfigError("give at least one task: `adapter` NAME=RUN_DIR")
        if self.adapters_dir is not None and not Path(self.adapters_dir).is_dir():
            raise ConfigError(f"`adapters_dir` {self.adapters_dir} is not a folder")
        if self.batching not in BATCHING_MODES:
            raise ConfigError(
                f"`batching` {self.batching!r}: choose one of {', '.join(BATCHING_MODES)}"
            )
        self._check_limits()
        backbones = {}
        for name, folder in self.adapters.items():
            if not is_task_name(name):
                raise ConfigError(f"`adapter` {shown(name)}: a task name is {TASK_NAME_RULE}")
            if not holds_checkpoint(folder):
                raise ConfigError(f"`adapter` {name}={folder}: no e2vpt run folder there")
            backbones[name] = read_adapter_config(folder)["backbone"]
        if len(set(backbones.values())) > 1:
            raise ConfigError(
                f"the tasks were trained on different backbones ({backbones}); one server "
                "serves one backbone: start one server per backbone"
            )

    def _check_limits(self) -> None:
        from PIL import Image

        counts = ("max_batch_size", "max_image_bytes", "max_image_pixels", "max_queue")
        for name in (*counts, "max_in_flight", "max_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"`max_wait_ms` must be >= 0, got {self.max_wait_ms}")
        if len(self.adapters) > self.max_tasks:
            raise ConfigError(
                f"{len(self.adapters)} tasks given but `max_tasks` is {self.max_tasks}: "
                "raise it or serve fewer"
            )
        ceiling = Image.MAX_IMAGE_PIXELS  # where PIL refuses to open an image at all
        if ceiling is not None and self.max_image_pixels > ceiling:
            raise ConfigError(
                f"`max_image_pixels` {self.max_image_pixels} is above {ceiling}, the image "
                "library's own decompression-bomb limit: give at most that"
            )
