"""Checkpoint files: one versioned format for gallery, query and supernet models.

A checkpoint is a ``torch.save``d dict (loaded with ``weights_only=True``: no pickled
code) with these keys:

``format``/``format_version``  always ``"edgequery-checkpoint"`` / :data:`FORMAT_VERSION`
``kind``            ``gallery`` | ``query`` | ``supernet``
``model``           how to rebuild the net: ``arch``, ``embed_dim``, ``num_classes``, ...
``state_dict``      the weights
``model_version``   content hash of ``state_dict`` (16 hex chars); the identity that
                    pairs query models, exports and indexes with their gallery
``compatible_with`` for query nets and supernets: the gallery ``model_version`` and arch
                    they were trained against (``None`` when trained without BCT)
``data``            the :class:`~edgequery.data.DataSpec` the model was trained on
``train``           progress (epoch, complete), config, optimizer/scheduler state, history

Writes are atomic (temporary file + rename), so a killed run leaves either the previous
checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from . import __version__
from .errors import EdgeQueryError

FORMAT = "edgequery-checkpoint"
FORMAT_VERSION = 1
KINDS = ("gallery", "query", "supernet")


def state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, 16 hex chars."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same directory, fsync'd)."""
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


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> dict[str, Any]:
    """Stamp format fields and ``model_version`` into ``payload`` and write it atomically."""
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}")
    payload = dict(payload)
    payload.update(format=FORMAT, format_version=FORMAT_VERSION, edgequery_version=__version__,
                   saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    payload["model_version"] = state_hash(payload["state_dict"])
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return payload


def load_checkpoint(path: str | os.PathLike, kind: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Read a checkpoint, refusing missing, truncated, foreign or wrong-kind files clearly."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind or KINDS)
    what = " or ".join(kinds)
    if not path.is_file():
        raise EdgeQueryError(f"{what} checkpoint {path} does not exist",
                             f"check the path, or create it with `edgequery train {kinds[0]}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgeQueryError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {reason})",
            f"re-create it with `edgequery train {kinds[0]}`; a run killed mid-save leaves the previous "
            "file intact, so a damaged file means it was copied or edited partially") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeQueryError(f"{path} is not an edgequery checkpoint",
                             f"pass a file written by `edgequery train {kinds[0]}`")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise EdgeQueryError(f"{path} has checkpoint format {payload['format_version']}, newer than this "
                             f"edgequery understands ({FORMAT_VERSION})", "upgrade edgequery")
    if payload.get("kind") not in kinds:
        raise EdgeQueryError(f"{path} holds a {payload.get('kind')} model, but a {what} model is needed here",
                             f"pass a {what} checkpoint")
    return payload


def is_finished(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a checkpoint whose training ran to the end (reruns skip it)."""
    return Path(path).exists() and load_checkpoint(path).get("train", {}).get("complete", False)


def require_compatible(query: dict[str, Any], gallery: dict[str, Any], query_path: str | os.PathLike,
                       gallery_path: str | os.PathLike) -> None:
    """Refuse a query checkpoint paired with a gallery it was not trained against."""
    qd, gd = query["model"]["embed_dim"], gallery["model"]["embed_dim"]
    if qd != gd:
        raise EdgeQueryError(
            f"{query_path} embeds to {qd} dims but gallery {gallery_path} to {gd}",
            f"train the query net against this gallery: `edgequery train query --gallery {gallery_path}`")
    compat = (query.get("compatible_with") or {}).get("gallery_version")
    if compat is not None and compat != gallery["model_version"]:
        raise EdgeQueryError(
            f"{query_path} was trained against gallery model_version {compat}, but {gallery_path} is "
            f"model_version {gallery['model_version']}",
            f"pass the gallery it was trained with, or retrain: `edgequery train query --gallery {gallery_path}`")
