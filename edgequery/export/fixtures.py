"""The self-check files every export folder carries (the card's ``fixtures``).

* ``test_image.png`` - the fixed test image (the first query-split image) at the model's
  resolution;
* ``test_vector.json`` - its exact model input (NCHW, float32) and the expected embedding
  of PyTorch and of every exported file: an app checks its pre-processing with it;
* ``parity.npz`` - a few real query-split images with PyTorch's and each file's
  embeddings: ``edgequery verify`` replays them.

(:mod:`edgequery.export.fixture` writes the one fixture committed to the repository,
``export/fixture/``, from the same pieces.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write, sha256_file
from .options import file_runner
from .parity import FP32_MIN_COSINE

TEST_IMAGE = "test_image.png"
TEST_VECTOR = "test_vector.json"
PARITY_FILE = "parity.npz"
FIXTURE_FILES = (TEST_IMAGE, TEST_VECTOR, PARITY_FILE)


def write_png(path: str | Path, image: torch.Tensor) -> None:
    """A uint8 ``C x H x W`` image (C = 1 or 3) as an 8-bit grey or RGB PNG."""
    from PIL import Image

    arr = image.numpy()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path, format="PNG")


def read_png(path: str | Path) -> torch.Tensor:
    """A PNG written by :func:`write_png` back to uint8 ``1 x C x H x W``."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()).unsqueeze(0)


def input_values(x: np.ndarray) -> dict[str, Any]:
    """A ``1 x 3 x R x R`` model input as the JSON test vectors store it (NCHW, flattened, 7 decimals)."""
    return {"layout": "NCHW", "shape": list(x.shape), "dtype": "float32",
            "values": [round(float(v), 7) for v in x.reshape(-1)]}


def write_test_vector(folder: Path, image: torch.Tensor, source: str, net, spec, files: list[dict[str, Any]]) -> None:
    """``test_image.png`` (``image``: uint8 ``1 x C x R x R``) and ``test_vector.json`` with every file's embedding.

    The model input is computed from the PNG as written, so the vector is what an app
    reading that file must reproduce.
    """
    from ..data import to_model_input

    write_png(folder / TEST_IMAGE, image[0])
    x = to_model_input(read_png(folder / TEST_IMAGE), spec).numpy()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    vector = {
        "image": TEST_IMAGE, "image_sha256": sha256_file(folder / TEST_IMAGE), "source": source,
        "input": input_values(x),
        "expected_embedding": {"pytorch": [float(v) for v in ref[0]]},
        "tolerance": {"cosine_min": FP32_MIN_COSINE, "applies_to": "float32 files; a quantized file is compared "
                                                                    "with its own entry"},
    }
    for entry in files:
        runner = file_runner(folder, entry)
        vector["expected_embedding"][entry["file"]] = [float(v) for v in runner.embed(x)[0]]
    text = json.dumps(vector, indent=1) + "\n"
    atomic_write(folder / TEST_VECTOR, lambda tmp: Path(tmp).write_text(text))


def write_parity_file(folder: Path, images: torch.Tensor, pytorch: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """``parity.npz``: uint8 images, PyTorch's embeddings of them, and each file's (``file:<name>``)."""
    n = len(images)
    np.savez(folder / PARITY_FILE, images=images.numpy(), pytorch=pytorch[:n],
             **{f"file:{k}": v[:n] for k, v in outputs.items()})


def fixture_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """The card's ``fixtures``: sha256 and size of each self-check file."""
    return {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size} for n in FIXTURE_FILES}


def read_test_vector(folder: Path) -> dict[str, Any]:
    from ..files import read_json

    return read_json(folder / TEST_VECTOR, what="test vector", fix="re-create the export with `edgequery export`")
