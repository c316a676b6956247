"""The HTTP routes (FastAPI) over a :class:`~e2vpt.serving.server.TaskServer`, and
``serve``, which starts uvicorn.

Every request is read as if hostile: a body is read no further than its limit, an
upload's type is checked before it is read, a client string is quoted (``repr``,
shortened) wherever an answer or a log line shows it. Whatever a request does wrong is
a 4xx answer ``{"error": "..."}`` and one log line, never a traceback; an exception no
route answered is a JSON 500 and one log line too."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2vpt.errors import E2VPTError
from e2vpt.serving.errors import (
    BadRequest,
    ServeError,
    TaskConflict,
    TaskGone,
    TooLarge,
    UnsupportedType,
)
from e2vpt.serving.page import add_page_routes
from e2vpt.serving.server import TaskServer, logger
from e2vpt.serving.settings import (
    TASK_NAME_PATTERN,
    TASK_NAME_RULE,
    ServeSettings,
    is_task_name,
    shown,
)

IMAGE_TYPES = ("image/", "application/octet-stream")
# what a multipart body may carry beyond the image itself (boundaries, part headers)
MULTIPART_SLACK = 64 * 2**10
TASK_BODY_LIMIT = 64 * 2**10  # POST /v1/tasks: a name and a folder
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the log counts it
ADD_USAGE = 'send {"name": ..., "run": <run folder under `adapters_dir`>}'
ADD_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["name", "run"],
                "properties": {
                    "name": {"type": "string", "pattern": TASK_NAME_PATTERN},
                    "run": {"type": "string", "description": "a folder under adapters_dir"},
                },
            }
        }
    },
}


def build_app(server: TaskServer) -> FastAPI:
    """The FastAPI application (its OpenAPI page at /docs)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        server.queue = asyncio.Queue()
        loop = asyncio.create_task(server.batching_loop())
        yield
        loop.cancel()

    app = FastAPI(title="e2vpt serve", lifespan=lifespan)
    app.add_middleware(LastResort, server=server)
    _add_error_handlers(app, server)
    _add_info_routes(app, server)
    _add_predict_route(app, server)
    _add_task_routes(app, server)
    add_page_routes(app)
    return app


def error_response(
    server: TaskServer, scope: Scope, status: int, message: str, exc_info: bool = False
) -> JSONResponse:
    """``{"error": message}`` with ``status``, counted in /metrics and said in one log
    line (info for a client's error, error for the server's)."""
    server.metrics.errors.labels(status=str(status)).inc()
    where = f"{scope.get('method', '?')} {shown(scope.get('path', ''), 100)}"
    level = logging.ERROR if status >= 500 else logging.INFO
    text = " ".join(message.splitlines())
    logger.log(level, "%s: %d %s", where, status, text, exc_info=exc_info)
    return JSONResponse({"error": message}, status_code=status)


class LastResort:
    """Around the routes: an exception nothing answered is one log line and a JSON
    500 (uvicorn would print its traceback); the traceback stays on the log record for a
    logging setup that wants it."""

    def __init__(self, app: ASGIApp, server: TaskServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as err:  # noqa: BLE001 - the last place that can answer
            message = f"the server failed on this request ({type(err).__name__}: {err})"
            response = error_response(self.server, scope, 500, message, exc_info=True)
            if not started:
                await response(scope, receive, send)


def _add_error_handlers(app: FastAPI, server: TaskServer) -> None:
    async def refused(request: Request, err: Exception) -> Response:
        status = err.status if isinstance(err, ServeError) else 400
        return error_response(server, request.scope, status, str(err))

    async def http_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        return error_response(server, request.scope, err.status_code, str(err.detail))

    async def invalid(request: Request, err: Exception) -> Response:
        assert isinstance(err, RequestValidationError)
        problems = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in err.errors()[:3]
        ]
        return error_response(server, request.scope, 400, "; ".join(problems))

    async def disconnected(request: Request, err: Exception) -> Response:
        message = "the client disconnected before its request was read"
        return error_response(server, request.scope, CLIENT_GONE, message)

    app.add_exception_handler(ServeError, refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ClientDisconnect, disconnected)


def _add_info_routes(app: FastAPI, server: TaskServer) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(server.tasks)}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": server.describe()}

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        """The backbone and each task's class count and requests answered, as JSON
        (what the page at / shows; /metrics has the same counts for Prometheus)."""
        return server.status()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.text(), media_type=CONTENT_TYPE_LATEST)


def _add_predict_route(app: FastAPI, server: TaskServer) -> None:
    @app.post("/v1/tasks/{name}/predict", response_model=None)
    async def predict(name: str, request: Request, top_k: int = 5) -> dict[str, Any]:
        arrived = time.perf_counter()
        if name not in server.tasks:
            raise TaskGone(f"unknown task {shown(name)}; GET /v1/tasks lists them")
        if top_k < 1:
            raise BadRequest(f"top_k must be >= 1, got {top_k}")
        with server.admit():
            blob = await read_image(request, server.settings.max_image_bytes)
            image = await asyncio.to_thread(server.decode, name, blob)
            del blob  # the request's bytes go before it waits for its batch
            answer = await server.predict(name, image, top_k)
        if name in server.tasks:  # a removed task's metric labels do not come back
            server.metrics.answered(name, time.perf_counter() - arrived)
        return answer


def _add_task_routes(app: FastAPI, server: TaskServer) -> None:
    @app.post("/v1/tasks", response_model=None, openapi_extra={"requestBody": ADD_BODY})
    async def add(request: Request) -> dict[str, Any]:
        name, run = task_request(await read_body(request, TASK_BODY_LIMIT, "for this route"))
        if name in server.tasks:
            raise TaskConflict(f"task {name!r} exists; DELETE /v1/tasks/{name} first")
        try:
            await asyncio.to_thread(server.load_from_adapters_dir, name, run)
        except ServeError:
            raise
        except E2VPTError as err:  # the run folder the client named cannot be served
            raise BadRequest(str(err)) from None
        return {"added": name, "tasks": list(server.tasks)}

    @app.delete("/v1/tasks/{name}", response_model=None)
    async def remove(name: str) -> dict[str, Any]:
        await asyncio.to_thread(server.remove_task, name)
        server.metrics.forget(name)  # here, on the event loop, after the tasks changed
        return {"removed": name, "tasks": list(server.tasks)}


def task_request(body: bytes) -> tuple[str, str]:
    """``POST /v1/tasks``'s ``{"name": ..., "run": ...}``, the name checked."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(f"the body is not JSON: {ADD_USAGE}") from None
    name, run = (data.get("name"), data.get("run")) if isinstance(data, dict) else (None, None)
    if not (isinstance(name, str) and isinstance(run, str) and name and run):
        raise BadRequest(ADD_USAGE)
    if not is_task_name(name):
        raise BadRequest(f"task name {shown(name)}: a task name is {TASK_NAME_RULE}")
    return name, run


async def read_image(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes: the raw body (image/*, application/octet-stream or no
    type) or a multipart field ``image``; never more than ``limit`` bytes read."""
    kind = request.headers.get("content-type", "").lower()
    if kind.startswith("multipart/form-data"):
        body = await read_body(request, limit + MULTIPART_SLACK, "(`max_image_bytes`)", limit)
        return await _image_field(request, body, limit)
    if kind and not kind.startswith(IMAGE_TYPES):
        raise UnsupportedType(f"content type {shown(kind)}: send an image (image/*) or multipart")
    return await read_body(request, limit, "(`max_image_bytes`)")


async def read_body(request: Request, limit: int, which: str, shown_limit: int = 0) -> bytes:
    """The body, or :class:`TooLarge` as soon as it is over ``limit`` bytes (its
    Content-Length says so, or the bytes read do): never read further."""
    said = f"the limit is {shown_limit or limit} {which}"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"a body of {declared} bytes; {said}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"a body of more than {limit} bytes; {said}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_field(request: Request, body: bytes, limit: int) -> bytes:
    """The field ``image`` of a multipart body already read."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=1, max_fields=16, max_part_size=MULTIPART_SLACK
        )
    except HTTPException:
        raise  # starlette's own 400 for a malformed multipart body
    except Exception as err:  # noqa: BLE001 - whatever a hostile body makes the parser raise
        raise BadRequest(f"not a readable multipart body ({type(err).__name__})") from None
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadRequest("a multipart upload needs the image in a field named 'image'")
        blob = await upload.read()
    finally:
        await form.close()  # its spooled files
    if len(blob) > limit:
        raise TooLarge(f"an image of {len(blob)} bytes; the limit is {limit} (`max_image_bytes`)")
    return blob


def serve(settings: ServeSettings) -> None:
    """Start the server (blocks until Ctrl-C; uvicorn drains in-flight requests)."""
    import uvicorn
    from PIL import Image

    server = TaskServer(settings)
    # `max_image_pixels` (at most PIL's own limit) answers an image over it 413 right
    # after PIL has read its header; PIL's warning about the same image adds nothing
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # no access-log line per request (its cost shows under load): /metrics counts them
    uvicorn.run(
        build_app(server),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
    )
