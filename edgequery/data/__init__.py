"""Real image data and deterministic retrieval splits.

Three modules, one job each:

* :mod:`.sources` — where images come from: Fashion-MNIST (the Debian package
  ``dataset-fashion-mnist``, IDX files), any ImageFolder tree ``root/<class>/<image>``,
  scikit-learn's digits; each decoded once into an :class:`ImageSet` of ``uint8`` tensors;
* :mod:`.splits` — :class:`DataSpec` (everything that determines a split, stored in every
  checkpoint) and :func:`load_splits`: the deterministic train / val / query / gallery split;
* :mod:`.preprocessing` — the input contract: :func:`to_model_input` turns a ``uint8``
  batch into the float, 3-channel, normalised tensor every model takes; :func:`resize_images`
  and :func:`square_resize` bring images to the working resolution.

Everything public is importable from ``edgequery.data`` directly.
"""

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, resize_images, square_resize, to_model_input
from .sources import (FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_PACKAGE, FASHION_MNIST_DEFAULT_ROOT, IMAGE_SUFFIXES,
                      ImageSet, ensure_fashion_mnist, fashion_mnist_root, image_folder_files, load_digits,
                      load_fashion_mnist, load_image_folder)
from .splits import DataSpec, Splits, load_splits

__all__ = [
    "DataSpec", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DEBIAN_PACKAGE", "FASHION_MNIST_DEFAULT_ROOT",
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "ImageSet", "Splits", "ensure_fashion_mnist",
    "fashion_mnist_root", "image_folder_files", "load_digits", "load_fashion_mnist", "load_image_folder",
    "load_splits", "resize_images", "square_resize", "to_model_input",
]
