"""``edgequery index``: embed a gallery with the gallery model and index it (faiss or Milvus).

The work is in two stages, each resumable:

1. **Embed** the images in chunks of ``chunk`` images.  Each chunk's items (embedding,
   label, source, thumbnail) and the build progress are made durable before the next
   chunk starts — faiss: committed to ``gallery.sqlite`` in one transaction; Milvus:
   upserted with ids fixed by the images' positions and flushed, then the progress
   recorded — so a killed run resumes at the first chunk not yet stored.
2. **Index**: build the vector index from the stored embeddings — faiss: the factory
   string's index (training IVF/PQ when needed), snapshotted atomically; Milvus: the
   collection's index (``"HNSW,M=32"``, ...), then loaded — and only then mark the index
   ``complete`` and servable.

Running again with the same gallery model and images but another ``--index-factory``
(``--milvus-index``) re-indexes the stored embeddings without embedding anything again.

Embeddings computed elsewhere (``--from-embeddings``, :func:`index_vectors`) skip stage 1.

Images (``--images``): ``fashion-mnist`` or ``digits`` mean the *gallery split* of the
gallery model's own data spec (same seed and sizes as in training, so the query split
stays held out); anything else is an ImageFolder directory (``root/<class>/<image>``),
decoded at the gallery model's resolution.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data import DataSpec, ImageSet, image_folder_files, load_image_folder, load_splits
from ..errors import EdgeQueryError
from ..log import progress as progress_bar
from .faiss_index import build_faiss_index, make_faiss_index, write_snapshot
from .metadata import DB_NAME, DirectoryLock, MetadataDB, NewItem
from .milvus_store import DEFAULT_COLLECTION

log = logging.getLogger(__name__)

DATASET_NAMES = ("fashion-mnist", "digits")
BACKENDS = ("faiss", "milvus")


def folder_files(root: Path) -> list[str]:
    """The files of an ImageFolder tree (relative paths) in the order :func:`~edgequery.data.load_image_folder`
    decodes them."""
    return [str(p.relative_to(root)) for p, _ in image_folder_files(root)[1]]


def resolve_images(images: str, gallery: dict, limit: int | None = None
                   ) -> tuple[ImageSet, list[str], dict[str, Any], DataSpec]:
    """``--images`` -> (images, one source string per image, a description, pre-processing spec)."""
    spec = DataSpec.from_dict(gallery["data"])
    if images in DATASET_NAMES:
        if images != spec.dataset:
            spec = DataSpec.from_dict({**spec.to_dict(), "dataset": images, "root": None})
        part = load_splits(spec).gallery
        sources = [f"{images}/gallery#{i}" for i in range(len(part))]
        desc = {"kind": "split", "split": "gallery", "spec": spec.to_dict()}
    else:
        root = Path(images)
        if not root.is_dir():
            raise EdgeQueryError(f"--images {images!r} is neither a data set name nor a directory",
                                 f"pass one of {', '.join(DATASET_NAMES)} or an ImageFolder directory "
                                 "(<root>/<class name>/<image files>)")
        part = load_image_folder(root, spec.resolution)
        sources = folder_files(root)
        desc = {"kind": "folder", "root": str(root.resolve()), "files": len(part)}
        spec = DataSpec.from_dict({**spec.to_dict(), "dataset": "folder", "root": str(root.resolve())})
    if limit is not None:
        if limit < 1:
            raise EdgeQueryError(f"--limit {limit} is not positive", "pass a positive number of images, or omit it")
        part, sources = part.subset(torch.arange(min(limit, len(part)))), sources[:limit]
        desc["limit"] = limit
    return part, sources, desc, spec


def _load_gallery(gallery_path: str | Path, factory: str, chunk: int, batch_size: int, backend: str) -> dict:
    """The gallery checkpoint, refused (before any work) when it or the build settings are unusable."""
    gallery = load_checkpoint(gallery_path, "gallery")
    if not gallery.get("train", {}).get("complete", True):
        raise EdgeQueryError(f"gallery {gallery_path} is an unfinished training run",
                             "finish it first by rerunning `edgequery train gallery` with the same settings")
    check_index_spec(backend, factory, int(gallery["model"]["embed_dim"]))  # fails now, not after an hour
    if chunk < 1 or batch_size < 1:
        raise EdgeQueryError("--chunk and --batch-size must be positive", "pass positive values")
    return gallery


def check_index_spec(backend: str, factory: str, dim: int) -> None:
    """Refuse an index description the backend cannot build (a faiss factory string, or a Milvus index spec)."""
    if backend == "faiss":
        make_faiss_index(factory, dim)
    elif backend == "milvus":
        from .milvus_store import parse_index_spec

        parse_index_spec(factory)
    else:
        raise EdgeQueryError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------- where a build goes


class _FaissTarget:
    """An index directory being built: ``gallery.sqlite`` (the truth) and the faiss snapshot."""

    def __init__(self, out: Path, force: bool):
        if out.exists() and not out.is_dir():
            raise EdgeQueryError(f"--out {out} exists and is not a directory",
                                 "choose a directory path for the index")
        self.out, self.lock, self.db = out, DirectoryLock(out), None
        try:
            db_path = out / DB_NAME
            if force and db_path.exists():
                log.info(f"--force: deleting the existing index in {out}")
                for p in [*out.glob(f"{DB_NAME}*"), *out.glob("index.*.faiss")]:
                    p.unlink()
            self.fresh = not db_path.exists()
            self.db = MetadataDB(db_path, create=self.fresh)
        except BaseException:
            self.close()
            raise

    def create(self, dim: int, **values: Any) -> None:
        self.db.set(dim=dim, **values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.db.get(key, default)

    def count(self) -> int:
        return self.db.count()

    def put(self, lo: int, hi: int, embeddings: np.ndarray, items: list[NewItem]) -> None:
        """Store images ``lo..hi-1`` and the progress in one transaction (they get ids ``lo+1..hi``)."""
        self.db.insert(embeddings, items, build_done=hi)

    def finish(self, factory: str, progress: bool) -> None:
        finish_index(self.db, self.out, factory, progress)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        self.lock.release()


class _MilvusTarget:
    """A Milvus collection being built (:mod:`.milvus_store`): rows by upsert, then the vector index."""

    def __init__(self, uri: str, collection: str, force: bool):
        from .milvus_store import MilvusCollection

        self.col = MilvusCollection(uri, collection, create=True)
        try:
            if force and self.col.exists():
                log.info(f"--force: dropping the existing collection {collection!r} at {uri}")
                self.col.drop()
            self.fresh = not self.col.exists()
        except BaseException:
            self.col.close()
            raise

    def create(self, dim: int, **values: Any) -> None:
        self.col.create(dim, **values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.col.get(key, default)

    def count(self) -> int:
        return self.col.count()

    def put(self, lo: int, hi: int, embeddings: np.ndarray, items: list[NewItem]) -> None:
        """Upsert images ``lo..hi-1`` as ids ``lo+1..hi`` (flushed), then record the progress.

        A kill between the two writes the chunk again on resume: the same ids, the same rows.
        """
        self.col.put(list(range(lo + 1, hi + 1)), embeddings, items)
        self.col.set(build_done=hi)

    def finish(self, factory: str, progress: bool) -> None:
        from .milvus_store import parse_index_spec

        kind, params = parse_index_spec(factory)
        n = int(self.col.get("build_total", 0))
        if params.get("nlist", 0) > n:
            raise EdgeQueryError(f"Milvus index {factory!r} has {params['nlist']} lists for {n} vectors",
                                 f"use FLAT or HNSW for a gallery this small, or nlist={max(1, n // 39)} or fewer")
        t = time.time()
        self.col.set(complete=False)  # from here until the new index is built and recorded: not servable
        self.col.build_index(factory)
        next_id = max(int(self.col.get("next_id", 1)), int(self.col.get("build_total", 0)) + 1)
        self.col.set(factory=factory, complete=True, built_at=time.time(), next_id=next_id)
        log.info(f"built Milvus index {factory} over {self.col.get('build_total')} vectors in {time.time() - t:.1f}s")

    def close(self) -> None:
        self.col.close()


def open_target(backend: str, out: str | Path, collection: str, force: bool) -> _FaissTarget | _MilvusTarget:
    """Where a build writes: an index directory (faiss) or a Milvus collection at the URI ``out``."""
    if backend == "milvus":
        return _MilvusTarget(str(out), collection, force)
    return _FaissTarget(Path(out), force)


# --------------------------------------------------------------------------- the build


def build_index(gallery_path: str | Path, images: str, factory: str, out: str | Path, batch_size: int = 256,
                chunk: int = 1024, device: str = "cpu", force: bool = False, limit: int | None = None,
                progress: bool = True, backend: str = "faiss", collection: str = DEFAULT_COLLECTION
                ) -> dict[str, Any]:
    """Build (or resume, or re-index) the gallery index in ``out``; returns a summary.

    ``backend`` ``faiss``: ``out`` is an index directory and ``factory`` a faiss factory
    string; ``milvus``: ``out`` a Milvus URI, ``collection`` the collection and ``factory``
    a Milvus index (:func:`~.milvus_store.parse_index_spec`).
    """
    from ..train import resolve_device

    t0 = time.time()
    gallery = _load_gallery(gallery_path, factory, chunk, batch_size, backend)
    device = resolve_device(device)
    imgs, sources, desc, spec = resolve_images(images, gallery, limit)  # bad --images: refused before any write
    target = open_target(backend, out, collection, force)
    try:
        if target.fresh:
            target.create(int(gallery["model"]["embed_dim"]), **_new_values(gallery, gallery_path, imgs, desc, spec))
        elif _check_existing(target, gallery, desc, factory, out):
            log.info(f"{out} is already a complete {factory} index of {target.count()} items; nothing to do")
            return _summary(target, out, factory, 0, t0)
        embedded = 0
        if int(target.get("build_done", 0)) < len(imgs):
            embedded = _embed_rest(target, gallery, gallery_path, imgs, sources, spec, batch_size, chunk, device,
                                   progress)
        elif target.get("complete"):
            log.info(f"re-indexing the {target.count()} stored embeddings with {factory} (no re-embedding)")
        target.finish(factory, progress)
        return _summary(target, out, factory, embedded, t0)
    finally:
        target.close()


def _identity(gallery: dict, desc: dict[str, Any]) -> dict[str, Any]:
    """What an index is an index of (as stored: JSON lists, not tuples)."""
    return json.loads(json.dumps({"model_version": gallery["model_version"], "images": desc}))


def _new_values(gallery: dict, gallery_path: str | Path, imgs: ImageSet, desc: dict[str, Any],
                spec: DataSpec) -> dict[str, Any]:
    """The values a new index records: its identity, data spec, classes and gallery model."""
    version, dim = gallery["model_version"], int(gallery["model"]["embed_dim"])
    return dict(model_version=version, identity=_identity(gallery, desc), data=spec.to_dict(),
                classes=list(imgs.classes),
                gallery={"path": str(Path(gallery_path).resolve()), "arch": gallery["model"]["arch"],
                         "model_version": version, "embed_dim": dim, "classes": gallery.get("classes"),
                         "data": gallery["data"]},
                build_total=len(imgs), build_done=0, complete=False)


def _check_existing(target, gallery: dict, desc: dict[str, Any], factory: str, out: str | Path) -> bool:
    """Refuse an index of other images or another model; True when it is already complete with ``factory``."""
    stored, identity = target.get("identity"), _identity(gallery, desc)
    if stored != identity:
        what = [k for k in ("model_version", "images") if (stored or {}).get(k) != identity[k]]
        raise EdgeQueryError(
            f"{out} holds an index of other {' and '.join(what)} "
            f"(model_version {(stored or {}).get('model_version')})",
            "pass another --out (or --collection), or --force to delete that index and build this one")
    return bool(target.get("complete")) and target.get("factory") == factory


def _embed_rest(target, gallery: dict, gallery_path: str | Path, imgs: ImageSet, sources: list[str],
                spec: DataSpec, batch_size: int, chunk: int, device, progress: bool) -> int:
    """Embed the images not stored yet, one durable chunk at a time; returns how many were embedded."""
    from ..evaluate import embed
    from ..models import model_from_checkpoint
    from .images import png_thumbnail

    done, total, classes = int(target.get("build_done", 0)), len(imgs), list(imgs.classes)
    if done:
        log.info(f"resuming: {done} of {total} images are already embedded")
    model = model_from_checkpoint(gallery).to(device)
    with progress_bar(total=total, initial=done, desc=f"embedding with {gallery['model']['arch']}", unit="img",
                      enabled=progress) as bar:
        for lo in range(done, total, chunk):
            hi = min(lo + chunk, total)
            raw = imgs.images[lo:hi]
            emb = embed(model, raw, spec, batch_size=batch_size, device=device).numpy()
            if not np.isfinite(emb).all():
                raise EdgeQueryError(f"the gallery model produced NaN or Inf embeddings for images {lo}..{hi - 1}",
                                     f"{gallery_path} is broken (diverged training?); retrain it")
            items = [NewItem(source=sources[i], label=int(imgs.labels[i]), label_name=classes[int(imgs.labels[i])],
                             thumbnail=png_thumbnail(raw[i - lo])) for i in range(lo, hi)]
            target.put(lo, hi, emb, items)
            bar.update(hi - lo)
    return total - done


def _summary(target, out: str | Path, factory: str, embedded: int, t0: float) -> dict[str, Any]:
    return {"out": str(out), "items": target.count(), "factory": factory, "model_version": target.get("model_version"),
            "dim": target.get("dim"), "embedded_now": embedded, "seconds": round(time.time() - t0, 1)}


def index_vectors(gallery_path: str | Path, vectors: str | Path, factory: str, out: str | Path,
                  progress: bool = True, backend: str = "faiss", collection: str = DEFAULT_COLLECTION
                  ) -> dict[str, Any]:
    """Index gallery embeddings computed elsewhere (``--from-embeddings``, :mod:`.vectors`) by the model
    ``gallery_path`` holds, without embedding anything; returns a summary.  Each item's ``source`` is its
    id from the file."""
    from .vectors import read_vectors

    t0 = time.time()
    gallery = _load_gallery(gallery_path, factory, 1, 1, backend)
    got = read_vectors(vectors, int(gallery["model"]["embed_dim"]), list(gallery.get("classes") or []))
    items = [NewItem(source=got.ids[i], label=None if got.labels is None else got.labels[i],
                     label_name=None if got.labels is None else got.classes[got.labels[i]])
             for i in range(len(got.ids))]
    create_index(out, got.embeddings, items, factory, gallery["model_version"], gallery_path=gallery_path,
                 data=gallery["data"], classes=got.classes, progress=progress, backend=backend,
                 collection=collection)
    return {"out": str(out), "items": len(items), "factory": factory, "model_version": gallery["model_version"],
            "dim": int(gallery["model"]["embed_dim"]), "embedded_now": 0, "seconds": round(time.time() - t0, 1)}


def finish_index(db: MetadataDB, out: Path, factory: str, progress: bool = True) -> None:
    """Build the faiss index over every stored embedding, snapshot it, mark the index servable."""
    index = build_faiss_index(db, factory, int(db.get("dim")), progress=progress)
    write_snapshot(index, out, factory)
    db.set(factory=factory, complete=True, built_at=time.time())


def create_index(out: str | Path, embeddings, items: list[NewItem], factory: str, model_version: str,
                 gallery_path: str | Path | None = None, data: dict | None = None,
                 classes: list[str] | None = None, progress: bool = True, backend: str = "faiss",
                 collection: str = DEFAULT_COLLECTION) -> None:
    """An index from embeddings computed elsewhere (benchmarks, other pipelines), on either backend.

    ``model_version`` must be that of the model which computed ``embeddings``; serving
    also needs ``gallery_path`` (that model's checkpoint) and its ``data`` spec.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    check_index_spec(backend, factory, int(emb.shape[1]))
    target = open_target(backend, out, collection, force=False)
    try:
        if not target.fresh:
            raise EdgeQueryError(f"{out} already holds an index", "pass a new directory (or collection)")
        target.create(int(emb.shape[1]), model_version=model_version, classes=classes or [], data=data,
                      identity={"model_version": model_version, "images": {"kind": "embeddings", "n": len(emb)}},
                      gallery={"path": str(Path(gallery_path).resolve()) if gallery_path else None,
                               "model_version": model_version},
                      build_total=len(emb), build_done=0, complete=False)
        with progress_bar(total=len(emb), desc="storing", unit="vec", enabled=progress) as bar:
            for lo in range(0, len(emb), 65536):
                hi = min(lo + 65536, len(emb))
                target.put(lo, hi, emb[lo:hi], items[lo:hi])
                bar.update(hi - lo)
        target.finish(factory, progress)
    finally:
        target.close()
