"""End to end in a real browser: ``vcot-demo`` served on 127.0.0.1 with the tiny model, driven by headless Chromium
(Debian's ``chromium`` through Playwright): upload, ask, wait for the stream to end, check the page. The same with
``--server``: the adapter's answer streamed by a server speaking the OpenAI protocol (tests/export/test_served.py
streams a real vLLM's).

The adapter (tests/demo/conftest.py) writes its box in Qwen2.5-VL's absolute pixels of the resized image; the
test finds the box drawn where the house box says, on the image the page serves. The page must not reach
anything but the demo server (no web fonts, no telemetry). A screenshot is kept: under the test's tmp dir, and
in ``$VCOT_ARTIFACTS`` when set (docs/demo.md shows one).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.demo.conftest import EXAMPLE, TrainedAdapter
from vcot.demo.drawing import PALETTE
from vcot.dev.fake_openai import FakeOpenAI
from vcot.train.distributed import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_LIMIT_S = 90
STREAM_LIMIT_MS = 60_000


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vcot-demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own server on 127.0.0.1
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"vcot-demo did not serve {url} within {STARTUP_LIMIT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(params=["model", "server"])
def demo_url(
    request: pytest.FixtureRequest, tiny_model_dir: Path, trained_adapter: TrainedAdapter, tmp_path: Path
) -> Iterator[str]:
    """``vcot-demo`` in its own process, as a user starts it, on a free port of 127.0.0.1: the adapter loaded in
    process, or (``--server``) the same answer streamed by a server speaking the OpenAI protocol, with the adapter's
    card."""
    port = free_port()
    log = tmp_path / "vcot-demo.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    if request.param == "model":
        command = [sys.executable, "-m", "jobs.demo", "--model", str(tiny_model_dir),
                   "--adapter", str(trained_adapter.path), "--port", str(port), "--threads", "1"]
    else:
        server = FakeOpenAI(answer=lambda _: trained_adapter.response, api_key="", latency=0.02).start()
        request.addfinalizer(server.stop)
        command = [sys.executable, "-m", "jobs.demo", "--server", server.base_url, "--model-card",
                   str(trained_adapter.path), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # SIGTERM unwinds the server: its files (uploads, shown images) go with it
    assert not list((tmp_path / "gradio").glob("vcot-demo-files-*")), "the demo left its files behind"


def _shown_image(page: object, url: str) -> Image.Image:
    src = page.get_attribute("#picture img", "src")  # type: ignore[attr-defined]
    if src.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
    response = page.request.get(src if src.startswith("http") else url.rstrip("/") + src)  # type: ignore[attr-defined]
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def _keep(screenshot: Path) -> None:
    artifacts = os.environ.get("VCOT_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)


def test_boxes_appear_on_the_page_as_the_model_writes_them(
    demo_url: str, trained_adapter: TrainedAdapter, chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    # Each step waits on the demo process (the status after an upload, the stream): Playwright's default 5 s is tight
    # on a busy machine.
    expect.set_options(timeout=STREAM_LIMIT_MS)
    outside: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 960},
        )
        try:
            page = context.new_page()
            page.on("request", lambda request: None if request.url.startswith((demo_url, "data:", "blob:"))
                    else outside.append(request.url))
            page.goto(demo_url)
            page.set_input_files("#upload input[type=file]", str(trained_adapter.image))
            expect(page.locator("#status")).to_contain_text("the model sees it at 112×84")
            (files,) = (tmp_path / "gradio").glob("vcot-demo-files-*")  # the server's own folder under GRADIO_TEMP_DIR
            assert list(files.rglob(trained_adapter.image.name)), "the upload lies in the server's folder"
            expect(page.locator("#question")).to_contain_text("Up to 2,000 characters and 512 tokens.")
            page.locator("#question textarea").fill(EXAMPLE.question)
            page.locator("#run").click()
            expect(page.locator("#status")).to_contain_text("Done")

            expect(page.locator("#answer textarea")).to_have_value("red")
            reasoning = page.locator("#reasoning").inner_text().lower()  # labels are shown in capitals
            assert "<ref>circle</ref><box>[14, 21, 51, 63]</box>" in reasoning  # as the model wrote it
            assert "is red. answer: red" in reasoning and "1 circle" in reasoning
            expect(page.locator("#status")).to_contain_text("1 box drawn")
            shown = _shown_image(page, demo_url)
            page.locator("#picture").scroll_into_view_if_needed()
            screenshot = tmp_path / "demo-screenshot.png"
            page.screenshot(path=str(screenshot), full_page=True)
            _keep(screenshot)
        finally:
            context.close()

    width, height = Image.open(trained_adapter.image).size
    box = trained_adapter.fmt.read(trained_adapter.response, width, height).boxes[0]
    x1, y1, x2, y2 = (v / 1000 * side for v, side in zip(box.box, [shown.width, shown.height] * 2))
    first = tuple(int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5))
    on_edges = [(x1, (y1 + y2) / 2), (x2, (y1 + y2) / 2), ((x1 + x2) / 2, y2)]
    pixels = [shown.getpixel((min(round(x), shown.width - 1), min(round(y), shown.height - 1))) for x, y in on_edges]
    assert pixels == [first] * 3
    assert shown.getpixel((round((x1 + x2) / 2), round((y1 + y2) / 2))) != first  # an outline, the circle inside
    assert outside == []  # no web fonts, no telemetry: the page works offline
