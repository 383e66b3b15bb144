import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from edgequery.data import DataSpec, load_fashion_mnist, load_image_folder, load_splits, to_model_input
from edgequery.errors import EdgeQueryError


def test_fashion_mnist_is_real_and_complete():
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert sorted(torch.bincount(train.labels).tolist()) == [6000] * 10
    assert train.classes[0] == "T-shirt/top"


def test_splits_are_deterministic_disjoint_and_sized():
    spec = DataSpec(n_train=500, n_val=100, n_query=50, n_gallery=300, resolution=32, seed=7)
    a, b = load_splits(spec), load_splits(spec)
    assert a.sizes() == {"train": 500, "val": 100, "query": 50, "gallery": 300}
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.query.labels, b.query.labels)
    assert a.train.images.shape[1:] == (1, 32, 32)
    other = load_splits(DataSpec(n_train=500, n_val=100, n_query=50, n_gallery=300, seed=8))
    assert not torch.equal(a.train.images, other.train.images)
    # query and gallery come from disjoint test images: no identical image pairs by index set
    q = {bytes(x.numpy()) for x in a.query.images}
    assert sum(bytes(x.numpy()) in q for x in a.gallery.images) <= 2  # Fashion-MNIST has rare duplicates


def test_model_input_is_normalised_rgb():
    spec = DataSpec()
    x = to_model_input(torch.full((2, 1, 32, 32), 255, dtype=torch.uint8), spec)
    assert x.shape == (2, 3, 32, 32)
    expected = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(x[0, :, 0, 0], expected)


def test_digits_split():
    s = load_splits(DataSpec(dataset="digits", n_val=100, n_query=100, n_gallery=400, resolution=16))
    assert s.num_classes == 10 and s.sizes()["train"] == 1797 - 600
    assert s.train.images.shape[-1] == 16


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(EdgeQueryError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_truncated_idx_file(tmp_path):
    src = "/usr/share/datasets/fashion-mnist/"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        raw = gzip.open(src + name).read()
        gzip.open(tmp_path / name, "wb").write(raw[: len(raw) // 2] if "images" in name else raw)
    with pytest.raises(EdgeQueryError, match="truncated"):
        load_fashion_mnist("test", tmp_path)


def _folder(tmp_path, n=6):
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    return tmp_path


def test_image_folder_decodes_and_splits(tmp_path):
    root = _folder(tmp_path)
    s = load_image_folder(root, 24, progress=False)
    assert s.images.shape == (12, 3, 24, 24) and s.classes == ("cats", "dogs")
    splits = load_splits(DataSpec(dataset="folder", root=str(root), resolution=24, n_val=2, n_query=2, n_gallery=4))
    assert splits.sizes() == {"train": 4, "val": 2, "query": 2, "gallery": 4}


def test_image_folder_errors(tmp_path):
    with pytest.raises(EdgeQueryError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 32)
    with pytest.raises(EdgeQueryError, match="no class sub-directories"):
        load_image_folder(tmp_path, 32)
    (tmp_path / "data").mkdir()
    root = _folder(tmp_path / "data")
    (root / "empty").mkdir()
    with pytest.raises(EdgeQueryError, match="holds no images"):
        load_image_folder(root, 32)
    (root / "empty").rmdir()
    (root / "dogs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(EdgeQueryError, match="broken.jpg"):
        load_image_folder(root, 32, progress=False)


def test_split_sizes_too_large():
    with pytest.raises(EdgeQueryError, match="too few"):
        load_splits(DataSpec(dataset="digits", n_query=1000, n_gallery=1000))
