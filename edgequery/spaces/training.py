"""Training the supernet compatible with a gallery model (``edgequery train supernet``).

Each training step runs one arch on the batch - *single-path uniform sampling* (SPOS,
and the CMP-NAS recipe) - or, with ``sandwich=True``, the largest, the smallest and one
random arch, their losses summed (BigNAS's sandwich rule), optionally with in-place
distillation (``distill``: the smaller two pulled towards the largest's embedding).  The arch of step ``t`` is
drawn from ``numpy.random.default_rng([seed, t])``: every DDP rank draws the same one,
and a resumed run draws exactly the archs the interrupted run would have.

The loss is BCT's (:class:`edgequery.train.BCTLoss`): the supernet's own cosine
classifier plus the frozen *gallery* classifier applied to the subnet's embedding, so
the shared weights learn embeddings that land in the gallery model's space - for
every arch at once.  The loop is the project's one loop (:func:`edgequery.train.fit`),
with DDP's ``find_unused_parameters`` on (an arch skips most slots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data import DataSpec, Splits, load_splits
from ..errors import EdgeQueryError
from ..models import model_from_checkpoint
from ..recipes import load_trained_gallery, require_gallery_classes
from ..train import BCTLoss, TrainConfig, fit, prepare_output
from . import as_space, space_from_config
from .base import SearchSpace
from .supernet import Supernet

SAMPLING_RULES = ("uniform", "sandwich")


def archs_for_step(space: SearchSpace, seed: int, step: int, rule: str = "uniform") -> list[Any]:
    """The arch(s) trained at global step ``step``: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    if rule == "uniform":
        return [space.sample(rng)]
    if rule == "sandwich":
        return [space.largest(), space.smallest(), space.sample(rng)]
    raise EdgeQueryError(f"unknown sampling rule {rule!r}", f"use one of: {', '.join(SAMPLING_RULES)}")


def supernet_train_config(cfg: TrainConfig, sandwich: bool = False, distill: float = 0.0) -> TrainConfig:
    """``cfg`` as a supernet trains with it (and records it): its ``extra`` names the sampling rule, the
    distillation weight, and the unused parameters each step leaves (one arch of many)."""
    extra = {**cfg.extra, "find_unused_parameters": True, "sampling": "sandwich" if sandwich else "uniform",
             **({"distill": distill} if distill else {})}
    return cfg.model_copy(update={"extra": extra})


def train_supernet(gallery_path: str | Path, cfg: TrainConfig, out: str | Path,
                   space: str | dict[str, Any] | SearchSpace = "mbv3",
                   sandwich: bool = False, bct_weight: float = 1.0, distill: float = 0.0, spec: DataSpec | None = None,
                   force: bool = False, splits: Splits | None = None) -> dict[str, Any]:
    """Train ``space``'s supernet with BCT against the gallery at ``gallery_path``; write it to ``out``.

    Data default to the gallery's own spec (``spec`` overrides it but must keep its
    classes).  ``space`` is a space, its ``config()`` or a name (default choices); its whole
    configuration is stored in the checkpoint.  Resumes an unfinished run at ``out`` with
    the same settings.
    """
    space = as_space(space)
    if distill < 0 or (distill > 0 and not sandwich):
        raise EdgeQueryError(f"in-place distillation weight {distill:g} needs the sandwich rule and a weight >= 0",
                             "add --sandwich (the largest arch is the teacher), or drop --inplace-distill")
    gallery = load_trained_gallery(gallery_path)
    spec = spec or DataSpec.from_dict(gallery["data"])
    gspec = gallery["model"]
    rule = "sandwich" if sandwich else "uniform"
    cfg = supernet_train_config(cfg, sandwich, distill)
    identity = {"space": space.config(), "embed_dim": gspec["embed_dim"], "data": spec.to_dict(),
                "bct_weight": bct_weight, "sampling": rule, "gallery_version": gallery["model_version"],
                **({"distill": distill} if distill else {})}
    resume = prepare_output(out, "supernet", cfg, identity, force)
    splits = splits or load_splits(spec)
    require_gallery_classes(splits, gallery, gallery_path, "supernet")
    scale, margin = gspec.get("scale", 16.0), gspec.get("margin", 0.0)
    torch.manual_seed(cfg.seed)  # a reproducible initialisation: the same settings give the same supernet
    model = Supernet(space, gspec["embed_dim"], splits.num_classes, scale, margin)
    loss = BCTLoss(model_from_checkpoint(gallery).classifier, bct_weight, cfg.label_smoothing)

    def step(m, x, y, global_step):
        return m(x, archs_for_step(space, cfg.seed, global_step, rule), criterion=loss, labels=y, distill=distill)

    def payload(m):
        return {"kind": "supernet",
                "model": {"arch": f"supernet:{space.name}", "space": space.config(), "embed_dim": gspec["embed_dim"],
                          "num_classes": splits.num_classes, "scale": scale, "margin": margin},
                "state_dict": m.state_dict(), "data": spec.to_dict(), "classes": list(splits.classes),
                "identity": identity,
                "compatible_with": {"gallery_version": gallery["model_version"], "gallery_arch": gspec["arch"]},
                "bct": {"enabled": True, "weight": bct_weight}, "sampling": {"rule": rule, "seed": cfg.seed, "distill": distill},
                "reference_gallery": gallery["model_version"]}

    return fit(model, step, splits, cfg, out, payload, resume=resume, extra_modules=loss,
               desc=f"supernet {space.name}{' sandwich' if sandwich else ''}{' + distillation' if distill else ''}")


def supernet_from_checkpoint(ckpt: dict[str, Any]) -> Supernet:
    """Rebuild the supernet a ``supernet`` checkpoint holds (eval mode)."""
    spec = ckpt["model"]
    space = space_from_config(spec["space"])
    net = Supernet(space, spec["embed_dim"], spec["num_classes"], spec.get("scale", 16.0), spec.get("margin", 0.0))
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise EdgeQueryError(f"the supernet checkpoint does not fit this version's {space.name} space "
                             f"({str(exc).splitlines()[0]})",
                             "retrain it with `edgequery train supernet` using this version of edgequery") from None
    return net.eval()


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """The supernet at ``path`` (eval mode) and its checkpoint dict."""
    ckpt = load_checkpoint(path, "supernet")
    return supernet_from_checkpoint(ckpt), ckpt
