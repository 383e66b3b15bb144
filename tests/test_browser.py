"""The headless-Chromium driver itself (its pages are tested in test_browser_app.py and test_report.py)."""

from __future__ import annotations

import signal

import pytest

from edgequery.gallery.browser import BrowserError


def test_a_browser_that_died_is_reported_with_its_exit_status_and_stderr(chromium):
    chromium.open("data:text/html,<title>up</title>")
    assert chromium.evaluate("document.title") == "up"
    chromium.proc.send_signal(signal.SIGKILL)
    with pytest.raises(BrowserError, match=f"exit status -{int(signal.SIGKILL)}.*stderr"):
        chromium.evaluate("document.title")
    # and the fixture closes the dead browser without an error
