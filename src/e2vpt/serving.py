"""``e2vpt serve``: one backbone, many tasks, over HTTP (FastAPI + uvicorn).

Requests for any task that arrive within ``max_wait_ms`` of each other run as one
:class:`~e2vpt.multitask.MultiTaskModel` batch (up to ``max_batch_size`` images): a
batching loop of our own on the server's event loop, the model in a worker thread.
Bad input is a 4xx JSON error naming the problem; the server keeps serving."""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from e2vpt.backbones import create_backbone
from e2vpt.data.core import resize_image
from e2vpt.errors import ConfigError, E2VPTError
from e2vpt.inference import model_data_settings, resolve_device
from e2vpt.multitask import MultiTaskModel
from e2vpt.runs import holds_checkpoint, read_adapter_config

IMAGE_TYPES = ("image/", "application/octet-stream")
BATCHING_MODES = ("across-tasks", "per-task")
logger = logging.getLogger("e2vpt.serve")


@dataclass
class ServeSettings:
    adapters: dict[str, str]  # task name → run folder
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    device: str = "auto"
    max_image_bytes: int = 20 * 2**20
    # the only folder POST /v1/tasks may load run folders from (None: no loading)
    adapters_dir: str | None = None
    # across-tasks: one batch mixes every task's requests; per-task: a batch holds one
    # task's requests only (what a server without MultiTaskModel can do; for comparison)
    batching: str = "across-tasks"
    # requests waiting for a batch beyond which new ones are answered 503 (overload)
    max_queue: int = 1024

    def validate(self) -> None:
        if not self.adapters:
            raise ConfigError("give at least one task: `adapter` NAME=RUN_DIR")
        if self.adapters_dir is not None and not Path(self.adapters_dir).is_dir():
            raise ConfigError(f"`adapters_dir` {self.adapters_dir} is not a folder")
        if self.batching not in BATCHING_MODES:
            raise ConfigError(
                f"`batching` {self.batching!r}: choose one of {', '.join(BATCHING_MODES)}"
            )
        if (
            min(self.max_batch_size, self.max_image_bytes, self.max_queue) < 1
            or self.max_wait_ms < 0
        ):
            raise ConfigError(
                "`max_batch_size`, `max_image_bytes` and `max_queue` must be >= 1 and "
                "`max_wait_ms` >= 0"
            )
        backbones = {}
        for name, folder in self.adapters.items():
            if not holds_checkpoint(folder):
                raise ConfigError(f"`adapter` {name}={folder}: no e2vpt run folder there")
            backbones[name] = read_adapter_config(folder)["backbone"]
        if len(set(backbones.values())) > 1:
            raise ConfigError(
                f"the tasks were trained on different backbones ({backbones}); one server "
                "serves one backbone: start one server per backbone"
            )


class NotAllowed(ConfigError):
    """A run folder the server may not load (answered 403)."""


class TaskGone(LookupError):
    """The request's task was removed before its batch ran (answered 404)."""


class ServerBusy(RuntimeError):
    """More requests wait than ``max_queue`` (answered 503)."""


@dataclass
class _Request:
    task: str
    image: torch.Tensor  # normalised (3, S, S)
    top_k: int
    future: asyncio.Future[dict[str, Any]]
    arrived: float  # time.perf_counter() when it was queued


def _buckets_up_to(limit: int) -> list[float]:
    """1, 2, 4, … up to ``limit`` (and ``limit`` itself): batch-size histogram buckets."""
    buckets = [float(2**i) for i in range(limit.bit_length()) if 2**i < limit]
    return [*buckets, float(limit)]


class Metrics:
    """What /metrics reports, in the Prometheus text format (prometheus_client, one
    registry per server, so servers in one process do not share counts)."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "e2vpt_requests", "Predict requests answered, per task", ["task"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "e2vpt_errors", "Error answers, per HTTP status", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "e2vpt_request_latency_seconds",
            "Predict latency per task, from the request's arrival to its answer",
            ["task"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "e2vpt_batch_size", "Images per model batch",
            buckets=_buckets_up_to(max_batch_size), registry=self.registry,
        )  # fmt: skip
        self.batch_tasks = Histogram(
            "e2vpt_batch_tasks", "Distinct tasks per model batch",
            buckets=_buckets_up_to(max_batch_size), registry=self.registry,
        )  # fmt: skip
        self.tasks = Gauge("e2vpt_tasks", "Tasks being served", registry=self.registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class TaskServer:
    """The model and the batching loop behind the HTTP routes."""

    def __init__(self, settings: ServeSettings) -> None:
        settings.validate()
        self.settings = settings
        self.device = resolve_device(settings.device)
        first = next(iter(settings.adapters.values()))
        backbone = create_backbone(read_adapter_config(first)["backbone"]).to(self.device)
        self.model = MultiTaskModel(backbone)
        self.normalizers: dict[str, Any] = {}
        # held while a batch runs: tasks are added and removed between batches
        self.model_lock = threading.Lock()
        self.metrics = Metrics(settings.max_batch_size)
        for name, folder in settings.adapters.items():
            self.add_task(name, folder)
        self.queue: asyncio.Queue[_Request] | None = None

    def add_task(self, name: str, folder: str) -> None:
        with self.model_lock:
            self._add_task(name, folder)

    def remove_task(self, name: str) -> None:
        with self.model_lock:
            self.model.remove_task(name)
            del self.normalizers[name]
            self.metrics.tasks.set(len(self.model.tasks))

    def load_from_adapters_dir(self, name: str, run: str) -> None:
        """``POST /v1/tasks``: a run folder under ``adapters_dir`` only, never a path a
        client chose elsewhere."""
        if self.settings.adapters_dir is None:
            raise NotAllowed(
                "this server loads no tasks at run time (start it with `adapters_dir`)"
            )
        root = Path(self.settings.adapters_dir).resolve()
        folder = (root / run).resolve()
        if not folder.is_relative_to(root) or folder == root:
            raise NotAllowed(f"run {run!r} is not a folder under the server's `adapters_dir`")
        if not holds_checkpoint(folder):
            raise ConfigError(f"no e2vpt run folder {run!r} under the server's `adapters_dir`")
        self.add_task(name, str(folder))

    def _add_task(self, name: str, folder: str) -> None:
        self.model.add_task(name, folder)
        task = self.model.tasks[name].to(self.device)
        self.image_size, normalizer = model_data_settings(task)
        self.normalizers[name] = normalizer.to(self.device)
        self.metrics.tasks.set(len(self.model.tasks))

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, task in self.model.tasks.items():
            tunable = sum(p.numel() for p in task.parameters() if p.requires_grad)
            classes = task.class_names or [f"class_{i}" for i in range(task.num_classes)]
            out.append(
                {"name": name, "method": task.method_name, "classes": classes, "tunable": tunable}
            )
        return out

    def decode(self, task: str, blob: bytes) -> torch.Tensor:
        """The image, resized and normalised for ``task`` (run in a worker thread, so
        the event loop goes on taking requests)."""
        normalizer = self.normalizers.get(task)
        if normalizer is None:
            raise TaskGone(f"task {task!r} was removed while this request arrived")
        with Image.open(io.BytesIO(blob)) as image:
            array = resize_image(image, self.image_size)
        x = torch.from_numpy(np.array(array)).permute(2, 0, 1)[None].to(self.device)
        return normalizer(x)[0]

    async def predict(self, task: str, image: torch.Tensor, top_k: int) -> dict[str, Any]:
        assert self.queue is not None
        if self.queue.qsize() >= self.settings.max_queue:
            raise ServerBusy(
                f"{self.queue.qsize()} requests are waiting (`max_queue` "
                f"{self.settings.max_queue}); retry later"
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Request(task, image, top_k, future, time.perf_counter()))
        return await future

    async def next_batch(self, held: collections.deque[_Request]) -> list[_Request]:
        """The oldest waiting request and what arrives within ``max_wait_ms`` after it,
        up to ``max_batch_size``. Per-task batching keeps other tasks' requests in
        ``held`` for the next batches, oldest first."""
        assert self.queue is not None
        wait = self.settings.max_wait_ms / 1000
        per_task = self.settings.batching == "per-task"
        first = held.popleft() if held else await self.queue.get()
        batch = [first]
        if per_task and held:
            for request in [r for r in held if r.task == first.task]:
                if len(batch) == self.settings.max_batch_size:
                    break
                held.remove(request)
                batch.append(request)
        # the window opens when the oldest request arrived: one that queued while the
        # previous batch ran does not wait a second window
        deadline = first.arrived + wait
        while len(batch) < self.settings.max_batch_size:
            try:
                request = self.queue.get_nowait()  # what already waits, without a timer
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if per_task and request.task != first.task:
                held.append(request)
            else:
                batch.append(request)
        return batch

    async def batching_loop(self) -> None:
        held: collections.deque[_Request] = collections.deque()
        while True:
            batch = await self.next_batch(held)
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_tasks.observe(len({r.task for r in batch}))
            try:
                answers = await asyncio.to_thread(self._run, batch)
            except Exception as err:  # a model failure answers these requests with 500
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(err)
                continue
            for request, answer in zip(batch, answers, strict=True):
                if request.future.done():
                    continue
                if isinstance(answer, Exception):
                    request.future.set_exception(answer)
                else:
                    request.future.set_result(answer)

    def _run(self, batch: list[_Request]) -> list[dict[str, Any] | Exception]:
        with self.model_lock:
            return self._run_locked(batch)

    def _run_locked(self, batch: list[_Request]) -> list[dict[str, Any] | Exception]:
        live = [r for r in batch if r.task in self.model.tasks]
        gone: dict[int, Exception] = {
            id(r): TaskGone(f"task {r.task!r} was removed while this request waited")
            for r in batch
            if r.task not in self.model.tasks
        }
        logits: list[torch.Tensor] = []
        if live:
            images = torch.stack([r.image for r in live])
            with torch.inference_mode():
                logits = self.model(images, [r.task for r in live])
        answers: dict[int, dict[str, Any]] = {}
        for request, row in zip(live, logits, strict=True):
            task = self.model.tasks[request.task]
            classes = task.class_names or [f"class_{i}" for i in range(task.num_classes)]
            probs = row.float().softmax(-1)
            top = probs.topk(min(request.top_k, probs.numel()))
            answers[id(request)] = {
                "task": request.task,
                "classes": [classes[i] for i in top.indices.tolist()],
                "probabilities": [round(p, 6) for p in top.values.tolist()],
            }
        return [answers.get(id(r)) or gone[id(r)] for r in batch]


def build_app(server: TaskServer) -> FastAPI:
    """The FastAPI application (its OpenAPI page at /docs)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        server.queue = asyncio.Queue()
        loop = asyncio.create_task(server.batching_loop())
        yield
        loop.cancel()

    app = FastAPI(title="e2vpt serve", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        server.metrics.errors.labels(status=str(status)).inc()
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(server.model.tasks)}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": server.describe()}

    @app.post("/v1/tasks/{name}/predict", response_model=None)
    async def predict(name: str, request: Request, top_k: int = 5) -> Any:
        arrived = time.perf_counter()
        if name not in server.model.tasks:
            return error(404, f"unknown task {name!r}; GET /v1/tasks lists them")
        if top_k < 1:
            return error(400, f"top_k must be >= 1, got {top_k}")
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return error(400, "a multipart upload needs the image in a field named 'image'")
            blob = await upload.read()
        elif kind.startswith(IMAGE_TYPES) or not kind:
            blob = await request.body()
        else:
            return error(415, f"content type {kind!r}: send an image (image/*) or multipart")
        if len(blob) > server.settings.max_image_bytes:
            return error(413, f"image of {len(blob)} bytes; the limit is "
                         f"{server.settings.max_image_bytes} (`max_image_bytes`)")  # fmt: skip
        try:
            image = await asyncio.to_thread(server.decode, name, blob)
        except TaskGone as err:
            return error(404, str(err))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            return error(400, f"not a readable image: {err}")
        try:
            answer = await server.predict(name, image, top_k)
        except TaskGone as err:
            return error(404, str(err))
        except ServerBusy as err:
            return error(503, str(err))
        except Exception as err:
            server.metrics.errors.labels(status="500").inc()
            logger.exception("request for task %s failed", name)
            raise HTTPException(500, f"the model failed on this request: {err}") from err
        server.metrics.requests.labels(task=name).inc()
        server.metrics.latency.labels(task=name).observe(time.perf_counter() - arrived)
        return answer

    @app.post("/v1/tasks", response_model=None)
    async def add(body: dict[str, str]) -> Any:
        name, run = body.get("name"), body.get("run")
        if not name or not run:
            return error(400, 'send {"name": ..., "run": <run folder under `adapters_dir`>}')
        if name in server.model.tasks:
            return error(409, f"task {name!r} exists; DELETE /v1/tasks/{name} first")
        try:
            await asyncio.to_thread(server.load_from_adapters_dir, name, run)
        except E2VPTError as err:
            return error(403 if isinstance(err, NotAllowed) else 400, str(err))
        return {"added": name, "tasks": server.model.task_names}

    @app.delete("/v1/tasks/{name}", response_model=None)
    async def remove(name: str) -> Any:
        if name not in server.model.tasks:
            return error(404, f"unknown task {name!r}; GET /v1/tasks lists them")
        await asyncio.to_thread(server.remove_task, name)
        return {"removed": name, "tasks": server.model.task_names}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(settings: ServeSettings) -> None:
    """Start the server (blocks until Ctrl-C; uvicorn drains in-flight requests)."""
    import uvicorn

    server = TaskServer(settings)
    # no access-log line per request (its cost shows under load): /metrics counts them
    uvicorn.run(
        build_app(server),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
    )
