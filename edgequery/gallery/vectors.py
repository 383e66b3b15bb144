"""Gallery embeddings computed elsewhere (``edgequery index --from-embeddings FILE``).

A service that already has its gallery embedded does not embed it again: it hands over the
vectors, with the id and label of each, and the gallery model they came from.  Files:

* ``.npy`` - one ``N x D`` float array; ids are the row numbers, no labels;
* ``.npz`` - ``embeddings`` (``N x D``) and optionally ``ids`` (``N``, integers or strings)
  and ``labels`` (``N``, class indices or class names);
* ``.parquet`` - columns ``embedding`` (a list of D floats per row) and optionally ``id``
  and ``label`` (the same kinds).

The size is read from the file's header before any vector is, and a file over
``max_bytes`` of vectors is refused: a build reads its vectors into memory once.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeQueryError

SUFFIXES = (".npy", ".npz", ".parquet")
MAX_BYTES = 16 << 30  # 16 GiB of float32 vectors (e.g. 33M x 128)


@dataclass
class GalleryVectors:
    embeddings: np.ndarray          # N x D float32
    ids: list[str]                  # what each hit's ``source`` says: the caller's own id of the item
    labels: list[int] | None        # class index per row (into ``classes``), or None
    classes: list[str]


def _npy_shape(f) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read_header(f)
    return shape, dtype


def _check_size(path: Path, shape: tuple[int, ...], dim: int, max_bytes: int) -> None:
    if len(shape) != 2 or shape[0] < 1:
        raise EdgeQueryError(f"{path}: the embeddings are an array of shape {shape}, not N x {dim}",
                             f"save them as one row of {dim} floats per gallery item")
    if shape[1] != dim:
        raise EdgeQueryError(f"{path} holds {shape[1]}-d embeddings, but the gallery model embeds into {dim}",
                             "pass the gallery checkpoint of the model that computed them (--gallery)")
    if shape[0] * shape[1] * 4 > max_bytes:
        raise EdgeQueryError(f"{path} holds {shape[0]} x {shape[1]} vectors, more than the "
                             f"{max_bytes >> 30} GiB one build reads", "split the file and build in parts")


def _labels(raw, n: int, gallery_classes: list[str], path: Path) -> tuple[list[int] | None, list[str]]:
    """Class indices and class names from integer labels (indices into the gallery's classes when they fit)
    or string labels (the gallery's class names where they are, new names after them)."""
    if raw is None:
        return None, list(gallery_classes)
    raw = np.asarray(raw)
    if raw.shape != (n,):
        raise EdgeQueryError(f"{path}: {raw.shape[0] if raw.ndim else 0} labels for {n} embeddings",
                             "give one label per embedding (or none)")
    if raw.dtype.kind in "iu":
        if raw.min(initial=0) < 0:
            raise EdgeQueryError(f"{path}: negative label {int(raw.min())}", "labels are class indices >= 0")
        top = int(raw.max(initial=0))
        classes = list(gallery_classes) if top < len(gallery_classes) else [str(i) for i in range(top + 1)]
        return [int(v) for v in raw], classes
    if raw.dtype.kind in "UO":
        names = [str(v) for v in raw]
        classes = list(gallery_classes) + sorted(set(names) - set(gallery_classes))
        where = {c: i for i, c in enumerate(classes)}
        return [where[v] for v in names], classes
    raise EdgeQueryError(f"{path}: labels of type {raw.dtype}", "use integer class indices or class names")


def read_vectors(path: str | Path, dim: int, gallery_classes: list[str], max_bytes: int = MAX_BYTES) -> GalleryVectors:
    """Read ``path`` (see the module doc), refusing a wrong shape, size, or a non-finite / zero vector."""
    path = Path(path)
    if not path.is_file():
        raise EdgeQueryError(f"--from-embeddings {path} does not exist", "pass the file of gallery embeddings")
    if path.suffix not in SUFFIXES:
        raise EdgeQueryError(f"--from-embeddings {path}: unknown file type {path.suffix!r}",
                             f"pass a {', '.join(SUFFIXES)} file (see `edgequery index --help`)")
    ids = labels = None
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                shape, _ = _npy_shape(f)
            _check_size(path, shape, dim, max_bytes)
            emb = np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                if "embeddings.npy" not in z.namelist():
                    raise EdgeQueryError(f"{path} has no 'embeddings' array (it has: "
                                         f"{', '.join(n.removesuffix('.npy') for n in z.namelist())})",
                                         "save it with np.savez(path, embeddings=..., ids=..., labels=...)")
                with z.open("embeddings.npy") as f:
                    shape, _ = _npy_shape(f)
            _check_size(path, shape, dim, max_bytes)
            with np.load(path, allow_pickle=False) as z:
                emb, ids = z["embeddings"], (z["ids"] if "ids" in z else None)
                labels = z["labels"] if "labels" in z else None
        else:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path)
            names = meta.schema_arrow.names
            if "embedding" not in names:
                raise EdgeQueryError(f"{path} has no 'embedding' column (it has: {', '.join(names)})",
                                     "write one row per item: embedding (list of floats), id, label")
            n = meta.metadata.num_rows
            _check_size(path, (n, dim), dim, max_bytes)  # the width is checked on the values below
            table = pq.read_table(path, columns=[c for c in ("embedding", "id", "label") if c in names])
            values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            if values.size != n * dim:
                raise EdgeQueryError(f"{path}: the embedding column does not hold {dim} floats in every row",
                                     f"every row's embedding must have the gallery model's {dim} values")
            emb = values.reshape(n, dim)
            ids = table.column("id").to_pylist() if "id" in names else None
            labels = np.asarray(table.column("label").to_pylist()) if "label" in names else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise EdgeQueryError(f"cannot read --from-embeddings {path}: {exc}",
                             "pass an intact .npy / .npz / .parquet file (see `edgequery index --help`)") from None
    if emb.dtype.kind != "f":
        raise EdgeQueryError(f"{path}: embeddings of type {emb.dtype}", "save them as float32 (or float64)")
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-12))
    if bad.size:
        raise EdgeQueryError(f"{path}: {bad.size} embeddings are zero, NaN or Inf (first: row {int(bad[0])})",
                             "drop or recompute those rows")
    n = len(emb)
    if ids is None:
        ids = [f"{path.name}#{i}" for i in range(n)]
    else:
        ids = [str(v) for v in np.asarray(ids).tolist()]
        if len(ids) != n:
            raise EdgeQueryError(f"{path}: {len(ids)} ids for {n} embeddings", "give one id per embedding")
        if len(set(ids)) != n:
            raise EdgeQueryError(f"{path}: ids are not unique", "give every gallery item its own id")
    label_ids, classes = _labels(labels, n, gallery_classes, path)
    return GalleryVectors(emb, ids, label_ids, classes)
