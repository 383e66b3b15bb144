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

Model cards are read through their schema, :class:`edgequery.artifacts.card.ModelCard`
(written by ``edgequery export``): a card with an unknown key, a missing field or a newer
``format_version`` is refused with the field named, never guessed at.  The card's
``model_version`` is the version accepted, ``compatible_with.gallery_version`` and
``embed_dim`` must match the gallery; checkpoints and cards are both paired with the
gallery by :func:`edgequery.artifacts.compat.check_compatible`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts.card import ModelCard, load_card
from ..artifacts.compat import check_compatible


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


def accepted_from_card(card: ModelCard, card_path: str | Path, gallery: dict, gallery_path: str) -> AcceptedVersion:
    """The query version a model card vouches for; refused unless it was trained (BCT) against ``gallery``."""
    check_compatible(card, gallery, a_name=f"model card {card_path}", b_name=str(gallery_path), require_bct=True)
    return AcceptedVersion(card.model_version, "query", card.arch, card.embed_dim, str(card_path))


def accepted_from_query_checkpoint(path: str | Path, gallery: dict, gallery_path: str) -> AcceptedVersion:
    """The version of a query checkpoint trained (with BCT) against ``gallery``."""
    from ..checkpoint import load_checkpoint

    query = load_checkpoint(path, "query")
    check_compatible(query, gallery, a_name=f"query checkpoint {path}", b_name=str(gallery_path), require_bct=True)
    return AcceptedVersion(query["model_version"], "query", query["model"]["arch"], query["model"]["embed_dim"],
                           str(path))


def accepted_versions(gallery: dict, gallery_path: str, exports: list[str] = (),
                      queries: list[str] = ()) -> dict[str, AcceptedVersion]:
    """model_version -> why it is accepted (see the module docstring)."""
    version, dim = gallery["model_version"], gallery["model"]["embed_dim"]
    out = {version: AcceptedVersion(version, "gallery", gallery["model"]["arch"], dim, str(gallery_path))}
    for e in exports:
        card, card_path = load_card(e)
        a = accepted_from_card(card, card_path, gallery, gallery_path)
        out.setdefault(a.model_version, a)
    for q in queries:
        a = accepted_from_query_checkpoint(q, gallery, gallery_path)
        out.setdefault(a.model_version, a)
    return out
