"""The server side: the gallery embedded by the gallery model, indexed with faiss, behind HTTP.

Modules, in the order data flows through them:

* :mod:`.build` — ``edgequery index``: embed images with the gallery checkpoint
  (batched, resumable) and build the faiss index;
* :mod:`.metadata` — ``gallery.sqlite``, the durable source of truth (items, their
  embeddings, labels, sources, thumbnails);
* :mod:`.store` — :class:`GalleryStore`, the small interface the API uses, and
  :class:`FaissGalleryStore`, which keeps a faiss index in step with SQLite and
  survives ``kill -9``;
* :mod:`.compat` — which query ``model_version``\\ s a gallery accepts;
* :mod:`.images` — bounded decoding of uploads;
* :mod:`.app` — the FastAPI application (``edgequery serve``), with :mod:`.demo_page`.

An index directory holds ``gallery.sqlite`` (+ its WAL), ``index.<factory>.faiss`` (a
snapshot; a cache that can always be rebuilt from SQLite) and ``.lock``.
"""

from .metadata import Item, MetadataDB, NewItem
from .store import FaissGalleryStore, GalleryStore, Hit

__all__ = ["FaissGalleryStore", "GalleryStore", "Hit", "Item", "MetadataDB", "NewItem"]
