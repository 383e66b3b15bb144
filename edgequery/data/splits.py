"""Deterministic retrieval splits: :class:`DataSpec` (what determines one) and :func:`load_splits`.

A *retrieval split* (:class:`Splits`) holds ``train`` (to fit models), ``val`` (held out
of train, for model selection and search rewards), and the disjoint evaluation pair
``query`` / ``gallery``.  The same spec (data set, sizes, seed) always gives the same split,
so a checkpoint's recorded spec rebuilds exactly the data it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import EdgeQueryError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, resize_images
from .sources import ImageSet, load_digits, load_fashion_mnist, load_image_folder


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines a split; stored in every checkpoint.

    ``dataset`` is ``fashion-mnist``, ``digits`` or ``folder`` (then ``root`` is the
    ImageFolder directory).  ``None`` sizes mean "all that is left".
    """

    dataset: str = "fashion-mnist"
    root: str | None = None
    resolution: int = 32
    seed: int = 0
    n_train: int | None = None
    n_val: int = 1000
    n_query: int = 1000
    n_gallery: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


@dataclass
class Splits:
    spec: DataSpec
    train: ImageSet
    val: ImageSet
    query: ImageSet
    gallery: ImageSet
    classes: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("train", "val", "query", "gallery")}


def load_splits(spec: DataSpec, progress: bool = True) -> Splits:
    """Decode ``spec.dataset`` and cut the deterministic train/val/query/gallery split.

    Fashion-MNIST keeps its official division: train and val come from the 60k training
    images, query and gallery from the 10k test images.  Single-pool sources (digits,
    ImageFolder) are permuted once and cut in the order query, gallery, val, train.
    """
    if spec.resolution < 8 or spec.resolution > 1024:
        raise EdgeQueryError(f"resolution {spec.resolution} is out of range", "use a value between 8 and 1024")
    gen = np.random.default_rng(spec.seed)
    if spec.dataset == "fashion-mnist":
        parts, classes = _fashion_mnist_parts(spec, gen)
    elif spec.dataset in ("digits", "folder"):
        parts, classes = _single_pool_parts(spec, gen, progress)
    else:
        raise EdgeQueryError(f"unknown dataset {spec.dataset!r}", "use one of: fashion-mnist, digits, folder")

    parts = tuple(ImageSet(resize_images(p.images, spec.resolution), p.labels, classes) for p in parts)
    splits = Splits(spec, *parts, classes=classes)
    for name, size in splits.sizes().items():
        if size == 0 and name != "val":
            raise EdgeQueryError(f"the {name} split of {spec.dataset} is empty ({splits.sizes()})",
                                 "lower --n-query/--n-val/--n-gallery or use a larger data set")
    return splits


def _fashion_mnist_parts(spec: DataSpec, gen: np.random.Generator) -> tuple[tuple[ImageSet, ...], tuple[str, ...]]:
    """(train, val, query, gallery) of Fashion-MNIST: train/val from its training part, the rest from test."""
    train_pool = load_fashion_mnist("train", spec.root)
    test_pool = load_fashion_mnist("test", spec.root)
    tr = gen.permutation(len(train_pool))
    te = gen.permutation(len(test_pool))
    val_idx, train_idx = _take(tr, [spec.n_val, spec.n_train], "training", spec)
    query_idx, gallery_idx = _take(te, [spec.n_query, spec.n_gallery], "test", spec)
    parts = (train_pool.subset(train_idx), train_pool.subset(val_idx),
             test_pool.subset(query_idx), test_pool.subset(gallery_idx))
    return parts, train_pool.classes


def _single_pool_parts(spec: DataSpec, gen: np.random.Generator, progress: bool
                       ) -> tuple[tuple[ImageSet, ...], tuple[str, ...]]:
    """(train, val, query, gallery) of digits or an ImageFolder, cut from one permuted pool."""
    if spec.dataset == "digits":
        pool = load_digits()
    else:
        if not spec.root:
            raise EdgeQueryError("dataset 'folder' needs a directory", "pass --data-root <ImageFolder dir>")
        pool = load_image_folder(spec.root, spec.resolution, progress=progress)
    perm = gen.permutation(len(pool))
    n_gallery = spec.n_gallery if spec.n_gallery is not None else max(len(pool) // 4, 1)
    query_idx, gallery_idx, val_idx, train_idx = _take(
        perm, [spec.n_query, n_gallery, spec.n_val, spec.n_train], "image", spec)
    return tuple(pool.subset(i) for i in (train_idx, val_idx, query_idx, gallery_idx)), pool.classes


def _take(perm: np.ndarray, sizes: list[int | None], pool_name: str, spec: DataSpec) -> list[np.ndarray]:
    """Cut consecutive chunks off ``perm``; a ``None`` size takes the rest."""
    out, start = [], 0
    for size in sizes:
        size = len(perm) - start if size is None else size
        if size < 0 or start + size > len(perm):
            raise EdgeQueryError(
                f"{spec.dataset}: the {pool_name} pool has {len(perm)} images, too few for the "
                f"requested split sizes {[s for s in sizes]}",
                "lower --n-train/--n-val/--n-query/--n-gallery")
        out.append(np.sort(perm[start:start + size]))
        start += size
    return out
