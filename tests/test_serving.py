"""`e2vpt serve`: the real server on a loopback port, a real HTTP client."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import e2vpt
from e2vpt.predict import Predictor
from e2vpt.serving import ServeSettings, TaskServer, build_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve")
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


SERVERS: dict[str, TaskServer] = {}


@pytest.fixture(scope="module")
def url(runs: dict[str, str]) -> Iterator[str]:
    import uvicorn

    settings = ServeSettings(
        adapters=runs,
        device="cpu",
        max_wait_ms=50,
        max_image_bytes=50_000,
        adapters_dir=str(Path(runs["linear"]).parent),
    )
    port = free_port()
    task_server = TaskServer(settings)
    SERVERS["main"] = task_server
    config = uvicorn.Config(build_app(task_server), port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def png(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


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
    metrics = httpx.get(f"{url}/metrics").text
    batch_max = int(
        next(x for x in metrics.splitlines() if x.startswith("e2vpt_batch_size_max")).split()[1]
    )
    assert batch_max > 1  # requests for different tasks ran in one batch
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
