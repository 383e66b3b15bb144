"""The headless-Chromium driver itself (its pages are tested in test_browser_app.py and test_report.py)."""

from __future__ import annotations

import os
import signal

import pytest

from edgequery.gallery.browser import BrowserError


def test_a_browser_that_hangs_or_dies_is_an_error_naming_its_state_not_a_hang(chromium):
    chromium.open("data:text/html,<title>up</title>")
    assert chromium.evaluate("document.title") == "up"
    os.kill(chromium.proc.pid, signal.SIGSTOP)   # a browser that stops answering
    try:
        with pytest.raises(BrowserError, match="no reply to Runtime.evaluate within 2 s.*still running"):
            chromium.send("Runtime.evaluate", {"expression": "1"}, timeout=2)
    finally:
        os.kill(chromium.proc.pid, signal.SIGCONT)
    assert chromium.evaluate("document.title") == "up", "the late reply to the abandoned command is skipped"
    chromium.proc.send_signal(signal.SIGKILL)
    with pytest.raises(BrowserError, match=f"exit status -{int(signal.SIGKILL)}.*stderr"):
        chromium.evaluate("document.title")
    # and the fixture closes the dead browser without an error
