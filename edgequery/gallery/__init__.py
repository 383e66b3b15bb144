"""The server side: the gallery embedded by the gallery model, indexed with faiss, behind HTTP.

Modules, in the order data flows through them:

* :mod:`.build` — ``edgequery index``: embed images with the gallery checkpoint
  (batched, resumable) and build the faiss index;
* :mod:`.metadata` — ``gallery.sqlite``, the durable source of truth (items, their
  embeddings, labels, sources, thumbnails);
* :mod:`.faiss_index` — making, training, filling, searching and snapshotting a faiss index;
* :mod:`.store` — :class:`GalleryStore`, the small interface the API uses, and
  :class:`FaissGalleryStore`, which keeps a faiss index in step with SQLite and
  survives ``kill -9``;
* :mod:`.compat` — which query ``model_version``\\ s a gallery accepts;
* :mod:`.images` — bounded decoding of uploads;
* :mod:`.service` — an index opened for serving: the store, the gallery model, the policy;
* :mod:`.api` — the HTTP API's request and response shapes; :mod:`.problems` — the one
  error model (every 4xx/5xx is ``{problem, fix}``); :mod:`.guard` — the limits, and the
  token and size checks made before a request body is parsed;
* :mod:`.connections` — the HTTP/1.1 connection layer: header/body timeouts, the
  connection limit;
* :mod:`.app` — the FastAPI routes (``edgequery serve``), with :mod:`.web` (the on-device page).

An index directory holds ``gallery.sqlite`` (+ its WAL), ``index.<factory>.faiss`` (a
snapshot; a cache that can always be rebuilt from SQLite) and ``.lock``.
"""

from .metadata import Item, MetadataDB, NewItem
from .store import FaissGalleryStore, GalleryStore, Hit

__all__ = ["FaissGalleryStore", "GalleryStore", "Hit", "Item", "MetadataDB", "NewItem"]
