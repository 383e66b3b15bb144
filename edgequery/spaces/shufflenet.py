"""``shufflenet``: the single-path one-shot space of ShuffleNetV2 choice blocks (the paper's).

CMP-NAS searches the space of Single Path One-Shot NAS (SPOS, Guo et al., ECCV 2020):
a 3x3 stride-2 stem (16 channels), four stages of 4, 4, 8 and 4 positions (widths
64, 160, 320, 640; the first position of each stage has stride 2), a 1x1 conv to 1024
and global pooling.  Each of the 20 positions chooses one of four blocks

* ``k3``, ``k5``, ``k7`` - a ShuffleNetV2 unit with a 3x3 / 5x5 / 7x7 depthwise conv,
* ``x3`` - the Xception-like unit (three 3x3 depthwise + pointwise pairs),

and a channel scale of the unit's middle width ({0.5, 0.75, 1.0, 1.25, 1.5} x half
the output width), SPOS's channel search.  A stride-1 unit splits its input into even
and odd channels (ShuffleNetV2's channel shuffle + split), transforms one half and
concatenates; a stride-2 unit also runs a depthwise+pointwise projection branch.

The canonical string is the resolution, then one group per stage, positions as
``<op>c<scale>`` joined by ``-``::

    shufflenet:r32,k3c1.0-k5c0.5-x3c1.0-k7c1.5,k3c1.0-...,...,...

In the supernet every (position, op) pair has its own weights (SPOS's separate choice
blocks); the channel scale takes the first channels of that block's middle width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from ..errors import EdgeQueryError
from .base import BlockSpec, PoolLinear, SearchSpace, bad_field, conv_out, make_block, pick

STAGE_WIDTHS = (64, 160, 320, 640)
STAGE_DEPTHS = (4, 4, 8, 4)
STEM_WIDTH = 16
FEATURE_DIM = 1024
OPS = ("k3", "k5", "k7", "x3")


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1, depthwise: bool = False, relu: bool = True):
    return Conv2dNormActivation(cin, cout, k, stride=stride, groups=cin if depthwise else 1,
                                norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU if relu else None)


class ShuffleBlock(nn.Module):
    """A SPOS choice block: ShuffleNetV2 unit (``xception=False``) or its Xception variant.

    ``in_channels`` is the block's full input width; a stride-1 block transforms half of
    it.  The main branch goes ``in -> mid -> out - in'`` (``in'`` = the part passed on
    untouched or projected), so the output always has ``out_channels`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, mid: int, kernel: int, stride: int,
                 xception: bool = False):
        super().__init__()
        if stride not in (1, 2) or (stride == 1 and in_channels != out_channels) or in_channels % 2:
            raise ValueError(f"bad ShuffleBlock shape: {in_channels}->{out_channels}, stride {stride}")
        self.stride = stride
        inp = in_channels if stride == 2 else in_channels // 2
        branch_out = out_channels - inp
        if xception:
            main = [_conv(inp, inp, 3, stride, depthwise=True, relu=False), _conv(inp, mid),
                    _conv(mid, mid, 3, 1, depthwise=True, relu=False), _conv(mid, mid),
                    _conv(mid, mid, 3, 1, depthwise=True, relu=False), _conv(mid, branch_out)]
        else:
            main = [_conv(inp, mid), _conv(mid, mid, kernel, stride, depthwise=True, relu=False),
                    _conv(mid, branch_out)]
        self.branch_main = nn.Sequential(*main)
        self.branch_proj = (nn.Sequential(_conv(inp, inp, kernel, 2, depthwise=True, relu=False), _conv(inp, inp))
                            if stride == 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_proj is None:  # channel shuffle + split: even channels pass, odd ones are transformed
            return torch.cat((x[:, 0::2], self.branch_main(x[:, 1::2])), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


@dataclass(frozen=True)
class ShuffleArch:
    """One net of the ``shufflenet`` space: (op, channel scale) at each of the 20 positions."""

    resolution: int
    stages: tuple[tuple[tuple[str, float], ...], ...]
    space: ClassVar[str] = "shufflenet"

    def __str__(self) -> str:
        groups = ["-".join(f"{op}c{float(c)!r}" for op, c in stage) for stage in self.stages]
        return f"shufflenet:r{self.resolution}," + ",".join(groups)

    def to_dict(self) -> dict[str, Any]:
        return {"space": "shufflenet", "resolution": self.resolution,
                "stages": [[{"op": op, "channels": float(c)} for op, c in stage] for stage in self.stages]}


class ShuffleNetSpace(SearchSpace):
    """SPOS: 20 positions x {k3, k5, k7, x3} x channel scales, one-shot with separate choice blocks."""

    name = "shufflenet"
    feature_dim = FEATURE_DIM

    def __init__(self, resolutions: Sequence[int] = (32,), ops: Sequence[str] = OPS,
                 channels: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5)):
        self.resolutions = tuple(sorted(int(r) for r in resolutions))
        self.ops = tuple(ops)
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise EdgeQueryError(f"shufflenet space: unknown ops {unknown}", f"ops are a subset of {list(OPS)}")
        self.channels = tuple(sorted(float(c) for c in channels))

    def config(self) -> dict[str, Any]:
        return {"space": self.name, "resolutions": list(self.resolutions), "ops": list(self.ops),
                "channels": list(self.channels)}

    # ----------------------------------------------------------------- sampling and evolution

    def sample(self, rng: np.random.Generator) -> ShuffleArch:
        return ShuffleArch(pick(self.resolutions, rng), tuple(
            tuple((pick(self.ops, rng), pick(self.channels, rng)) for _ in range(d)) for d in STAGE_DEPTHS))

    def covering_archs(self, resolution: int) -> list[ShuffleArch]:
        # A position's key depends only on the position and its (op, scale): one uniform arch per choice.
        return [ShuffleArch(int(resolution), tuple(((op, c),) * d for d in STAGE_DEPTHS))
                for op in self.ops for c in self.channels]

    def largest(self) -> ShuffleArch:
        """Most compute: the Xception unit (or the largest kernel) at the widest channels."""
        op = "x3" if "x3" in self.ops else max(self.ops)
        return ShuffleArch(self.resolutions[-1], tuple(((op, self.channels[-1]),) * d for d in STAGE_DEPTHS))

    def smallest(self) -> ShuffleArch:
        op = min(o for o in self.ops if o != "x3") if set(self.ops) != {"x3"} else "x3"
        return ShuffleArch(self.resolutions[0], tuple(((op, self.channels[0]),) * d for d in STAGE_DEPTHS))

    def mutate(self, arch: ShuffleArch, p: float, rng: np.random.Generator) -> ShuffleArch:
        def maybe(value, choices):
            return pick(choices, rng) if rng.random() < p else value

        return ShuffleArch(maybe(arch.resolution, self.resolutions), tuple(
            tuple((maybe(op, self.ops), maybe(c, self.channels)) for op, c in stage) for stage in arch.stages))

    def crossover(self, a: ShuffleArch, b: ShuffleArch, rng: np.random.Generator) -> ShuffleArch:
        def either(x, y):
            return x if rng.random() < 0.5 else y

        return ShuffleArch(either(a.resolution, b.resolution), tuple(
            tuple((either(pa[0], pb[0]), either(pa[1], pb[1])) for pa, pb in zip(sa, sb))
            for sa, sb in zip(a.stages, b.stages)))

    # ----------------------------------------------------------------- parsing

    arch_type = ShuffleArch
    BLOCK_TOKEN = re.compile(r"^([a-z]\d+)c(\d+(?:\.\d*)?)$")
    BLOCK_KEYS = ("op", "channels")

    def _block_hint(self) -> str:
        return f"<op>c<scale> with op in {list(self.ops)} and scale in {list(self.channels)}, e.g. k5c1.0"

    def _parse_fields(self, text: str, fields: list[str]) -> ShuffleArch:
        self._check_groups(text, fields, "r", len(STAGE_DEPTHS),
                           f"write shufflenet:r<res>, then {len(STAGE_DEPTHS)} comma-separated stages of "
                           f"{'/'.join(map(str, STAGE_DEPTHS))} blocks <op>c<scale> joined by '-', e.g. "
                           f"{self.smallest()}")
        res = self._resolution_field(text, fields[0])
        return self._validated(res, self._stage_groups(text, fields[1:], lambda op, c: (op, float(c))), text)

    def _parse_dict(self, d: dict) -> ShuffleArch:
        stages = self._json_stages(d, ("resolution", "stages"))
        return self._validated(d["resolution"], stages, d)

    def _validated(self, res, stages, text) -> ShuffleArch:
        self._check_stages_and_resolution(res, stages, len(STAGE_DEPTHS), text)
        for si, (stage, depth) in enumerate(zip(stages, STAGE_DEPTHS), 1):
            if len(stage) != depth:
                raise bad_field("shufflenet", text, f"number of blocks of stage {si}", len(stage), [depth])
            for bi, (op, c) in enumerate(stage, 1):
                if op not in self.ops:
                    raise bad_field("shufflenet", text, f"op of stage {si} block {bi}", op, self.ops)
                if not isinstance(c, (int, float)) or isinstance(c, bool) or float(c) not in self.channels:
                    raise bad_field("shufflenet", text, f"channel scale of stage {si} block {bi}", c, self.channels)
        return ShuffleArch(int(res), tuple(tuple((op, float(c)) for op, c in s) for s in stages))

    # ----------------------------------------------------------------- blocks

    def blocks(self, arch: ShuffleArch, embed_dim: int = 128) -> list[BlockSpec]:
        arch = self.parse(arch)
        res = arch.resolution
        h = conv_out(res, 2)
        c = STEM_WIDTH
        out = [make_block("stem", (3, res, res), (c, h, h), k=3, s=2, act="relu")]
        for width, stage in zip(STAGE_WIDTHS, arch.stages):
            for j, (op, scale) in enumerate(stage):
                s = 2 if j == 0 else 1
                ho = conv_out(h, s)
                mid = int(width // 2 * scale)
                kind, k = ("xception", 3) if op == "x3" else ("shuffle", int(op[1:]))
                out.append(make_block(kind, (c, h, h), (width, ho, ho), k=k, mid=mid, s=s))
                c, h = width, ho
        out.append(make_block("lastconv", (c, h, h), (FEATURE_DIM, h, h), k=1, act="relu"))
        out.append(make_block("pool", (FEATURE_DIM, h, h), (FEATURE_DIM, 1, 1)))
        out.append(make_block("embed", (FEATURE_DIM, 1, 1), (embed_dim, 1, 1), norm="l2"))
        return out

    BLOCK_KINDS = ("stem", "shuffle", "xception", "lastconv", "pool", "embed")

    def _make_block(self, kind: str, cin: int, cout: int, f: dict[str, str]) -> nn.Module:
        if kind in ("shuffle", "xception"):
            return ShuffleBlock(cin, cout, int(f["mid"]), int(f["k"]), int(f["s"]), xception=kind == "xception")
        return PoolLinear(cin)  # pool

    # ----------------------------------------------------------------- supernet layout

    def supernet_slots(self) -> dict[str, nn.Module]:
        """A separate choice block per (position, op), each at the widest channel scale."""
        res = self.resolutions[-1]
        slots: dict[str, nn.Module] = {}
        for op in self.ops:
            arch = ShuffleArch(res, tuple(((op, self.channels[-1]),) * d for d in STAGE_DEPTHS))
            for name, block in zip(self.slot_names(arch), self.blocks(arch)):
                if name not in slots:
                    slots[name] = self.build_block(block)
        return slots

    def slot_names(self, arch: ShuffleArch) -> list[str]:
        names = ["stem"]
        names += [f"s{si}b{bi}_{op}" for si, stage in enumerate(arch.stages, 1) for bi, (op, _) in enumerate(stage)]
        return names + ["lastconv", "pool"]
