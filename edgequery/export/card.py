"""The model card: what an app (and the server) needs to use an exported encoder correctly.

``model_card.json`` sits beside the exported files (DESIGN.md §3).  Its top-level keys:

==================  ===========================================================================
``format``          ``"edgequery-model-card"``, ``format_version`` :data:`CARD_VERSION`
``name``            the export's name (its folder)
``arch``            the query net's arch (torchvision name or search-space arch string)
``model_version``   the query checkpoint's content hash: what the app sends with each embedding
``embed_dim``       embedding dimension; ``l2_normalized`` is always ``true`` (inside the graph)
``compatible_with`` ``{"gallery_version", "gallery_arch"}`` of the gallery model (BCT), or
                    ``null`` when exported with ``--allow-incompatible``
``input``           pre-processing: size, layout, channel order, grey handling, scale, mean/std
``output``          name, shape, dtype of the embedding
``files``           one entry per exported file: format, runtime, layout, quantization,
                    sha256, bytes, the file's own I/O tensors, parity, retrieval, latency
``fixtures``        ``test_image.png``, ``test_vector.json``, ``parity.npz`` with their sha256
``retrieval``       the heterogeneous Recall@1 protocol and the PyTorch reference figures
``lut_prediction``  latency predicted by a per-block LUT (when ``--lut`` was given)
``machine``, ``tools``  where and with which versions everything was measured
==================  ===========================================================================

ONNX files carry the card's *identity* part (everything that does not depend on the
file's own bytes) in their ``metadata_props`` under ``edgequery.model_card``, plus flat
keys ``model_version``, ``gallery_version``, ``embed_dim`` and ``arch``; ``edgequery
verify`` checks that they agree with the card.  (TFLite metadata needs the TFLite
support library, which is not part of LiteRT's Python package, so ``.tflite`` files
rely on the card and its sha256 alone.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import EdgeQueryError

CARD_NAME = "model_card.json"
CARD_FORMAT = "edgequery-model-card"
CARD_VERSION = 1
ONNX_CARD_KEY = "edgequery.model_card"
# the card keys that describe the model, not any one file: copied into ONNX metadata
IDENTITY_KEYS = ("format", "format_version", "name", "arch", "model_version", "embed_dim", "l2_normalized",
                 "compatible_with", "input", "output")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def identity(card: dict[str, Any]) -> dict[str, Any]:
    """The part of a card shared by all its files (what ONNX metadata carries)."""
    return {k: card[k] for k in IDENTITY_KEYS if k in card}


def onnx_metadata(card: dict[str, Any], file_entry: dict[str, Any]) -> dict[str, str]:
    compat = card.get("compatible_with") or {}
    ident = identity(card)
    ident["file"] = {k: file_entry[k] for k in ("layout", "quantization") if k in file_entry}
    return {ONNX_CARD_KEY: json.dumps(ident, sort_keys=True), "model_version": card["model_version"],
            "gallery_version": str(compat.get("gallery_version")), "embed_dim": str(card["embed_dim"]),
            "arch": card["arch"]}


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


def read_card(folder: str | Path) -> tuple[dict[str, Any], Path]:
    """Load and check an export folder's model card (format and the keys verify needs)."""
    from ..gallery.compat import read_model_card

    card, card_path = read_model_card(folder)
    if card.get("format") != CARD_FORMAT:
        raise EdgeQueryError(f"{card_path} is not an edgequery model card (format {card.get('format')!r})",
                             "pass a folder written by `edgequery export`")
    if int(card.get("format_version", 0)) > CARD_VERSION:
        raise EdgeQueryError(f"{card_path} has model-card format {card['format_version']}, newer than this edgequery "
                             f"understands ({CARD_VERSION})", "upgrade edgequery")
    missing = [k for k in ("model_version", "embed_dim", "input", "files", "fixtures") if k not in card]
    if missing:
        raise EdgeQueryError(f"model card {card_path} lacks {', '.join(missing)}",
                             "re-create the export with `edgequery export`")
    return card, card_path
