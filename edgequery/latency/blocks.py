"""The blocks a latency table must hold, and each block as a small standalone model file.

:func:`space_blocks` lists every distinct block key of a search space at the given
input resolutions (from :meth:`SearchSpace.covering_archs`, so nothing is sampled and
nothing is missed).  :func:`export_item` writes one module - a block or a whole net
(the identity model that measures the runtime's per-invocation overhead is written by
:mod:`.build`) - in the runtime's file format, with the converters ``edgequery export``
uses (:func:`edgequery.runtimes.convert.to_runtime_file`):

=============  ============  ==================================================
runtime        file          converter
=============  ============  ==================================================
litert         ``.tflite``   litert-torch (:func:`edgequery.runtimes.convert.to_tflite`)
onnxruntime    ``.onnx``     torch.onnx dynamo (:func:`edgequery.runtimes.convert.to_onnx`)
torch          ``.pt2``      ``torch.export`` + ``torch.export.save``
=============  ============  ==================================================

Weights are random (seeded) and BatchNorm is in eval mode: float latency does not
depend on weight values.

**Layout.**  A block file takes and gives its tensors in the layout the runtime keeps *between*
a net's layers (:data:`INNER_LAYOUT`), so it runs no layout conversion that the whole net does
not.  litert-torch turns an NCHW module into NHWC kernels and puts a ``TRANSPOSE`` at every
NCHW border: an NCHW block file would run two of them (in and out), which the net runs once,
at its input - 10-30 % of an early 224 px block's time.  The stem takes the image as the
exported net does (NCHW), so its file keeps that one transpose.  onnxruntime's files stay NCHW,
the layout its graphs are written in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..errors import EdgeQueryError
from ..runtimes.convert import to_runtime_file

RUNTIME_SUFFIX = {"litert": ".tflite", "onnxruntime": ".onnx", "torch": ".pt2"}
# The layout a runtime's converted nets keep between layers, when it is not the NCHW they are written in.
INNER_LAYOUT = {"litert": "NHWC"}


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIME_SUFFIX:
        raise EdgeQueryError(f"unknown runtime {runtime!r}", f"use one of: {', '.join(RUNTIME_SUFFIX)}")
    return runtime


def space_blocks(space, resolutions: Iterable[int], embed_dim: int = 128) -> list:
    """Every distinct :class:`BlockSpec` of ``space`` at ``resolutions``, in first-seen order."""
    seen: dict[str, object] = {}
    for res in resolutions:
        if res not in space.resolutions:
            raise EdgeQueryError(f"the {space.name} space has no input resolution {res}",
                                 f"pick from {', '.join(map(str, space.resolutions))}")
        for arch in space.covering_archs(res):
            for block in space.blocks(arch, embed_dim):
                seen.setdefault(block.key, block)
    return list(seen.values())


class Identity(nn.Module):
    """The overhead model: one trivial op (ReLU) on 8 numbers - invoking it costs the runtime's fixed overhead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


IDENTITY_SHAPE = (1, 8)


class ChannelsLast(nn.Module):
    """``block`` taking and giving NHWC tensors (the stem: taking the NCHW image, as its net does)."""

    def __init__(self, block: nn.Module, image_input: bool):
        super().__init__()
        self.block, self.image_input = block, image_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x if self.image_input else x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if y.dim() == 4 else y


def block_module(space, block, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return space.build_block(block).eval()


def block_file_module(space, block, runtime: str) -> tuple[nn.Module, tuple[int, ...]]:
    """What ``block``'s file for ``runtime`` is converted from: its module in the runtime's inner
    layout (see the module docstring) and the batch-1 input shape that module takes."""
    module, (c, h, w) = block_module(space, block), block.in_shape
    if INNER_LAYOUT.get(runtime) != "NHWC":
        return module, (1, c, h, w)
    stem = block.kind == "stem"
    return ChannelsLast(module, image_input=stem).eval(), (1, c, h, w) if stem else (1, h, w, c)


def net_module(arch: str, embed_dim: int, seed: int = 0, space=None) -> nn.Module:
    """A whole query net of ``arch`` as ``edgequery export`` exports it (trunk, head, L2 norm).

    ``space``: the space the arch string belongs to, when it is not the default one (e.g. a
    space configured for another input resolution); default: parsed as ``edgequery export`` does.
    """
    from ..models import EmbeddingNet, build_embedding_net

    torch.manual_seed(seed)
    if space is None:
        return build_embedding_net(str(arch), embed_dim, num_classes=10).eval()
    trunk, dim = space.build(space.parse(str(arch)))
    return EmbeddingNet(trunk, dim, embed_dim, num_classes=10).eval()


def export_item(item: dict, runtime: str, space=None) -> Path:
    """Write one job item: ``{"key", "in_shape", "path"}`` (a block of ``space``) or ``{"arch", "embed_dim", "path"}``."""
    from ..spaces.base import BlockSpec

    if "arch" in item:
        res = int(item["resolution"])
        net = net_module(item["arch"], item["embed_dim"], space=space)
        return to_runtime_file(net, (1, 3, res, res), runtime, item["path"])
    block = BlockSpec(item["key"], tuple(item["in_shape"]), tuple(item["out_shape"]))
    module, in_shape = block_file_module(space, block, runtime)
    return to_runtime_file(module, in_shape, runtime, item["path"])


def _worker(job_file: str) -> None:
    """``python -m edgequery.latency.blocks JOB.json``: convert a share of a profile's files (see :mod:`.build`)."""
    import json

    from ..spaces import space_from_config

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    space = space_from_config(job["space"]) if job.get("space") else None
    for item in job["items"]:
        export_item(item, job["runtime"], space)


if __name__ == "__main__":
    import sys

    _worker(sys.argv[1])
