"""The model and the batching loop behind the HTTP routes: :class:`TaskServer`.

The event loop reads the tasks from :attr:`TaskServer.tasks`, a dict replaced whole
(never changed in place) under the model lock, so a request sees either the tasks
before a change or after it; the model itself is touched under the lock only, in a
worker thread. Every answer the batching loop gives is a result or a
:class:`~e2vpt.serving.errors.ServeError`, and no failure stops the loop."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2vpt.backbones import create_backbone
from e2vpt.inference import model_data_settings, resolve_device
from e2vpt.model import PromptedModel
from e2vpt.multitask import MultiTaskModel
from e2vpt.runs import holds_checkpoint, read_adapter_config
from e2vpt.serving.errors import (
    BadRequest,
    ModelFailed,
    NotAllowed,
    ServeError,
    ServerBusy,
    TaskConflict,
    TaskGone,
)
from e2vpt.serving.images import decode_upload
from e2vpt.serving.metrics import Metrics
from e2vpt.serving.settings import TASK_NAME_RULE, ServeSettings, is_task_name, shown

logger = logging.getLogger("e2vpt.serve")


@dataclass(frozen=True)
class TaskInfo:
    """What the routes need of a task, read without the model."""

    normalizer: Any  # images → the task's normalised input
    classes: list[str]
    method: str
    tunable: int


@dataclass
class _Request:
    task: str
    image: torch.Tensor  # normalised (3, S, S)
    top_k: int
    future: asyncio.Future[dict[str, Any]]
    arrived: float  # time.perf_counter() when it was queued


class TaskServer:
    """One backbone, its tasks, and the loop that batches their requests."""

    def __init__(self, settings: ServeSettings) -> None:
        settings.validate()
        self.settings = settings
        self.device = resolve_device(settings.device)
        first = next(iter(settings.adapters.values()))
        self.backbone_name = str(read_adapter_config(first)["backbone"])
        backbone = create_backbone(self.backbone_name).to(self.device)
        self.model = MultiTaskModel(backbone)
        self.tasks: dict[str, TaskInfo] = {}  # replaced whole under model_lock
        self.image_size = 0
        # held while a batch runs and while a task is put in or taken out
        self.model_lock = threading.Lock()
        self.metrics = Metrics(settings.max_batch_size)
        self.in_flight = 0  # predict requests being handled (the event loop's count)
        for name, folder in settings.adapters.items():
            self.add_task(name, folder)
        self.queue: asyncio.Queue[_Request] | None = None

    # -- tasks -------------------------------------------------------------------------
    def add_task(self, name: str, folder: str) -> None:
        """Load the run in ``folder`` as task ``name``: loading runs outside the model
        lock (batches go on meanwhile), only putting it in takes the lock."""
        if not is_task_name(name):
            raise BadRequest(f"task name {shown(name)}: a task name is {TASK_NAME_RULE}")
        self._check_room(name)
        model = self.model.prepare_task(name, folder)  # onto the backbone's device
        size, normalizer = model_data_settings(model)
        info = TaskInfo(normalizer.to(self.device), _class_names(model), model.method_name,
                        sum(p.numel() for p in model.parameters() if p.requires_grad))  # fmt: skip
        with self.model_lock:
            self._check_room(name)  # another request may have added it meanwhile
            self.model.add_task(name, model)
            self.image_size = size
            self.tasks = {**self.tasks, name: info}
            self.metrics.tasks.set(len(self.tasks))

    def _check_room(self, name: str) -> None:
        if name in self.tasks:
            raise TaskConflict(f"task {name!r} exists; DELETE /v1/tasks/{name} first")
        if len(self.tasks) >= self.settings.max_tasks:
            raise TaskConflict(
                f"the server serves {len(self.tasks)} tasks, its `max_tasks`; DELETE one first"
            )

    def remove_task(self, name: str) -> None:
        with self.model_lock:
            if name not in self.tasks:  # never there, or another request removed it
                raise TaskGone(f"unknown task {shown(name)}; GET /v1/tasks lists them")
            self.model.remove_task(name)
            self.tasks = {k: v for k, v in self.tasks.items() if k != name}
            self.metrics.tasks.set(len(self.tasks))

    def load_from_adapters_dir(self, name: str, run: str) -> None:
        """``POST /v1/tasks``: a run folder under ``adapters_dir`` only, never a path a
        client chose elsewhere."""
        if self.settings.adapters_dir is None:
            raise NotAllowed(
                "this server loads no tasks at run time (start it with `adapters_dir`)"
            )
        root = Path(self.settings.adapters_dir).resolve()
        try:
            folder = (root / run).resolve()
            inside = folder.is_relative_to(root) and folder != root
            found = inside and holds_checkpoint(folder)
        except (OSError, ValueError) as err:  # a NUL byte, a name too long for the system
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise BadRequest(f"run {shown(run)}: not a usable folder name ({why})") from None
        if not inside:
            raise NotAllowed(f"run {shown(run)} is not a folder under the server's `adapters_dir`")
        if not found:
            raise BadRequest(f"no e2vpt run folder {shown(run)} under the server's `adapters_dir`")
        self.add_task(name, str(folder))

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "method": t.method, "classes": t.classes, "tunable": t.tunable}
            for name, t in self.tasks.items()
        ]

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: the backbone and each task with its class count and the
        predict requests answered for it, read from the same counters as /metrics."""
        tasks = [
            {"name": name, "method": t.method, "classes": len(t.classes), "tunable": t.tunable,
             "requests": self.metrics.requests_for(name)}
            for name, t in self.tasks.items()
        ]  # fmt: skip
        return {
            "backbone": self.backbone_name,
            "device": str(self.device),
            "tasks": tasks,
            "errors": self.metrics.error_counts(),
        }

    # -- requests ----------------------------------------------------------------------
    @contextmanager
    def admit(self) -> Iterator[None]:
        """One more predict request in flight, or :class:`ServerBusy` beyond
        ``max_in_flight`` (on the event loop only: a plain count is enough)."""
        if self.in_flight >= self.settings.max_in_flight:
            raise ServerBusy(
                f"{self.in_flight} requests are in flight (`max_in_flight` "
                f"{self.settings.max_in_flight}); retry later"
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def decode(self, task: str, blob: bytes) -> torch.Tensor:
        """The image, resized and normalised for ``task`` (run in a worker thread, so
        the event loop goes on taking requests)."""
        info = self.tasks.get(task)
        if info is None:
            raise TaskGone(f"task {task!r} was removed while this request arrived")
        array = decode_upload(blob, self.image_size, self.settings.max_image_pixels)
        x = torch.from_numpy(np.array(array)).permute(2, 0, 1)[None].to(self.device)
        return info.normalizer(x)[0]

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

    # -- batching ----------------------------------------------------------------------
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
            try:
                await self.answer_batch(batch)
            except Exception as err:  # noqa: BLE001 - the loop outlives any batch
                logger.error("a batch failed: %s", err, exc_info=True)
                failed = ModelFailed(f"the server failed on this request: {err}")
                _settle(batch, [failed] * len(batch))

    async def answer_batch(self, batch: list[_Request]) -> None:
        """Run ``batch`` and settle its requests. A batch that fails runs again one
        request at a time, so one request the model fails on fails alone."""
        batch = [r for r in batch if not r.future.done()]
        if not batch:
            return
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tasks.observe(len({r.task for r in batch}))
        try:
            answers = await asyncio.to_thread(self._run, batch)
        except Exception as err:  # noqa: BLE001 - answered as 500s, the server goes on
            logger.error("the model failed on a batch of %d: %s", len(batch), err, exc_info=True)
            if len(batch) == 1:
                answers = [ModelFailed(f"the model failed on this request: {err}")]
            else:
                answers = [await self._run_alone(request) for request in batch]
        _settle(batch, answers)

    async def _run_alone(self, request: _Request) -> dict[str, Any] | ServeError:
        try:
            (answer,) = await asyncio.to_thread(self._run, [request])
        except Exception as err:  # noqa: BLE001 - this request's answer is the 500
            return ModelFailed(f"the model failed on this request: {err}")
        return answer

    def _run(self, batch: list[_Request]) -> list[dict[str, Any] | ServeError]:
        with self.model_lock:
            return self._run_locked(batch)

    def _run_locked(self, batch: list[_Request]) -> list[dict[str, Any] | ServeError]:
        tasks = self.tasks  # what the model holds, while the lock is held
        live = [r for r in batch if r.task in tasks]
        answers: dict[int, dict[str, Any] | ServeError] = {}
        if live:
            images = torch.stack([r.image for r in live])
            with torch.inference_mode():
                logits = self.model(images, [r.task for r in live])
            for request, row in zip(live, logits, strict=True):
                answers[id(request)] = _answer(request, row, tasks[request.task])
        gone = "task {!r} was removed while this request waited"
        return [
            answers[id(r)] if id(r) in answers else TaskGone(gone.format(r.task)) for r in batch
        ]


def _answer(request: _Request, logits: torch.Tensor, task: TaskInfo) -> dict[str, Any] | ServeError:
    """A request's top classes; a 500 of its own where its logits are not finite (no
    ranking is meaningful then, and JSON has no NaN)."""
    if not bool(torch.isfinite(logits).all()):
        return ModelFailed(
            f"the model produced non-finite outputs (NaN or infinity) for this image with task "
            f"{request.task!r}; no probabilities can be given (the task's weights may be broken)"
        )
    probs = logits.float().softmax(-1)
    top = probs.topk(min(request.top_k, probs.numel()))
    return {
        "task": request.task,
        "classes": [task.classes[i] for i in top.indices.tolist()],
        "probabilities": [round(p, 6) for p in top.values.tolist()],
    }


def _settle(batch: list[_Request], answers: list[dict[str, Any] | ServeError]) -> None:
    for request, answer in zip(batch, answers, strict=True):
        if request.future.done():  # its client's request was cancelled meanwhile
            continue
        if isinstance(answer, Exception):
            request.future.set_exception(answer)
        else:
            request.future.set_result(answer)


def _class_names(model: PromptedModel) -> list[str]:
    names = model.class_names
    if names is not None and len(names) == model.num_classes:
        return list(names)
    return [f"class_{i}" for i in range(model.num_classes)]
