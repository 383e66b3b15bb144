"""Gallery models trained elsewhere, wrapped as gallery checkpoints (``edgequery import gallery``).

A user's production embedding model comes as

* a **torchvision state dict** (``torch.save(model.state_dict())`` of e.g. ``resnet101``) and,
  optionally, the **embedding head** that maps its pooled features to the embedding (a
  linear layer's ``weight`` / ``bias``; without one the pooled features, L2-normalised, are
  the embedding); or
* a **whole module saved as a program**: TorchScript (``torch.jit.save``) or
  ``torch.export`` (``torch.export.save``), mapping normalised images to embeddings
  (:mod:`.program`).

Its pre-processing is declared once, in the :class:`~edgequery.data.DataSpec` stored in the
checkpoint (resolution, mean, std; a BGR-trained state dict has its first convolution's
input channels flipped, so it takes RGB exactly as before, the only colour order downstream).
Query nets trained against the checkpoint inherit that spec, and their model cards carry it.

BCT needs the gallery model's classifier; most production embedding models (trained with
a metric loss) have none.  :func:`class_prototypes` builds the stand-in BCT uses for
classes the old model never saw: each class's mean embedding of labelled images,
L2-normalised, as the weights of a cosine classifier.  The checkpoint's ``classifier``
entry says it is ``prototypes`` and how many images made them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts.checkpoint import GALLERY_MODEL
from ..data import DataSpec, ImageSet, load_splits
from ..errors import EdgeQueryError
from ..files import sha256_file
from .heads import CosineClassifier, EmbeddingNet
from .program import PROGRAM_FORMATS, ProgramTrunk
from .zoo import load_pretrained_trunk, model_spec

log = logging.getLogger(__name__)

IMPORT_FORMATS = ("state-dict", *PROGRAM_FORMATS)
HEAD_PREFIXES = ("", "fc.", "head.", "embedding.")  # where a head file may keep its weight / bias


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes x D``: each class's mean L2-normalised embedding, L2-normalised (a cosine classifier's
    weights).  A class without an image, or whose embeddings cancel out, is an error."""
    emb = F.normalize(embeddings.float(), dim=1)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    if (counts == 0).any():
        missing = [int(c) for c in torch.nonzero(counts == 0).flatten()[:5]]
        raise EdgeQueryError(f"no labelled image of class(es) {missing} to make a prototype from",
                             "give every class at least one image in the training split (or lower --n-val / "
                             "--n-query / --n-gallery so more stay in train)")
    sums = torch.zeros(num_classes, emb.shape[1]).index_add_(0, labels, emb)
    if (sums.norm(dim=1) < 1e-6).any():
        raise EdgeQueryError("a class's embeddings average to zero: its prototype has no direction",
                             "check that the model and its pre-processing (--mean/--std/--resolution) are right")
    return F.normalize(sums, dim=1)


def prototype_classifier(model: nn.Module, images: ImageSet, spec: DataSpec, num_classes: int, scale: float,
                         margin: float, what: str, device: str = "cpu") -> CosineClassifier:
    """A cosine classifier whose weights are the :func:`class_prototypes` of ``images`` embedded by ``model``."""
    from ..evaluate import embed

    emb = embed(model, images, spec, device=device, desc=f"prototypes: embedding {len(images)} {what} images")
    classifier = CosineClassifier(emb.shape[1], num_classes, scale, margin)
    with torch.no_grad():
        classifier.weight.copy_(class_prototypes(emb, images.labels, num_classes))
    return classifier


def prototype_images(train: ImageSet, per_class: int | None, seed: int = 0) -> ImageSet:
    """The training images prototypes are made from: all of them, or at most ``per_class`` of each class
    (a seeded choice)."""
    if per_class is None:
        return train
    if per_class < 1:
        raise EdgeQueryError(f"--prototype-images {per_class} is not positive", "pass a positive number, or omit it")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    keep, seen = [], {}
    for i in order.tolist():
        c = int(train.labels[i])
        if seen.get(c, 0) < per_class:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    return train.subset(torch.tensor(sorted(keep)))


def _head_from_file(path: Path, feature_dim: int) -> nn.Linear:
    """A linear embedding head from a state dict holding ``weight`` (D x F) and optionally ``bias`` (D),
    bare or under ``fc.`` / ``head.`` / ``embedding.``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise EdgeQueryError(f"cannot read head file {path}: {exc}",
                             "save the head with torch.save(linear.state_dict(), path)") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if isinstance(state, nn.Module) or not isinstance(state, dict):
        raise EdgeQueryError(f"head file {path} holds a {type(state).__name__}, not a state dict",
                             "save the head with torch.save(linear.state_dict(), path)")
    prefix = next((p for p in HEAD_PREFIXES if f"{p}weight" in state), None)
    if prefix is None:
        raise EdgeQueryError(f"head file {path} has no linear weight (keys: {', '.join(list(state)[:6])})",
                             "it needs 'weight' (embedding dim x feature dim) and optionally 'bias', bare or "
                             "under fc. / head. / embedding.")
    weight, bias = state[f"{prefix}weight"], state.get(f"{prefix}bias")
    if weight.dim() != 2 or weight.shape[1] != feature_dim:
        raise EdgeQueryError(f"head {path}: weight of shape {tuple(weight.shape)} does not take the trunk's "
                             f"{feature_dim}-d features", f"pass a head whose weight is D x {feature_dim}")
    head = nn.Linear(feature_dim, weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias if bias is not None else torch.zeros(weight.shape[0]))
    return head


def _first_rgb_conv(net: nn.Module) -> nn.Conv2d:
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if conv is None:
        raise EdgeQueryError("--channel-order bgr: the model has no convolution taking 3 channels to flip",
                             "import it with --channel-order rgb")
    return conv


def imported_net(model_file: str | Path, fmt: str, arch: str, head_file: str | Path | None,
                 channel_order: str, probe: torch.Tensor) -> tuple[EmbeddingNet, dict[str, Any]]:
    """The user's model as an :class:`EmbeddingNet` (classifier still to fill) and its ``model`` spec.

    ``probe`` is a batch of model inputs (real images, pre-processed) that finds a program's
    embedding size and checks that the model gives finite embeddings of them.
    """
    model_file = Path(model_file)
    if not model_file.is_file():
        raise EdgeQueryError(f"model file {model_file} does not exist", "pass the path of the model to import")
    if fmt not in IMPORT_FORMATS:
        raise EdgeQueryError(f"unknown --format {fmt!r}", f"use one of {', '.join(IMPORT_FORMATS)}")
    if fmt == "state-dict":
        trunk, feature_dim = load_pretrained_trunk(arch, str(model_file))
        if channel_order == "bgr":
            conv = _first_rgb_conv(trunk)
            with torch.no_grad():  # the model was trained on B, G, R planes: take R, G, B instead, exactly
                conv.weight.copy_(conv.weight.flip(1))
        head = _head_from_file(Path(head_file), feature_dim) if head_file else None
        dim = head.out_features if head is not None else feature_dim
    else:
        if head_file:
            raise EdgeQueryError(f"--head with --format {fmt}: a program maps images to embeddings itself",
                                 "drop --head (put the head inside the saved module)")
        if channel_order == "bgr":
            raise EdgeQueryError(f"--channel-order bgr with --format {fmt}: its first convolution cannot be "
                                 "flipped from outside", "flip the input channels inside the module before saving it")
        trunk = ProgramTrunk(fmt, torch.frombuffer(bytearray(model_file.read_bytes()), dtype=torch.uint8),
                             where=str(model_file))
        head, arch = None, fmt
        with torch.no_grad():
            feature_dim = dim = int(trunk(probe[:2]).shape[1])
    net = EmbeddingNet(trunk, feature_dim, dim, 1, head="linear" if head is not None else "none")
    if head is not None:
        net.head = head
    net.eval()
    with torch.no_grad():
        out = net(probe)
    if not torch.isfinite(out).all():
        raise EdgeQueryError(f"{model_file} gives NaN or Inf embeddings of real images",
                             "check the file, --arch and the pre-processing (--mean/--std/--resolution)")
    return net, model_spec(arch, dim, 1, GALLERY_MODEL["scale"], GALLERY_MODEL["margin"],
                           head="linear" if head is not None else "none")


def import_gallery(model_file: str | Path, out: str | Path, spec: DataSpec, fmt: str = "state-dict",
                   arch: str = "resnet101", head_file: str | Path | None = None, channel_order: str = "rgb",
                   per_class: int | None = None, device: str = "cpu", force: bool = False,
                   splits=None) -> dict[str, Any]:
    """Wrap the user's embedding model as a gallery checkpoint at ``out``, with a prototype classifier made
    from the training split of ``spec``; returns the written checkpoint."""
    from ..checkpoint import save_checkpoint
    from ..data import to_model_input
    from ..train import resolve_device

    out = Path(out)
    if out.exists() and not force:
        raise EdgeQueryError(f"{out} exists", "pass --force to replace it, or choose another --out")
    device = resolve_device(device)
    splits = splits or load_splits(spec)
    net, mspec = imported_net(model_file, fmt, arch, head_file, channel_order,
                              to_model_input(splits.train.images[:8], spec))
    images = prototype_images(splits.train, per_class)
    t0 = time.time()
    mspec["num_classes"] = splits.num_classes
    net.classifier = prototype_classifier(net, images, spec, splits.num_classes, mspec["scale"], mspec["margin"],
                                          "training", device)
    log.info("prototypes of %d classes from %d training images (%.0f s)", splits.num_classes, len(images),
             time.time() - t0)
    payload = {
        "kind": "gallery", "model": mspec, "state_dict": net.state_dict(), "data": spec.to_dict(),
        "classes": list(splits.classes), "compatible_with": None,
        "identity": {"arch": mspec["arch"], "embed_dim": mspec["embed_dim"], "data": spec.to_dict(),
                     "weights": Path(model_file).name},
        "classifier": {"kind": "prototypes", "images": len(images), "split": "train"},
        "imported": {"source": Path(model_file).name, "source_sha256": sha256_file(model_file), "format": fmt,
                     "head": Path(head_file).name if head_file else None,
                     "head_sha256": sha256_file(head_file) if head_file else None,
                     "channel_order": channel_order, "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    return save_checkpoint(out, payload)


def with_prototype_classifier(gallery: dict[str, Any], images: ImageSet, out: str | Path,
                              split: str, device: str = "cpu") -> dict[str, Any]:
    """A copy of the gallery checkpoint ``gallery`` whose classifier is the class prototypes of ``images``
    (embedded by the gallery model; a stored gallery looks them up) - to compare BCT against a trained
    classifier with BCT against prototypes of the same model.  A stored gallery keeps its
    ``model_version`` (its embeddings are the same model's); a trained one gets a new one."""
    from ..checkpoint import save_checkpoint
    from .zoo import model_from_checkpoint

    m = gallery["model"]
    classifier = prototype_classifier(model_from_checkpoint(gallery), images, DataSpec.from_dict(gallery["data"]),
                                      m["num_classes"], m.get("scale", 16.0), m.get("margin", 0.0), split, device)
    state = {**gallery["state_dict"], "classifier.weight": classifier.weight.detach()}
    keep = ("kind", "model", "data", "classes", "identity", "compatible_with", "train", "stored", "imported")
    payload = {k: gallery[k] for k in keep if gallery.get(k) is not None}
    payload.update(state_dict=state, classifier={"kind": "prototypes", "images": len(images), "split": split})
    return save_checkpoint(out, payload)
