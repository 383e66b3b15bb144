"""Real image data and deterministic retrieval splits.

Three sources, one result type:

* **Fashion-MNIST** from the Debian package ``dataset-fashion-mnist`` (IDX gzip files
  under ``/usr/share/datasets/fashion-mnist``; override with ``--data-root`` or
  ``EDGEQUERY_FASHION_MNIST``).
* **ImageFolder**: any ``root/<class>/<image>`` directory, the users' own data.
* **scikit-learn digits**: 1797 8x8 images bundled with scikit-learn.

Images are decoded once, resized to the working resolution and kept as ``uint8``
tensors (``N x C x R x R``, ``C`` = 1 for grey, 3 for colour); :func:`to_model_input`
turns a batch into the float, 3-channel, normalised tensor every model takes.

A *retrieval split* (:class:`Splits`) holds ``train`` (to fit models), ``val`` (held out
of train, for model selection and search rewards), and the disjoint evaluation pair
``query`` / ``gallery``.  The same seed always gives the same split.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EdgeQueryError

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# ImageNet statistics: the input contract of torchvision's pretrained weights, so a user
# who has those weights gets the pre-processing they were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Decoded images (``uint8``, ``N x C x R x R``) with integer labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.classes)


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


# --------------------------------------------------------------------------- sources


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("EDGEQUERY_FASHION_MNIST") or FASHION_MNIST_DEFAULT_ROOT)


def _fashion_missing_error(root: Path, missing: list[str]) -> EdgeQueryError:
    return EdgeQueryError(
        f"Fashion-MNIST not found: {', '.join(missing)} missing under {root}",
        f"install it with `apt-get install {FASHION_MNIST_DEBIAN_PACKAGE}` (or run "
        "`edgequery data setup`), or point --data-root / EDGEQUERY_FASHION_MNIST at a "
        "folder holding the four *-ubyte.gz files",
    )


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise EdgeQueryError(
            f"cannot read IDX file {path}: {exc}",
            f"reinstall the data (`apt-get install --reinstall {FASHION_MNIST_DEBIAN_PACKAGE}`)",
        ) from None
    if len(raw) < 4 + 4 * expected_dims:
        raise EdgeQueryError(f"IDX file {path} is truncated", "reinstall the data set")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
        raise EdgeQueryError(f"{path} is not a uint8 IDX file with {expected_dims} dims",
                             "point --data-root at the Fashion-MNIST IDX files")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise EdgeQueryError(f"IDX file {path} is truncated ({len(body)} of {int(np.prod(shape))} bytes)",
                             "reinstall the data set")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(part: str, root: str | os.PathLike | None = None) -> ImageSet:
    """One part (``train``: 60k, ``test``: 10k) of Fashion-MNIST, 28x28 grey."""
    root = fashion_mnist_root(root)
    img_name, lbl_name = _FASHION_FILES[part]
    missing = [n for n in (img_name, lbl_name) if not (root / n).is_file()]
    if missing:
        raise _fashion_missing_error(root, missing)
    images = _read_idx(root / img_name, 3)
    labels = _read_idx(root / lbl_name, 1)
    if len(images) != len(labels):
        raise EdgeQueryError(f"{root}: {len(images)} images but {len(labels)} labels", "reinstall the data set")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1),
                    torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), as uint8 grey."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(d.target.astype(np.int64)),
                    tuple(str(c) for c in d.target_names))


def load_image_folder(root: str | os.PathLike, resolution: int, progress: bool = True) -> ImageSet:
    """An ImageFolder tree (``root/<class>/<file>``) decoded to RGB at ``resolution``.

    Images are resized (shorter side) and centre-cropped to a square.  An empty tree, a
    class folder without images or an image that does not decode is an error naming the
    path, so a bad file is found before any training starts.
    """
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise EdgeQueryError(f"image folder {root} does not exist or is not a directory",
                             "pass a directory laid out as <root>/<class name>/<image files>")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EdgeQueryError(f"image folder {root} has no class sub-directories",
                             "lay it out as <root>/<class name>/<image files>")
    files: list[tuple[Path, int]] = []
    for ci, c in enumerate(classes):
        found = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise EdgeQueryError(f"class folder {root / c} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                                 "add images to it or remove the folder")
        files += [(p, ci) for p in found]
    if len(classes) < 2:
        raise EdgeQueryError(f"image folder {root} has only one class ({classes[0]})",
                             "retrieval by class needs at least two class folders")

    images = torch.empty((len(files), 3, resolution, resolution), dtype=torch.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=f"decoding {root.name}", unit="img",
                                       disable=None if progress else True)):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                images[i] = _square_resize(im, resolution)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise EdgeQueryError(f"cannot decode image {path}: {exc}",
                                 "fix or delete that file and run again") from None
    labels = torch.tensor([ci for _, ci in files], dtype=torch.int64)
    return ImageSet(images, labels, tuple(classes))


def _square_resize(im, resolution: int) -> torch.Tensor:
    from PIL import Image

    w, h = im.size
    s = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


# --------------------------------------------------------------------------- pre-processing


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a uint8 ``N x C x H x W`` tensor to ``resolution`` (bilinear, antialiased)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear",
                          antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def to_model_input(images: torch.Tensor, spec: DataSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 ``N x C x R x R`` (C = 1 or 3) -> normalised float ``N x 3 x R x R``."""
    x = images.to(device=device, non_blocking=True).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- splits


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
        train_pool = load_fashion_mnist("train", spec.root)
        test_pool = load_fashion_mnist("test", spec.root)
        tr = gen.permutation(len(train_pool))
        te = gen.permutation(len(test_pool))
        val_idx, train_idx = _take(tr, [spec.n_val, spec.n_train], "training", spec)
        query_idx, gallery_idx = _take(te, [spec.n_query, spec.n_gallery], "test", spec)
        parts = (train_pool.subset(train_idx), train_pool.subset(val_idx),
                 test_pool.subset(query_idx), test_pool.subset(gallery_idx))
        classes = train_pool.classes
    elif spec.dataset in ("digits", "folder"):
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
        parts = tuple(pool.subset(i) for i in (train_idx, val_idx, query_idx, gallery_idx))
        classes = pool.classes
    else:
        raise EdgeQueryError(f"unknown dataset {spec.dataset!r}", "use one of: fashion-mnist, digits, folder")

    parts = tuple(ImageSet(resize_images(p.images, spec.resolution), p.labels, classes) for p in parts)
    splits = Splits(spec, *parts, classes=classes)
    for name, size in splits.sizes().items():
        if size == 0 and name != "val":
            raise EdgeQueryError(f"the {name} split of {spec.dataset} is empty ({splits.sizes()})",
                                 "lower --n-query/--n-val/--n-gallery or use a larger data set")
    return splits


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


# --------------------------------------------------------------------------- setup helper


def ensure_fashion_mnist(root: str | os.PathLike | None = None, install: bool = True) -> Path:
    """Return the Fashion-MNIST root, installing the Debian package when it is missing.

    Installation is attempted only at the default location, with ``apt-get`` present and
    either root privileges or password-less ``sudo``; otherwise the error says what to do.
    """
    path = fashion_mnist_root(root)
    missing = [n for pair in _FASHION_FILES.values() for n in pair if not (path / n).is_file()]
    if not missing:
        return path
    if install and str(path) == FASHION_MNIST_DEFAULT_ROOT and shutil.which("apt-get"):
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
        if prefix is not None:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            cmd = prefix + ["apt-get", "install", "-y", "-q", FASHION_MNIST_DEBIAN_PACKAGE]
            if subprocess.run(cmd, env=env).returncode != 0:
                subprocess.run(prefix + ["apt-get", "update", "-q"], env=env)
                subprocess.run(cmd, env=env)
            missing = [n for pair in _FASHION_FILES.values() for n in pair if not (path / n).is_file()]
            if not missing:
                return path
    raise _fashion_missing_error(path, missing)
