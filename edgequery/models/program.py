"""A whole embedding model saved as a program - TorchScript or ``torch.export`` - used as a trunk.

Users who run a visual-search service often have their embedding model as one file that
holds code and weights together (``torch.jit.save`` / ``torch.export.save``), not as a
torchvision state dict.  :class:`ProgramTrunk` runs such a file: images in, one feature
vector per image out.  The file's bytes are the buffer ``program``, so they travel inside
the gallery checkpoint's ``state_dict`` (which is read with ``weights_only=True``: a
``uint8`` tensor, no pickled code) and are part of its ``model_version``; the program is
deserialised from them by TorchScript's or ``torch.export``'s own loader.

Such a trunk embeds images (index, eval, prototypes for BCT).  It cannot be re-exported to
TFLite: the gallery model stays on the server, and only query nets are exported.
"""

from __future__ import annotations

import io

import torch
from torch import nn

from ..errors import EdgeQueryError

PROGRAM_FORMATS = ("torchscript", "exported-program")
PROGRAM_KEY = "trunk.program"  # the state_dict entry holding the program's bytes


def load_program(kind: str, data: bytes, where: str = "the program") -> nn.Module:
    """The callable module a TorchScript (``torch.jit.save``) or torch.export (``torch.export.save``) file holds."""
    try:
        if kind == "torchscript":
            return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        if kind == "exported-program":
            return torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:  # both loaders raise many types for a file of the other kind or a damaged one
        other = "exported-program" if kind == "torchscript" else "torchscript"
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise EdgeQueryError(f"{where} is not a readable {kind} file ({reason})",
                             f"pass a file written by {'torch.jit.save' if kind == 'torchscript' else 'torch.export.save'}"
                             f", or --format {other} if it is one of those") from None
    raise ValueError(f"unknown program format {kind!r}")


def _first(out):
    """A program's output, or the first of several (e.g. embedding, logits)."""
    return out[0] if isinstance(out, (tuple, list)) else out


class ProgramTrunk(nn.Module):
    """Images (``N x 3 x R x R``, normalised) -> features, by a TorchScript or torch.export program."""

    def __init__(self, kind: str, program: torch.Tensor, where: str = "the program"):
        super().__init__()
        if kind not in PROGRAM_FORMATS:
            raise ValueError(f"unknown program format {kind!r}")
        self.kind = kind
        self.register_buffer("program", program.to(torch.uint8).flatten().cpu())
        # kept out of nn.Module's registry: the program's own weights are inside its bytes, not state_dict
        object.__setattr__(self, "_module", load_program(kind, self.program.numpy().tobytes(), where))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self._module
        if x.device.type != "cpu":
            module = module.to(x.device)
        try:
            out = module(x)
        except Exception:  # noqa: BLE001 - a program exported for a fixed batch size: one image at a time
            if x.shape[0] == 1:
                raise
            out = torch.cat([_first(module(x[i:i + 1])) for i in range(x.shape[0])])
        out = _first(out)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise EdgeQueryError(f"the imported {self.kind} program returned "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__} "
                                 f"for {x.shape[0]} images, not one embedding per image (N x D)",
                                 "import a module whose forward(images) returns an N x D tensor")
        return out.float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "program")
        if stored is not None and not torch.equal(stored.to(torch.uint8).flatten(), self.program):
            raise EdgeQueryError("a checkpoint's program bytes differ from the program this trunk was built from",
                                 "rebuild the net from that checkpoint (model_from_checkpoint)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.program.numel()} bytes"
