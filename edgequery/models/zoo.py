"""Trunks from torchvision, with the real weight-loading paths kept working.

No weights can be downloaded on the machines this project is developed on, so models
train from scratch by default.  Users who have weights pass ``--weights``:

* a torchvision weights name (``IMAGENET1K_V2``, ``DEFAULT``, or the full
  ``ResNet101_Weights.IMAGENET1K_V2``): resolved by torchvision's weights API, which
  reads ``$TORCH_HOME/hub/checkpoints`` first and downloads only when missing;
* a local file: a torchvision state dict (``*.pth``) for that architecture, or an
  edgequery checkpoint of the same arch (its trunk is reused, e.g. to fine-tune).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import EdgeQueryError
from .heads import EmbeddingNet
from .program import PROGRAM_FORMATS, PROGRAM_KEY, ProgramTrunk

BASELINE_ARCHS = ("resnet101", "resnet101_small_input", "mobilenet_v3_small", "mobilenet_v3_large")

# ResNet-101 with a stem for small inputs (32-64 px): conv1 is 3x3 stride 1 instead of 7x7 stride 2
# (max-pool kept), so every stage sees feature maps twice as large per side (16x16 after the stem
# at 32 px instead of 8x8; layer4 2x2 instead of 1x1), at four times the compute.
SMALL_INPUT = "_small_input"


class _MobileNetV3Trunk(nn.Module):
    """torchvision MobileNetV3 up to its penultimate layer (features, pool, Linear, h-swish)."""

    def __init__(self, net: torchvision.models.MobileNetV3):
        super().__init__()
        self.features = net.features
        self.avgpool = net.avgpool
        self.pre_logits = nn.Sequential(net.classifier[0], net.classifier[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_logits(torch.flatten(self.avgpool(self.features(x)), 1))


def _torchvision_net(name: str) -> nn.Module:
    net = torchvision.models.get_model(name.removesuffix(SMALL_INPUT), weights=None)
    if name.endswith(SMALL_INPUT):
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def _trunk_of(name: str, net: nn.Module) -> tuple[nn.Module, int]:
    if name.startswith("resnet101"):
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    if name.startswith("mobilenet_v3"):
        return _MobileNetV3Trunk(net), net.classifier[0].out_features
    raise AssertionError(name)


def zero_init_residual(net: nn.Module) -> int:
    """Zero the last BatchNorm scale of every ResNet residual branch (Goyal et al. 2017), so each block
    starts as the identity and a deep ResNet trains like a shallow one at first; returns how many."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    last = [m.bn3 if isinstance(m, Bottleneck) else m.bn2 for m in net.modules()
            if isinstance(m, (Bottleneck, BasicBlock))]
    for bn in last:
        nn.init.zeros_(bn.weight)
    return len(last)


def build_trunk(name: str) -> tuple[nn.Module, int]:
    """A randomly initialised trunk and its feature dimension."""
    if name in BASELINE_ARCHS:
        return _trunk_of(name, _torchvision_net(name))
    raise EdgeQueryError(f"unknown architecture {name!r}",
                         f"use one of {', '.join(BASELINE_ARCHS)} or an arch string of a search space")


def load_pretrained_trunk(name: str, weights: str) -> tuple[nn.Module, int]:
    """A trunk initialised from torchvision weights (by name) or a local state dict."""
    net = _torchvision_net(name)
    path = Path(weights)
    if path.suffix in (".pth", ".pt", ".bin") or path.exists():
        if not path.is_file():
            raise EdgeQueryError(f"weights file {path} does not exist", "pass the path of a torchvision state dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise EdgeQueryError(f"cannot read weights file {path}: {exc}",
                                 "pass a torchvision state dict saved with torch.save(model.state_dict())") from None
        if isinstance(state, dict) and all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}  # saved from (Distributed)DataParallel
        if isinstance(state, dict) and "format" in state:
            # an edgequery gallery/query checkpoint (validated like any other): start from its trunk
            from ..checkpoint import checkpoint_meta

            state = checkpoint_meta(state, str(path)).state_dict
            state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
            if name.startswith("mobilenet_v3"):  # our trunk names pre_logits.{0,1} as torchvision's classifier
                state = {k.replace("pre_logits.0.", "classifier.0."): v for k, v in state.items()}
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise EdgeQueryError(f"{path} holds a {type(state).__name__}, not a state dict",
                                 "save the weights with torch.save(model.state_dict(), path)")
        # the ImageNet classifier (or an embedding layer in its place, of another size) is not the trunk's
        state = _fit_stem(name, net, {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.3"))})
        missing, unexpected = net.load_state_dict(state, strict=False)
        # The ImageNet classifier is discarded anyway; anything else missing means a wrong file.
        # A small-input ResNet keeps its own 3x3 conv1 (an ImageNet conv1 does not fit it).
        skipped = ("fc.", "classifier.3") + (("conv1.",) if name.endswith(SMALL_INPUT) else ())
        missing = [k for k in missing if not k.startswith(skipped)]
        if missing:
            raise EdgeQueryError(f"{path} does not fit {name}: {len(missing)} missing keys (e.g. {missing[0]})",
                                 f"pass a state dict of torchvision's {name}")
    else:
        try:
            enum = torchvision.models.get_model_weights(name.removesuffix(SMALL_INPUT))
            spec = weights.split(".")[-1]
            w = enum.DEFAULT if spec == "DEFAULT" else enum[spec]
        except KeyError:
            choices = ", ".join(["DEFAULT"] + [w.name for w in torchvision.models.get_model_weights(name.removesuffix(SMALL_INPUT))])
            raise EdgeQueryError(f"{name} has no torchvision weights {weights!r}", f"use one of: {choices}") from None
        try:
            net.load_state_dict(_fit_stem(name, net, w.get_state_dict(progress=True, check_hash=True)),
                                strict=not name.endswith(SMALL_INPUT))
        except (OSError, RuntimeError) as exc:
            raise EdgeQueryError(
                f"could not obtain torchvision weights {w}: {exc}",
                f"place the file in {torch.hub.get_dir()}/checkpoints/ or pass --weights /path/to/state_dict.pth",
            ) from None
    return _trunk_of(name, net)


def _fit_stem(name: str, net: nn.Module, state: dict) -> dict:
    """``state`` without tensors whose shape does not fit the small-input stem (they stay freshly initialised)."""
    if not name.endswith(SMALL_INPUT):
        return state
    own = net.state_dict()
    return {k: v for k, v in state.items() if not (k.startswith("conv1.") and k in own and v.shape != own[k].shape)}


def build_embedding_net(arch: str, embed_dim: int, num_classes: int, weights: str | None = None,
                        scale: float = 16.0, margin: float = 0.0, space=None, head: str = "linear",
                        program: torch.Tensor | None = None) -> EmbeddingNet:
    """Any embedding net by arch name: a torchvision baseline, a search-space arch string, or an imported
    program (``torchscript`` / ``exported-program``, whose serialised bytes are ``program``).

    ``space`` (a search space, its ``config()`` dict or name) is the space a search-space
    arch belongs to; without it the arch is read in that space's default configuration.
    ``head`` ``none``: no linear head (the trunk's output is the embedding, :class:`EmbeddingNet`).
    """
    if arch in PROGRAM_FORMATS:
        if program is None:
            raise EdgeQueryError(f"an imported {arch} model needs its program's bytes", "load it from its checkpoint")
        trunk, dim = ProgramTrunk(arch, program), embed_dim
    elif ":" in arch:
        from ..spaces import build_trunk_from_string

        trunk, dim = build_trunk_from_string(arch, space)
    elif weights:
        trunk, dim = load_pretrained_trunk(arch, weights)
    else:
        trunk, dim = build_trunk(arch)
    return EmbeddingNet(trunk, dim, embed_dim, num_classes, scale, margin, head)


def model_spec(arch: str, embed_dim: int, num_classes: int, scale: float = 16.0, margin: float = 0.0,
               space=None, head: str = "linear") -> dict:
    """The ``model`` entry of a checkpoint: enough to rebuild the net anywhere.

    A search-space arch is stored canonically, with its space's whole configuration
    (``space`` as for :func:`build_embedding_net`; default: the default configuration).
    """
    config = None
    if ":" in arch:
        from ..spaces import parse_arch

        parsed_space, parsed = parse_arch(arch, space)
        arch, config = str(parsed), parsed_space.config()
    return {"arch": arch, "embed_dim": embed_dim, "num_classes": num_classes, "scale": scale, "margin": margin,
            "space": config, "head": head}


def model_from_checkpoint(ckpt: dict) -> EmbeddingNet:
    """Rebuild the embedding net a gallery or query checkpoint holds (eval mode); a stored gallery
    (:mod:`.stored`) gives its :class:`~.stored.StoredGallery`.

    A search-space arch is rebuilt in the space stored with it (``model.space``); only a
    checkpoint dict without one (format 1, not read through ``load_checkpoint``) falls
    back to the default space.
    """
    if ckpt.get("stored"):  # a stored gallery: its embeddings of known images and its classifier, no trunk
        from .stored import StoredGallery

        return StoredGallery.from_checkpoint(ckpt)
    spec = ckpt["model"]
    net = build_embedding_net(spec["arch"], spec["embed_dim"], spec["num_classes"],
                              scale=spec.get("scale", 16.0), margin=spec.get("margin", 0.0), space=spec.get("space"),
                              head=spec.get("head", "linear"), program=ckpt["state_dict"].get(PROGRAM_KEY))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
