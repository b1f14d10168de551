"""End to end in headless Chromium (Playwright): upload an image, get a reply and music.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`; .ci/run
installs it) and the playwright package; never `playwright install` (it downloads).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_COPY = Path("/tmp/m2ugen_app.png")
TIMEOUT_MS = 120_000  # generous: CI shares 2 cores

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install -r requirements.txt)")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` "
           "(.ci/run does this); playwright's own browser download is not used")

MESSAGES = "#chatbot [data-testid=user], #chatbot [data-testid=bot]"


@pytest.fixture(scope="module")
def server(tiny_model, media):
    from m2ugen.app import build_app, launch

    demo = build_app(tiny_model, examples_dir=media)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, port=port, prevent_thread_lock=True, quiet=True, examples_dir=media)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_image_to_music_in_the_browser_with_separate_sessions(server, browser, media,
                                                             tmp_path):
    first = browser.new_context()
    page = first.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    page.wait_for_selector("#message textarea")
    assert "untrained" in page.inner_text("#model-notice")

    page.locator("#settings > button").first.click()  # open the settings
    page.locator("#music-mode").get_by_text("always", exact=True).click()
    seconds = page.locator("#music-seconds input[type=number]")
    seconds.fill("2")
    seconds.press("Enter")

    page.locator("#message input[type=file]").set_input_files(
        str(media / "sunset.png"))
    page.wait_for_selector("#message .thumbnail-item img")  # the upload finished
    page.locator("#message textarea").fill("Compose music that fits this picture.")
    start = time.perf_counter()
    page.locator("#message textarea").press("Enter")
    page.locator("#chatbot audio").first.wait_for(state="attached")
    page.locator("#chatbot [data-testid=bot]").first.wait_for()
    answer_s = time.perf_counter() - start
    print(f"\nimage → reply + 2 s of music in the browser: {answer_s:.1f} s (tiny model)")

    assert page.locator("#chatbot [data-testid=user]").count() >= 1
    assert page.locator("#chatbot [data-testid=user] img").count() == 1  # the picture
    assert page.locator("#chatbot [data-testid=bot]").count() >= 1
    assert page.locator("#message .thumbnail-item").count() == 0  # textbox cleared
    shot = tmp_path / "m2ugen_app.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)

    second = browser.new_context()  # another visitor
    other = second.new_page()
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(server)
    other.wait_for_selector("#message textarea")
    assert other.locator(MESSAGES).count() == 0
    assert other.locator("#chatbot audio").count() == 0
    assert page.locator(MESSAGES).count() >= 2  # the first visitor keeps their conversation
    first.close()
    second.close()
