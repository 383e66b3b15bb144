"""One training loop for gallery, query and supernet models, with BCT and DDP.

The loop (:func:`fit`) knows nothing about which model it trains: a *step function*
computes the loss of one batch, and a *payload function* says what the checkpoint holds
besides the training state.  It gives every stage the same behaviour:

* deterministic: batch order and augmentation are drawn from ``seed`` and the epoch
  number, so a run resumed from its epoch-``k`` checkpoint ends in the same weights as
  one that never stopped;
* a checkpoint after every epoch (atomic), resumed automatically when the output file
  holds an unfinished run of the same configuration;
* ``--device cpu|cuda``; under ``torchrun`` it trains with DistributedDataParallel
  (gloo on CPU, nccl on CUDA), each rank taking its shard of every epoch;
* a progress bar per epoch (:func:`edgequery.log.progress`: tqdm on a terminal, log lines
  otherwise) and one log line per epoch (loss, time).

Backward-Compatible Training (Shen et al., CVPR 2020) is :class:`BCTLoss`: the query
net's own classifier loss plus ``weight`` x the cross-entropy of the *frozen* gallery
classifier applied to the query embedding.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts.checkpoint import AUGMENTATIONS, Identity, TrainConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .data import ImageSet, Splits, to_model_input
from .errors import EdgeQueryError
from .log import progress
from .models.heads import CosineClassifier, EmbeddingNet

log = logging.getLogger(__name__)

__all__ = ["BCTLoss", "ClassifierLoss", "Dist", "TrainConfig", "augment", "epoch_batches", "random_erase", "fit", "make_optimizer",
           "prepare_output", "resolve_device", "resolve_precision", "warmup_cosine"]


# --------------------------------------------------------------------------- devices & DDP


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeQueryError(f"--device {name} was asked for, but CUDA is not available here",
                             "use --device cpu, or run on a machine with a CUDA GPU and a CUDA build of torch")
    if name not in ("cpu",) and not name.startswith("cuda") and name != "mps":
        raise EdgeQueryError(f"unknown device {name!r}", "use cpu, cuda or cuda:N")
    return torch.device(name)


@dataclass
class Dist:
    """Where this process stands in a (possibly 1-process) data-parallel job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision``; ``auto`` is bf16 where the device has fast bf16 arithmetic
    (a CUDA GPU that supports it, a CPU with AMX or AVX-512 BF16 through oneDNN), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


# --------------------------------------------------------------------------- losses


class ClassifierLoss(nn.Module):
    """Cross-entropy of the model's own (cosine) classifier on its embedding."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, model: EmbeddingNet, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.classifier(emb, labels), labels, label_smoothing=self.label_smoothing)


class BCTLoss(nn.Module):
    """Query classifier loss + ``weight`` x frozen-gallery-classifier loss (influence loss).

    The gallery classifier is deep-copied, put in eval mode and has ``requires_grad``
    off: gradients flow *through* it into the query embedding, never into it.
    """

    def __init__(self, gallery_classifier: CosineClassifier, weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.gallery_classifier = copy.deepcopy(gallery_classifier).eval()
        self.gallery_classifier.requires_grad_(False)
        self.weight = float(weight)

    def train(self, mode: bool = True):  # the frozen classifier never leaves eval mode
        super().train(mode)
        self.gallery_classifier.eval()
        return self

    def forward(self, model: EmbeddingNet, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        own = F.cross_entropy(model.classifier(emb, labels), labels, label_smoothing=self.label_smoothing)
        influence = F.cross_entropy(self.gallery_classifier(emb, labels), labels)
        return own + self.weight * influence


# --------------------------------------------------------------------------- batches


def epoch_batches(data: ImageSet, cfg: TrainConfig, epoch: int, dist: Dist) -> list[torch.Tensor]:
    """This rank's batches of indices for ``epoch``: a seeded shuffle, cut into equal shards."""
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=g)
    per_rank = len(order) // dist.world
    order = order[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    batches = list(order.split(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) < cfg.batch_size // 2:
        batches.pop()  # a tiny last batch makes BatchNorm statistics noisy
    return batches


def augment(x: torch.Tensor, gen: torch.Generator, ops: Sequence[str] = AUGMENTATIONS) -> torch.Tensor:
    """Per-sample random horizontal flip (``hflip`` in ``ops``) and translation by up to 1/8 of the side
    (``shift``).  Both are drawn either way, so a run's random stream does not depend on ``ops``."""
    n = x.shape[0]
    flip = (torch.rand(n, generator=gen) < 0.5) & ("hflip" in ops)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (0.25 if "shift" in ops else 0.0)  # grid units: 2 = side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erase(x: torch.Tensor, p: float, gen: torch.Generator, area: tuple[float, float] = (0.02, 0.25),
                 log_aspect: tuple[float, float] = (math.log(0.3), math.log(3.3))) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020) per sample: with probability ``p`` one rectangle of
    ``area`` of the image, of random aspect ratio and place, is replaced by standard-normal noise
    (``x`` is normalised, so that is noise at the data's own scale).  Vectorised over the batch
    (torchvision's ``RandomErasing`` erases the same rectangle in every image of a batch)."""
    n, c, h, w = x.shape
    u = torch.rand(n, 5, generator=gen)
    s = (area[0] + u[:, 0] * (area[1] - area[0])) * h * w
    r = torch.exp(log_aspect[0] + u[:, 1] * (log_aspect[1] - log_aspect[0]))
    eh = (s * r).sqrt().round().clamp(1, h)
    ew = (s / r).sqrt().round().clamp(1, w)
    top = (u[:, 2] * (h - eh + 1)).floor()
    left = (u[:, 3] * (w - ew + 1)).floor()
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (u[:, 4] < p)[:, None, None]
    noise = torch.randn(x.shape, generator=gen)
    return torch.where(mask[:, None].to(x.device), noise.to(x.device, x.dtype), x)


# --------------------------------------------------------------------------- the loop


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise EdgeQueryError(f"unknown optimizer {cfg.optimizer!r}", "use sgd or adamw")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return factor


StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _parallel(model: nn.Module, cfg: TrainConfig, device: torch.device, dist: Dist) -> nn.Module:
    """``model`` itself, or wrapped in DistributedDataParallel under torchrun."""
    if dist.world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=bool(cfg.extra.get("find_unused_parameters")))


def _train_epoch(train_model: nn.Module, step: StepFn, splits: Splits, cfg: TrainConfig, epoch: int,
                 first_step: int, optimizer, scheduler, dist: Dist, device: torch.device, desc: str,
                 precision: str, max_steps: int | None = None) -> dict[str, Any]:
    """One epoch of optimizer steps (its first ``max_steps`` when given: the last epoch of a schedule
    in steps); returns its history record (epoch, mean loss, seconds).

    With ``precision`` bf16 the forward pass runs under autocast and batches are channels-last
    (the model was made channels-last too); weights, gradients and the optimizer stay fp32."""
    train_model.train()
    bf16 = precision == "bf16"
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)
    batches = epoch_batches(splits.train, cfg, epoch, dist)[:max_steps]
    t0, loss_sum, n_seen = time.time(), 0.0, 0
    bar = progress(batches, total=len(batches), desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   enabled=dist.main, log=log)
    for i, idx in enumerate(bar):
        x = to_model_input(splits.train.images[idx], splits.spec, device)
        y = splits.train.labels[idx].to(device)
        if cfg.augment:
            x = augment(x, gen, cfg.augment)
        if cfg.random_erasing > 0:
            x = random_erase(x, cfg.random_erasing, gen)
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step(train_model, x, y, first_step + i)
        if not torch.isfinite(loss):
            raise EdgeQueryError(f"training diverged at epoch {epoch + 1}, step {i} (loss {loss.item()})",
                                 "lower --lr or switch --optimizer")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(idx)
        n_seen += len(idx)
        bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}", lr=f"{scheduler.get_last_lr()[0]:.3g}", refresh=False)
    bar.close()
    return {"epoch": epoch + 1, "loss": loss_sum / max(n_seen, 1), "seconds": round(time.time() - t0, 1),
            "precision": precision}


def fit(model: nn.Module, step: StepFn, splits: Splits, cfg: TrainConfig, out: str | os.PathLike,
        payload: Callable[[nn.Module], dict[str, Any]], resume: dict[str, Any] | None = None,
        extra_modules: nn.Module | None = None, desc: str = "train",
        on_epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` epochs (or as many as ``cfg.steps`` asks), checkpointing to ``out``
    after each.

    ``step(model, x, y, global_step)`` returns the loss of one (augmented, normalised)
    batch.  ``payload(model)`` returns the checkpoint fields other than ``train``.
    ``resume`` is a checkpoint of an unfinished run to continue from.  ``on_epoch_end``
    may return figures to record in the epoch's ``metrics``.  Returns the final
    checkpoint payload.
    """
    device = resolve_device(cfg.device)
    dist = Dist.setup(device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if precision == "bf16":
        model.to(memory_format=torch.channels_last)
    if extra_modules is not None:
        extra_modules.to(device)
    train_model = _parallel(model, cfg, device, dist)
    steps_per_epoch = len(epoch_batches(splits.train, cfg, 0, dist))
    if steps_per_epoch == 0:
        raise EdgeQueryError(f"the train split has {len(splits.train)} images, fewer than one batch",
                             "lower --batch-size or use more training data")
    total = cfg.epochs * steps_per_epoch
    if cfg.steps is not None:  # the schedule is given in steps: as many epochs as they take, the last one cut short
        cfg = cfg.model_copy(update={"epochs": math.ceil(cfg.steps / steps_per_epoch)})
        total = cfg.steps
        if dist.main:
            log.info("%d steps at %d per epoch: %.2f epochs of %d images", cfg.steps, steps_per_epoch,
                     cfg.steps / steps_per_epoch, len(splits.train))
    optimizer = make_optimizer(model.parameters(), cfg)
    # warm-up: warmup_epochs, but on a small data set (epochs of a few steps) at least 5 % of the run, up
    # to 100 steps - a few steps of warm-up are no warm-up at lr 0.1
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch), min(100, total // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    start_epoch, history = 0, []
    if resume is not None:
        tr = resume["train"]
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(tr["optimizer"])
        scheduler.load_state_dict(tr["scheduler"])
        start_epoch, history = tr["epoch"], list(tr["history"])
        if dist.main:
            log.info("resuming %s from epoch %d/%d", out, start_epoch, cfg.epochs)

    ckpt: dict[str, Any] = resume or {}
    for epoch in range(start_epoch, cfg.epochs):
        record = _train_epoch(train_model, step, splits, cfg, epoch, epoch * steps_per_epoch, optimizer, scheduler,
                              dist, device, desc, precision, max_steps=total - epoch * steps_per_epoch)
        if on_epoch_end is not None:
            record["metrics"] = dict(on_epoch_end(model, epoch))
        history.append(record)
        if dist.main:
            figures = " ".join(f"{k}={v:.4f}" for k, v in record.get("metrics", {}).items())
            log.info("epoch %d/%d loss=%.4f %.1fs %s[%s]", epoch + 1, cfg.epochs, record["loss"], record["seconds"],
                     figures + " " if figures else "", desc)
            ckpt = dict(payload(model))
            ckpt["train"] = {"epoch": epoch + 1, "epochs": cfg.epochs, "complete": epoch + 1 == cfg.epochs,
                             "config": cfg.to_dict(), "history": history,
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            ckpt = save_checkpoint(out, ckpt)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        if not dist.main:  # only rank 0 writes; the others return what it wrote
            ckpt = load_checkpoint(out)
    return ckpt


def prepare_output(out: str | os.PathLike, kind: str, cfg: TrainConfig, identity: dict[str, Any],
                   force: bool) -> dict[str, Any] | None:
    """Decide what to do with an existing ``out``: resume it, refuse, or (``force``) replace.

    ``identity`` holds what must match to resume (arch, data, gallery version, ...).
    Nothing is deleted here: with ``force`` the old file stays until the first new
    epoch's checkpoint atomically replaces it.
    """
    out = Path(out)
    if not out.exists() or force:
        return None
    ck = load_checkpoint(out, kind)
    tr = ck.get("train", {})
    if tr.get("complete"):
        raise EdgeQueryError(f"{out} already holds a fully trained {kind} model (model_version "
                             f"{ck['model_version']})", "pass --force to retrain over it, or choose another --out")
    stored = tr.get("config", {})
    had = Identity.model_validate(ck.get("identity") or {})
    want = Identity.model_validate(identity)
    mismatch = [k for k in want.model_fields_set if getattr(had, k) != getattr(want, k)]
    mismatch += cfg.differs_from(stored)
    if mismatch:
        raise EdgeQueryError(f"{out} holds an unfinished run with different settings ({', '.join(mismatch)})",
                             "rerun with the same settings to resume it, --force to start over, or another --out")
    return ck
