"""What each training stage trains: the gallery model and query nets (BCT or not).

Each recipe builds the net, decides between a fresh start and a resume, and hands a
step function to the one loop in :mod:`edgequery.train`.  The supernet recipe lives
with the search spaces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .artifacts.checkpoint import GALLERY_MODEL, GALLERY_TRAIN
from .checkpoint import load_checkpoint
from .data import DataSpec, Splits, load_splits
from .errors import EdgeQueryError
from .models import build_embedding_net, model_from_checkpoint, model_spec, zero_init_residual
from .train import BCTLoss, ClassifierLoss, TrainConfig, fit, prepare_output

log = logging.getLogger(__name__)



def load_trained_gallery(path: str | Path) -> dict[str, Any]:
    """A gallery checkpoint whose training finished (query nets and supernets train against it)."""
    gallery = load_checkpoint(path, "gallery")
    if not gallery.get("train", {}).get("complete", True):
        raise EdgeQueryError(f"gallery {path} is an unfinished training run "
                             f"(epoch {gallery['train']['epoch']}/{gallery['train']['epochs']})",
                             "finish it first by rerunning `edgequery train gallery` with the same settings")
    return gallery


def require_gallery_classes(splits: Splits, gallery: dict[str, Any], gallery_path: str | Path, what: str) -> None:
    """BCT's influence loss uses the gallery classifier: the training data must have its classes."""
    n = gallery["model"]["num_classes"]
    if splits.num_classes != n:
        raise EdgeQueryError(f"the {what} data has {splits.num_classes} classes but gallery {gallery_path} was "
                             f"trained on {n}", f"train the {what} on the gallery's data (drop the data overrides)")


def _step(loss_fn):
    def step(model, x, y, _global_step):
        return loss_fn(model.module if hasattr(model, "module") else model, model(x), y)
    return step


def train_gallery(spec: DataSpec, cfg: TrainConfig, out: str | Path, arch: str = GALLERY_MODEL["arch"],
                  embed_dim: int = GALLERY_MODEL["embed_dim"], weights: str | None = None,
                  scale: float = GALLERY_MODEL["scale"], margin: float = GALLERY_MODEL["margin"],
                  force: bool = False, splits: Splits | None = None) -> dict[str, Any]:
    """Train the gallery model (default :data:`GALLERY_MODEL`: ResNet-101 + 128-d head + cosine classifier)."""
    identity = {"arch": arch, "embed_dim": embed_dim, "data": spec.to_dict(), "weights": weights,
                "scale": scale, "margin": margin}
    resume = prepare_output(out, "gallery", cfg, identity, force)
    splits = splits or load_splits(spec)
    torch.manual_seed(cfg.seed)  # the same settings start from the same weights
    model = build_embedding_net(arch, embed_dim, splits.num_classes, weights=None if resume else weights,
                                scale=scale, margin=margin)
    if cfg.extra.get("zero_init_residual") and not resume:
        if weights:
            raise EdgeQueryError("--zero-init-residual starts residual branches from zero: not with --weights",
                                 "drop one of the two")
        if not zero_init_residual(model.trunk):
            raise EdgeQueryError(f"--zero-init-residual: {arch} has no ResNet residual blocks",
                                 "use it with a resnet arch")

    def payload(m):
        return {"kind": "gallery", "model": model_spec(arch, embed_dim, splits.num_classes, scale, margin),
                "state_dict": m.state_dict(), "data": spec.to_dict(), "classes": list(splits.classes),
                "identity": identity, "compatible_with": None}

    return fit(model, _step(ClassifierLoss(cfg.label_smoothing)), splits, cfg, out, payload, resume=resume, desc="gallery")


def train_query(gallery_path: str | Path, cfg: TrainConfig, out: str | Path, arch: str = "mobilenet_v3_small",
                bct: bool = True, bct_weight: float = 1.0, weights: str | None = None,
                spec: DataSpec | None = None, force: bool = False, splits: Splits | None = None,
                init_state: dict | None = None, space=None) -> dict[str, Any]:
    """Train a query net; with ``bct`` its embedding is made compatible with the gallery's.

    The net embeds to the gallery's dimension and trains on the gallery's data spec
    unless ``spec`` overrides it (it must keep the same classes: BCT's influence loss
    uses the gallery classifier).  ``init_state`` starts from given weights (e.g. a
    supernet's inherited subnet) instead of a random initialisation.  A search-space
    ``arch`` is read in ``space`` (a space, its ``config()`` or name; default: the
    default configuration) and the checkpoint stores that space's configuration.
    """
    gallery = load_trained_gallery(gallery_path)
    spec = spec or DataSpec.from_dict(gallery["data"])
    gspec = gallery["model"]
    scale, margin = gspec.get("scale", 16.0), gspec.get("margin", 0.0)
    mspec = model_spec(arch, gspec["embed_dim"], 0, scale, margin, space=space)  # canonical arch + space config
    arch = mspec["arch"]
    compat = {"gallery_version": gallery["model_version"], "gallery_arch": gspec["arch"]} if bct else None
    identity = {"arch": arch, "space": mspec["space"], "embed_dim": gspec["embed_dim"], "data": spec.to_dict(),
                "weights": weights, "bct": bct, "bct_weight": bct_weight, "gallery_version": gallery["model_version"]}
    resume = prepare_output(out, "query", cfg, identity, force)
    splits = splits or load_splits(spec)
    require_gallery_classes(splits, gallery, gallery_path, "query net")
    mspec["num_classes"] = splits.num_classes
    torch.manual_seed(cfg.seed)
    model = build_embedding_net(arch, gspec["embed_dim"], splits.num_classes, weights=None if resume else weights,
                                scale=scale, margin=margin, space=mspec["space"])
    if init_state is not None and resume is None:
        model.load_state_dict(init_state)
    loss = (BCTLoss(model_from_checkpoint(gallery).classifier, bct_weight, cfg.label_smoothing) if bct
            else ClassifierLoss(cfg.label_smoothing))
    if not bct:
        log.warning("--no-bct: the query embedding is not trained to be compatible with the gallery")

    def payload(m):
        return {"kind": "query", "model": mspec, "state_dict": m.state_dict(), "data": spec.to_dict(),
                "classes": list(splits.classes), "identity": identity, "compatible_with": compat,
                "bct": {"enabled": bct, "weight": bct_weight if bct else 0.0},
                "reference_gallery": gallery["model_version"]}

    return fit(model, _step(loss), splits, cfg, out, payload, resume=resume, extra_modules=loss,
               desc=f"query {arch.split(',')[0] if ':' in arch else arch}{' +BCT' if bct else ''}")
