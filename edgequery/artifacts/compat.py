"""The one check that two artifacts belong together, used by every stage and by the server.

=========================================  ===================================================
pair                                       refused when
=========================================  ===================================================
query / supernet checkpoint <-> gallery    embedding sizes differ; the query side records a
                                           ``compatible_with.gallery_version`` that is not the
                                           gallery's ``model_version``; with ``require_bct``,
                                           it records none (trained without BCT)
model card (export) <-> gallery / index    the same, from the card's ``compatible_with``
                                           (an export is always checked as ``require_bct``)
gallery checkpoint <-> index               the index was built with another gallery
                                           ``model_version`` or dimension
latency table <-> search space             another space, or other choice lists (resolutions
                                           aside: :meth:`check_resolution`)
latency table <-> device fingerprint       any identity field differs (CPU, cores, ISA flags,
                                           caches, OS/kernel, runtime and version, threads),
                                           or the table records none - unless
                                           ``allow_other_device``; then the differences come
                                           back as notes to record
=========================================  ===================================================

Either side may be a schema object (:class:`~.checkpoint.CheckpointMeta`,
:class:`~.card.ModelCard`, :class:`~.lut.LUTFile`, :class:`~.fingerprint.Fingerprint`,
:class:`GalleryRef`), a checkpoint dict as :func:`edgequery.checkpoint.load_checkpoint`
returns it, an in-memory LUT, or a :class:`~edgequery.spaces.base.SearchSpace`.
:func:`check_compatible` returns notes (empty when everything matched) and raises
:class:`~edgequery.errors.EdgeQueryError` naming both files and the fix otherwise.
"""

from __future__ import annotations

from typing import Any

from ..errors import EdgeQueryError
from .base import Strict
from .fingerprint import Fingerprint


class GalleryRef(Strict):
    """What an index (or any gallery-side artifact) knows of the gallery model that embedded it."""

    model_version: str
    embed_dim: int
    arch: str | None = None


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _role(obj: Any) -> str:
    if isinstance(obj, Fingerprint):
        return "fingerprint"
    if isinstance(obj, GalleryRef):
        return "index"
    if _get(obj, "space_config") is not None and _get(obj, "blocks") is not None:
        return "lut"
    if callable(getattr(obj, "config", None)) and callable(getattr(obj, "blocks", None)):
        return "space"
    if _get(obj, "files") is not None and _get(obj, "model_version") is not None and _get(obj, "input") is not None:
        return "card"
    kind = _get(obj, "kind")
    if kind in ("gallery", "query", "supernet") and _get(obj, "model") is not None:
        return "gallery" if kind == "gallery" else "query"
    raise TypeError(f"check_compatible does not know artifacts of type {type(obj).__name__}")


def _gallery_side(obj: Any, role: str) -> tuple[str, int, str | None]:
    if role == "index":
        return obj.model_version, int(obj.embed_dim), obj.arch
    return _get(obj, "model_version"), int(_get(obj, "model", "embed_dim")), _get(obj, "model", "arch")


def _query_side(obj: Any, role: str) -> tuple[str | None, int, str | None]:
    """(gallery_version it is compatible with, embedding size, own model_version)."""
    dim = _get(obj, "embed_dim") if role == "card" else _get(obj, "model", "embed_dim")
    return _get(obj, "compatible_with", "gallery_version"), int(dim), _get(obj, "model_version")


def _check_query_gallery(q: Any, q_role: str, g: Any, g_role: str, qn: str, gn: str, require_bct: bool) -> None:
    g_version, g_dim, _ = _gallery_side(g, g_role)
    compat, q_dim, _ = _query_side(q, q_role)
    supernet = _get(q, "kind") == "supernet"
    what = "export" if q_role == "card" else "supernet" if supernet else "query net"
    fix = (f"train a supernet against this gallery: `edgequery train supernet --gallery {gn}`" if supernet else
           f"train the query net against this gallery: `edgequery train query --bct --gallery {gn}`"
           + (" and export it again" if q_role == "card" else ""))
    if q_dim != g_dim:
        raise EdgeQueryError(f"{qn} embeds to {q_dim} dims but the gallery {gn} to {g_dim}", fix)
    if compat is None:
        if require_bct or q_role == "card":
            raise EdgeQueryError(f"{qn} records no gallery model it is compatible with (trained without BCT?), so "
                                 f"its embeddings are not in the gallery {gn}'s space", fix)
        return
    if compat != g_version:
        raise EdgeQueryError(f"the {what} {qn} is compatible with gallery model_version {compat}, but {gn} is "
                             f"model_version {g_version}",
                             f"pass the gallery it was trained with, or {fix[0].lower()}{fix[1:]}")


def _check_gallery_index(g: Any, idx: GalleryRef, gn: str, xn: str) -> None:
    version, dim, _ = _gallery_side(g, "gallery")
    if version != idx.model_version or dim != idx.embed_dim:
        raise EdgeQueryError(f"gallery {gn} is model_version {version} ({dim}-d), but the index {xn} was built with "
                             f"model_version {idx.model_version} ({idx.embed_dim}-d)",
                             "pass the gallery checkpoint the index was built with, or rebuild the index with "
                             "`edgequery index`")


def _check_lut_space(lut: Any, space: Any, ln: str) -> None:
    if _get(lut, "space") != space.name:
        raise EdgeQueryError(f"{ln} was measured for search space {_get(lut, 'space')!r}, not {space.name!r}",
                             f"profile this space: edgequery profile --space {space.name} ...")
    theirs = {k: v for k, v in (_get(lut, "space_config") or {}).items() if k != "resolutions"}
    ours = {k: v for k, v in space.config().items() if k != "resolutions"}
    if theirs != ours:
        diff = ", ".join(f"{k}: LUT {theirs.get(k)} vs {ours.get(k)}" for k in sorted(set(theirs) | set(ours))
                         if theirs.get(k) != ours.get(k))
        raise EdgeQueryError(f"{ln} was measured for another {space.name} space ({diff})",
                             "profile the same space (same --space-option values), or search the space the LUT "
                             "was made for")


def _check_lut_device(lut: Any, here: Fingerprint, ln: str, allow_other_device: bool) -> list[str]:
    recorded = _get(lut, "fingerprint")
    if isinstance(recorded, dict):
        recorded = Fingerprint.model_validate(recorded)
    diffs = ["the table records no device fingerprint (made before fingerprints were recorded)"] \
        if recorded is None else recorded.differences(here)
    if not diffs:
        return []
    if allow_other_device:
        return [f"--allow-other-device: {ln} was measured on another device ({'; '.join(diffs)})"]
    raise EdgeQueryError(f"{ln} was measured on another device than this one: {'; '.join(diffs[:4])}"
                         + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""),
                         "profile this device (edgequery profile --device ...), or pass --allow-other-device to "
                         "use it anyway (recorded in the output)")


def check_compatible(a: Any, b: Any, *, a_name: str | None = None, b_name: str | None = None,
                     require_bct: bool = False, allow_other_device: bool = False) -> list[str]:
    """Refuse ``a`` and ``b`` unless they belong together (see the module docstring); returns notes."""
    ra, rb = _role(a), _role(b)
    an, bn = a_name or f"the {ra}", b_name or f"the {rb}"
    pair = {ra, rb}
    if ra in ("query", "card") and rb in ("gallery", "index"):
        _check_query_gallery(a, ra, b, rb, an, bn, require_bct)
    elif rb in ("query", "card") and ra in ("gallery", "index"):
        _check_query_gallery(b, rb, a, ra, bn, an, require_bct)
    elif pair == {"gallery", "index"}:
        g, gn, idx, xn = (a, an, b, bn) if ra == "gallery" else (b, bn, a, an)
        _check_gallery_index(g, idx, gn, xn)
    elif pair == {"lut", "space"}:
        lut, ln, space = (a, an, b) if ra == "lut" else (b, bn, a)
        _check_lut_space(lut, space, ln)
    elif pair == {"lut", "fingerprint"}:
        lut, ln, fp = (a, an, b) if ra == "lut" else (b, bn, a)
        return _check_lut_device(lut, fp, ln, allow_other_device)
    else:
        raise TypeError(f"check_compatible has no rule for a {ra} and a {rb}")
    return []
