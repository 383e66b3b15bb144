"""The demo page at ``/``, driven in a real headless Chromium against a real server.

Chromium is controlled over the DevTools protocol through ``--remote-debugging-pipe``
(JSON messages separated by NUL on file descriptors 3 and 4), so no websocket or browser
automation package is needed.  The test picks a gallery image in the page's file input,
clicks Search and reads the rendered results: the image itself must come first and
every result thumbnail must have loaded.  Skipped (with the reason shown) when no
Chromium is installed: ``apt-get install chromium``.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from edgequery.gallery.images import png_thumbnail

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")]


class Chromium:
    """A headless Chromium and a minimal DevTools-protocol client over its debugging pipe."""

    def __init__(self):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds():  # in the child: fd 3 = commands in, fd 4 = replies out
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={self.profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id, self._buffer, self.session = 0, b"", None

    def send(self, method, params=None, timeout=60):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise AssertionError("chromium closed the debugging pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise AssertionError(f"no reply to {method} within {timeout} s")

    def evaluate(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        return r["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {expression}")

    def open(self, url):
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Runtime.enable")

    def close(self):
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_server(tiny_index, tiny_splits, serve, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_index, d / "index", ignore=shutil.ignore_patterns("*.log", ".lock"))
    (d / "query.png").write_bytes(png_thumbnail(tiny_splits.gallery.images[42]))
    s = serve(d / "index", log_dir=d)
    yield s, d / "query.png", tiny_splits.gallery.labels[42].item(), tiny_splits.classes
    s.stop()


def test_demo_page_uploads_an_image_and_shows_results(demo_server):
    server, query_png, label, classes = demo_server
    browser = Chromium()
    try:
        browser.open(server.url + "/")
        header = browser.wait_for("document.getElementById('model').textContent.includes('model_version') && "
                                  "document.getElementById('model').textContent")
        assert "200 items" in header and "Flat" in header
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
        browser.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(query_png)]})
        browser.evaluate("document.getElementById('k').value = '5'; document.getElementById('search').click()")
        hits = browser.wait_for("document.querySelectorAll('.hit').length === 5 && "
                                "[...document.querySelectorAll('.hit')].map(h => h.textContent)")
        assert hits[0].startswith(classes[label]) and "#43 ·" in hits[0]  # the image itself (id 43) first
        assert browser.wait_for("[...document.querySelectorAll('.hit img')].every(i => i.complete && "
                                "i.naturalWidth === 32)")
        status = browser.evaluate("document.getElementById('status').textContent")
        assert status.startswith("5 results in")

        # a refusal is shown with the server's problem and fix
        bad = query_png.with_name("notes.png")
        bad.write_bytes(b"not an image")
        browser.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(bad)]})
        browser.evaluate("document.getElementById('search').click()")
        error = browser.wait_for("document.getElementById('status').className === 'error' && "
                                 "document.getElementById('status').textContent")
        assert error.startswith("422:") and "not an image format" in error
    finally:
        browser.close()
