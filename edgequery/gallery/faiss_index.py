"""faiss helpers: make, train, fill and snapshot an index; the search-parameter tree.

Every gallery index is an ``IndexIDMap2`` (stable 64-bit ids) around
``index_factory(dim, factory, METRIC_INNER_PRODUCT)``; vectors are L2-normalised first
(:func:`normalize_rows`), so inner product is cosine similarity.  A factory string may be
a composition such as ``OPQ16,IVF1024,PQ32,RFlat`` (pre-transform, IVF-PQ, exact
re-ranking): :func:`index_stages` lists its stages and :func:`search_parameters` builds
the matching parameter tree, with an id filter (tombstones, see :mod:`.store`) applied at
the stage that enumerates vectors.

The snapshot of an index lives at :func:`snapshot_path` (its name says which factory
built it) and is written atomically by :func:`write_snapshot`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import EdgeQueryError
from ..files import atomic_write
from ..log import progress as progress_bar
from .metadata import MetadataDB

MIN_POINTS_PER_CENTROID = 39  # below this faiss k-means warns; we use it for suggestions


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with unit-length rows; a zero or non-finite row is a ValueError.

    Each row is divided by its largest magnitude before its norm is taken (a scaled norm),
    in its own precision (float64 input stays float64 until the end): the squares of
    1e-30 or 1e19 would underflow to 0 or overflow to inf in float32, though the vector
    has a perfectly good direction.
    """
    x = np.asarray(x)
    x = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32, copy=True)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or Inf")
    scale = np.abs(x).max(axis=1, keepdims=True) if x.shape[1] else np.zeros((len(x), 1), x.dtype)
    if (scale == 0).any():
        raise ValueError("a zero vector has no direction")
    x /= scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32, copy=False)


def snapshot_path(directory: str | Path, factory: str) -> Path:
    """Where the faiss snapshot of ``factory`` lives (the name says which factory it is)."""
    return Path(directory) / f"index.{re.sub(r'[^A-Za-z0-9]+', '_', factory).strip('_')}.faiss"


def suggest_ivf(n: int) -> str:
    """An IVF list count that gives every centroid enough training points for ``n`` vectors."""
    nlist = 1
    while nlist * 2 * MIN_POINTS_PER_CENTROID <= n and nlist < 65536:
        nlist *= 2
    return f"IVF{nlist}"


def make_faiss_index(factory: str, dim: int):
    """An empty ``IndexIDMap2`` around ``index_factory(dim, factory, inner product)``."""
    import faiss

    if "IDMap" in factory:
        raise EdgeQueryError(f"index factory {factory!r} contains IDMap",
                             "leave it out: edgequery always wraps the index in IDMap2 for stable ids")
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].split(": ", 1)[-1]
        raise EdgeQueryError(f"faiss cannot build index factory {factory!r} for {dim}-d vectors ({reason})",
                             'use an index_factory string such as "Flat", "IVF1024,PQ32" or "HNSW32"') from None
    return faiss.IndexIDMap2(inner)


def has_ivf(index) -> bool:
    """Whether ``index`` (or a stage of it) is an IVF index."""
    import faiss

    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def index_stages(index) -> list:
    """The stages of an ``index_factory`` composition (refine, pre-transform, ...), outermost first."""
    import faiss

    out = []
    while index is not None:
        index = faiss.downcast_index(index)
        out.append(index)
        index = (index.base_index if isinstance(index, faiss.IndexRefine)
                 else index.index if isinstance(index, faiss.IndexPreTransform) else None)
    return out


def _training_need(index) -> tuple[int, str]:
    """Fewest training vectors ``index`` accepts, and what needs them."""
    import faiss

    need, what = 0, ""
    ivf = faiss.extract_index_ivf(index) if has_ivf(index) else None
    if ivf is not None:
        need, what = ivf.nlist, f"{ivf.nlist} inverted lists"
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq is not None and pq.ksub > need:
            need, what = pq.ksub, f"a {pq.ksub}-centroid product quantizer"
    return need, what


def search_parameters(index, *, nprobe: int, ef_search: int, k_factor: float, sel, keep: list):
    """faiss search parameters for ``index`` (an ``index_factory`` composition, without the ID map).

    faiss takes parameters as a tree mirroring the composition — a refine stage holds its base
    index's parameters, a pre-transform its sub-index's — and each stage checks it gets its own
    type; the id filter ``sel`` only works where vectors are enumerated (flat codes, IVF lists,
    the HNSW graph).  Every object made is appended to ``keep``: faiss holds raw pointers to them.
    """
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        p = faiss.IndexRefineSearchParameters()
        p.k_factor = k_factor
        p.base_index_params = search_parameters(index.base_index, nprobe=nprobe, ef_search=ef_search,
                                                k_factor=k_factor, sel=sel, keep=keep)
    elif isinstance(index, faiss.IndexPreTransform):
        p = faiss.SearchParametersPreTransform()
        p.index_params = search_parameters(index.index, nprobe=nprobe, ef_search=ef_search,
                                           k_factor=k_factor, sel=sel, keep=keep)
    else:
        if isinstance(index, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = ef_search
        elif isinstance(index, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = nprobe
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
    keep.append(p)
    return p


def train_faiss_index(index, sample: np.ndarray, factory: str) -> None:
    """Train ``index`` (a no-op for Flat/HNSW), with a clear error when data is too scarce."""
    if index.is_trained:
        return
    need, what = _training_need(index)
    n = len(sample)
    if n < need:
        raise EdgeQueryError(
            f"index factory {factory!r} needs at least {need} vectors to train {what}, but the gallery has {n}",
            f"use --index-factory Flat or HNSW32 for a gallery this small, or fewer lists ({suggest_ivf(n)},...)")
    try:
        index.train(sample)
    except RuntimeError as exc:
        raise EdgeQueryError(f"faiss could not train {factory!r} on {n} vectors: {str(exc).splitlines()[-1]}",
                             "choose a smaller index (fewer IVF lists / PQ bytes) or add more images") from None


def build_faiss_index(db: MetadataDB, factory: str, dim: int, progress: bool = True,
                      max_train: int = 1 << 20):
    """A fresh faiss index holding every item of ``db`` (trained first when it needs it)."""
    index = make_faiss_index(factory, dim)
    n = db.count()
    if not index.is_trained:
        live = db.live_ids()
        pick = live if len(live) <= max_train else np.sort(
            np.random.default_rng(0).choice(live, max_train, replace=False))
        sample = normalize_rows(db.embeddings(pick, dim)) if len(pick) else np.empty((0, dim), np.float32)
        train_faiss_index(index, sample, factory)
    with progress_bar(total=n, desc=f"faiss {factory}", unit="vec", enabled=progress) as bar:
        for ids, emb in db.iter_embeddings():
            index.add_with_ids(normalize_rows(emb), ids)
            bar.update(len(ids))
    return index


def write_snapshot(index, directory: str | Path, factory: str) -> Path:
    """Write ``index`` (or its ``faiss.serialize_index`` bytes) atomically to its snapshot
    path, then remove snapshots of other factories."""
    import faiss

    path = snapshot_path(directory, factory)
    if isinstance(index, np.ndarray):
        atomic_write(path, lambda tmp: index.tofile(tmp))
    else:
        atomic_write(path, lambda tmp: faiss.write_index(index, tmp))
    for other in Path(directory).glob("index.*.faiss"):
        if other != path:
            other.unlink(missing_ok=True)
    return path
