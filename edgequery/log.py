"""What edgequery tells the user while it works: logging, progress bars, and converter noise kept out.

* Library code logs through ``logging.getLogger(__name__)`` and never prints; the CLI calls
  :func:`setup_logging` once (``--quiet`` shows warnings only, ``--verbose`` debug lines and
  the converters' own output).
* :func:`progress` is tqdm on a terminal; when stderr is not a terminal (a log file, CI) it
  writes a plain line at most every ``interval`` seconds and one when it ends, so a log of
  a long run is never silent for minutes.
* :func:`quiet_converters` wraps model conversion (litert-torch, TensorFlow, onnx, XNNPACK):
  what they print on the C or Python level goes to a temporary file, shown only with
  ``--verbose`` or when the conversion fails.
* :func:`sigterm_as_interrupt`: ``kill`` (SIGTERM) stops a command the way Ctrl-C does, so its
  clean-up runs - worker processes are stopped, checkpoints saved - and it says what is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import warnings
from typing import Iterable, Iterator

ROOT = "edgequery"
QUIET, NORMAL, VERBOSE = -1, 0, 1
_state = {"verbosity": NORMAL}

logger = logging.getLogger(ROOT)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (tests and tools replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(verbosity: int = NORMAL) -> None:
    """Send edgequery's log records to stderr at the level ``verbosity`` asks for (idempotent)."""
    _state["verbosity"] = verbosity
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if getattr(h, "_edgequery", False):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler._edgequery = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG))
    root.propagate = False  # converters (absl) install root handlers; our records must not print twice
    if verbosity < VERBOSE:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # TensorFlow / LiteRT C++ logging
        os.environ.setdefault("GLOG_minloglevel", "2")
        for noisy in ("absl", "tensorflow", "jax", "torch._dynamo", "torch._export", "torch.export", "onnxscript"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def verbose() -> bool:
    return _state["verbosity"] >= VERBOSE


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _LogLines:
    """A file-like sink for tqdm that turns each refresh into one log line (no carriage returns)."""

    # tqdm moves the cursor (ESC [ A) to redraw nested bars: meaningless in a log
    _CURSOR_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, log: logging.Logger):
        self.log = log

    def write(self, text: str) -> None:
        line = self._CURSOR_CODES.sub("", text.replace("\r", "")).strip()
        if line:
            self.log.info(line)

    def flush(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, leave: bool = False, interval: float = 30.0, enabled: bool = True,
             log: logging.Logger | None = None):
    """A tqdm bar on a terminal; elsewhere a log line every ``interval`` s and at the end (``--quiet``: none)."""
    from tqdm import tqdm

    log = log or logger
    if not enabled or not log.isEnabledFor(logging.INFO):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=True)
    if _is_terminal():
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=True, file=_LogLines(log),
                mininterval=interval, maxinterval=interval * 4, ascii=True, ncols=100)


@contextlib.contextmanager
def quiet_converters(what: str = "conversion") -> Iterator[None]:
    """Keep converters' stdout/stderr chatter (C and Python level) out of the terminal unless ``--verbose``.

    The captured text is logged at debug level, and at error level if the block raises, so
    a failed conversion still shows why.
    """
    if verbose():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = os.dup(1), os.dup(2)
        py_out, py_err = sys.stdout, sys.stderr
        failed = False
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for stream in (py_out, py_err):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                tail = "\n".join(text.splitlines()[-40:])
                logger.log(logging.ERROR if failed else logging.DEBUG, "%s output:\n%s", what, tail)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`KeyboardInterrupt` in the main thread (as Ctrl-C does):
    Python's default would end the process on the spot, skipping every ``finally`` - a killed
    ``profile`` would leave its converter processes running.  Elsewhere than the main thread: no-op."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
