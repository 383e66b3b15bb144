"""The Milvus backend: a gallery kept in one Milvus collection, behind the same :class:`~.store.GalleryStore`.

The target is a URI (:func:`is_milvus_uri`):

* a local path ending in ``.db`` — embedded Milvus Lite, which runs inside this process
  and keeps its data in that folder (no server to run; one process at a time);
* ``http://host:19530`` — a Milvus standalone or cluster (or ``milvus-lite server`` on
  loopback).  The client code is the same; credentials come from
  ``$EDGEQUERY_MILVUS_TOKEN`` (``user:password`` or an API key), never from a flag.

One collection (``--collection``, default ``gallery``) holds everything the faiss backend
keeps in ``gallery.sqlite``: per item its id, vector (L2-normalised, metric IP = cosine),
label, label name, source, thumbnail (a base64 PNG: Milvus has no bytes field) and the time
it was added; the gallery's own values (model_version, dim, data spec, classes, build
progress, the next free id) are JSON in the collection's properties under ``edgequery.``.

The guarantees the faiss store gives hold here too:

* **acknowledged means flushed**: :meth:`MilvusGalleryStore.add` and ``delete`` return
  after ``flush``, so the rows are sealed in Milvus' storage, not only in its write log;
* **ids are never reused**: the next free id is a property, advanced (and flushed) *before*
  the rows that use it are written, so a crash leaves a gap, never a second use.  The
  server allocates ids, so **one server writes to a collection** (any number may read);
* **building resumes**: ``edgequery index`` writes chunk ``lo..hi`` with ids ``lo+1..hi``
  by *upsert* and then records the progress, so a chunk written twice after a kill is the
  same rows, not duplicates;
* **one model_version per collection**: it is recorded at creation and a build with
  another gallery model is refused.

Milvus Lite is a pure-Python engine (its vector search is faiss): every search call walks
its row masks in Python, about 0.3 ms per 1000 rows, so it suits development and galleries
of tens of thousands of items; ``benchmarks/gallery_search.py`` measures it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import EdgeQueryError
from .faiss_index import normalize_rows
from .metadata import Item, NewItem
from .store import EXACT_FALLBACK, GalleryStore, Hit, exact_hits, finished_gallery, widened

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGEQUERY_MILVUS_TOKEN"
DEFAULT_COLLECTION = "gallery"
PROPERTY_PREFIX = "edgequery."
MAX_TEXT = 65535          # the VARCHAR length every Milvus accepts
INDEX_TYPES = {            # type -> its build parameters and their defaults
    "FLAT": {},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "HNSW": {"M": 16, "efConstruction": 200},
    "AUTOINDEX": {},
}
_FIELDS = ["label", "label_name", "source", "added_at"]


def is_milvus_uri(target: str | Path) -> bool:
    """Whether ``target`` names a Milvus gallery (``*.db`` or a server URI) rather than a faiss directory."""
    t = str(target)
    return t.startswith(("http://", "https://", "tcp://", "unix:")) or t.rstrip("/").endswith(".db")


def backend_of(target: str | Path, backend: str | None = None) -> str:
    """``backend``, or the one ``target`` names: faiss for a faiss index directory (even one called ``*.db``),
    Milvus for a ``*.db`` path or a server URI, faiss otherwise."""
    from .metadata import DB_NAME

    if backend:
        return backend
    if (Path(str(target)) / DB_NAME).is_file():
        return "faiss"
    return "milvus" if is_milvus_uri(target) else "faiss"


def parse_index_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"HNSW,M=32,efConstruction=200"`` -> ``("HNSW", {"M": 32, "efConstruction": 200})`` (defaults filled in)."""
    kind, *pairs = [p.strip() for p in str(spec).split(",")]
    kind = kind.upper()
    if kind not in INDEX_TYPES:
        raise EdgeQueryError(f"Milvus index {spec!r}: unknown index type {kind!r}",
                             f"use one of {', '.join(INDEX_TYPES)}, e.g. \"HNSW,M=32,efConstruction=200\"")
    params = dict(INDEX_TYPES[kind])
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in params or not value.strip().isdigit() or int(value) < 1:
            raise EdgeQueryError(f"Milvus index {spec!r}: {pair!r} is not a parameter of {kind}",
                                 f"{kind} takes {', '.join(f'{k}=<positive int>' for k in params) or 'no parameters'}")
        params[key] = int(value)
    return kind, params


def connect(uri: str, create: bool = False, attempts: int = 3):
    """A ``MilvusClient`` for ``uri``, with errors that say what to do.  A server that accepts connections but
    does not answer in time (busy, still starting) is tried ``attempts`` times; one that refuses them, once."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise EdgeQueryError("the Milvus backend needs pymilvus and milvus-lite",
                             'pip install "edgequery[milvus]"') from None
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # it logs every failure we report ourselves
    # Milvus Lite's in-process gRPC server logs a traceback for each optional RPC it lacks (AllocTimestamp)
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    local = not str(uri).startswith(("http://", "https://", "tcp://", "unix:"))
    if local:
        path = Path(uri)
        if path.suffix != ".db":
            raise EdgeQueryError(f"{uri} is neither a Milvus server URI nor a local Milvus gallery (a path ending "
                                 "in .db)", "pass e.g. gallery.db (embedded Milvus Lite) or http://host:19530")
        if not create and not path.is_dir():
            raise EdgeQueryError(f"no Milvus gallery at {uri}",
                                 f"build one with `edgequery index --backend milvus --out {uri} ...`")
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path.resolve())
    for attempt in range(1, max(attempts, 1) + 1):   # at least one try
        try:
            return MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""))
        except Exception as exc:  # pymilvus raises its own hierarchy; the message is what matters
            text = " ".join(str(exc).split())
            if local and ("lock" in text.lower() or "open local milvus failed" in text.lower()):
                raise EdgeQueryError(f"the Milvus gallery {uri} is in use by another process ({text[:200]})",
                                     "stop that server or indexing run first; embedded Milvus opens in one process "
                                     "at a time (serve it with `milvus-lite server` to share it)") from None
            # pymilvus waits 10 s for the gRPC channel; a server that is listening but busy gets more tries
            if attempt < attempts and not local and "fail connecting" in text.lower() and _listening(uri):
                log.warning("Milvus at %s accepts connections but did not answer within 10 s (try %d of %d); "
                            "trying again", uri, attempt, attempts)
                continue
            raise EdgeQueryError(f"cannot connect to Milvus at {uri}: {text[:300]}",
                                 "check the URI (a path ending in .db, or http://host:19530), that the server is up, "
                                 f"and ${TOKEN_ENV} for a server that needs credentials") from None


def _listening(uri: str) -> bool:
    """Whether something accepts TCP connections at a server URI's host and port (a typo'd URI: no)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if not parts.hostname:
        return False
    try:
        socket.create_connection((parts.hostname, parts.port or 19530), timeout=2).close()
        return True
    except (OSError, ValueError):
        return False


def release(uri: str) -> None:
    """Stop the embedded Milvus Lite of a local ``uri`` (flushes it and frees its lock); no-op for a server."""
    if str(uri).startswith(("http://", "https://", "tcp://", "unix:")):
        return
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(str(Path(uri).resolve()))


@contextmanager
def lite_server(data_dir: str | Path, log_path: str | Path, timeout: float = 600) -> Iterator[tuple[str, int]]:
    """``milvus-lite server`` over ``data_dir`` on a free port of 127.0.0.1: yields ``(URI, pid)``, stops it after.

    A real gRPC Milvus endpoint for development, tests and benchmarks (no authentication:
    keep it on loopback).  It is stopped with SIGTERM; its write log replays what was not flushed.
    """
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("milvus-lite")
    with open(log_path, "w") as out:
        proc = subprocess.Popen([str(exe), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise EdgeQueryError(f"milvus-lite server did not start: {Path(log_path).read_text()[-500:]}",
                                             f"check that {exe} runs and {data_dir} is writable") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", proc.pid
        finally:
            # SIGTERM, not SIGINT: a background job's children inherit SIGINT ignored (and a
            # preexec_fn to restore it forks a process full of gRPC threads); what SIGTERM does
            # not flush, Milvus Lite's write log replays at the next start
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(300)
            except subprocess.TimeoutExpired:
                proc.kill()


def _thumbnail_text(png: bytes | None) -> str | None:
    """The base64 of a thumbnail, shrunk (halving its side) until it fits a VARCHAR."""
    if png is None:
        return None
    text = base64.b64encode(png).decode("ascii")
    while len(text) > MAX_TEXT:
        import io

        from PIL import Image

        im = Image.open(io.BytesIO(png))
        im = im.resize((max(1, im.width // 2), max(1, im.height // 2)))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
        text = base64.b64encode(png).decode("ascii")
    return text


class MilvusCollection:
    """One gallery collection: its rows and its properties (see the module docstring).

    Used by ``edgequery index`` to build (:meth:`create`, :meth:`put`, :meth:`build_index`)
    and by :class:`MilvusGalleryStore` to serve.
    """

    def __init__(self, uri: str, name: str = DEFAULT_COLLECTION, create: bool = False):
        self.uri, self.name = str(uri), name
        self.client = connect(self.uri, create=create)
        self._props: dict[str, Any] | None = None
        self._loaded = False
        try:
            missing = not create and not self.exists()
        except BaseException:
            self.close()
            raise
        if missing:
            self.close()
            raise EdgeQueryError(f"Milvus at {uri} has no gallery collection {name!r}",
                                 f"build it with `edgequery index --backend milvus --out {uri} --collection {name}`, "
                                 "or pass the --collection it was built with")

    # ------------------------------------------------------------------ the collection itself

    def exists(self) -> bool:
        return self.client.has_collection(self.name)

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.name)
        self._props = None

    def create(self, dim: int, **values: Any) -> None:
        """A new, empty collection for ``dim``-d vectors, with ``values`` as its first properties."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("label", DataType.INT64, nullable=True)
        schema.add_field("label_name", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        schema.add_field("added_at", DataType.DOUBLE)
        self.client.create_collection(self.name, schema=schema, consistency_level="Strong",
                                      properties=self._encode({"format": "edgequery-gallery-milvus",
                                                               "format_version": 1, "dim": int(dim), **values}))
        self._props = None

    # ------------------------------------------------------------------ properties (the gallery's values)

    @staticmethod
    def _encode(values: dict[str, Any]) -> dict[str, str]:
        return {PROPERTY_PREFIX + k: json.dumps(v) for k, v in values.items()}

    def _properties(self) -> dict[str, Any]:
        if self._props is None:
            raw = self.client.describe_collection(self.name).get("properties", {})
            self._props = {k[len(PROPERTY_PREFIX):]: json.loads(v) for k, v in raw.items()
                           if k.startswith(PROPERTY_PREFIX)}
        return self._props

    def get(self, key: str, default: Any = None, fresh: bool = False) -> Any:
        """A value of the gallery (``fresh``: read from Milvus now, not from this object's copy)."""
        if fresh:
            self._props = None
        return self._properties().get(key, default)

    def set(self, **values: Any) -> None:
        self.client.alter_collection_properties(self.name, properties=self._encode(values))
        self._properties().update(json.loads(json.dumps(values)))

    # ------------------------------------------------------------------ rows

    def rows(self, ids: Sequence[int], vectors: np.ndarray, items: Sequence[NewItem], now: float) -> list[dict]:
        return [{"id": int(i), "vector": v, "label": it.label, "label_name": it.label_name, "source": it.source,
                 "thumbnail": _thumbnail_text(it.thumbnail), "added_at": now}
                for i, v, it in zip(ids, vectors, items)]

    def put(self, ids: Sequence[int], embeddings: np.ndarray, items: Sequence[NewItem]) -> None:
        """Upsert rows (idempotent: the same ids written again are the same rows) and flush them."""
        vectors = normalize_rows(embeddings)
        for lo in range(0, len(ids), 4096):  # bounded gRPC messages
            self.client.upsert(self.name, self.rows(ids[lo:lo + 4096], vectors[lo:lo + 4096], items[lo:lo + 4096],
                                                    time.time()))
        self.client.flush(self.name)

    def count(self) -> int:
        """Live rows; before the vector index exists (a build) Milvus cannot query, so its row statistics."""
        if not self.load():
            return int(self.client.get_collection_stats(self.name)["row_count"])
        return int(self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        self.load()
        rows = {r["id"]: r["vector"] for r in self.client.query(self.name, ids=[int(i) for i in ids],
                                                                  output_fields=["vector"])}
        return np.asarray([rows[int(i)] for i in ids], dtype=np.float32)

    # ------------------------------------------------------------------ the vector index

    def build_index(self, spec: str) -> None:
        """(Re)build the vector index as ``spec`` (:func:`parse_index_spec`) and load the collection."""
        kind, params = parse_index_spec(spec)
        self.client.release_collection(self.name)
        self._loaded = False
        for name in self.client.list_indexes(self.name):
            self.client.drop_index(self.name, name)
        index_params = self.client.prepare_index_params()
        # parameters nested under "params": the form every Milvus (Lite included) reads
        index_params.add_index("vector", index_type=kind, metric_type="IP", params={"params": params})
        self.client.create_index(self.name, index_params)
        self._loaded = False
        self.load()

    def load(self) -> bool:
        """Load the collection for search and query once it has its vector index; whether it is loaded."""
        if not self._loaded and self.client.list_indexes(self.name):
            self.client.load_collection(self.name)
            self._loaded = True
        return self._loaded

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            release(self.uri)


class MilvusGalleryStore(GalleryStore):
    """A Milvus gallery collection opened for serving.

    ``ef_search`` (HNSW) and ``nprobe`` (IVF) are the search-time trade-offs, as on faiss.
    A search filtered by label is widened when it comes back short (:func:`~.store.widened`).
    """

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION, nprobe: int = 16, ef_search: int = 128):
        self.nprobe, self.ef_search = int(nprobe), int(ef_search)
        self.col = MilvusCollection(uri, collection)
        try:
            self.dim, self.model_version, self.index_spec = finished_gallery(self.col.get, f"{uri} ({collection})")
            self.kind, self.params = parse_index_spec(self.index_spec)
            self.col.load()
            self._write_lock = threading.Lock()  # id allocation: one writer per collection (module docstring)
            self._count = self.col.count()
        except BaseException:
            self.col.close()
            raise

    def __len__(self) -> int:
        return self._count

    def meta(self, key: str, default: Any = None) -> Any:
        return self.col.get(key, default)

    def add(self, embeddings: np.ndarray, items: Sequence[NewItem]) -> list[int]:
        vectors = self.unit_rows(embeddings, "embeddings")
        with self._write_lock:
            start = int(self.col.get("next_id", fresh=True))
            self.col.set(next_id=start + len(items))  # reserved before use: a crash leaves a gap, never a reuse
            ids = list(range(start, start + len(items)))
            self.col.put(ids, vectors, items)          # durable (flushed) from here on
            self._count += len(ids)
        return ids

    def delete(self, item_id: int) -> bool:
        with self._write_lock:
            if not self.col.client.query(self.col.name, ids=[int(item_id)], output_fields=["id"]):
                return False
            self.col.client.delete(self.col.name, ids=[int(item_id)])
            self.col.client.flush(self.col.name)          # durable from here on
            self._count -= 1
        return True

    def _search_params(self, k: int, widen: int) -> dict[str, Any]:
        if self.kind == "HNSW":
            return {"params": {"ef": max(self.ef_search, k) * widen}}  # widen: at most x64 (store.widened)
        if self.kind.startswith("IVF"):
            return {"params": {"nprobe": min(self.nprobe * widen, self.params["nlist"])}}
        return {}

    def search(self, queries: np.ndarray, k: int, label: int | None = None) -> list[list[Hit]]:
        q = self.unit_rows(queries, "queries")
        flt = "" if label is None else f"label == {int(label)}"

        def once(widen: int) -> list[list[Hit]]:
            res = self.col.client.search(self.col.name, data=q, limit=int(k), filter=flt, output_fields=_FIELDS,
                                         search_params=self._search_params(k, widen), anns_field="vector")
            return [[Hit(int(h["id"]), float(h["distance"]), h["entity"].get("label"),
                         h["entity"].get("label_name"), h["entity"]["source"]) for h in row] for row in res]

        if label is None or self.kind in ("FLAT", "AUTOINDEX"):
            return once(1)
        available = int(self.col.client.query(self.col.name, filter=flt, output_fields=["count(*)"])[0]["count(*)"])
        if not available:
            return [[] for _ in q]

        def exact() -> list[list[Hit]]:
            rows = self.col.client.query(self.col.name, filter=flt, output_fields=["vector", *_FIELDS],
                                         limit=EXACT_FALLBACK)
            items = {int(r["id"]): Item(int(r["id"]), r.get("label"), r.get("label_name"), r["source"],
                                        float(r["added_at"])) for r in rows}
            ids = np.array(list(items), dtype=np.int64)
            vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
            return exact_hits(q, ids, vectors, int(k), lambda wanted: {int(i): items[int(i)] for i in wanted})

        return widened(once, k, True, available, exact)

    def _row(self, item_id: int, fields: list[str]) -> dict | None:
        if not -(2**63) <= int(item_id) < 2**63:
            return None
        rows = self.col.client.query(self.col.name, ids=[int(item_id)], output_fields=fields)
        return rows[0] if rows else None

    def get(self, item_id: int) -> Item | None:
        r = self._row(item_id, _FIELDS)
        return None if r is None else Item(int(r["id"]), r.get("label"), r.get("label_name"), r["source"],
                                           float(r["added_at"]))

    def thumbnail(self, item_id: int) -> bytes | None:
        r = self._row(item_id, ["thumbnail"])
        return None if r is None or not r.get("thumbnail") else base64.b64decode(r["thumbnail"])

    def describe(self) -> dict[str, Any]:
        import pymilvus

        d = {"engine": "milvus", "pymilvus_version": pymilvus.__version__,
             "where": "server" if self.col.uri.startswith(("http", "tcp", "unix")) else "embedded (Milvus Lite)",
             "collection": self.col.name, "factory": self.index_spec, "dim": self.dim,
             "metric": "cosine (inner product of L2-normalised vectors)", "items": len(self)}
        if self.kind == "HNSW":
            d["ef_search"] = self.ef_search
        if self.kind.startswith("IVF"):
            d["nprobe"] = self.nprobe
        return d

    def close(self) -> None:
        self.col.close()
