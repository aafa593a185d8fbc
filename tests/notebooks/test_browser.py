"""The quickstart notebook served with live widgets (Voila) and driven by a real headless Chromium.

Chromium is Debian's (`make test` installs it); Playwright from PyPI drives it, so no browser is
downloaded and no CDN is needed. The screenshot is written to build/screenshots/ as a build artifact.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xfd.testing import free_port

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "examples" / "notebooks" / "quickstart.ipynb"
SCREENSHOTS = ROOT / "build" / "screenshots"


@pytest.fixture
def voila(tmp_path: Path):
    import ray

    assert not ray.is_initialized(), "run the notebook tests before (or apart from) the shared-cluster tests"
    port = free_port()
    log = open(tmp_path / "voila.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "voila", str(QUICKSTART), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "voila.log").read_text()
                assert time.monotonic() < deadline, "Voila did not start within 60 s"
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_the_quickstart_widget_renders_live_in_a_browser(voila: str):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(voila, timeout=300_000)
            page.wait_for_selector(".xfd-progress .widget-hprogress", timeout=300_000)
            page.wait_for_function("document.body.innerText.includes('done in')", timeout=300_000)
            widget = page.locator(".xfd-progress").first
            assert page.locator(".xfd-chunk-map").count() >= 1
            assert widget.locator(".widget-hprogress").count() == 4  # overall + one per node
            assert "origin 1.00x of unique bytes" in widget.inner_text()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            widget.screenshot(path=str(SCREENSHOTS / "quickstart-widget.png"))
        finally:
            browser.close()
    assert (SCREENSHOTS / "quickstart-widget.png").stat().st_size > 1000
