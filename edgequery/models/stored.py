"""A stored gallery: a gallery model's embeddings of known images and its classifier, without its trunk.

The heterogeneous setting needs exactly two things from the gallery model: the embeddings
of the gallery (what the server indexes) and its classifier (what BCT applies to query
embeddings).  A stored gallery keeps both, for a fixed set of images, in a few MB - so
the benchmarks can match a ResNet-101 trained once (``benchmarks/paragon.py``, ~2 h on
2 cores) on a machine that never trained it::

    >>> path = store_gallery("paragon.pt", {"val": splits.val, "test": test_images}, "paragon-stored.pt")
    >>> g = model_from_checkpoint(load_checkpoint(path, "gallery"))    # a StoredGallery
    >>> embed(g, splits.gallery, spec)       # the stored rows: what the model gave
    >>> g.classifier                         # the model's CosFace classifier (BCT trains against it)

Images are found by the SHA-1 of their uint8 pixels (channels, side and bytes), so the
same image decoded and resized the same way finds its row on any machine.  An image the
file does not hold is an error naming how many were missing - a stored gallery cannot
embed new images (it has no trunk), and it says so rather than guessing.  The file is an
ordinary gallery checkpoint (kind ``gallery``, the model's ``model_version``, data spec,
classes and training record) whose ``state_dict`` holds ``classifier.weight``,
``stored.keys`` and ``stored.embeddings``, and whose ``stored`` entry says what it holds.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import EdgeQueryError
from .heads import CosineClassifier

if TYPE_CHECKING:
    from ..data import ImageSet

KEY_BYTES = 20  # SHA-1


def image_keys(images: torch.Tensor) -> np.ndarray:
    """``N x 20`` uint8: the SHA-1 of each uint8 ``C x R x R`` image (its shape, then its pixels)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise EdgeQueryError(f"a stored gallery looks images up by their uint8 pixels, got a {images.dtype} "
                             f"tensor of shape {tuple(images.shape)}", "pass uint8 N x C x R x R images")
    shape = "x".join(map(str, images.shape[1:])).encode()
    data = images.contiguous().numpy()
    return np.frombuffer(b"".join(hashlib.sha1(shape + img.tobytes()).digest() for img in data),
                         dtype=np.uint8).reshape(len(data), KEY_BYTES)


class StoredGallery(nn.Module):
    """The gallery model as its stored outputs: :meth:`lookup` for embeddings, ``classifier`` for BCT."""

    def __init__(self, classifier: CosineClassifier, keys: torch.Tensor, embeddings: torch.Tensor, source: str):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("embeddings", embeddings.float())
        self.source = source
        self._rows = {bytes(k): i for i, k in enumerate(keys.numpy())}

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def lookup(self, images: torch.Tensor) -> torch.Tensor:
        """The stored embeddings (float32, CPU) of uint8 ``images``; every one must be stored."""
        rows = [self._rows.get(bytes(k), -1) for k in image_keys(images)]
        missing = sum(r < 0 for r in rows)
        if missing:
            raise EdgeQueryError(
                f"{missing} of {len(rows)} images are not among the {len(self._rows)} whose embeddings "
                f"the stored gallery ({self.source}) holds: it has no trunk to embed others",
                "use the trained gallery checkpoint itself (benchmarks/paragon.py trains the benchmarks' one), "
                "or the data split the stored gallery was made for (its `stored.sets`)")
        return self.embeddings[torch.as_tensor(rows, dtype=torch.long, device=self.embeddings.device)].to(
            "cpu", copy=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise EdgeQueryError(f"the stored gallery {self.source} holds embeddings of known images, not a trunk: "
                             "it cannot run on image tensors (export, serve uploads, train)",
                             "use the trained gallery checkpoint it was made from")

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "StoredGallery":
        spec, state = ckpt["model"], ckpt["state_dict"]
        classifier = CosineClassifier(spec["embed_dim"], spec["num_classes"], spec.get("scale", 16.0),
                                      spec.get("margin", 0.0))
        classifier.load_state_dict({"weight": state["classifier.weight"]})
        return cls(classifier, state["stored.keys"], state["stored.embeddings"], ckpt["stored"]["source"]).eval()


def store_gallery(gallery_path: str | Path, sets: Mapping[str, ImageSet], out: str | Path,
                  device: str = "cpu") -> dict:
    """Embed ``sets`` (name -> ImageSet) with the trained gallery at ``gallery_path``; write the stored gallery.

    Returns the written checkpoint dict.  Images that occur in several sets are stored once.
    """
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..data import DataSpec
    from ..evaluate import embed
    from .zoo import model_from_checkpoint

    ckpt = load_checkpoint(gallery_path, "gallery")
    if ckpt.get("stored"):
        raise EdgeQueryError(f"{gallery_path} is a stored gallery already", "pass the trained gallery checkpoint")
    if not (ckpt.get("train") or {}).get("complete", True):
        raise EdgeQueryError(f"{gallery_path} is an unfinished training run", "finish training it first")
    model, spec = model_from_checkpoint(ckpt), DataSpec.from_dict(ckpt["data"])
    keys, embeddings, seen = [], [], set()
    for name, images in sets.items():
        k = image_keys(images.images)
        fresh = []  # rows of images no earlier set had
        for i, key in enumerate(map(bytes, k)):
            if key not in seen:
                seen.add(key)
                fresh.append(i)
        if fresh:
            keys.append(k[fresh])
            embeddings.append(embed(model, images.images[fresh], spec, device=device,
                                    desc=f"gallery model: {name} (to store)"))
    if not keys:
        raise EdgeQueryError("no images to store", "pass at least one non-empty image set")
    state = {"classifier.weight": model.classifier.weight.detach().clone(),
             "stored.keys": torch.from_numpy(np.concatenate(keys)), "stored.embeddings": torch.cat(embeddings)}
    train = ckpt.get("train")
    if train:  # the training record, not the optimizer state (the file is about outputs, and small)
        train = {**train, "optimizer": None, "scheduler": None}
    payload = {k: ckpt[k] for k in ("kind", "model", "data", "classes", "identity")}
    payload.update(state_dict=state, train=train,
                   stored={"images": int(state["stored.keys"].shape[0]),
                           "sets": {name: len(images) for name, images in sets.items()},
                           "source": Path(gallery_path).name, "source_state_hash": ckpt["model_version"],
                           "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return save_checkpoint(out, payload)
