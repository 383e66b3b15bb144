"""The contract every search space meets, and what all spaces share.

An *arch* is a small frozen dataclass with a canonical string (like a faiss factory
string, e.g. ``mbv3:r32,w1.0,k3e4-k5e6,...``) that round-trips through
:meth:`SearchSpace.parse`, and a JSON form (``arch.to_dict()``) that parses back too.

A *block* is a :class:`BlockSpec` whose ``key`` is the latency-table key: canonical,
human-readable and shape-complete, e.g. ``mbconv|in=16x16x24|out=8x8x40|k=5|e=4|s=2|se=1|act=hswish``
(shapes are ``HxWxC`` at batch 1).  ``space.blocks(arch)`` lists *every* layer group of
the exported embedding net - stem, searchable blocks, last layers and the embedding
head - so the sum of per-block latencies covers the whole net.  The key alone
determines the module: ``space.build_block(block)`` builds it, and ``space.build(arch)``
is literally those modules in order (:class:`SpaceTrunk`), so a LUT measures exactly
the layers the net runs.

The only thing outside the blocks is pre-processing: a trunk fed images of another
size than its arch's resolution first resizes them (bilinear).  Export a searched net
at ``trunk.resolution`` and that step does not exist.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from ..errors import EdgeQueryError


@dataclass(frozen=True)
class BlockSpec:
    """One layer group of a built net, as the latency table sees it.

    ``key`` is canonical: two blocks with the same key build nets with identical
    latency.  ``in_shape`` / ``out_shape`` are ``(C, H, W)`` at batch 1.
    """

    key: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]

    @property
    def kind(self) -> str:
        return self.key.split("|", 1)[0]

    @property
    def fields(self) -> dict[str, str]:
        """The key's ``name=value`` fields other than the shapes (values as strings)."""
        return parse_key(self.key)[3]


# --------------------------------------------------------------------------- block keys


def _shape_text(shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    return f"{h}x{w}x{c}"


def make_block(kind: str, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
               **fields: Any) -> BlockSpec:
    """A BlockSpec whose key is ``kind|in=HxWxC|out=HxWxC|name=value|...`` (fields in the given order)."""
    parts = [kind, f"in={_shape_text(in_shape)}", f"out={_shape_text(out_shape)}"]
    parts += [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in fields.items()]
    return BlockSpec("|".join(parts), tuple(in_shape), tuple(out_shape))


_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def parse_key(key: str) -> tuple[str, tuple[int, int, int], tuple[int, int, int], dict[str, str]]:
    """``kind, in_shape (C,H,W), out_shape (C,H,W), other fields`` of a block key."""
    kind, *parts = key.split("|")
    fields: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise EdgeQueryError(f"malformed block key {key!r}: field {part!r} is not name=value",
                                 "use keys produced by space.blocks(arch), e.g. "
                                 "mbconv|in=16x16x24|out=8x8x40|k=5|e=4|s=2|se=1|act=hswish")
        fields[name] = value
    shapes = []
    for which in ("in", "out"):
        m = _SHAPE.match(fields.pop(which, ""))
        if not m:
            raise EdgeQueryError(f"block key {key!r} lacks a valid {which}=HxWxC field",
                                 "use keys produced by space.blocks(arch)")
        h, w, c = map(int, m.groups())
        shapes.append((c, h, w))
    return kind, shapes[0], shapes[1], fields


def conv_out(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded convolution with ``stride``."""
    return math.ceil(size / stride)


# --------------------------------------------------------------------------- modules every space uses


def resize_input(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinearly resize a batch to ``resolution`` unless it already has that size."""
    if x.shape[-2] == resolution and x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


class SpaceTrunk(nn.Module):
    """A searched net's trunk: its blocks in order, run at the arch's input resolution.

    ``arch`` is the canonical arch string (kept for model cards and error messages);
    ``resolution`` the input side the net was designed for.
    """

    def __init__(self, blocks: Sequence[nn.Module], resolution: int, arch: str):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.resolution = int(resolution)
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(resize_input(x, self.resolution))

    def extra_repr(self) -> str:
        return f"arch={self.arch}, resolution={self.resolution}"


class PoolLinear(nn.Module):
    """Global average pool, then (optionally) ``Linear`` + activation: the end of a trunk.

    Takes ``N x C x H x W``, returns flat ``N x F`` features.
    """

    def __init__(self, in_channels: int, out_features: int | None = None, activation: type[nn.Module] | None = None):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_channels, out_features) if out_features else None
        self.act = activation() if activation and out_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        if self.linear is not None:
            x = self.linear(x)
        if self.act is not None:
            x = self.act(x)
        return x


class EmbedBlock(nn.Module):
    """The embedding head as a standalone block: ``Linear`` then L2 normalisation.

    Same computation as :class:`~edgequery.models.heads.EmbeddingNet`'s head; accepts
    flat features or ``N x C x 1 x 1`` (what a latency profiler feeds every block).
    """

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(torch.flatten(x, 1)), dim=1)


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}


# --------------------------------------------------------------------------- helpers for arch parsing


def bad_field(space: str, text: Any, field: str, value: Any, allowed: Sequence[Any] | str) -> EdgeQueryError:
    """The error for a field outside the space: names the field, the value and what is allowed."""
    allowed_text = allowed if isinstance(allowed, str) else ", ".join(str(a) for a in allowed)
    shown = text if isinstance(text, str) else "the JSON arch"
    return EdgeQueryError(f"{space} arch {shown!r}: {field} is {value!r}, which is not in the {space} space",
                          f"{field} must be one of: {allowed_text}")


def wrong_space(text: str, expected: str) -> EdgeQueryError:
    """The error for an arch string of another space (or no space prefix at all)."""
    from . import SPACES

    space = text.partition(":")[0] if ":" in text else None
    if space and space != expected:
        return EdgeQueryError(f"arch {text!r} belongs to space {space!r}, not {expected!r}",
                              f"known spaces: {', '.join(SPACES)}; pass an arch of the {expected} space")
    return EdgeQueryError(f"{text!r} is not an arch string of the {expected} space",
                          f"arch strings start with '{expected}:' (known spaces: {', '.join(SPACES)})")


def pick(choices: Sequence[Any], rng: np.random.Generator) -> Any:
    return choices[int(rng.integers(len(choices)))]


# --------------------------------------------------------------------------- the contract


class SearchSpace(ABC):
    """Sampling, mutation, crossover, block enumeration and standalone builds.

    Spaces also know how their weight-sharing supernet is laid out
    (:meth:`supernet_slots`, :meth:`plan`): see :mod:`edgequery.spaces.supernet`.
    """

    name: str
    feature_dim: int

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any: ...

    @abstractmethod
    def mutate(self, arch: Any, p: float, rng: np.random.Generator) -> Any:
        """Each gene resampled (uniformly, possibly to the same value) with probability ``p``."""

    @abstractmethod
    def crossover(self, a: Any, b: Any, rng: np.random.Generator) -> Any:
        """Each gene taken from ``a`` or ``b`` with equal probability."""

    @abstractmethod
    def _parse_fields(self, text: str, fields: list[str]) -> Any:
        """The arch from the comma-separated fields after ``<space>:`` (``text`` is the whole string)."""

    @abstractmethod
    def _parse_dict(self, d: dict) -> Any:
        """The arch from its JSON form (``arch.to_dict()``)."""

    @abstractmethod
    def _block_hint(self) -> str:
        """How one block of a stage group is written (for errors), e.g. ``k<kernel>e<expansion> ...``."""

    @abstractmethod
    def blocks(self, arch: Any, embed_dim: int = 128) -> list[BlockSpec]:
        """The arch's blocks in execution order (their latencies sum to the net's)."""

    BLOCK_KINDS: tuple[str, ...]    # every block kind the space's keys use

    @abstractmethod
    def _make_block(self, kind: str, cin: int, cout: int, fields: dict[str, str]) -> nn.Module:
        """The module of a block of a kind only this space has (``fields``: the key's other fields)."""

    def build_block(self, block: BlockSpec) -> nn.Module:
        """A standalone module for one block (for per-block latency measurement): the key alone decides it.

        ``stem`` and ``lastconv`` (conv + BatchNorm + activation) and ``embed`` are common to
        every space; the rest is the space's :meth:`_make_block`.
        """
        kind, (cin, _, _), (cout, _, _), f = parse_key(block.key)
        if kind not in self.BLOCK_KINDS:
            raise EdgeQueryError(f"block kind {kind!r} (key {block.key!r}) is not a block of the {self.name} space",
                                 f"{self.name} blocks are: {', '.join(self.BLOCK_KINDS)}")
        try:
            if kind in ("stem", "lastconv"):
                return Conv2dNormActivation(cin, cout, int(f["k"]), stride=int(f.get("s", 1)),
                                            norm_layer=nn.BatchNorm2d, activation_layer=ACTIVATIONS[f["act"]])
            if kind == "embed":
                return EmbedBlock(cin, cout)
            return self._make_block(kind, cin, cout, f)
        except (KeyError, ValueError) as exc:
            raise EdgeQueryError(f"block key {block.key!r} lacks or has a bad field ({exc})",
                                 f"use keys produced by the {self.name} space's blocks(arch)") from None

    @abstractmethod
    def covering_archs(self, resolution: int) -> list[Any]:
        """Archs at ``resolution`` that together contain every block the space has there.

        A latency profiler measures the union of their :meth:`blocks` - each block key of
        the space once - instead of enumerating archs (``mbv3`` has ~10^19).
        """

    @abstractmethod
    def largest(self) -> Any:
        """The arch with every choice at its maximum (the sandwich rule's top)."""

    @abstractmethod
    def smallest(self) -> Any:
        """The arch with every choice at its minimum (the sandwich rule's bottom)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The choice lists (JSON); stored with supernets so a changed space is noticed."""

    @abstractmethod
    def supernet_slots(self) -> dict[str, nn.Module]:
        """Modules holding the shared weights: each at the largest size any arch uses there."""

    @abstractmethod
    def slot_names(self, arch: Any) -> list[str]:
        """For each trunk block of ``arch`` (all blocks but ``embed``), the supernet slot it uses."""

    # ----------------------------------------------------------------- parsing (shared)

    arch_type: type                 # the space's arch dataclass
    BLOCK_TOKEN: re.Pattern         # one block of a stage group in the string form, e.g. k5e4
    BLOCK_KEYS: tuple[str, ...]     # a block's keys in the JSON form, e.g. ("kernel", "expand")

    def parse(self, text: Any) -> Any:
        """An arch from its canonical string or JSON dict (an arch passes through); errors name the bad field."""
        if isinstance(text, self.arch_type):
            return text
        if isinstance(text, dict):
            if text.get("space", self.name) != self.name:
                raise wrong_space(f"{text.get('space')}:...", self.name)
            return self._parse_dict(text)
        if not isinstance(text, str):
            raise EdgeQueryError(f"cannot read a {self.name} arch from a {type(text).__name__}",
                                 f"pass the canonical string ({self.name}:r32,...) or its JSON dict")
        text = text.strip()
        space, sep, body = text.partition(":")
        if not sep or space != self.name:
            raise wrong_space(text, self.name)
        return self._parse_fields(text, body.split(","))

    def _check_groups(self, text: str, fields: list[str], head: str, n_stages: int, how: str) -> None:
        """``fields`` must be the ``head`` fields (``r`` or ``r/w``) then one group per stage; ``how``: the fix."""
        n_head = len(head.split("/"))
        if len(fields) != n_head + n_stages:
            raise EdgeQueryError(f"{self.name} arch {text!r} has {max(len(fields) - n_head, 0)} stage groups after "
                                 f"{head}, the {self.name} space has {n_stages} stages", how)

    def _resolution_field(self, text: str, field: str) -> int:
        m = re.match(r"^r(\d+)$", field)
        if not m:
            raise bad_field(self.name, text, "resolution (r<pixels>)", field, [f"r{r}" for r in self.resolutions])
        return int(m.group(1))

    def _stage_groups(self, text: str, groups: Sequence[str], convert) -> list[list[Any]]:
        """Each stage group's blocks (``BLOCK_TOKEN`` joined by ``-``), each made by ``convert(*match.groups())``."""
        stages = []
        for si, group in enumerate(groups, 1):
            blocks = []
            for bi, token in enumerate(group.split("-"), 1):
                m = self.BLOCK_TOKEN.match(token)
                if not m:
                    raise bad_field(self.name, text, f"stage {si} block {bi}", token, self._block_hint())
                blocks.append(convert(*m.groups()))
            stages.append(blocks)
        return stages

    def _json_stages(self, d: dict, required: Sequence[str]) -> list[list[tuple]]:
        """The JSON form's stages as lists of block tuples (``BLOCK_KEYS`` order), after checking ``required`` keys."""
        missing = [k for k in required if k not in d]
        if missing:
            raise EdgeQueryError(f"{self.name} JSON arch lacks {', '.join(missing)}",
                                 f"write it as {self.smallest().to_dict()}")
        shape = "{" + ", ".join(f'"{k}": ..' for k in self.BLOCK_KEYS) + "}"
        if not isinstance(d["stages"], list):
            raise bad_field(self.name, d, "stages", d["stages"], f"a list of stages, each a list of {shape} blocks")
        out = []
        for si, stage in enumerate(d["stages"], 1):
            if not isinstance(stage, list):
                raise bad_field(self.name, d, f"stage {si}", stage, f"a list of {shape} blocks")
            blocks = []
            for bi, blk in enumerate(stage, 1):
                if not isinstance(blk, dict) or set(blk) != set(self.BLOCK_KEYS):
                    raise bad_field(self.name, d, f"stage {si} block {bi}", blk, shape)
                blocks.append(tuple(blk[k] for k in self.BLOCK_KEYS))
            out.append(blocks)
        return out

    def _check_stages_and_resolution(self, res: Any, stages: Sequence, n_stages: int, text: Any) -> None:
        if len(stages) != n_stages:
            raise bad_field(self.name, text, "number of stages", len(stages), [n_stages])
        if res not in self.resolutions:
            raise bad_field(self.name, text, "resolution", res, self.resolutions)

    # ----------------------------------------------------------------- shared behaviour

    def build(self, arch: Any) -> tuple[nn.Module, int]:
        """The standalone trunk for ``arch`` (images -> features) and its feature dim."""
        arch = self.parse(arch) if isinstance(arch, (str, dict)) else arch
        mods = [self.build_block(b) for b in self.blocks(arch) if b.kind != "embed"]
        return SpaceTrunk(mods, arch.resolution, str(arch)), self.feature_dim

    def plan(self, arch: Any) -> list[tuple[str, BlockSpec]]:
        """``(slot, block)`` for every trunk block of ``arch``: how the supernet runs it."""
        blocks = [b for b in self.blocks(arch) if b.kind != "embed"]
        return list(zip(self.slot_names(arch), blocks, strict=True))

    def cost(self, arch: Any, embed_dim: int = 128) -> dict[str, int]:
        """FLOPs and parameters of the exported net (trunk + embedding head), batch 1.

        FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real
        forward pass: 2 x multiply-accumulates of convolutions and matrix products
        (element-wise work - BN, activations, SE scaling - is not counted).  The cosine
        classifier is training-only and not included.
        """
        from torch.utils.flop_counter import FlopCounterMode

        arch = self.parse(arch) if isinstance(arch, (str, dict)) else arch
        trunk, dim = self.build(arch)
        net = nn.Sequential(trunk, EmbedBlock(dim, embed_dim)).eval()
        x = torch.zeros(1, 3, arch.resolution, arch.resolution)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        return {"flops": int(counter.get_total_flops()), "params": sum(p.numel() for p in net.parameters())}

    def describe(self) -> str:
        """One line per choice list (for ``--help`` and errors)."""
        return "; ".join(f"{k}: {v}" for k, v in self.config().items() if k != "space")
