"""Model registry: one function builds any embedding net from a short arch name.

``build_embedding_net("resnet101", embed_dim=128, num_classes=10)`` gives the gallery
model; ``mobilenet_v3_small`` / ``mobilenet_v3_large`` are the query baselines.  Arch
names a search space understands (``mbv3:...``, ``shufflenet:...``) are routed to that
space, so every stage builds nets the same way.
"""

from .heads import CosineClassifier, EmbeddingNet
from .zoo import (BASELINE_ARCHS, build_embedding_net, build_trunk, load_pretrained_trunk, model_from_checkpoint,
                  model_spec, zero_init_residual)
from .stored import StoredGallery, store_gallery

__all__ = ["CosineClassifier", "EmbeddingNet", "BASELINE_ARCHS", "build_embedding_net", "build_trunk",
           "load_pretrained_trunk",
           "model_from_checkpoint", "model_spec", "StoredGallery", "store_gallery", "zero_init_residual"]
