"""The page at ``GET /`` of `e2vpt serve`, driven in a real headless Chromium (the
Debian package at /usr/bin/chromium, through Playwright): an image uploaded through the
page shows the top-1 class `e2vpt predict` gives, an unreadable file shows the server's
error in words, and class names are shown as text, never run as HTML."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

import e2vpt
from e2vpt.predict import Predictor
from e2vpt.serving import ServeSettings
from tests.serving_support import png, start_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("E2VPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium; E2VPT_CHROMIUM names another)",
        allow_module_level=True,
    )
# class names a hostile run could carry: the page must show them as text
HTML_NAMES = ['<img src=x id="injected">', "<b>bold</b>", "a & b"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("page")
    torch.manual_seed(0)
    out = {}
    for name, config, names in (
        ("vpt", e2vpt.VPTConfig(tokens=3), [f"vpt_{c}" for c in range(4)]),
        ("html", e2vpt.LinearConfig(), HTML_NAMES),
    ):
        model = e2vpt.wrap(e2vpt.create_backbone("demo_vit_cifar10"), config, len(names))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
            model.head.weight.mul_(0.05)  # probabilities spread over the classes
        model.class_names = names
        e2vpt.save(model, root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def url(runs: dict[str, str]) -> Iterator[str]:
    settings = ServeSettings(adapters=runs, device="cpu", max_wait_ms=1, max_image_bytes=50_000)
    address, server, thread = start_server(settings)
    yield address
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(url: str) -> Iterator[object]:
    try:  # Playwright's driver, then Debian's Chromium (never Playwright's own builds)
        playwright = sync_api.sync_playwright().start()
    except Exception as err:  # noqa: BLE001 - whatever stops the driver: the test skips
        pytest.skip(f"Playwright's driver did not start: {str(err).splitlines()[0]}")
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    except sync_api.Error as err:
        playwright.stop()
        pytest.skip(f"Chromium at {CHROMIUM} did not start: {str(err).splitlines()[0]}")
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    page.set_default_timeout(10_000)
    yield page
    browser.close()
    playwright.stop()


def test_the_page_is_package_data_with_a_strict_policy(url: str) -> None:
    reply = httpx.get(f"{url}/")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert "http" not in reply.text.replace('href="/', "")  # nothing from another origin
    script = httpx.get(f"{url}/static/page.js")
    assert script.status_code == 200 and "innerHTML" not in script.text
    assert httpx.get(f"{url}/static/../app.py").status_code == 404


def test_an_upload_shows_predicts_top1_and_errors_in_words(
    page: object, url: str, runs: dict[str, str], tmp_path: Path
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(png(3))
    failed: list[str] = []
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#backbone").text_content() == "demo_vit_cifar10"
    page.select_option("#task", "vpt")
    page.set_input_files("#file", str(image))
    first = page.locator("#classes tbody tr").first
    first.wait_for()
    (expected,) = Predictor(runs["vpt"], device="cpu", top_k=5).predict([image])
    assert first.locator("td.class").text_content() == expected.classes[0]
    shown = first.locator("td.probability").text_content()
    assert shown.endswith(" %")
    assert float(shown[:-2]) == pytest.approx(100 * expected.probabilities[0], abs=0.006)
    assert page.locator("#classes tbody tr").count() == 4  # top 5 of 4 classes
    assert "ms round trip" in page.locator("#latency").text_content()
    requests = page.locator('#tasks tr[data-task="vpt"] td.requests')
    sync_api.expect(requests).to_have_text("1")
    assert failed == []  # the page's own files (its icon too) and API calls all answered
    screenshot = os.environ.get("E2VPT_PAGE_SCREENSHOT")  # a look at the page, for people
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)

    # a file that is no image, dropped on the page: the server's 400 in words
    drop = page.evaluate_handle(
        """() => { const d = new DataTransfer();
        d.items.add(new File(["just words"], "notes.txt", {type: "text/plain"})); return d; }"""
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": drop})
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    assert error.text_content().startswith("400 Bad request: ")
    assert "not a readable image" in error.text_content()
    assert page.locator("#result").is_hidden()
    if screenshot:
        page.screenshot(path=screenshot.replace(".png", "_error.png"), full_page=True)

    # class names that look like HTML are shown as they are and never parsed
    page.select_option("#task", "html")
    page.set_input_files("#file", str(image))
    first.wait_for()
    sync_api.expect(error).to_be_hidden()
    names = page.locator("#classes td.class").all_text_contents()
    assert sorted(names) == sorted(HTML_NAMES)
    assert page.locator("#injected, #classes b").count() == 0
