"""``mbv3``: the mobile default space - MobileNetV3-style inverted residual stages.

The layout is MobileNetV3-Large's as once-for-all (OFA, Cai et al., ICLR 2020) searches
it: a stride-2 3x3 stem (h-swish), one fixed 3x3 depthwise-separable block, then five
searchable stages

=====  =====  ======  ==========  ====
stage  width  stride  activation  SE
=====  =====  ======  ==========  ====
1      24     2       ReLU        no
2      40     2       ReLU        yes
3      80     2       h-swish     no
4      112    1       h-swish     yes
5      160    2       h-swish     yes
=====  =====  ======  ==========  ====

then a 1x1 conv to 6x the last width (h-swish), global pooling and a Linear to 1280
features (h-swish).  SE and h-swish sit exactly where MobileNetV3 puts them.

Searchable: per stage depth {2,3,4}; per block kernel {3,5,7} and expansion {3,4,6};
a global width multiplier {0.5,0.75,1.0} (channels rounded to multiples of 8, as
torchvision does); the input resolution {24,28,32}.  The choice lists are constructor
arguments (stored with a supernet), so other data sizes can use other resolutions.

The canonical string lists resolution, width, then one group per stage, blocks as
``k<kernel>e<expansion>`` joined by ``-``::

    mbv3:r32,w1.0,k3e4-k5e6,k3e3-k3e3-k7e6,k5e4-k5e4,k3e6-k3e6-k3e3-k3e3,k7e3-k7e3

Blocks are torchvision's own ``InvertedResidual`` (with ``SqueezeExcitation`` and
``Conv2dNormActivation``), so a searched net is a MobileNetV3 in every layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
from torch import nn
from torchvision.models._utils import _make_divisible
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig

from ..errors import EdgeQueryError
from .base import ACTIVATIONS, BlockSpec, PoolLinear, SearchSpace, bad_field, conv_out, make_block, pick

# (width, stride, activation, squeeze-and-excitation) of the five searchable stages
STAGES = ((24, 2, "relu", False), (40, 2, "relu", True), (80, 2, "hswish", False),
          (112, 1, "hswish", True), (160, 2, "hswish", True))
STEM_WIDTH = 16
LAST_EXPANSION = 6
FEATURE_DIM = 1280


def channels(width: int, mult: float) -> int:
    """torchvision's width rounding: ``width * mult`` to a multiple of 8 (never < 90 %)."""
    return _make_divisible(width * mult, 8)


def expanded(in_channels: int, expansion: int) -> int:
    return _make_divisible(in_channels * expansion, 8)


@dataclass(frozen=True)
class MBv3Arch:
    """One net of the ``mbv3`` space: resolution, width multiplier, (kernel, expansion) per block."""

    resolution: int
    width: float
    stages: tuple[tuple[tuple[int, int], ...], ...]
    space: ClassVar[str] = "mbv3"

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def __str__(self) -> str:
        groups = ["-".join(f"k{k}e{e}" for k, e in stage) for stage in self.stages]
        return f"mbv3:r{self.resolution},w{float(self.width)!r}," + ",".join(groups)

    def to_dict(self) -> dict[str, Any]:
        return {"space": "mbv3", "resolution": self.resolution, "width": float(self.width),
                "stages": [[{"kernel": k, "expand": e} for k, e in stage] for stage in self.stages]}


_WIDTH = re.compile(r"^w(\d+(?:\.\d*)?)$")


class MBv3Space(SearchSpace):
    """MobileNetV3 stages with elastic depth, kernel, expansion, width and resolution."""

    name = "mbv3"
    feature_dim = FEATURE_DIM

    def __init__(self, resolutions: Sequence[int] = (24, 28, 32), widths: Sequence[float] = (0.5, 0.75, 1.0),
                 depths: Sequence[int] = (2, 3, 4), kernels: Sequence[int] = (3, 5, 7),
                 expands: Sequence[int] = (3, 4, 6)):
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.widths = tuple(sorted(float(w) for w in widths))
        self.depths = tuple(sorted(int(d) for d in depths))
        self.kernels = tuple(sorted(int(k) for k in kernels))
        self.expands = tuple(sorted(int(e) for e in expands))
        if any(k % 2 == 0 for k in self.kernels) or min(self.depths) < 1:
            raise EdgeQueryError(f"mbv3 space: kernels {self.kernels} must be odd and depths {self.depths} >= 1",
                                 "fix the space's choice lists")

    def config(self) -> dict[str, Any]:
        return {"space": self.name, "resolutions": list(self.resolutions), "widths": list(self.widths),
                "depths": list(self.depths), "kernels": list(self.kernels), "expands": list(self.expands)}

    # ----------------------------------------------------------------- sampling and evolution

    def sample(self, rng: np.random.Generator) -> MBv3Arch:
        stages = tuple(tuple((pick(self.kernels, rng), pick(self.expands, rng))
                             for _ in range(pick(self.depths, rng))) for _ in STAGES)
        return MBv3Arch(pick(self.resolutions, rng), pick(self.widths, rng), stages)

    def covering_archs(self, resolution: int) -> list[MBv3Arch]:
        # A block's key depends on the width, its stage, whether it opens the stage and its
        # (kernel, expansion) - not on the depth: one deepest arch per (width, kernel, expansion).
        deepest = self.depths[-1]
        return [MBv3Arch(int(resolution), w, tuple(((k, e),) * deepest for _ in STAGES))
                for w in self.widths for k in self.kernels for e in self.expands]

    def largest(self) -> MBv3Arch:
        block = (self.kernels[-1], self.expands[-1])
        return MBv3Arch(self.resolutions[-1], self.widths[-1], tuple((block,) * self.depths[-1] for _ in STAGES))

    def smallest(self) -> MBv3Arch:
        block = (self.kernels[0], self.expands[0])
        return MBv3Arch(self.resolutions[0], self.widths[0], tuple((block,) * self.depths[0] for _ in STAGES))

    def mutate(self, arch: MBv3Arch, p: float, rng: np.random.Generator) -> MBv3Arch:
        def maybe(value, choices):
            return pick(choices, rng) if rng.random() < p else value

        stages = []
        for stage in arch.stages:
            depth = maybe(len(stage), self.depths)
            blocks = []
            for j in range(depth):
                if j < len(stage):
                    blocks.append((maybe(stage[j][0], self.kernels), maybe(stage[j][1], self.expands)))
                else:  # a block the depth mutation added: fresh genes
                    blocks.append((pick(self.kernels, rng), pick(self.expands, rng)))
            stages.append(tuple(blocks))
        return MBv3Arch(maybe(arch.resolution, self.resolutions), maybe(arch.width, self.widths), tuple(stages))

    def crossover(self, a: MBv3Arch, b: MBv3Arch, rng: np.random.Generator) -> MBv3Arch:
        def either(x, y):
            return x if rng.random() < 0.5 else y

        stages = []
        for sa, sb in zip(a.stages, b.stages):
            depth = either(len(sa), len(sb))
            blocks = []
            for j in range(depth):
                parents = [s[j] for s in (sa, sb) if j < len(s)]
                src_k, src_e = (either(*parents), either(*parents)) if len(parents) == 2 else (parents[0],) * 2
                blocks.append((src_k[0], src_e[1]))
            stages.append(tuple(blocks))
        return MBv3Arch(either(a.resolution, b.resolution), either(a.width, b.width), tuple(stages))

    # ----------------------------------------------------------------- parsing

    arch_type = MBv3Arch
    BLOCK_TOKEN = re.compile(r"^k(\d+)e(\d+)$")
    BLOCK_KEYS = ("kernel", "expand")

    def _block_hint(self) -> str:
        return (f"k<kernel>e<expansion> with kernel in {list(self.kernels)} and expansion in {list(self.expands)}, "
                "e.g. k5e4")

    def _parse_fields(self, text: str, fields: list[str]) -> MBv3Arch:
        self._check_groups(text, fields, "r/w", len(STAGES),
                           f"write mbv3:r<res>,w<width>, then {len(STAGES)} comma-separated stages of blocks "
                           f"k<kernel>e<expansion> joined by '-', e.g. {self.largest()}")
        res = self._resolution_field(text, fields[0])
        m = _WIDTH.match(fields[1])
        if not m:
            raise bad_field("mbv3", text, "width (w<multiplier>)", fields[1], [f"w{w!r}" for w in self.widths])
        stages = self._stage_groups(text, fields[2:], lambda k, e: (int(k), int(e)))
        return self._validated(res, float(m.group(1)), stages, text)

    def _parse_dict(self, d: dict) -> MBv3Arch:
        stages = self._json_stages(d, ("resolution", "width", "stages"))
        return self._validated(d["resolution"], d["width"], stages, d)

    def _validated(self, res, width, stages, text) -> MBv3Arch:
        self._check_stages_and_resolution(res, stages, len(STAGES), text)
        if not isinstance(width, (int, float)) or float(width) not in self.widths:
            raise bad_field("mbv3", text, "width", width, self.widths)
        for si, stage in enumerate(stages, 1):
            if len(stage) not in self.depths:
                raise bad_field("mbv3", text, f"depth of stage {si}", len(stage), self.depths)
            for bi, (k, e) in enumerate(stage, 1):
                if k not in self.kernels or isinstance(k, bool):
                    raise bad_field("mbv3", text, f"kernel of stage {si} block {bi}", k, self.kernels)
                if e not in self.expands or isinstance(e, bool):
                    raise bad_field("mbv3", text, f"expansion of stage {si} block {bi}", e, self.expands)
        return MBv3Arch(int(res), float(width), tuple(tuple((int(k), int(e)) for k, e in s) for s in stages))

    # ----------------------------------------------------------------- blocks

    def blocks(self, arch: MBv3Arch, embed_dim: int = 128) -> list[BlockSpec]:
        arch = self.parse(arch)
        return self._blocks(arch.resolution, arch.width, arch.stages, embed_dim)

    def _blocks(self, res: int, width: float, stages, embed_dim: int) -> list[BlockSpec]:
        c = channels(STEM_WIDTH, width)
        h = conv_out(res, 2)
        out = [make_block("stem", (3, res, res), (c, h, h), k=3, s=2, act="hswish"),
               make_block("mbconv", (c, h, h), (c, h, h), k=3, e=1, s=1, se=0, act="relu")]
        for (stage_width, stride, act, se), stage in zip(STAGES, stages):
            cout = channels(stage_width, width)
            for j, (k, e) in enumerate(stage):
                s = stride if j == 0 else 1
                ho = conv_out(h, s)
                out.append(make_block("mbconv", (c, h, h), (cout, ho, ho), k=k, e=e, s=s, se=se, act=act))
                c, h = cout, ho
        last = LAST_EXPANSION * c
        out.append(make_block("lastconv", (c, h, h), (last, h, h), k=1, act="hswish"))
        out.append(make_block("pool_mix", (last, h, h), (FEATURE_DIM, 1, 1), act="hswish"))
        out.append(make_block("embed", (FEATURE_DIM, 1, 1), (embed_dim, 1, 1), norm="l2"))
        return out

    BLOCK_KINDS = ("stem", "mbconv", "lastconv", "pool_mix", "embed")

    def _make_block(self, kind: str, cin: int, cout: int, f: dict[str, str]) -> nn.Module:
        if f["act"] not in ACTIVATIONS:
            raise KeyError("act")
        if kind == "mbconv":
            cfg = InvertedResidualConfig(cin, int(f["k"]), expanded(cin, int(f["e"])), cout, f["se"] == "1",
                                         "HS" if f["act"] == "hswish" else "RE", int(f["s"]), 1, 1.0)
            return InvertedResidual(cfg, norm_layer=nn.BatchNorm2d)
        return PoolLinear(cin, cout, ACTIVATIONS[f["act"]])  # pool_mix

    # ----------------------------------------------------------------- supernet layout

    def supernet_slots(self) -> dict[str, nn.Module]:
        """One module per position at its largest (kernel, expansion, width): OFA's shared weights."""
        top = self.largest()
        blocks = self._blocks(top.resolution, top.width, top.stages, 128)
        names = self.slot_names(top)
        return {name: self.build_block(b) for name, b in zip(names, blocks)}

    def slot_names(self, arch: MBv3Arch) -> list[str]:
        names = ["stem", "first"]
        names += [f"s{si}b{bi}" for si, stage in enumerate(arch.stages, 1) for bi in range(len(stage))]
        return names + ["lastconv", "pool_mix"]

