"""Where images come from: Fashion-MNIST (IDX files), an ImageFolder tree, scikit-learn digits.

* **Fashion-MNIST** from the Debian package ``dataset-fashion-mnist`` (IDX gzip files
  under ``/usr/share/datasets/fashion-mnist``; override with ``--data-root`` or
  ``EDGEQUERY_FASHION_MNIST``); :func:`ensure_fashion_mnist` installs it when missing.
* **ImageFolder**: any ``root/<class>/<image>`` directory, the users' own data.
* **scikit-learn digits**: 1797 8x8 images bundled with scikit-learn.

Every source returns an :class:`ImageSet`: decoded ``uint8`` images (``N x C x H x W``,
``C`` = 1 for grey, 3 for colour), integer labels and the class names.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgeQueryError
from ..log import progress as progress_bar
from .preprocessing import square_resize

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


# --------------------------------------------------------------------------- Fashion-MNIST


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


def ensure_fashion_mnist(root: str | os.PathLike | None = None, install: bool = True) -> Path:
    """Return the Fashion-MNIST root, installing the Debian package when it is missing.

    Installation is attempted only at the default location, with ``apt-get`` present and
    either root privileges or password-less ``sudo``; otherwise the error says what to do.
    """
    path = fashion_mnist_root(root)

    def missing() -> list[str]:
        return [n for pair in _FASHION_FILES.values() for n in pair if not (path / n).is_file()]

    if not missing():
        return path
    if install and str(path) == FASHION_MNIST_DEFAULT_ROOT and shutil.which("apt-get"):
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
        if prefix is not None:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            cmd = prefix + ["apt-get", "install", "-y", "-q", FASHION_MNIST_DEBIAN_PACKAGE]
            if subprocess.run(cmd, env=env).returncode != 0:
                subprocess.run(prefix + ["apt-get", "update", "-q"], env=env)
                subprocess.run(cmd, env=env)
            if not missing():
                return path
    raise _fashion_missing_error(path, missing())


# --------------------------------------------------------------------------- scikit-learn digits


def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), as uint8 grey."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(d.target.astype(np.int64)),
                    tuple(str(c) for c in d.target_names))


# --------------------------------------------------------------------------- ImageFolder


def image_folder_files(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes of an ImageFolder tree and its ``(file, class index)`` pairs, in decoding order.

    An absent tree, a tree without class folders, a class folder without images or a
    single class is an error naming the path.
    """
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
    return classes, files


def load_image_folder(root: str | os.PathLike, resolution: int, progress: bool = True) -> ImageSet:
    """An ImageFolder tree (``root/<class>/<file>``) decoded to RGB at ``resolution``.

    Images are resized (shorter side) and centre-cropped to a square.  An empty tree, a
    class folder without images or an image that does not decode is an error naming the
    path, so a bad file is found before any training starts.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    classes, files = image_folder_files(root)
    images = torch.empty((len(files), 3, resolution, resolution), dtype=torch.uint8)
    for i, (path, _) in enumerate(progress_bar(files, total=len(files), desc=f"decoding {root.name}", unit="img",
                                               enabled=progress)):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                images[i] = square_resize(im, resolution)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise EdgeQueryError(f"cannot decode image {path}: {exc}",
                                 "fix or delete that file and run again") from None
    labels = torch.tensor([ci for _, ci in files], dtype=torch.int64)
    return ImageSet(images, labels, tuple(classes))
