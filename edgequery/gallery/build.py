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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data import IMAGE_SUFFIXES, DataSpec, ImageSet, load_image_folder, load_splits
from ..errors import EdgeQueryError
from .metadata import DB_NAME, DirectoryLock, MetadataDB, NewItem
from .store import build_faiss_index, make_faiss_index, write_snapshot

DATASET_NAMES = ("fashion-mnist", "digits")


def _say(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def folder_files(root: Path) -> list[str]:
    """The files of an ImageFolder tree in the order :func:`~edgequery.data.load_image_folder` decodes them."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [str(p.relative_to(root)) for c in classes
            for p in sorted(q for q in (root / c).rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())]


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
        if len(sources) != len(part):  # the listing must mirror the decoder's
            raise AssertionError(f"{len(sources)} files listed but {len(part)} decoded under {root}")
        desc = {"kind": "folder", "root": str(root.resolve()), "files": len(part)}
        spec = DataSpec.from_dict({**spec.to_dict(), "dataset": "folder", "root": str(root.resolve())})
    if limit is not None:
        if limit < 1:
            raise EdgeQueryError(f"--limit {limit} is not positive", "pass a positive number of images, or omit it")
        part, sources = part.subset(torch.arange(min(limit, len(part)))), sources[:limit]
        desc["limit"] = limit
    return part, sources, desc, spec


def build_index(gallery_path: str | Path, images: str, factory: str, out: str | Path, batch_size: int = 256,
                chunk: int = 1024, device: str = "cpu", force: bool = False, limit: int | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Build (or resume, or re-index) the gallery index in ``out``; returns a summary."""
    from tqdm import tqdm

    from ..evaluate import embed
    from ..models import model_from_checkpoint
    from ..train import resolve_device
    from .images import png_thumbnail

    t0 = time.time()
    out = Path(out)
    gallery = load_checkpoint(gallery_path, "gallery")
    if not gallery.get("train", {}).get("complete", True):
        raise EdgeQueryError(f"gallery {gallery_path} is an unfinished training run",
                             "finish it first by rerunning `edgequery train gallery` with the same settings")
    dim, version = int(gallery["model"]["embed_dim"]), gallery["model_version"]
    make_faiss_index(factory, dim)  # a bad factory string fails now, not after an hour of embedding
    if chunk < 1 or batch_size < 1:
        raise EdgeQueryError("--chunk and --batch-size must be positive", "pass positive values")
    device = resolve_device(device)
    if out.exists() and not out.is_dir():
        raise EdgeQueryError(f"--out {out} exists and is not a directory", "choose a directory path for the index")
    lock = DirectoryLock(out)
    try:
        db_path = out / DB_NAME
        if force and db_path.exists():
            _say(f"--force: deleting the existing index in {out}")
            for p in [*out.glob(f"{DB_NAME}*"), *out.glob("index.*.faiss")]:
                p.unlink()
        fresh = not db_path.exists()
        imgs, sources, desc, spec = resolve_images(images, gallery, limit)
        classes = list(imgs.classes)
        identity = json.loads(json.dumps({"model_version": version, "images": desc}))  # as stored (lists)
        db = MetadataDB(db_path, create=fresh)
        try:
            if fresh:
                db.set(model_version=version, dim=dim, identity=identity, data=spec.to_dict(), classes=classes,
                       gallery={"path": str(Path(gallery_path).resolve()), "arch": gallery["model"]["arch"],
                                "model_version": version, "embed_dim": dim, "classes": gallery.get("classes"),
                                "data": gallery["data"]},
                       build_total=len(imgs), build_done=0, complete=False)
            else:
                stored = db.get("identity")
                if stored != identity:
                    what = [k for k in ("model_version", "images") if (stored or {}).get(k) != identity[k]]
                    raise EdgeQueryError(
                        f"{out} holds an index of other {' and '.join(what)} "
                        f"(model_version {(stored or {}).get('model_version')})",
                        "pass another --out, or --force to delete that index and build this one")
                if db.get("complete") and db.get("factory") == factory:
                    _say(f"{out} is already a complete {factory} index of {db.count()} items; nothing to do")
                    return _summary(db, out, factory, 0, t0)
            done = int(db.get("build_done", 0))
            total = len(imgs)
            embedded = 0
            if done < total:
                if done:
                    _say(f"resuming: {done} of {total} images are already embedded in {out}")
                model = model_from_checkpoint(gallery).to(device)
                with tqdm(total=total, initial=done, desc=f"embedding with {gallery['model']['arch']}",
                          unit="img", disable=None if progress else True) as bar:
                    for lo in range(done, total, chunk):
                        hi = min(lo + chunk, total)
                        raw = imgs.images[lo:hi]
                        emb = embed(model, raw, spec, batch_size=batch_size, device=device).numpy()
                        if not np.isfinite(emb).all():
                            raise EdgeQueryError(
                                f"the gallery model produced NaN or Inf embeddings for images {lo}..{hi - 1}",
                                f"{gallery_path} is broken (diverged training?); retrain it")
                        items = [NewItem(source=sources[i], label=int(imgs.labels[i]),
                                         label_name=classes[int(imgs.labels[i])],
                                         thumbnail=png_thumbnail(raw[i - lo])) for i in range(lo, hi)]
                        db.insert(emb, items, build_done=hi)
                        embedded += hi - lo
                        bar.update(hi - lo)
            elif db.get("complete"):
                _say(f"re-indexing the {db.count()} stored embeddings with {factory} (no re-embedding)")
            finish_index(db, out, factory, progress)
            return _summary(db, out, factory, embedded, t0)
        finally:
            db.close()
    finally:
        lock.release()


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
