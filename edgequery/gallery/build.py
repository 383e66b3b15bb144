"""``edgequery index``: embed a gallery with the gallery model and index it with faiss.

The work is in two stages, each resumable:

1. **Embed** the images in chunks of ``chunk`` images.  Each chunk's items (embedding,
   label, source, thumbnail) and the build progress are committed to ``gallery.sqlite``
   in one transaction, so a killed run resumes at the first chunk not yet stored.
2. **Index**: build the faiss index from the stored embeddings (training IVF/PQ on them
   when the factory needs it) and write its snapshot atomically; only then is the index
   marked ``complete`` and servable.

Running again with the same gallery model and images but another ``--index-factory``
re-indexes the stored embeddings without embedding anything again.

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

log = logging.getLogger(__name__)

DATASET_NAMES = ("fashion-mnist", "digits")


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


def _load_gallery(gallery_path: str | Path, factory: str, chunk: int, batch_size: int) -> dict:
    """The gallery checkpoint, refused (before any work) when it or the build settings are unusable."""
    gallery = load_checkpoint(gallery_path, "gallery")
    if not gallery.get("train", {}).get("complete", True):
        raise EdgeQueryError(f"gallery {gallery_path} is an unfinished training run",
                             "finish it first by rerunning `edgequery train gallery` with the same settings")
    make_faiss_index(factory, int(gallery["model"]["embed_dim"]))  # a bad factory fails now, not after an hour
    if chunk < 1 or batch_size < 1:
        raise EdgeQueryError("--chunk and --batch-size must be positive", "pass positive values")
    return gallery


def build_index(gallery_path: str | Path, images: str, factory: str, out: str | Path, batch_size: int = 256,
                chunk: int = 1024, device: str = "cpu", force: bool = False, limit: int | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Build (or resume, or re-index) the gallery index in ``out``; returns a summary."""
    from ..train import resolve_device

    t0 = time.time()
    out = Path(out)
    gallery = _load_gallery(gallery_path, factory, chunk, batch_size)
    device = resolve_device(device)
    if out.exists() and not out.is_dir():
        raise EdgeQueryError(f"--out {out} exists and is not a directory", "choose a directory path for the index")
    lock = DirectoryLock(out)
    try:
        db_path = out / DB_NAME
        if force and db_path.exists():
            log.info(f"--force: deleting the existing index in {out}")
            for p in [*out.glob(f"{DB_NAME}*"), *out.glob("index.*.faiss")]:
                p.unlink()
        fresh = not db_path.exists()
        imgs, sources, desc, spec = resolve_images(images, gallery, limit)
        db = MetadataDB(db_path, create=fresh)
        try:
            if fresh:
                _record_new(db, gallery, gallery_path, imgs, desc, spec)
            elif _check_existing(db, gallery, desc, factory, out):
                log.info(f"{out} is already a complete {factory} index of {db.count()} items; nothing to do")
                return _summary(db, out, factory, 0, t0)
            embedded = 0
            if int(db.get("build_done", 0)) < len(imgs):
                embedded = _embed_rest(db, gallery, gallery_path, imgs, sources, spec, batch_size, chunk, device,
                                       progress)
            elif db.get("complete"):
                log.info(f"re-indexing the {db.count()} stored embeddings with {factory} (no re-embedding)")
            finish_index(db, out, factory, progress)
            return _summary(db, out, factory, embedded, t0)
        finally:
            db.close()
    finally:
        lock.release()


def _identity(gallery: dict, desc: dict[str, Any]) -> dict[str, Any]:
    """What an index directory is an index of (as stored: JSON lists, not tuples)."""
    return json.loads(json.dumps({"model_version": gallery["model_version"], "images": desc}))


def _record_new(db: MetadataDB, gallery: dict, gallery_path: str | Path, imgs: ImageSet, desc: dict[str, Any],
                spec: DataSpec) -> None:
    """Write the meta values of a new index: its identity, data spec, classes and gallery model."""
    version, dim = gallery["model_version"], int(gallery["model"]["embed_dim"])
    db.set(model_version=version, dim=dim, identity=_identity(gallery, desc), data=spec.to_dict(),
           classes=list(imgs.classes),
           gallery={"path": str(Path(gallery_path).resolve()), "arch": gallery["model"]["arch"],
                    "model_version": version, "embed_dim": dim, "classes": gallery.get("classes"),
                    "data": gallery["data"]},
           build_total=len(imgs), build_done=0, complete=False)


def _check_existing(db: MetadataDB, gallery: dict, desc: dict[str, Any], factory: str, out: Path) -> bool:
    """Refuse an index of other images or another model; True when it is already complete with ``factory``."""
    stored, identity = db.get("identity"), _identity(gallery, desc)
    if stored != identity:
        what = [k for k in ("model_version", "images") if (stored or {}).get(k) != identity[k]]
        raise EdgeQueryError(
            f"{out} holds an index of other {' and '.join(what)} "
            f"(model_version {(stored or {}).get('model_version')})",
            "pass another --out, or --force to delete that index and build this one")
    return bool(db.get("complete")) and db.get("factory") == factory


def _embed_rest(db: MetadataDB, gallery: dict, gallery_path: str | Path, imgs: ImageSet, sources: list[str],
                spec: DataSpec, batch_size: int, chunk: int, device, progress: bool) -> int:
    """Embed the images not stored yet, one committed chunk at a time; returns how many were embedded."""
    from ..evaluate import embed
    from ..models import model_from_checkpoint
    from .images import png_thumbnail

    done, total, classes = int(db.get("build_done", 0)), len(imgs), list(imgs.classes)
    if done:
        log.info(f"resuming: {done} of {total} images are already embedded in {db.path.parent}")
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
            db.insert(emb, items, build_done=hi)
            bar.update(hi - lo)
    return total - done


def _summary(db: MetadataDB, out: Path, factory: str, embedded: int, t0: float) -> dict[str, Any]:
    return {"out": str(out), "items": db.count(), "factory": factory, "model_version": db.get("model_version"),
            "dim": db.get("dim"), "embedded_now": embedded, "seconds": round(time.time() - t0, 1)}


def finish_index(db: MetadataDB, out: Path, factory: str, progress: bool = True) -> None:
    """Build the faiss index over every stored embedding, snapshot it, mark the index servable."""
    index = build_faiss_index(db, factory, int(db.get("dim")), progress=progress)
    write_snapshot(index, out, factory)
    db.set(factory=factory, complete=True, built_at=time.time())


def create_index(out: str | Path, embeddings, items: list[NewItem], factory: str, model_version: str,
                 gallery_path: str | Path | None = None, data: dict | None = None,
                 classes: list[str] | None = None, progress: bool = True) -> None:
    """An index directory from embeddings computed elsewhere (benchmarks, other pipelines).

    ``model_version`` must be that of the model which computed ``embeddings``; serving
    also needs ``gallery_path`` (that model's checkpoint) and its ``data`` spec.
    """
    out = Path(out)
    if (out / DB_NAME).exists():
        raise EdgeQueryError(f"{out} already holds an index", "pass a new directory")
    emb = np.asarray(embeddings, dtype=np.float32)
    lock = DirectoryLock(out)
    try:
        db = MetadataDB(out / DB_NAME, create=True)
        try:
            db.set(model_version=model_version, dim=int(emb.shape[1]), classes=classes or [], data=data,
                   identity={"model_version": model_version, "images": {"kind": "embeddings", "n": len(emb)}},
                   gallery={"path": str(Path(gallery_path).resolve()) if gallery_path else None,
                            "model_version": model_version},
                   build_total=len(emb), build_done=0, complete=False)
            for lo in range(0, len(emb), 65536):
                db.insert(emb[lo:lo + 65536], items[lo:lo + 65536], build_done=min(lo + 65536, len(emb)))
            finish_index(db, out, factory, progress)
        finally:
            db.close()
    finally:
        lock.release()
