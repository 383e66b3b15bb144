"""The pre-processing contract: how decoded images become a model's input.

Images are kept as ``uint8`` tensors (``N x C x R x R``, ``C`` = 1 for grey, 3 for
colour).  Every model takes :func:`to_model_input`'s output: float, 3 channels (grey is
replicated), scaled by 1/255 and normalised with the data spec's ``mean`` / ``std``
(ImageNet's by default).  Photos of any shape are brought to ``R x R`` by
:func:`square_resize` (shorter side to ``R``, centre crop); square tensors by
:func:`resize_images`.  Exports, the server's uploads and the training data all go
through these same functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .splits import DataSpec

# ImageNet statistics: the input contract of torchvision's pretrained weights, so a user
# who has those weights gets the pre-processing they were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def square_resize(im, resolution: int) -> torch.Tensor:
    """A PIL RGB image -> ``uint8 3 x R x R``: shorter side resized to ``R`` (bilinear), centre-cropped."""
    from PIL import Image

    w, h = im.size
    s = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a uint8 ``N x C x H x W`` tensor to ``resolution`` (bilinear, antialiased)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear",
                          antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def to_model_input(images: torch.Tensor, spec: DataSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 ``N x C x R x R`` (C = 1 or 3) -> normalised float ``N x 3 x R x R``."""
    x = images.to(device=device, non_blocking=True).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
