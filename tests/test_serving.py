"""`e2vpt serve`: the real server on a loopback port, a real HTTP client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import e2vpt
from e2vpt.predict import Predictor
from e2vpt.serving import ServeSettings, TaskServer
from tests.serving_support import free_port, make_runs, png, read_metrics, start_server


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_runs(tmp_path_factory.mktemp("serve"))


SERVERS: dict[str, TaskServer] = {}


@pytest.fixture(scope="module")
def url(runs: dict[str, str]) -> Iterator[str]:
    settings = ServeSettings(
        adapters=runs,
        device="cpu",
        max_wait_ms=50,
        max_image_bytes=50_000,
        adapters_dir=str(Path(runs["linear"]).parent),
    )
    task_server = TaskServer(settings)
    SERVERS["main"] = task_server
    address, server, thread = start_server(settings, task_server)
    yield address
    server.should_exit = True
    thread.join(timeout=10)


def test_answers_equal_predict_and_requests_batch_across_tasks(
    url: str, runs: dict[str, str], tmp_path: Path
) -> None:
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    listed = {t["name"]: t for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]}
    assert set(listed) == set(runs) and listed["vpt"]["classes"][0] == "vpt_0"
    jobs = [(name, seed) for seed in range(4) for name in runs]

    def ask(job: tuple[str, int]) -> dict:
        name, seed = job
        headers = {"content-type": "image/png"}
        reply = httpx.post(
            f"{url}/v1/tasks/{name}/predict?top_k=2", content=png(seed), headers=headers
        )
        assert reply.status_code == 200, reply.text
        return reply.json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, jobs))
    for (name, seed), answer in zip(jobs, answers, strict=True):
        path = tmp_path / f"{name}_{seed}.png"
        path.write_bytes(png(seed))
        (expected,) = Predictor(runs[name], device="cpu", top_k=2).predict([path])
        assert answer["classes"] == expected.classes
        np.testing.assert_allclose(answer["probabilities"], expected.probabilities, atol=1e-5)
    metrics = read_metrics(url)
    # requests for different tasks ran in one batch
    assert (
        metrics[("e2vpt_batch_tasks_bucket", (("le", "1.0"),))]
        < metrics[("e2vpt_batch_tasks_count", ())]
    )
    for name in runs:  # a latency histogram per task, one observation per request
        assert metrics[("e2vpt_request_latency_seconds_count", (("task", name),))] >= 4
        assert metrics[("e2vpt_requests_total", (("task", name),))] >= 4
    assert metrics[("e2vpt_tasks", ())] == len(runs)
    multipart = httpx.post(f"{url}/v1/tasks/linear/predict", files={"image": ("a.png", png(0))})
    assert multipart.status_code == 200


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/v1/tasks/nope/predict", {"content": b"x"}, 404, "unknown task 'nope'"),
        ("/v1/tasks/linear/predict", {"content": b"not an image"}, 400, "not a readable image"),
        ("/v1/tasks/linear/predict", {"content": b"0" * 60_000}, 413, "the limit is 50000"),
        ("/v1/tasks/linear/predict", {"json": {"a": 1}}, 415, "send an image"),
        ("/v1/tasks/linear/predict?top_k=0", {"content": b"x"}, 400, "top_k must be >= 1"),
    ],
)
def test_bad_input_is_a_json_error_and_the_server_goes_on(
    url: str, path: str, kwargs: dict, status: int, message: str
) -> None:
    reply = httpx.post(f"{url}{path}", **kwargs)
    assert reply.status_code == status and message in reply.json()["error"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_tasks_come_and_go_at_run_time(url: str, runs: dict[str, str]) -> None:
    headers = {"content-type": "image/png"}
    added = httpx.post(f"{url}/v1/tasks", json={"name": "vpt2", "run": "vpt"})
    assert added.status_code == 200 and "vpt2" in added.json()["tasks"]
    same = httpx.post(f"{url}/v1/tasks/vpt2/predict", content=png(1), headers=headers).json()
    other = httpx.post(f"{url}/v1/tasks/vpt/predict", content=png(1), headers=headers).json()
    assert same["classes"] == other["classes"]
    for body, status, message in (
        ({"name": "y", "run": "/etc"}, 403, "not a folder under"),
        ({"name": "z", "run": "../../"}, 403, "not a folder under"),
        ({"name": "w", "run": "missing"}, 400, "no e2vpt run folder"),
        ({"name": "vpt", "run": "vpt"}, 409, "exists"),
        ({"name": "v"}, 400, "send {"),
    ):
        reply = httpx.post(f"{url}/v1/tasks", json=body)
        assert reply.status_code == status, reply.text
        assert message in reply.json()["error"]
    assert httpx.delete(f"{url}/v1/tasks/vpt2").status_code == 200
    gone = httpx.post(f"{url}/v1/tasks/vpt2/predict", content=png(1), headers=headers)
    assert gone.status_code == 404
    again = httpx.post(f"{url}/v1/tasks/vpt/predict", content=png(1), headers=headers)
    assert again.json() == other


def test_a_model_failure_is_a_500_and_the_server_stays_up(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SERVERS["main"]

    def broken(*args: object) -> None:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(server, "_run_locked", broken)
    headers = {"content-type": "image/png"}
    reply = httpx.post(f"{url}/v1/tasks/linear/predict", content=png(2), headers=headers)
    assert reply.status_code == 500 and "simulated kernel failure" in reply.text
    monkeypatch.undo()
    fine = httpx.post(f"{url}/v1/tasks/linear/predict", content=png(2), headers=headers)
    assert fine.status_code == 200


def test_per_task_batching_never_mixes_tasks(runs: dict[str, str]) -> None:
    settings = ServeSettings(adapters=runs, device="cpu", max_wait_ms=50, batching="per-task")
    url, server, thread = start_server(settings)
    try:
        jobs = [(name, seed) for seed in range(4) for name in runs]
        headers = {"content-type": "image/png"}

        def ask(job: tuple[str, int]) -> dict:
            name, seed = job
            return httpx.post(
                f"{url}/v1/tasks/{name}/predict", content=png(seed), headers=headers
            ).json()

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, jobs))
        assert [a["task"] for a in answers] == [name for name, _ in jobs]
        metrics = read_metrics(url)
        batches = metrics[("e2vpt_batch_tasks_count", ())]
        assert metrics[("e2vpt_batch_tasks_bucket", (("le", "1.0"),))] == batches
        assert metrics[("e2vpt_batch_size_sum", ())] == len(jobs) > batches  # still batched
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    with pytest.raises(e2vpt.ConfigError, match="`batching` 'mixed'"):
        ServeSettings(adapters=runs, batching="mixed").validate()


def test_tasks_added_and_removed_under_load(runs: dict[str, str], tmp_path: Path) -> None:
    """Requests keep flowing for one task while others come and go: its answers stay
    right, a removed task's requests are 404 (never 500), an added one answers at once;
    a task added and removed again and again, its removal raced by a second DELETE
    (404), fails no request for any other task."""
    root = Path(runs["linear"]).parent
    settings = ServeSettings(
        adapters={"steady": runs["e2vpt"], "leaving": runs["vpt"]},
        device="cpu",
        max_wait_ms=20,
        adapters_dir=str(root),
    )
    url, server, thread = start_server(settings)
    path = tmp_path / "x.png"
    path.write_bytes(png(7))
    (expected,) = Predictor(runs["e2vpt"], device="cpu", top_k=1).predict([path])
    headers = {"content-type": "image/png"}
    stop = threading.Event()
    seen: dict[str, list[int]] = {"steady": [], "leaving": [], "churn": []}

    def hammer(task: str) -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                reply = client.post(
                    f"{url}/v1/tasks/{task}/predict?top_k=1", content=png(7), headers=headers
                )
                seen[task].append(reply.status_code)
                if task == "steady":
                    assert reply.json()["classes"] == expected.classes

    def churn(cycles: int) -> list[int]:
        deletes = []
        with ThreadPoolExecutor(2) as racers:
            for cycle in range(cycles):
                run = ("vpt", "linear")[cycle % 2]
                added = httpx.post(f"{url}/v1/tasks", json={"name": "churn", "run": run})
                assert added.status_code == 200, added.text
                twice = [racers.submit(httpx.delete, f"{url}/v1/tasks/churn") for _ in "ab"]
                deletes += sorted(f.result().status_code for f in twice)
        return deletes

    tasks = ("steady", "steady", "leaving", "churn")
    try:
        with ThreadPoolExecutor(len(tasks)) as pool:
            running = [pool.submit(hammer, t) for t in tasks]
            time.sleep(0.3)
            assert (
                httpx.post(f"{url}/v1/tasks", json={"name": "new", "run": "linear"}).status_code
                == 200
            )
            added = httpx.post(f"{url}/v1/tasks/new/predict", content=png(7), headers=headers)
            assert added.status_code == 200
            assert httpx.delete(f"{url}/v1/tasks/leaving").status_code == 200
            deletes = churn(6)
            stop.set()
            for future in running:
                future.result()
    finally:
        stop.set()
        server.should_exit = True
        thread.join(timeout=10)
    assert deletes == [200, 404] * 6  # one DELETE removes it, the other finds it gone
    assert seen["steady"] and set(seen["steady"]) == {200}
    assert 200 in seen["leaving"] and set(seen["leaving"]) <= {200, 404}
    assert seen["leaving"][-1] == 404
    assert set(seen["churn"]) <= {200, 404} and seen["churn"]


def test_shutdown_drains_requests_in_flight(runs: dict[str, str]) -> None:
    """SIGTERM while requests wait in the batching window: they are still answered,
    then the server exits cleanly."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    command = [
        sys.executable, "-m", "e2vpt", "serve", "--adapter", f"linear={runs['linear']}",
        "--port", str(port), "--device", "cpu", "--max-wait-ms", "1500",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        headers = {"content-type": "image/png"}
        with ThreadPoolExecutor(3) as pool:
            replies = [
                pool.submit(
                    httpx.post,
                    f"{url}/v1/tasks/linear/predict",
                    content=png(i),
                    headers=headers,
                    timeout=30,
                )  # fmt: skip
                for i in range(3)
            ]
            time.sleep(0.5)  # the requests sit in the 1.5 s batching window
            proc.send_signal(signal.SIGTERM)
            assert [r.result().status_code for r in replies] == [200, 200, 200]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_an_overloaded_server_answers_503_and_recovers(runs: dict[str, str]) -> None:
    settings = ServeSettings(adapters={"linear": runs["linear"]}, device="cpu", max_queue=1)
    task_server = TaskServer(settings)
    real = task_server._run_locked

    def slow(batch: list) -> list:
        time.sleep(0.6)  # requests pile up in the queue meanwhile
        return real(batch)

    task_server._run_locked = slow  # type: ignore[method-assign]
    url, server, thread = start_server(settings, task_server)
    headers = {"content-type": "image/png"}
    try:

        def ask(seed: int) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/tasks/linear/predict", content=png(seed), headers=headers, timeout=30
            )

        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(ask, 0)
            time.sleep(0.2)  # the first batch is running
            replies = [first, *(pool.submit(ask, seed) for seed in range(1, 8))]
            codes = [r.result().status_code for r in replies]
        assert codes.count(503) >= 1 and codes.count(200) >= 2, codes
        busy = next(r.result() for r in replies if r.result().status_code == 503)
        assert "`max_queue` 1" in busy.json()["error"]
        assert ask(9).status_code == 200
        assert read_metrics(url)[("e2vpt_errors_total", (("status", "503"),))] >= 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
