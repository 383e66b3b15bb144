"""The gallery store: a small interface the HTTP API talks to, and its faiss implementation.

:class:`GalleryStore` is everything the server needs from a gallery — add, delete,
search, look up — so a distributed engine (Milvus, a sharded faiss service, ...) can
replace :class:`FaissGalleryStore` without touching the HTTP layer (:mod:`.service`,
:mod:`.app`).  The faiss mechanics (making, training, searching, snapshotting an index)
are in :mod:`.faiss_index`.

How :class:`FaissGalleryStore` keeps acknowledged writes (the design in one place):

1. **SQLite is the truth.**  ``gallery.sqlite`` (:mod:`.metadata`) holds every live
   item *with its embedding*.  An add or delete is committed there (WAL, fsync'd) before
   the API acknowledges it.
2. **faiss is a cache.**  The in-memory index (``IndexIDMap2`` over any
   ``index_factory`` string, inner product on L2-normalised vectors = cosine) is updated
   right after the commit.  ``index.<factory>.faiss`` is a snapshot of it, written
   atomically (temp file + rename) every ``snapshot_every`` writes and at shutdown.
3. **Start-up reconciles.**  Opening loads the snapshot (or, when it is missing or
   unreadable, rebuilds the index from the stored embeddings, training IVF/PQ again) and
   then compares the ids in the index with the live ids in SQLite: ids that are live but
   missing are added from their stored vectors, ids that are no longer live are removed.
   Ids are never reused (``AUTOINCREMENT``) and vectors never change, so the set
   difference is the whole story — no write-ahead log of our own to replay.

Only flat-code indexes (``Flat``, ``PQ``, ``SQ``) delete in place under ``IDMap2``: HNSW
cannot delete at all, and an IVF index keeps its internal ids in its inverted lists, which
``IDMap2`` cannot renumber after a removal.  Those keep deleted ids as *tombstones*: the
vectors stay in the index but every search excludes them with a faiss ``IDSelector``.
When tombstones pass a quarter of the index, opening rebuilds it from SQLite (compaction).
The selector is applied at the stage that enumerates vectors, also inside compositions
such as ``OPQ16,IVF1024,PQ32,RFlat`` (pre-transform, exact re-ranking), see
:func:`.faiss_index.search_parameters`.

Concurrency: searches share a read lock, writes to the faiss index take the write
lock, and SQLite serialises its own writers.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import EdgeQueryError
from .faiss_index import (build_faiss_index, has_ivf, index_stages, normalize_rows, search_parameters,
                          snapshot_path, write_snapshot)
from .metadata import DB_NAME, DirectoryLock, Item, MetadataDB, NewItem

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.25   # rebuild an index whose tombstones exceed this share
WIDEN_FACTOR, WIDEN_TIMES = 4, 3   # a short filtered search is repeated with ef/nprobe x4, at most 3 times
EXACT_FALLBACK = 4096              # ... and then, for a class this small or smaller, searched exactly


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: int
    score: float        # cosine similarity (inner product of unit vectors)
    label: int | None
    label_name: str | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "label": self.label, "label_name": self.label_name,
                "source": self.source}


class GalleryStore(ABC):
    """What the HTTP API needs from a gallery (see the module docstring).

    Contract: :meth:`add` and :meth:`delete` return only once the change is durable;
    :meth:`search` takes L2-normalisable ``(n, dim)`` float32 queries and returns, per
    query, up to ``k`` hits best first, only items of class ``label`` when it is given.
    Implementations: :class:`FaissGalleryStore` here and
    :class:`~.milvus_store.MilvusGalleryStore`.
    """

    dim: int
    model_version: str

    @abstractmethod
    def add(self, embeddings: np.ndarray, items: Sequence[NewItem]) -> list[int]: ...

    @abstractmethod
    def delete(self, item_id: int) -> bool: ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, label: int | None = None) -> list[list[Hit]]: ...

    @abstractmethod
    def get(self, item_id: int) -> Item | None: ...

    @abstractmethod
    def thumbnail(self, item_id: int) -> bytes | None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def meta(self, key: str, default: Any = None) -> Any:
        """A value recorded when the gallery was built (model card, classes, ...)."""
        return default

    def unit_rows(self, x: np.ndarray, what: str) -> np.ndarray:
        """``x`` L2-normalised (:func:`~.faiss_index.normalize_rows`), refused unless it has the gallery's dim."""
        rows = normalize_rows(x)
        if rows.shape[1] != self.dim:
            raise ValueError(f"{what} have {rows.shape[1]} dims, the gallery {self.dim}")
        return rows

    def close(self) -> None:
        """Flush whatever makes the next start fast; nothing durable depends on it."""


def finished_gallery(get: Callable[..., Any], where: str) -> tuple[int, str, str]:
    """``(dim, model_version, factory)`` of a gallery whose values ``get`` reads; an unfinished build is refused."""
    if not get("complete", False):
        done, total = get("build_done", 0), get("build_total", "?")
        raise EdgeQueryError(f"the index at {where} is unfinished ({done} of {total} images embedded)",
                             "rerun the same `edgequery index` command to finish it (it resumes)")
    return int(get("dim")), str(get("model_version")), str(get("factory"))


def widened(search_once: Callable[[int], list[list[Hit]]], k: int, approximate: bool, available: int,
            exact: Callable[[], list[list[Hit]]]) -> list[list[Hit]]:
    """``search_once(widen)``, repeated with a wider search while some query got fewer hits than it could.

    A selective filter starves an approximate index of candidates: an HNSW walk or the
    visited IVF lists may hold fewer than ``k`` matching items although the gallery has
    more (``available`` of them).  ``widen`` multiplies ``ef`` / ``nprobe`` by
    :data:`WIDEN_FACTOR` each time, at most :data:`WIDEN_TIMES` times (bounded work: ef x64);
    an exact index (``approximate`` False), or one that found all it could, runs once.  If
    the search is still short and the class has at most :data:`EXACT_FALLBACK` items,
    ``exact()`` compares the queries with each of them (bounded too).
    """
    want = min(k, available)
    widen, hits = 1, search_once(1)
    for _ in range(WIDEN_TIMES if approximate else 0):
        if all(len(h) >= want for h in hits):
            return hits
        widen *= WIDEN_FACTOR
        hits = search_once(widen)
    if approximate and available <= EXACT_FALLBACK and not all(len(h) >= want for h in hits):
        return exact()
    return hits


def exact_hits(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int,
               lookup: Callable[[np.ndarray], dict[int, Any]]) -> list[list[Hit]]:
    """The top ``k`` of ``ids`` (unit ``vectors``) for each unit query, by brute force; ``lookup`` gives their items."""
    scores = queries @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    meta = lookup(ids[np.unique(top)])
    return [[Hit(int(ids[j]), float(scores[r, j]), (m := meta[int(ids[j])]).label, m.label_name, m.source)
             for j in row if int(ids[j]) in meta] for r, row in enumerate(top)]


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# --------------------------------------------------------------------------- the faiss store


class FaissGalleryStore(GalleryStore):
    """A gallery index directory (``gallery.sqlite`` + faiss snapshot) opened for serving.

    ``nprobe`` (IVF), ``ef_search`` (HNSW) and ``k_factor`` (a refine stage such as
    ``RFlat`` re-ranks ``k_factor * k`` candidates exactly) trade recall for speed at search time;
    ``snapshot_every`` is how many writes may accumulate before the snapshot is
    refreshed in the background (only start-up time depends on it, never durability).
    """

    def __init__(self, directory: str | Path, nprobe: int = 16, ef_search: int = 128, k_factor: float = 4.0,
                 snapshot_every: int = 1000, progress: bool = True):
        import faiss

        self.directory = Path(directory)
        self.nprobe, self.ef_search, self.k_factor = int(nprobe), int(ef_search), float(k_factor)
        if self.k_factor < 1:
            raise EdgeQueryError(f"k_factor {k_factor} is below 1", "a refine stage needs k_factor >= 1 (e.g. 4)")
        self.snapshot_every = max(1, int(snapshot_every))
        self.progress = progress
        self._lock = ReadWriteLock()
        self._tombstones: set[int] = set()
        self._selector = None
        self._dirty = 0
        self._snapshot_lock = threading.Lock()
        self._snapshot_thread: threading.Thread | None = None
        self._index = None
        self.db = None
        self._dir_lock = DirectoryLock(self.directory) if (self.directory / DB_NAME).is_file() else None
        try:
            self.db = MetadataDB(self.directory / DB_NAME)
            self.dim, self.model_version, self.factory = finished_gallery(self.db.get, str(self.directory))
            for stale in self.directory.glob(".index.*.tmp"):  # left by a snapshot cut short by a kill
                stale.unlink(missing_ok=True)
            self._index = self._load()
            stages = index_stages(self._index.index)
            self._hnsw = any(isinstance(st, faiss.IndexHNSW) for st in stages)
            self._refine = any(isinstance(st, faiss.IndexRefine) for st in stages)
            self._composed = len(stages) > 1
            self._removable = isinstance(stages[0], faiss.IndexFlatCodes)  # see the module docstring
            self._approximate = self._hnsw or has_ivf(self._index)
            if has_ivf(self._index):
                self.nprobe = min(self.nprobe, faiss.extract_index_ivf(self._index).nlist)
            self._reconcile()
            # the parameters of a search without tombstones never change: made once, shared read-only
            self._plain_keep: list = []
            self._plain_params = self._search_parameters(None, self._plain_keep)
        except BaseException:
            self._dirty = 0
            self.close()
            raise

    # ------------------------------------------------------------------ loading

    def _load(self):
        import faiss

        path = snapshot_path(self.directory, self.factory)
        if path.is_file():
            try:
                index = faiss.read_index(str(path))
                if not isinstance(index, faiss.IndexIDMap2) or index.d != self.dim:
                    raise RuntimeError(f"it holds a {type(index).__name__} of dimension {index.d}")
                return index
            except RuntimeError as exc:
                log.warning(f"snapshot {path.name} is unusable ({str(exc).splitlines()[-1]}); "
                     f"rebuilding it from {DB_NAME}")
        else:
            log.info(f"no snapshot {path.name}; building the faiss index from {DB_NAME}")
        return self._rebuild()

    def _rebuild(self):
        t = time.time()
        index = build_faiss_index(self.db, self.factory, self.dim, progress=self.progress)
        write_snapshot(index, self.directory, self.factory)
        log.info(f"built {self.factory} over {index.ntotal} vectors in {time.time() - t:.1f}s")
        return index

    def _reconcile(self) -> None:
        """Make the index hold exactly the live ids of SQLite (see the module docstring)."""
        import faiss

        live = self.db.live_ids()
        indexed = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        missing = np.setdiff1d(live, indexed)
        stale = np.setdiff1d(indexed, live)
        if not self._removable and len(stale) > COMPACT_FRACTION * max(len(indexed), 1):
            log.info(f"{len(stale)} of {len(indexed)} vectors are deleted items; compacting")
            self._index = self._rebuild()
            return
        for lo in range(0, len(missing), 65536):
            ids = missing[lo:lo + 65536]
            self._index.add_with_ids(normalize_rows(self.db.embeddings(ids, self.dim)), ids)
        if len(stale):
            if self._removable:
                self._index.remove_ids(stale)
            else:
                self._tombstones.update(int(i) for i in stale)
                self._update_selector()
        if len(missing) or len(stale):
            log.info(f"caught up with {DB_NAME}: +{len(missing)} added, -{len(stale)} deleted since the snapshot")
            self._dirty = self.snapshot_every  # refresh the snapshot soon
            self._maybe_snapshot()

    def _update_selector(self) -> None:
        import faiss

        if not self._tombstones:
            self._selector = None
            return
        batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
        self._selector = faiss.IDSelectorNot(batch)
        self._selector_refs = batch  # the Not selector does not own its argument

    def _search_parameters(self, sel, keep: list, widen: int = 1):
        """The parameter tree of a search filtered by ``sel`` (None: unfiltered); call under the lock."""
        import faiss

        if sel is not None and self._composed:
            # IndexIDMap2 translates our ids to the inner index's sequential ones only for the
            # outermost parameters; a stage nested in a refine / pre-transform gets it done here
            # (the translation points into id_map, which an add may move: made per search)
            sel = faiss.IDSelectorTranslated(self._index.id_map, sel)
            keep.append(sel)
        return search_parameters(self._index.index, nprobe=self.nprobe * widen, ef_search=self.ef_search * widen,
                                 k_factor=self.k_factor, sel=sel, keep=keep)

    # ------------------------------------------------------------------ the interface

    def __len__(self) -> int:
        return self.db.count()

    def meta(self, key: str, default: Any = None) -> Any:
        return self.db.get(key, default)

    def add(self, embeddings: np.ndarray, items: Sequence[NewItem]) -> list[int]:
        vectors = self.unit_rows(embeddings, "embeddings")
        ids = self.db.insert(vectors, items)           # durable from here on
        with self._lock.write():
            self._index.add_with_ids(vectors, ids)
            self._dirty += len(ids)
        self._maybe_snapshot()
        return [int(i) for i in ids]

    def delete(self, item_id: int) -> bool:
        if not self.db.delete(item_id):                 # durable from here on
            return False
        with self._lock.write():
            if self._removable:
                self._index.remove_ids(np.array([item_id], dtype=np.int64))
            else:
                self._tombstones.add(int(item_id))
                self._update_selector()
            self._dirty += 1
        self._maybe_snapshot()
        return True

    def search(self, queries: np.ndarray, k: int, label: int | None = None) -> list[list[Hit]]:
        q = self.unit_rows(queries, "queries")
        if label is None:
            with self._lock.read():
                keep: list = []  # faiss holds raw pointers to these during the search
                params = (self._plain_params if self._selector is None
                          else self._search_parameters(self._selector, keep))
                return self._hits(*self._index.search(q, int(k), params=params))
        ids = self.db.ids_with_label(int(label))  # the live items of the class: deleted ones are not there
        if not len(ids):
            return [[] for _ in q]
        import faiss

        batch = faiss.IDSelectorBatch(ids)
        return widened(lambda widen: self._search_among(q, int(k), batch, widen), k, self._approximate, len(ids),
                       lambda: exact_hits(q, ids, normalize_rows(self.db.embeddings(ids, self.dim)), int(k),
                                          self.db.items))

    def _search_among(self, q: np.ndarray, k: int, batch, widen: int) -> list[list[Hit]]:
        """A search among the ids of the faiss selector ``batch``."""
        with self._lock.read():
            keep: list = [batch]
            scores, found = self._index.search(q, k, params=self._search_parameters(batch, keep, widen))
        return self._hits(scores, found)

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        meta = self.db.items(np.unique(ids[ids >= 0]))
        # An id deleted between the faiss search and the lookup is simply left out.
        return [[Hit(int(i), float(s), m.label, m.label_name, m.source)
                 for s, i in zip(srow, irow) if i >= 0 and (m := meta.get(int(i))) is not None]
                for srow, irow in zip(scores, ids)]

    def get(self, item_id: int) -> Item | None:
        return self.db.items([item_id]).get(int(item_id))

    def thumbnail(self, item_id: int) -> bytes | None:
        return self.db.thumbnail(item_id)

    def describe(self) -> dict[str, Any]:
        import faiss

        d = {"engine": "faiss", "faiss_version": faiss.__version__, "factory": self.factory, "dim": self.dim,
             "metric": "cosine (inner product of L2-normalised vectors)", "items": len(self),
             "index_vectors": int(self._index.ntotal), "tombstones": len(self._tombstones)}
        if has_ivf(self._index):
            d["nprobe"] = self.nprobe
        if self._hnsw:
            d["ef_search"] = self.ef_search
        if self._refine:
            d["k_factor"] = self.k_factor
        return d

    # ------------------------------------------------------------------ snapshots

    def save_snapshot(self) -> None:
        """Write the current index atomically.

        The index is serialised to memory under the read lock (a memory copy: writers
        wait that long, searches not at all) and written to disk outside it.
        """
        import faiss

        with self._snapshot_lock:
            with self._lock.read():
                dirty = self._dirty
                data = faiss.serialize_index(self._index)
            write_snapshot(data, self.directory, self.factory)
            with self._lock.write():
                self._dirty -= dirty

    def _maybe_snapshot(self) -> None:
        if self._dirty < self.snapshot_every:
            return
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return
        self._snapshot_thread = threading.Thread(target=self.save_snapshot, name="gallery-snapshot", daemon=True)
        self._snapshot_thread.start()

    def close(self) -> None:
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()
        if self._index is not None and self._dirty:
            self.save_snapshot()
        self._index = None
        if self.db is not None:
            self.db.close()
        if self._dir_lock:
            self._dir_lock.release()
