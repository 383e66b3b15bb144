"""The durable half of a gallery: one SQLite file that is the source of truth.

``gallery.sqlite`` holds every item — its id, label, where it came from, a small PNG
thumbnail and **its embedding** (float32) — plus a ``meta`` table of JSON values (model
version, faiss factory string, build progress, ...).  The faiss index next to it is a
*cache* that can always be rebuilt, or brought up to date, from this file
(:mod:`edgequery.gallery.store`).  Keeping the vectors here is what makes "an
acknowledged add survives ``kill -9``" true without a second write-ahead log.

Durability settings, and why they are enough:

* ``journal_mode=WAL`` + ``synchronous=FULL``: every ``COMMIT`` appends to the WAL
  and ``fsync``\\s it before returning, so a committed transaction survives a killed
  process and a power cut.  The server acknowledges an add/delete only after that commit.
* ids come from ``INTEGER PRIMARY KEY AUTOINCREMENT``: an id is never reused, even after
  its item is deleted, so "the set of live ids" fully describes the gallery and the faiss
  cache can be reconciled with a set difference.
* one connection, serialised by a lock: SQLite allows a single writer anyway, and the
  reads the server does (a few rows per search) take microseconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import EdgeQueryError

SQLITE_INT = (-(2**63), 2**63 - 1)  # what an INTEGER column holds; another id cannot exist
FORMAT = "edgequery-gallery-index"
FORMAT_VERSION = 1
DB_NAME = "gallery.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL                 -- JSON
);
CREATE TABLE IF NOT EXISTS items (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused
    label      INTEGER,                             -- class index, NULL when unknown
    label_name TEXT,
    source     TEXT NOT NULL,                       -- where the image came from
    embedding  BLOB NOT NULL,                       -- float32 little-endian, `dim` values
    thumbnail  BLOB,                                -- small PNG, optional
    added_at   REAL NOT NULL                        -- unix time
);
"""
_LABEL_INDEX = "CREATE INDEX IF NOT EXISTS items_label ON items(label)"  # filtered search (added in 0.1: made on open)


@dataclass(frozen=True)
class NewItem:
    """What a caller knows about an item before it has an id."""

    source: str
    label: int | None = None
    label_name: str | None = None
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class Item:
    """A stored item (without its embedding)."""

    id: int
    label: int | None
    label_name: str | None
    source: str
    added_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "label_name": self.label_name, "source": self.source,
                "added_at": self.added_at}


class MetadataDB:
    """The SQLite file of an index directory (see the module docstring)."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise EdgeQueryError(f"no gallery index at {self.path.parent} ({self.path.name} is missing)",
                                 "build one with `edgequery index --gallery gallery.pt --images fashion-mnist "
                                 f"--out {self.path.parent}`")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            if create:
                self._conn.executescript(_SCHEMA)
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "items" in tables:
                self._conn.execute(_LABEL_INDEX)
        except sqlite3.DatabaseError as exc:
            raise EdgeQueryError(f"{self.path} is not a readable gallery database ({exc})",
                                 "restore it from a backup, or rebuild the index with `edgequery index --force`"
                                 ) from None
        if not {"meta", "items"} <= tables:
            raise EdgeQueryError(f"{self.path} is not an edgequery gallery database (tables: {sorted(tables)})",
                                 "point --index at a directory written by `edgequery index`")
        if create and self.get("format") is None:
            self.set(format=FORMAT, format_version=FORMAT_VERSION, created_at=time.time())
        fmt, version = self.get("format"), self.get("format_version", 0)
        if fmt != FORMAT:
            raise EdgeQueryError(f"{self.path} is not an edgequery gallery database",
                                 "point --index at a directory written by `edgequery index`")
        if version > FORMAT_VERSION:
            raise EdgeQueryError(f"{self.path} has gallery format {version}, newer than this edgequery "
                                 f"understands ({FORMAT_VERSION})", "upgrade edgequery")

    # ------------------------------------------------------------------ plumbing

    def pragma(self, name: str) -> Any:
        with self._lock:
            return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (durable on return) or ``ROLLBACK`` on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ meta

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, conn: sqlite3.Connection | None = None, **values: Any) -> None:
        """Write meta values (inside ``conn``'s transaction when given, else in a new one)."""
        if conn is None:
            with self.transaction() as c:
                return self.set(c, **values)
        conn.executemany("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         [(k, json.dumps(v)) for k, v in values.items()])

    # ------------------------------------------------------------------ items

    def insert(self, embeddings: np.ndarray, items: Sequence[NewItem], conn: sqlite3.Connection | None = None,
               **meta: Any) -> np.ndarray:
        """Store items and their embeddings in one transaction; returns their new ids.

        ``meta`` values are written in the same transaction (e.g. build progress), so a
        crash leaves both or neither.  When this returns, the items are durable.
        """
        if conn is None:
            with self.transaction() as c:
                return self.insert(embeddings, items, c, **meta)
        emb = np.ascontiguousarray(embeddings, dtype="<f4")
        if emb.ndim != 2 or len(emb) != len(items):
            raise ValueError(f"{len(items)} items but embeddings of shape {emb.shape}")
        # Inside BEGIN IMMEDIATE we are the only writer, so the next ids are known.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        start = (row[0] if row else 0) + 1
        ids = np.arange(start, start + len(items), dtype=np.int64)
        now = time.time()
        conn.executemany(
            "INSERT INTO items(id, label, label_name, source, embedding, thumbnail, added_at) "
            "VALUES(?, ?, ?, ?, ?, ?, ?)",
            [(int(i), it.label, it.label_name, it.source, e.tobytes(), it.thumbnail, now)
             for i, it, e in zip(ids, items, emb)])
        if meta:
            self.set(conn, **meta)
        return ids

    def delete(self, item_id: int) -> bool:
        """Delete one item durably; False when no such item exists."""
        if not _storable(item_id):
            return False
        with self.transaction() as c:
            return c.execute("DELETE FROM items WHERE id = ?", (int(item_id),)).rowcount > 0

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def live_ids(self) -> np.ndarray:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def ids_with_label(self, label: int) -> np.ndarray:
        """The ids of the live items of class ``label``, ascending."""
        if not _storable(label):
            return np.empty(0, dtype=np.int64)
        with self._lock:
            rows = self._conn.execute("SELECT id FROM items WHERE label = ? ORDER BY id", (int(label),)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def items(self, ids: Sequence[int]) -> dict[int, Item]:
        ids = [int(i) for i in ids if _storable(i)]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, label, label_name, source, added_at FROM items WHERE id IN ({marks})", ids).fetchall()
        return {r[0]: Item(*r) for r in rows}

    def thumbnail(self, item_id: int) -> bytes | None:
        if not _storable(item_id):
            return None
        with self._lock:
            row = self._conn.execute("SELECT thumbnail FROM items WHERE id = ?", (int(item_id),)).fetchone()
        return None if row is None else row[0]

    def embeddings(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Embeddings of ``ids`` (in that order); every id must exist."""
        ids = [int(i) for i in ids]
        out = np.empty((len(ids), dim), dtype=np.float32)
        pos = {i: n for n, i in enumerate(ids)}
        for lo in range(0, len(ids), 900):  # stay below SQLite's bound-parameter limit
            part = ids[lo:lo + 900]
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT id, embedding FROM items WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
            if len(rows) != len(part):
                raise KeyError(f"{len(part) - len(rows)} of the requested items do not exist")
            for i, blob in rows:
                out[pos[i]] = np.frombuffer(blob, dtype="<f4")
        return out

    def iter_embeddings(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids, embeddings) in id order, ``chunk`` rows at a time."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute("SELECT id, embedding FROM items WHERE id > ? ORDER BY id LIMIT ?",
                                          (last, chunk)).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            emb = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
            yield ids, emb.astype(np.float32)
            last = int(ids[-1])


def _storable(item_id: int) -> bool:
    """Whether ``item_id`` fits an SQLite INTEGER (a bigger one is no item, not an OverflowError)."""
    return SQLITE_INT[0] <= int(item_id) <= SQLITE_INT[1]


class DirectoryLock:
    """An exclusive ``flock`` on ``<index dir>/.lock`` while a process owns the index.

    ``edgequery serve`` and ``edgequery index`` both hold it, so a re-index cannot run
    under a live server and two servers cannot write one gallery.  The kernel drops the
    lock when the process dies (even by ``kill -9``), so a crash never leaves it stuck.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locking available
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise EdgeQueryError(f"the index at {self.path.parent} is in use by another edgequery process "
                                 f"(pid {holder})", "stop that server or indexing run first") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor releases the flock
