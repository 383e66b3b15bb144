"""Which query embeddings a gallery accepts, and why (the server's compatibility policy).

An embedding is only comparable with the gallery's if it lives in the gallery model's
space.  Every ``POST /v1/search`` names the ``model_version`` that produced its
embedding, and the server accepts exactly these versions:

* the **gallery model's own** ``model_version`` — embeddings the gallery model computed
  (the paragon path; also what ``/v1/search/image`` uses internally);
* the ``model_version`` of each **query model the operator vouched for** at start-up,
  either an export's ``model_card.json`` (``serve --export``) or a query checkpoint
  (``serve --query``), *and only if that card or checkpoint says it was trained against
  this gallery's model_version* (BCT) and embeds to the gallery's dimension.

Anything else is refused (HTTP 409): a query net trained against another gallery, or
without BCT, produces vectors that look fine but retrieve garbage.  A card or checkpoint
that is not compatible is refused when the server starts, not at the first query.

Model cards are written by ``edgequery export`` (:mod:`edgequery.export.card`: keys
``model_version``, ``embed_dim``, ``compatible_with.gallery_version``) and read
defensively, since a card may come from another version or be hand-edited.  The fields
read, first match wins:

========================  ==================================================================
query model version       ``model_version``, else ``query_model_version``, else
                          ``query.model_version``
gallery it fits           ``compatible_with.gallery_version`` (as in checkpoints), else
                          ``compatible_with.gallery_model_version``, else a string
                          ``compatible_with``, else ``gallery_model_version`` /
                          ``gallery_version``
embedding dimension       ``embedding_dim``, else ``embed_dim``, else ``embedding.dim``,
                          else ``output.dim``
architecture (shown only) ``arch``, else ``model.arch``
========================  ==================================================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeQueryError

CARD_NAME = "model_card.json"


@dataclass(frozen=True)
class AcceptedVersion:
    """One model_version whose embeddings the server takes, with where that trust came from."""

    model_version: str
    role: str            # "gallery" | "query"
    arch: str | None
    embed_dim: int
    source: str          # the checkpoint or model card that vouched for it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dig(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _first(card: dict, *paths: tuple[str, ...]) -> Any:
    for path in paths:
        v = _dig(card, *path)
        if v not in (None, ""):
            return v
    return None


def read_model_card(path: str | Path) -> tuple[dict, Path]:
    """Load an export's ``model_card.json`` (``path`` is the export folder or the file)."""
    path = Path(path)
    card_path = path / CARD_NAME if path.is_dir() else path
    if not card_path.is_file():
        raise EdgeQueryError(f"no model card at {card_path}",
                             f"pass an export folder holding {CARD_NAME} (written by `edgequery export`)")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeQueryError(f"model card {card_path} is not readable JSON ({exc})",
                             "re-create it with `edgequery export`") from None
    if not isinstance(card, dict):
        raise EdgeQueryError(f"model card {card_path} is not a JSON object", "re-create it with `edgequery export`")
    return card, card_path


def accepted_from_card(card: dict, card_path: Path, gallery_version: str, dim: int) -> AcceptedVersion:
    """The query version a model card vouches for, if it is compatible with this gallery."""
    query_version = _first(card, ("model_version",), ("query_model_version",), ("query", "model_version"))
    compat = card.get("compatible_with")
    gallery_of_card = compat if isinstance(compat, str) else _first(
        card, ("compatible_with", "gallery_version"), ("compatible_with", "gallery_model_version"),
        ("gallery_model_version",), ("gallery_version",))
    card_dim = _first(card, ("embedding_dim",), ("embed_dim",), ("embedding", "dim"), ("output", "dim"))
    arch = _first(card, ("arch",), ("model", "arch"))
    if not isinstance(query_version, str):
        raise EdgeQueryError(f"model card {card_path} does not say which model_version its embeddings carry",
                             "re-export with `edgequery export` (the card records the query model_version)")
    if gallery_of_card is None:
        raise EdgeQueryError(f"model card {card_path} does not say which gallery model it is compatible with "
                             "(trained without BCT?)",
                             "export a query net trained with `edgequery train query --bct --gallery <gallery.pt>`")
    if str(gallery_of_card) != gallery_version:
        raise EdgeQueryError(f"model card {card_path} is compatible with gallery model_version {gallery_of_card}, "
                             f"but this index was built with gallery model_version {gallery_version}",
                             "serve the index built with that gallery, or export a query net trained against this "
                             "one")
    try:
        card_dim = dim if card_dim is None else int(card_dim)
    except (TypeError, ValueError):
        raise EdgeQueryError(f"model card {card_path} has a non-numeric embedding dimension {card_dim!r}",
                             "re-create it with `edgequery export`") from None
    if card_dim != dim:
        raise EdgeQueryError(f"model card {card_path} embeds to {card_dim} dims, the gallery to {dim}",
                             "export a query net trained against this gallery")
    return AcceptedVersion(query_version, "query", str(arch) if arch else None, dim, str(card_path))


def accepted_from_query_checkpoint(path: str | Path, gallery: dict, gallery_path: str) -> AcceptedVersion:
    """The version of a query checkpoint trained (with BCT) against ``gallery``."""
    from ..checkpoint import load_checkpoint, require_compatible

    query = load_checkpoint(path, "query")
    require_compatible(query, gallery, path, gallery_path)
    if query.get("compatible_with") is None:
        raise EdgeQueryError(f"query checkpoint {path} was trained without BCT, so its embeddings are not in the "
                             "gallery's space", f"train with `edgequery train query --bct --gallery {gallery_path}`")
    return AcceptedVersion(query["model_version"], "query", query["model"]["arch"], query["model"]["embed_dim"],
                           str(path))


def accepted_versions(gallery: dict, gallery_path: str, exports: list[str] = (),
                      queries: list[str] = ()) -> dict[str, AcceptedVersion]:
    """model_version -> why it is accepted (see the module docstring)."""
    version, dim = gallery["model_version"], gallery["model"]["embed_dim"]
    out = {version: AcceptedVersion(version, "gallery", gallery["model"]["arch"], dim, str(gallery_path))}
    for e in exports:
        card, card_path = read_model_card(e)
        a = accepted_from_card(card, card_path, version, dim)
        out.setdefault(a.model_version, a)
    for q in queries:
        a = accepted_from_query_checkpoint(q, gallery, gallery_path)
        out.setdefault(a.model_version, a)
    return out
