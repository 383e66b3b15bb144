"""Writing and reading the project's files safely (the bottom layer: no other edgequery import but errors).

* :func:`atomic_write` - temporary sibling + fsync + rename: a killed process leaves the old
  file or the new one, never half of one;
* :func:`write_json` / :func:`read_json` - pretty JSON through :func:`atomic_write`, and a
  reader that bounds the work (size limit) and names the file and the fix on any failure;
* :func:`sha256_file` - the digest model cards record for every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import EdgeQueryError

MAX_JSON_BYTES = 256 << 20   # no artifact of ours comes near this; a bigger file is not one of ours


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same directory, fsync'd, mode as ``open()``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (a trailing newline, keys in the given order)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "pass a file edgequery wrote",
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file, refusing a missing, oversized or malformed one with one clear error."""
    path = Path(path)
    if not path.is_file():
        raise EdgeQueryError(f"{what} {path} does not exist", fix)
    size = path.stat().st_size
    if size > max_bytes:
        raise EdgeQueryError(f"{what} {path} is {size} bytes, over the {max_bytes}-byte limit for such a file", fix)
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeQueryError(f"{what} {path} is not valid JSON ({exc})", fix) from None
    except OSError as exc:
        raise EdgeQueryError(f"cannot read {what} {path} ({exc.strerror or exc})", fix) from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
