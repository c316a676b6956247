"""`e2vpt serve` against a hostile client: every condition a client causes is a 4xx with
a JSON error and one log line (never a traceback), /metrics labels stay bounded, and so
does the server's memory over many mixed requests."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

import e2vpt
from e2vpt.cli.main import main
from e2vpt.serving import ServeSettings, TaskServer
from e2vpt.serving.server import _Request
from tests.serving_support import (
    PNG,
    Records,
    header_only_png,
    make_runs,
    png,
    read_metrics,
    server_log,
    smooth_png,
    start_server,
)

SERVER: dict[str, TaskServer] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_runs(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def url(runs: dict[str, str]) -> Iterator[str]:
    settings = ServeSettings(
        adapters={"linear": runs["linear"], "vpt": runs["vpt"]},
        device="cpu",
        max_wait_ms=2,
        max_image_bytes=50_000,
        max_image_pixels=1_000_000,
        adapters_dir=str(Path(runs["linear"]).parent),
    )
    SERVER["main"] = TaskServer(settings)
    address, server, thread = start_server(settings, SERVER["main"])
    yield address
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def log(url: str) -> Iterator[Records]:
    with server_log() as records:
        yield records


def refused(reply: httpx.Response, status: int, message: str, log: Records) -> None:
    """``reply`` is ``status`` with a JSON error saying ``message``, and the server said
    it in exactly one log line, with no traceback anywhere."""
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]
    lines = log.lines()
    assert len(lines) == 1 and f": {status} " in lines[0], lines
    assert not log.tracebacks() and not log.lines("uvicorn.error")
    log.records.clear()


@pytest.mark.parametrize("name", ["a.b", "x" * 65, "-a", "a b", "é", "a/b"])
def test_a_bad_task_name_is_400(url: str, name: str, log: Records) -> None:
    reply = httpx.post(f"{url}/v1/tasks", json={"name": name, "run": "vpt"})
    refused(reply, 400, "a task name is 1 to 64 letters", log)


def test_names_of_the_models_own_attributes_are_tasks_like_any(url: str, log: Records) -> None:
    """The model keeps its tasks under keys of its own: 'backbone' or 'task0' (one of
    those keys) name tasks like any other, each answering as its run does."""
    want = httpx.post(f"{url}/v1/tasks/vpt/predict", content=png(3), headers=PNG).json()
    for name in ("backbone", "task0", "forward"):
        added = httpx.post(f"{url}/v1/tasks", json={"name": name, "run": "vpt"})
        assert added.status_code == 200, added.text
        reply = httpx.post(f"{url}/v1/tasks/{name}/predict", content=png(3), headers=PNG)
        assert reply.json() == {**want, "task": name}
    refused(httpx.post(f"{url}/v1/tasks", json={"name": "task0", "run": "vpt"}), 409, "exists", log)
    for name in ("backbone", "task0", "forward"):
        assert httpx.delete(f"{url}/v1/tasks/{name}").status_code == 200
    assert httpx.post(f"{url}/v1/tasks/vpt/predict", content=png(3), headers=PNG).json() == want


def test_a_bad_adapter_name_on_the_command_line_is_one_line(
    runs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--adapter", f"a.b={runs['linear']}", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--adapter 'a.b': a task name is 1 to 64" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "w", "run": "a\x00b"}, 400, "not a usable folder name"),
        ({"name": "w", "run": "a" * 5000}, 400, "not a usable folder name"),
        ({"name": "w", "run": "../"}, 403, "not a folder under"),
        ([1], 400, "send {"),
        (b"[" * 50_000, 400, "not JSON"),
        (b"{" + b" " * 70_000, 413, "the limit is 65536"),
    ],
)
def test_a_bad_add_request_is_a_4xx(url: str, body: object, status: int, message: str,
                                    log: Records) -> None:  # fmt: skip
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    refused(httpx.post(f"{url}/v1/tasks", **kwargs), status, message, log)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        # a 20000 × 20000 header over 8×8 pixels of data: answered from the header alone
        (header_only_png(20_000, 20_000), PNG, 413, "`max_image_pixels`"),
        (header_only_png(1001, 1000), PNG, 413, "1001×1000 = 1001000 pixels; the limit is"),
        (png(1)[:100], PNG, 400, "not a readable image"),
        (b"", PNG, 400, "no image format the server decodes"),
        (b"0" * 60_000, PNG, 413, "the limit is 50000 (`max_image_bytes`)"),
        (b"--b\r\nx", {"content-type": "multipart/form-data"}, 400, "boundary"),
        (b"x", {"content-type": "text/plain"}, 415, "send an image"),
    ],
)
def test_a_bad_upload_is_a_4xx_before_decoding(
    url: str, body: bytes, headers: dict, status: int, message: str, log: Records
) -> None:
    reply = httpx.post(f"{url}/v1/tasks/linear/predict", content=body, headers=headers)
    refused(reply, status, message, log)


def test_the_pixel_limit_is_at_most_pils_own(runs: dict[str, str]) -> None:
    with pytest.raises(e2vpt.ConfigError, match="`max_image_pixels` 1000000000 is above"):
        ServeSettings(adapters=runs, max_image_pixels=10**9).validate()


def test_bad_parameters_and_routes_are_json_4xx(url: str, log: Records) -> None:
    post = httpx.post
    refused(post(f"{url}/v1/tasks/linear/predict?top_k=x", content=png(1), headers=PNG), 400,
            "top_k: Input should be a valid integer", log)  # fmt: skip
    refused(post(f"{url}/v1/tasks/a%0Ab/predict", content=b"x"), 404, "unknown task 'a\\nb'", log)
    refused(httpx.get(f"{url}/v1/tasks/linear/predict"), 405, "Method Not Allowed", log)
    refused(httpx.get(f"{url}/nowhere"), 404, "Not Found", log)


def test_deleting_a_task_another_request_deleted_is_404(url: str, log: Records) -> None:
    assert httpx.post(f"{url}/v1/tasks", json={"name": "twice", "run": "linear"}).status_code == 200
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(httpx.delete, [f"{url}/v1/tasks/twice"] * 2))
    assert sorted(r.status_code for r in replies) == [200, 404]
    gone = next(r for r in replies if r.status_code == 404)
    refused(gone, 404, "unknown task 'twice'", log)


def test_a_client_that_disconnects_is_one_line(url: str, log: Records) -> None:
    """Mid-body: one log line (499), no traceback. After its body, while its answer is
    computed: no traceback either (a 499 line where the server noticed before reading
    the body). The server goes on."""
    host, port = url.removeprefix("http://").split(":")
    head = "POST /v1/tasks/linear/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    image = png(4)
    answered = read_metrics(url).get(("e2vpt_requests_total", (("task", "linear"),)), 0)

    def send_and_leave(body: bytes, length: int) -> None:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode() + body)

    def wait_for(done: Callable[[], bool]) -> None:
        for _ in range(200):  # the server notices on its own time
            if done():
                return
            httpx.get(f"{url}/health")
        raise AssertionError("the server did not get to it")

    send_and_leave(b"x" * 100, 10_000)
    wait_for(lambda: len(log.lines()) == 1)
    assert "499 the client disconnected before its request was read" in log.lines()[0]
    send_and_leave(image, len(image))
    metric = ("e2vpt_requests_total", (("task", "linear"),))
    wait_for(lambda: len(log.lines()) == 2 or read_metrics(url).get(metric, 0) > answered)
    assert httpx.post(f"{url}/v1/tasks/linear/predict", content=image, headers=PNG).is_success
    assert all("499 the client disconnected" in line for line in log.lines())
    assert not log.tracebacks() and not log.lines("uvicorn.error")


def test_non_finite_outputs_are_a_json_500_of_their_own(
    url: str, log: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN logits for one task: its requests get a 500 saying so (no ranking of classes
    means anything then, and JSON has no NaN); the other task's answer as before."""
    model = SERVER["main"].model
    real = model.forward

    def nan_for_vpt(images: torch.Tensor, tasks: list[str]) -> list[torch.Tensor]:
        out = real(images, tasks)
        nan = float("nan")
        return [r.fill_(nan) if t == "vpt" else r for r, t in zip(out, tasks, strict=True)]

    want = httpx.post(f"{url}/v1/tasks/linear/predict", content=png(5), headers=PNG).json()
    monkeypatch.setattr(model, "forward", nan_for_vpt)
    with ThreadPoolExecutor(2) as pool:
        nan, fine = pool.map(
            lambda task: httpx.post(f"{url}/v1/tasks/{task}/predict", content=png(5), headers=PNG),
            ["vpt", "linear"],
        )
    assert fine.json() == want
    refused(nan, 500, "the model produced non-finite outputs", log)


def test_a_batch_with_one_failing_request_answers_the_others(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model fails on a batch because of one request: the batch runs again one
    request at a time, and only that request gets the 500."""
    server = SERVER["main"]
    real, sizes = server._run_locked, []

    def poisoned(batch: list[_Request]) -> list:
        sizes.append(len(batch))
        if any(r.top_k == 3 for r in batch):
            raise RuntimeError("kernel failure on the poisoned image")
        return real(batch)

    monkeypatch.setattr(server, "_run_locked", poisoned)

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        batch = [
            _Request(task, server.decode(task, png(6)), top_k, loop.create_future(), 0.0)
            for task, top_k in (("linear", 1), ("vpt", 3), ("vpt", 2))
        ]
        await server.answer_batch(batch)
        return [r.future.exception() or r.future.result() for r in batch]

    ok, failed, other = asyncio.run(run())
    assert sizes == [3, 1, 1, 1]
    assert ok["task"] == "linear" and len(other["classes"]) == 2
    assert isinstance(failed, e2vpt.E2VPTError) and "kernel failure" in str(failed)


def test_metrics_labels_stay_bounded(url: str) -> None:
    with httpx.Client() as client:
        for i in range(20):
            reply = client.post(f"{url}/v1/tasks/ghost{i}/predict", content=b"x")
            assert reply.status_code == 404
    assert httpx.post(f"{url}/v1/tasks", json={"name": "brief", "run": "linear"}).status_code == 200
    assert httpx.post(f"{url}/v1/tasks/brief/predict", content=png(1), headers=PNG).is_success
    assert ("e2vpt_requests_total", (("task", "brief"),)) in read_metrics(url)
    assert httpx.delete(f"{url}/v1/tasks/brief").status_code == 200
    labels = {dict(k[1]).get("task") for k in read_metrics(url)} - {None}
    assert labels <= {"linear", "vpt"}  # no ghost, no task that has gone


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_stays_bounded_over_mixed_requests(url: str) -> None:
    """Rounds of mixed requests (answered, too large, bombs, unreadable, unknown tasks,
    multipart, a task added and removed): the process's resident memory after the last
    rounds is within 24 MB of after the first (benchmarks/serve_memory.py measures more)."""
    mix = [
        ("linear", png(1), PNG, 200),
        ("vpt", smooth_png(220), PNG, 200),
        ("linear", b"0" * 60_000, PNG, 413),
        ("vpt", header_only_png(20_000, 20_000), PNG, 413),
        ("linear", png(2)[:150], PNG, 400),
        ("nobody", png(1), PNG, 404),
    ]

    def one_round(client: httpx.Client, i: int) -> None:
        for task, body, headers, status in mix:
            reply = client.post(f"{url}/v1/tasks/{task}/predict", content=body, headers=headers)
            assert reply.status_code == status
        files = {"image": ("a.png", png(i))}
        assert client.post(f"{url}/v1/tasks/linear/predict", files=files).is_success
        if i % 10 == 0:
            assert client.post(f"{url}/v1/tasks", json={"name": "tmp", "run": "linear"}).is_success
            assert client.delete(f"{url}/v1/tasks/tmp").is_success

    with httpx.Client() as client, ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: one_round(client, i), range(15)))  # warm-up
        before = rss_bytes()
        list(pool.map(lambda i: one_round(client, i), range(15, 60)))
        after = rss_bytes()
    assert after - before < 24 * 2**20, (before, after)
