"""The model card of an export folder on disk, and its copy inside ONNX files.

The schema of ``model_card.json`` is :class:`edgequery.artifacts.card.ModelCard` (every
key typed, unknown keys refused); :func:`read_card`
(:func:`edgequery.artifacts.card.load_card`) is how anything reads an export's card.

ONNX files carry the card's *identity* part (:meth:`ModelCard.identity`: everything that
does not depend on the file's own bytes) in their ``metadata_props`` under
``edgequery.model_card``, plus flat keys ``model_version``, ``gallery_version``,
``embed_dim`` and ``arch``; ``edgequery verify`` checks that they agree with the card.
(TFLite metadata needs the TFLite support library, which is not part of LiteRT's Python
package, so ``.tflite`` files rely on the card and its sha256 alone.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts.card import load_card as read_card

__all__ = ["ONNX_CARD_KEY", "embedded_identity", "onnx_metadata", "read_card", "read_onnx_metadata",
           "write_onnx_metadata"]

ONNX_CARD_KEY = "edgequery.model_card"


def onnx_metadata(identity: dict[str, Any], file_entry: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` of one ONNX file: the card's identity, the file's layout/quantization, flat keys."""
    embedded = {**identity, "file": {k: file_entry[k] for k in ("layout", "quantization")}}
    compat = identity["compatible_with"]
    return {ONNX_CARD_KEY: json.dumps(embedded, sort_keys=True), "model_version": identity["model_version"],
            "gallery_version": str(compat["gallery_version"] if compat else None),
            "embed_dim": str(identity["embed_dim"]), "arch": identity["arch"]}


def embedded_identity(props: dict[str, str]) -> dict[str, Any] | None:
    """The card identity an ONNX file's ``metadata_props`` carry (``None``: none, or not JSON)."""
    try:
        embedded = json.loads(props.get(ONNX_CARD_KEY, "null"))
    except json.JSONDecodeError:
        return None
    return embedded if isinstance(embedded, dict) else None


def write_onnx_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of an ONNX file (in place; call before hashing it)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "edgequery"
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
