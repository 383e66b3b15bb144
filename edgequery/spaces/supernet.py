"""The weight-sharing supernet: one set of weights that every arch of a space runs on.

How weights are shared is decided by the space's *slots* (``space.supernet_slots()``):
one module per position, built at the largest size any arch uses there.

* ``mbv3`` (once-for-all style): a position's slot is the inverted-residual block with
  kernel 7, expansion 6 and the widest channels.  A smaller block uses the *centre*
  ``k x k`` of each depthwise kernel (elastic kernel), the *first* channels of every
  layer (elastic expansion and width) and a stage runs only its *first* blocks
  (elastic depth).
* ``shufflenet`` (single-path one-shot): every (position, op) pair has its own slot
  (separate choice blocks); the channel choice takes the first middle channels.

One rule - "the leading slice of every tensor, the centre of every kernel"
(:func:`slice_like`) - serves both directions: :meth:`Supernet.forward` runs the
arch's own standalone block modules with sliced views of the shared weights
(``torch.func.functional_call``, so gradients flow into the shared tensors), and
:meth:`Supernet.extract` copies the same slices into a freshly built standalone net.
That is why the two agree to float rounding, and why an extracted net is exactly the
net ``space.build(arch)`` makes (same modules, same parameter names).

BatchNorm statistics are shared too, so they fit no single arch: :func:`recalibrate_bn`
(reset the running statistics, forward a few training batches, as OFA does) gives a
subnet its own before it is evaluated.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSpec, ImageSet, to_model_input
from ..models.heads import EmbeddingNet
from .base import BlockSpec, SearchSpace, resize_input


def slice_like(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The leading ``shape`` slice of ``t``, except the spatial dims of a 4-d (conv) weight: their centre."""
    if tuple(t.shape) == tuple(shape):
        return t
    if len(shape) != t.ndim or any(w > h for w, h in zip(shape, t.shape)):
        raise ValueError(f"cannot take a {tuple(shape)} slice of a {tuple(t.shape)} tensor")
    index = []
    for dim, (have, want) in enumerate(zip(t.shape, shape)):
        start = (have - want) // 2 if t.ndim == 4 and dim >= 2 else 0
        index.append(slice(start, start + want))
    return t[tuple(index)]


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(module.named_parameters())
    out.update(module.named_buffers())
    return out


class Supernet(EmbeddingNet):
    """All archs of ``space`` on shared weights, with the embedding head and cosine classifier.

    ``trunk`` is a ``ModuleDict`` of the space's slots; ``head`` and ``classifier`` are
    shared by every arch (all trunks of a space end in the same feature dim).
    """

    def __init__(self, space: SearchSpace, embed_dim: int, num_classes: int, scale: float = 16.0,
                 margin: float = 0.0):
        super().__init__(nn.ModuleDict(space.supernet_slots()), space.feature_dim, embed_dim, num_classes,
                         scale, margin)
        self.space = space
        self._templates: dict[str, nn.Module] = {}  # block key -> module on the meta device (structure only)

    # ----------------------------------------------------------------- running an arch

    def _template(self, block: BlockSpec) -> nn.Module:
        t = self._templates.get(block.key)
        if t is None:
            with torch.device("meta"):
                t = self.space.build_block(block)
            self._templates[block.key] = t
        return t

    def _run_block(self, slot: nn.Module, block: BlockSpec, x: torch.Tensor) -> torch.Tensor:
        template = self._template(block)
        shared = _tensors(slot)
        views = {name: slice_like(shared[name], t.shape) for name, t in _tensors(template).items()}
        template.train(self.training)
        return torch.func.functional_call(template, views, (x,))

    def features(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        """The trunk features of ``arch`` (images resized to its resolution first)."""
        arch = self.space.parse(arch)
        x = resize_input(x, arch.resolution)
        for slot_name, block in self.space.plan(arch):
            x = self._run_block(self.trunk[slot_name], block, x)
        return x

    def embed(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        """The L2-normalised embedding of ``arch``."""
        return F.normalize(self.head(self.features(x, arch)), dim=1)

    def forward(self, x: torch.Tensor, arch: Any, criterion: Callable | None = None,
                labels: torch.Tensor | None = None, distill: float = 0.0):
        """Embeddings of ``x`` by ``arch`` (an arch, its string or JSON dict, or a list of them).

        With ``criterion`` (e.g. :class:`~edgequery.train.BCTLoss`) and ``labels`` it
        returns the *summed* loss of all given archs instead.  Training passes the loss
        in here so the whole graph, classifier included, is built inside the forward
        call that DistributedDataParallel wraps: with ``find_unused_parameters`` (slots
        an arch skips get no gradient) DDP only tracks what the forward call used.
        ``distill`` > 0 adds in-place distillation (BigNAS, once-for-all): every arch after
        the first is also pulled towards the first one's embedding (detached: the teacher
        learns from the labels only), weighted ``distill`` x (1 - cosine).
        """
        many = isinstance(arch, (list, tuple))
        archs = list(arch) if many else [arch]
        if criterion is not None:
            embeddings = [self.embed(x, a) for a in archs]
            loss = sum(criterion(self, e, labels) for e in embeddings)
            if distill > 0 and len(embeddings) > 1:
                teacher = embeddings[0].detach()
                loss = loss + distill * sum((1 - F.cosine_similarity(e, teacher, dim=1)).mean()
                                            for e in embeddings[1:])
            return loss
        out = [self.embed(x, a) for a in archs]
        return out if many else out[0]

    # ----------------------------------------------------------------- standalone subnets

    @torch.no_grad()
    def extract(self, arch: Any) -> EmbeddingNet:
        """The standalone :class:`EmbeddingNet` of ``arch`` with the supernet's weights (eval mode).

        Its trunk is exactly ``space.build(arch)`` (static shapes, exportable); its output
        equals ``self(x, arch)`` in eval mode.
        """
        arch = self.space.parse(arch)
        trunk, dim = self.space.build(arch)
        for (slot_name, _), module in zip(self.space.plan(arch), trunk.blocks, strict=True):
            shared = _tensors(self.trunk[slot_name])
            module.load_state_dict({name: slice_like(shared[name], t.shape).clone()
                                    for name, t in module.state_dict().items()})
        net = EmbeddingNet(trunk, dim, self.head.out_features, self.classifier.weight.shape[0],
                           self.classifier.scale, self.classifier.margin)
        net.head.load_state_dict(self.head.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        return net.to(self.head.weight.device).eval()

    def subnet(self, arch: Any, calibration: ImageSet, spec: DataSpec, batches: int = 20, batch_size: int = 128,
               seed: int = 0) -> EmbeddingNet:
        """:meth:`extract` followed by :func:`recalibrate_bn` on ``calibration`` images: ready to evaluate."""
        net = self.extract(arch)
        return recalibrate_bn(net, calibration, spec, batches=batches, batch_size=batch_size, seed=seed,
                              device=self.head.weight.device)


@torch.no_grad()
def recalibrate_bn(net: nn.Module, images: ImageSet | torch.Tensor, spec: DataSpec, batches: int = 20,
                   batch_size: int = 128, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Re-estimate every BatchNorm's running statistics for ``net`` as it is.

    Running statistics are reset, then ``batches`` batches of ``images`` (a seeded random
    draw, no augmentation) go forward in training mode with a cumulative average
    (``momentum=None``), so each batch counts equally.  Weights do not change.  Returns
    ``net`` in eval mode.
    """
    raw = images.images if isinstance(images, ImageSet) else images
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(raw), generator=g)[:batches * batch_size]
    net.train()
    try:
        for idx in order.split(batch_size):
            if len(idx) > 1:  # BatchNorm cannot estimate a variance from one image
                net(to_model_input(raw[idx], spec, device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
    return net.eval()
