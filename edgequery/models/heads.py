"""The embedding net every model in edgequery is: trunk -> linear head -> L2 norm.

A trunk is any module mapping ``N x 3 x R x R`` images to ``N x F`` features (ResNet-101
for the gallery, MobileNetV3 or a searched net for queries).  The classifier is kept
apart from the embedding path on purpose: BCT applies the *gallery's* classifier to the
*query's* embedding, so classifiers must take embeddings, not images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Normalised softmax: logits = s * cos(embedding, class weight) (- s*m at the target).

    With ``margin > 0`` this is the large-margin cosine loss (CosFace); the margin only
    applies when labels are passed (training), never at inference.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0, margin: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * embed_dim ** -0.5)
        self.scale = float(scale)
        self.margin = float(margin)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.normalize(embedding, dim=1) @ F.normalize(self.weight, dim=1).T
        if self.margin and labels is not None:
            cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * cos

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, scale={self.scale}, margin={self.margin}"


HEADS = ("linear", "none")


class EmbeddingNet(nn.Module):
    """``trunk`` -> ``Linear(feature_dim, embed_dim)`` -> L2 normalisation.

    ``forward`` returns the normalised embedding (what gets exported and indexed);
    ``classifier`` is only used by training losses.  ``head="none"`` drops the linear
    layer (the embedding is the trunk's own output, normalised): an imported model whose
    embedding is its pooled features (:mod:`.imported`).
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, embed_dim: int, num_classes: int,
                 scale: float = 16.0, margin: float = 0.0, head: str = "linear"):
        super().__init__()
        if head not in HEADS or (head == "none" and embed_dim != feature_dim):
            raise ValueError(f"head {head!r} with {feature_dim}-d features and a {embed_dim}-d embedding")
        self.trunk = trunk
        self.head = nn.Linear(feature_dim, embed_dim) if head == "linear" else nn.Identity()
        self.classifier = CosineClassifier(embed_dim, num_classes, scale, margin)

    @property
    def embed_dim(self) -> int:
        return self.classifier.weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)
