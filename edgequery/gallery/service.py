"""The gallery service: an opened index, the gallery model and the serving policy, without HTTP.

:func:`open_service` opens a gallery (:func:`open_store`: a faiss index directory,
:class:`~.store.FaissGalleryStore`, or a Milvus collection, :class:`~.milvus_store.MilvusGalleryStore`),
loads the gallery checkpoint it was built with (refusing another one), and works out which
query ``model_version``\\ s to accept (:mod:`.compat`).  The :class:`GalleryService` it
returns is everything the routes of :mod:`.app` need: the store, the gallery model (to
embed uploaded images), the data spec (how uploads are pre-processed), the limits and the
API token (:func:`read_token`; ``None`` = a read-only server).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.compat import GalleryRef, check_compatible
from ..data import DataSpec
from ..errors import EdgeQueryError
from .compat import AcceptedVersion
from .guard import MIN_TOKEN_LENGTH, TOKEN_ENV, Limits
from .images import GREY_DATASETS
from .store import GalleryStore


class GalleryService:
    """Everything a request handler needs: the store, the gallery model and the policy."""

    def __init__(self, store: GalleryStore, gallery: dict, gallery_path: str, spec: DataSpec,
                 accepted: dict[str, AcceptedVersion], token: str | None = None, limits: Limits | None = None,
                 device: str = "cpu", encoders: dict | None = None):
        from ..models import model_from_checkpoint

        self.store, self.spec, self.accepted = store, spec, accepted
        self.encoders = encoders or {}  # model_version -> web.Encoder: what the page may run on the device
        self.limits = limits or Limits()
        self.token = token
        self.device = device
        self.gallery_path = gallery_path
        self.gallery_info = {"arch": gallery["model"]["arch"], "model_version": gallery["model_version"],
                             "embed_dim": gallery["model"]["embed_dim"], "checkpoint": public_name(gallery_path)}
        self.classes: list[str] = list(store.meta("classes", gallery.get("classes") or []))
        if gallery.get("stored"):
            raise EdgeQueryError(f"{gallery_path} is a stored gallery (embeddings of known images, no trunk): "
                                 "the server could not embed uploaded images with it",
                                 "serve with the trained gallery checkpoint it was made from")
        self.model = model_from_checkpoint(gallery).to(device)

    def embed(self, images: list[torch.Tensor]) -> np.ndarray:
        from ..evaluate import embed

        return embed(self.model, torch.stack(images), self.spec, device=self.device).numpy()

    def model_card(self) -> dict[str, Any]:
        grey = self.spec.dataset in GREY_DATASETS
        return {
            "gallery": {**self.gallery_info, "classes": self.classes,
                        "input": {"resolution": self.spec.resolution, "layout": "NCHW", "channel_order": "RGB",
                                  "colour": "grey, replicated to 3 channels" if grey else "RGB",
                                  "mean": list(self.spec.mean), "std": list(self.spec.std), "scale": "1/255"},
                        "embedding": {"dim": self.store.dim, "l2_normalised": True}},
            "accepted_model_versions": [{**a.to_dict(), "source": public_name(a.source)}
                                        for a in self.accepted.values()],
            "policy": "a query embedding is accepted only when its model_version is the gallery model's or that of "
                      "a query model whose model card / checkpoint says it was trained (BCT) against this gallery",
            "index": self.store.describe(),
            "limits": asdict(self.limits),
            "writes_enabled": self.token is not None,
        }

    def close(self) -> None:
        self.store.close()


def public_name(path: str | Path) -> str:
    """What ``GET /v1/model`` shows of a server file: its name (and, for a model card, its folder's).

    The absolute path would tell any client where the server keeps its files.
    """
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "model_card.json" and p.parent.name else p.name


def read_token(token_file: str | None = None, env: dict | None = None) -> str | None:
    """The API token from ``token_file`` or ``$EDGEQUERY_API_TOKEN``; ``None`` = read-only server."""
    env = os.environ if env is None else env
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise EdgeQueryError(f"cannot read token file {token_file}: {exc}",
                                 "pass a readable file holding the API token on one line") from None
    else:
        token = (env.get(TOKEN_ENV) or "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise EdgeQueryError(f"the API token is {len(token)} characters, shorter than {MIN_TOKEN_LENGTH}",
                             "use a random token, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


def open_store(index: str | Path, backend: str | None = None, collection: str = "gallery", nprobe: int = 16,
               ef_search: int = 128, k_factor: float = 4.0, snapshot_every: int = 1000,
               progress: bool = True) -> GalleryStore:
    """The gallery at ``index``: a faiss index directory, or a Milvus URI (``backend`` None: told by the name)."""
    from .milvus_store import MilvusGalleryStore, backend_of
    from .store import FaissGalleryStore

    if backend_of(index, backend) == "milvus":
        return MilvusGalleryStore(str(index), collection, nprobe=nprobe, ef_search=ef_search)
    return FaissGalleryStore(index, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor,
                             snapshot_every=snapshot_every, progress=progress)


def open_service(index_dir: str | Path, gallery_path: str | None = None, exports: list[str] = (),
                 queries: list[str] = (), token: str | None = None, limits: Limits | None = None,
                 nprobe: int = 16, ef_search: int = 128, k_factor: float = 4.0, snapshot_every: int = 1000,
                 device: str = "cpu", progress: bool = True, backend: str | None = None,
                 collection: str = "gallery") -> GalleryService:
    """Open an index (:func:`open_store`) for serving, checking it against the gallery model and exports."""
    from .compat import accepted_versions
    from .web import encoders_of

    store = open_store(index_dir, backend, collection, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor,
                       snapshot_every=snapshot_every, progress=progress)
    try:
        path, gallery = _gallery_of(store, index_dir, gallery_path)
        accepted = accepted_versions(gallery, str(path), list(exports), list(queries))
        spec = DataSpec.from_dict(store.meta("data"))
        encoders = encoders_of(list(exports), accepted, spec.dataset)
        return GalleryService(store, gallery, str(path), spec, accepted, token, limits, device, encoders)
    except BaseException:
        store.close()
        raise


def _gallery_of(store: GalleryStore, index_dir: str | Path, gallery_path: str | None) -> tuple[str, dict]:
    """The gallery checkpoint the index was built with (``gallery_path`` or the one it records)."""
    from ..checkpoint import load_checkpoint

    path = gallery_path or (store.meta("gallery") or {}).get("path")
    if not path:
        raise EdgeQueryError(f"the index at {index_dir} does not record its gallery checkpoint",
                             "pass --gallery gallery.pt")
    if not Path(path).is_file():
        raise EdgeQueryError(f"the gallery checkpoint {path} (recorded when the index was built) is missing",
                             "pass --gallery with the checkpoint's current path")
    gallery = load_checkpoint(path, "gallery")
    check_compatible(gallery, GalleryRef(model_version=store.model_version, embed_dim=store.dim), a_name=str(path),
                     b_name=str(index_dir))
    return path, gallery
