"""Checkpoint files: one versioned format for gallery, query and supernet models.

A checkpoint is a ``torch.save``d dict (loaded with ``weights_only=True``: no pickled
code).  Its schema - every key but the tensors typed, unknown keys refused, the one
format rule - is :class:`edgequery.artifacts.checkpoint.CheckpointMeta`; both
:func:`save_checkpoint` and :func:`load_checkpoint` go through it.  The keys:

``format``/``format_version``  ``"edgequery-checkpoint"`` / ``CheckpointMeta.VERSION``
``kind``            ``gallery`` | ``query`` | ``supernet``
``model``           how to rebuild the net: ``arch``, ``embed_dim``, ``num_classes``, ``scale``,
                    ``margin`` and, for a search-space arch or a supernet, ``space`` (the
                    space's whole configuration, so the arch rebuilds anywhere)
``state_dict``      the weights (opaque to the schema)
``model_version``   content hash of ``state_dict`` (16 hex chars); the identity that
                    pairs query models, exports and indexes with their gallery
``compatible_with`` for query nets and supernets: the gallery ``model_version`` and arch
                    they were trained against (``None`` when trained without BCT)
``data``            the :class:`~edgequery.data.DataSpec` the model was trained on
``train``           progress (epoch, complete), config, history, optimizer/scheduler state
``stored``          only in a *stored gallery* (:mod:`edgequery.models.stored`): which images'
                    embeddings it holds instead of a trunk; its ``model_version`` is that of
                    the model they were computed with

Writes are atomic (temporary file + rename), so a killed run leaves either the previous
checkpoint or the new one, never half a file.  Whether a query checkpoint belongs with a
gallery is :func:`edgequery.artifacts.compat.check_compatible`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from . import __version__
from .artifacts.checkpoint import KINDS, CheckpointMeta
from .errors import EdgeQueryError
from .files import atomic_write

FORMAT = CheckpointMeta.FORMAT
FORMAT_VERSION = CheckpointMeta.VERSION

__all__ = ["FORMAT", "FORMAT_VERSION", "KINDS", "checkpoint_meta", "is_finished", "load_checkpoint", "save_checkpoint",
           "state_hash"]


def state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, 16 hex chars."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def checkpoint_meta(payload: dict[str, Any], where: str = "the checkpoint") -> CheckpointMeta:
    """The typed metadata of a checkpoint dict (format rule applied, older versions migrated)."""
    return CheckpointMeta.parse_data(payload, where)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> dict[str, Any]:
    """Stamp format fields and ``model_version`` into ``payload``, validate it and write it atomically."""
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}")
    payload = dict(payload)
    payload.update(format=FORMAT, format_version=FORMAT_VERSION, edgequery_version=__version__,
                   saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    stored = payload.get("stored")  # a stored gallery keeps the version of the model it was computed with
    payload["model_version"] = stored["source_state_hash"] if stored else state_hash(payload["state_dict"])
    data = checkpoint_meta(payload, f"the checkpoint to write to {path}").to_payload()
    atomic_write(path, lambda tmp: torch.save(data, tmp))
    return data


def load_checkpoint(path: str | os.PathLike, kind: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Read a checkpoint, refusing missing, truncated, foreign, invalid or wrong-kind files clearly.

    Returns the checkpoint as a dict (what :meth:`CheckpointMeta.to_payload` gives: every
    declared key present, older format versions migrated); :func:`checkpoint_meta` types it.
    """
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
    meta = checkpoint_meta(payload, str(path))
    if meta.kind not in kinds:
        raise EdgeQueryError(f"{path} holds a {meta.kind} model, but a {what} model is needed here",
                             f"pass a {what} checkpoint")
    return meta.to_payload()


def is_finished(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a checkpoint whose training ran to the end (reruns skip it)."""
    return Path(path).exists() and bool((load_checkpoint(path).get("train") or {}).get("complete", False))
