"""A headless Chromium driven over the DevTools protocol: the page's tests and ``benchmarks/browser_demo.py``.

Commands go over ``--remote-debugging-pipe`` (JSON messages separated by NUL on file
descriptors 3 and 4), so no websocket or browser-automation package is needed, and the
browser is Debian's ``chromium`` (nothing is downloaded).  Only what driving the page
needs: open a URL, evaluate JavaScript (awaiting promises), wait for a condition, set a
file input's files, take a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class BrowserError(RuntimeError):
    """Chromium closed, answered a command with an error, or did not answer in time."""


class NoPageContext(BrowserError):
    """The page has no JavaScript context at the moment: it is (re)loading.  Asking again later may work."""


# What Chromium answers ``Runtime.evaluate`` with while a navigation replaces the page's context.
_CONTEXT_GONE = ("Cannot find default execution context", "Execution context was destroyed",
                 "Cannot find context with specified id")


class Chromium:
    """A headless Chromium and a minimal DevTools-protocol client over its debugging pipe.

    Commands go over ``--remote-debugging-pipe`` (JSON messages separated by NUL on file
    descriptors 3 and 4), so no websocket or browser-automation package is needed."""

    def __init__(self):
        if CHROMIUM is None:
            raise BrowserError("no Chromium on PATH: apt-get install chromium (Debian's; nothing is downloaded)")
        # The debugging pipe must be on fds 3 and 4.  bash's exec puts it there (a preexec_fn would
        # run Python between fork and exec: unsafe in a multithreaded process, and JAX and torch start
        # threads); its ends are first moved to fds 5 and up, so that wiring 3 and 4 never clobbers them.
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._stderr = Path(self.profile) / "stderr.log"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={self.profile}",
                 "--remote-debugging-pipe", "about:blank"]
        wire = f'exec 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-; exec "$0" "$@"'
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(["bash", "-c", wire, CHROMIUM, *flags], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, pass_fds=ends)
        for fd in ends:
            os.close(fd)
        self._next_id, self._buffer, self.session = 0, b"", None

    def _gone(self, what: str, wait: float = 5) -> BrowserError:
        """The error for a browser that stopped answering: its exit status (given ``wait`` seconds to exit) and
        the end of its stderr."""
        try:
            code = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            code = None
        tail = self._stderr.read_text(errors="replace")[-2000:].strip() if self._stderr.exists() else ""
        status = "still running" if code is None else f"exit status {code}"
        return BrowserError(f"chromium {what} ({status}); its stderr ends with:\n{tail or '(nothing)'}")

    def send(self, method, params=None, timeout=60):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        try:
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise self._gone(f"closed its debugging pipe before {method}") from None
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                    raise self._gone(f"sent no reply to {method} within {timeout} s", wait=0)
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise self._gone(f"closed its debugging pipe while answering {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    error = reply["error"]
                    gone = any(m in str(error.get("message", "")) for m in _CONTEXT_GONE)
                    raise (NoPageContext if gone else BrowserError)(f"{method}: {error}")
                return reply.get("result", {})

    def evaluate(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        return r["result"].get("value")

    def wait_for(self, expression, timeout=60):
        """The first truthy value of ``expression``, polled every 0.2 s; a page still loading counts as falsy."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.evaluate(expression)
            except NoPageContext:
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise BrowserError(f"timed out waiting for: {expression}")

    def open(self, url):
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Runtime.enable")
        # The new target starts at about:blank and then navigates: until the URL's document has
        # loaded, an evaluation may land in no context (or the blank page's), so wait it out here.
        self.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")

    def screenshot(self, path):
        """A PNG of the page as it is now, written to ``path`` (for a person to look at)."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)

    def set_files(self, selector: str, paths) -> None:
        """Give the file input ``selector`` these files (as a person picking them would)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
