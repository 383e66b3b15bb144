"""The metadata of a model checkpoint (gallery, query net or supernet), and the training config.

A checkpoint is a ``torch.save``d dict (read back with ``weights_only=True``: no pickled
code).  Everything in it but the tensors is typed here; ``state_dict`` and the
optimizer/scheduler state inside ``train`` are *opaque*: carried through untouched,
never validated, left out of :meth:`~edgequery.artifacts.base.Artifact.to_data`.

``model`` says how to rebuild the net: ``arch`` is a torchvision name (``resnet101``,
``mobilenet_v3_small``), a search-space arch string (``mbv3:r64,w0.5,...``) or, for a
supernet, ``supernet:<space>``.  For the last two ``model.space`` holds the space's whole
configuration (``space.config()``: its name and every choice list, resolutions
included), so the arch rebuilds in exactly the space it was made in - wherever the file
goes.

Format history: version 1 had no ``model.space`` for query nets of a search space (the
arch was parsed in the *default* space); reading a version-1 file fills in
``{"space": <name>}`` - the space's default configuration, which is what version 1 meant.
Version 2 stored ``train.config.augment`` as a flag (``true`` meant horizontal flip and
shift); version 3 names the operations (``["hflip", "shift"]``) and adds ``classifier``
(what the frozen classifier BCT trains against is: trained, or class prototypes),
``imported`` (a gallery model wrapped by ``edgequery import gallery``) and ``model.head``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ..data import DataSpec
from .base import Artifact, Compat, Strict

KINDS = ("gallery", "query", "supernet")


def check_space_config(value: dict[str, Any]) -> dict[str, Any]:
    """A space configuration names its space (its choice lists are checked when the space is built)."""
    if not isinstance(value.get("space"), str) or not value["space"]:
        raise ValueError("a space config needs the space's name under \"space\", e.g. {\"space\": \"mbv3\", ...}")
    return value


SpaceConfig = Annotated[dict[str, Any], AfterValidator(check_space_config)]
"""``space.config()``: ``{"space": "mbv3", "resolutions": [...], ...}``, rebuilt by
:func:`edgequery.spaces.space_from_config`; choice lists left out take the space's defaults."""


def space_name_of(arch: str) -> str | None:
    """``mbv3`` for ``mbv3:...`` and ``supernet:mbv3``; ``None`` for a torchvision arch name."""
    if ":" not in arch:
        return None
    prefix, _, rest = arch.partition(":")
    return rest if prefix == "supernet" else prefix


AUGMENTATIONS = ("hflip", "shift")
"""The training augmentations :func:`edgequery.train.augment` applies: random horizontal flip, and a
random shift by up to 1/8 of the side.  A flip is wrong for text and digits (a mirrored 2 is no 2)."""


def augment_ops(value: Any) -> list[str]:
    """``augment`` as the operations it names, in :data:`AUGMENTATIONS` order.  A flag (format 2's
    ``true`` / ``false``) means all of them / none; ``"hflip,shift"`` and ``"none"`` are read too."""
    if isinstance(value, bool):
        return list(AUGMENTATIONS) if value else []
    if isinstance(value, str):
        value = [] if value.strip() in ("", "none") else [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"augment must be a list of {', '.join(AUGMENTATIONS)}, got {value!r}")
    unknown = [v for v in value if v not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}: use {', '.join(AUGMENTATIONS)} or none")
    return [a for a in AUGMENTATIONS if a in value]


class TrainConfig(Strict):
    """How a model is trained (``edgequery train ...`` flags); stored in ``train.config``, compared on resume."""

    epochs: int = 5
    steps: int | None = Field(None, ge=1)  # optimisation steps; when set, epochs = ceil(steps / steps per epoch)
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-5
    optimizer: str = "sgd"          # sgd (momentum 0.9, nesterov) | adamw
    warmup_epochs: float = 0.3
    # random horizontal flip (hflip) and shift by up to 1/8 of the side (shift): AUGMENTATIONS
    augment: Annotated[list[str], BeforeValidator(augment_ops)] = list(AUGMENTATIONS)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)  # share of images with one random rectangle erased
    label_smoothing: float = 0.0    # of the classifier cross-entropy
    precision: Literal["auto", "fp32", "bf16"] = "fp32"       # fp32 | bf16 (autocast, channels-last) | auto: bf16 where the device is fast at it
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = {}      # stage-specific settings (JSON), compared on resume

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def differs_from(self, stored: dict[str, Any]) -> list[str]:
        """The settings of a stored ``train.config`` that must equal these to resume or reuse its run,
        and do not.  With ``steps`` the epochs follow from the data, so steps are compared instead."""
        length = ("steps",) if self.steps is not None else ("steps", "epochs")
        keys = ("batch_size", "lr", "weight_decay", "optimizer", "seed", *length, "label_smoothing", "augment",
                "random_erasing", "extra")
        mine = self.to_dict()
        theirs = {k: stored.get(k, type(self).model_fields[k].default) for k in keys}
        theirs["augment"] = augment_ops(theirs["augment"])
        return [k for k in keys if theirs[k] != mine[k]]


# The gallery recipe: what `edgequery train gallery` does without tuning flags, and what the benchmarks'
# gallery model is (README, "The gallery model").  The model: ResNet-101 with the small-input stem,
# a 128-d embedding and a CosFace classifier; the training: a schedule in steps (8 epochs of
# Fashion-MNIST's 59k training images at batch 128), SGD at the usual ResNet settings.
GALLERY_MODEL = {"arch": "resnet101_small_input", "embed_dim": 128, "scale": 16.0, "margin": 0.1}
GALLERY_TRAIN = {"steps": 3680, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.0,
                 "precision": "auto"}


class ModelSpec(Strict):
    """Enough to rebuild the net: :func:`edgequery.models.model_from_checkpoint`."""

    arch: str
    embed_dim: int
    num_classes: int
    scale: float = 16.0
    margin: float = 0.0
    space: SpaceConfig | None = None      # space.config() of a search-space arch or supernet
    # the embedding head: "linear" (trunk features -> Linear -> L2 norm) or "none" (the trunk's own output,
    # L2-normalised: an imported model whose embedding is its pooled features or a whole program's output)
    head: Literal["linear", "none"] = "linear"

    @model_validator(mode="after")
    def _space_fits_arch(self):
        name = space_name_of(self.arch)
        if name is None and self.space is not None:
            raise ValueError(f"arch {self.arch!r} is not of a search space, but a space config is stored")
        if name is not None and self.space is None:
            raise ValueError(f"arch {self.arch!r} is of a search space, but its space config is missing")
        if name is not None and self.space["space"] != name:
            raise ValueError(f"arch {self.arch!r} is of space {name!r}, but the stored space is "
                             f"{self.space['space']!r}")
        return self


class Identity(Strict):
    """What must match for a rerun to resume an unfinished training run (per kind, a subset is set)."""

    arch: str | None = None
    space: SpaceConfig | None = None
    embed_dim: int | None = None
    data: DataSpec | None = None
    weights: str | None = None
    scale: float | None = None
    margin: float | None = None
    bct: bool | None = None
    bct_weight: float | None = None
    sampling: str | None = None
    distill: float | None = None          # a sandwich supernet's in-place distillation weight (when > 0)
    gallery_version: str | None = None


class EpochRecord(Strict):
    epoch: int
    loss: float
    seconds: float
    precision: Literal["fp32", "bf16"] = "fp32"  # what the epoch ran in (TrainConfig.precision resolved)
    metrics: dict[str, float] = {}    # whatever an ``on_epoch_end`` hook measured


class TrainState(Strict):
    epoch: int
    epochs: int
    complete: bool
    config: TrainConfig
    history: list[EpochRecord] = []
    optimizer: Any = Field(default=None, exclude=True, repr=False)   # opaque: torch optimizer state
    scheduler: Any = Field(default=None, exclude=True, repr=False)   # opaque: LR scheduler state


class BCTInfo(Strict):
    enabled: bool
    weight: float


class Sampling(Strict):
    """How a supernet drew the arch(s) of each training step."""

    rule: Literal["uniform", "sandwich"]
    seed: int
    distill: float = 0.0      # in-place distillation weight (sandwich only): towards the largest arch's embedding


class ClassifierInfo(Strict):
    """What a gallery checkpoint's frozen classifier (``classifier.weight``, the one BCT trains query nets
    against) is: ``trained`` with the model, or ``prototypes`` - each class's mean embedding of labelled
    images, L2-normalised, for a model trained without a classifier (a metric loss)."""

    kind: Literal["trained", "prototypes"]
    images: int | None = Field(None, ge=1)      # prototypes: how many labelled images made them
    split: str | None = None                    # prototypes: which split of the checkpoint's data spec


class ImportInfo(Strict):
    """Where an imported gallery model came from (``edgequery import gallery``)."""

    source: str                                 # the file imported (name)
    source_sha256: str
    format: Literal["state-dict", "torchscript", "exported-program"]
    head: str | None = None                     # the embedding head's file (state-dict imports)
    head_sha256: str | None = None
    channel_order: Literal["rgb", "bgr"] = "rgb"  # what the model was trained on (bgr: conv1 flipped to take RGB)
    imported_at: str


class StoredInfo(Strict):
    """A *stored gallery*: a gallery model's embeddings of known images and its classifier, without
    its trunk (:mod:`edgequery.models.stored`).  Its ``model_version`` is the model's it came from;
    the embeddings (``stored.embeddings``) and image keys (``stored.keys``) ride in ``state_dict``."""

    images: int = Field(ge=1)                # distinct images with a stored embedding
    sets: dict[str, int]                     # the image sets stored, and their sizes (e.g. val, test)
    source: str                              # the checkpoint (file name) the embeddings were computed with
    source_state_hash: str                   # its state_dict's hash (= its model_version)
    stored_at: str


class CheckpointMeta(Artifact):
    """Everything a checkpoint holds but its tensors (which ride along as opaque fields)."""

    FORMAT: ClassVar[str] = "edgequery-checkpoint"
    VERSION: ClassVar[int] = 3
    WRITTEN_WHEN_SET: ClassVar[tuple[str, ...]] = ("classifier", "imported")
    KIND: ClassVar[str] = "checkpoint"
    FIX: ClassVar[str] = "pass a file written by `edgequery train gallery|query|supernet`, or re-create it"

    kind: Literal["gallery", "query", "supernet"]
    model_version: str                    # content hash of state_dict: the identity that pairs artifacts
    model: ModelSpec
    compatible_with: Compat | None = None  # query nets and supernets trained with BCT
    data: DataSpec | None = None
    classes: list[str] = []
    identity: Identity = Identity()
    bct: BCTInfo | None = None
    sampling: Sampling | None = None
    reference_gallery: str | None = None  # the gallery trained against (with or without BCT)
    train: TrainState | None = None
    stored: StoredInfo | None = None      # a stored gallery (embeddings + classifier, no trunk)
    classifier: ClassifierInfo | None = None  # galleries: what classifier.weight is (absent: trained)
    imported: ImportInfo | None = None     # a gallery model imported, not trained here
    edgequery_version: str | None = None
    saved_at: str | None = None
    state_dict: Any = Field(exclude=True, repr=False)   # opaque: the weights

    @classmethod
    def migrate(cls, data: dict[str, Any], version: int) -> dict[str, Any] | None:
        if version not in (1, 2):
            return None
        if version == 1:
            model = dict(data.get("model") or {})
            name = space_name_of(str(model.get("arch", "")))
            if name is not None and model.get("space") is None:
                model["space"] = {"space": name}  # version 1 parsed such an arch in the space's default configuration
            data = {**data, "model": model}
        # version 2's train.config.augment flag is read by TrainConfig (augment_ops); nothing else changed
        return {**data, "format_version": cls.VERSION}

    def to_payload(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes: :meth:`to_data` plus the opaque tensors."""
        out = self.to_data()
        out["state_dict"] = self.state_dict
        if self.train is None:
            del out["train"]  # readers test ``ckpt.get("train", {})``
        else:
            out["train"]["optimizer"] = self.train.optimizer
            out["train"]["scheduler"] = self.train.scheduler
        return out
