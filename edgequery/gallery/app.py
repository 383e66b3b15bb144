"""The gallery's HTTP API: the routes (FastAPI; interactive docs at ``/docs``, schema at ``/openapi.json``).

==========================  ======  ==========================================================
``GET  /healthz``                   liveness + item count
``GET  /v1/model``                  gallery model card, accepted query model versions, limits
``POST /v1/search``                 ``{embedding, model_version, k, label?}`` -> top-k ids, scores,
                                    labels (``label``: only items of that class)
``POST /v1/search/image``           multipart ``image`` (+ ``k``): embedded server-side by the
                                    gallery model (the paragon path), then searched
``POST /v1/gallery``        token   multipart ``images`` (+ ``labels``, ``sources``): add items
``DELETE /v1/gallery/{id}`` token   delete an item
``GET  /v1/gallery/{id}``           one item's metadata; ``/thumbnail`` its small PNG
``GET  /v1/encoders``               the query encoders served to on-device clients (``--export``)
``GET  /v1/encoders/{v}/{file}``    an encoder's model card or file (:mod:`.web`)
``GET  /``                          the page: embed a photo on the device (LiteRT.js or
                                    onnxruntime-web) or on the server, see the nearest items
==========================  ======  ==========================================================

Every refusal, from any layer, is JSON ``{"problem": ..., "fix": ...}`` (:mod:`.problems`),
and the OpenAPI schema lists, per route, every status it can answer: 400 for a request
that cannot be parsed, 401/403 for auth, 404 for an unknown id, 408 for a client too slow,
409 for an embedding from a model this gallery does not accept (see :mod:`.compat`), 413
for an oversized body or image, 422 for a malformed request (wrong dimension, NaN/Inf,
``k`` out of range, not an image, ...), 500 for a bug (logged), 503 when the server has too
many connections.

Writes need ``Authorization: Bearer <token>`` (the scheme name in any case, RFC 7235; the
token exactly), checked before the body is parsed; the token comes from the environment
(``EDGEQUERY_API_TOKEN``) or a file, never from a flag, so it does not show in ``ps``.
Without a configured token the server is read-only.  An add or delete is acknowledged
(201/200) only after it is durable: committed to SQLite (faiss, :mod:`.store`) or flushed
(Milvus, :mod:`.milvus_store`).

The work a request can cause is bounded before it is done: bodies by
:class:`~.guard.RequestGuard` (uploads at ``max_upload_bytes``, JSON at ``max_json_bytes``),
images by pixel count, aspect ratio and post-resize size (:mod:`.images`), form fields by
length, ids by the int64 range, embeddings validated in float64 with a scaled norm (any
finite scale has a direction), and connections and their timeouts by :mod:`.connections`.

The layers: :mod:`.api` (request/response shapes), :mod:`.problems` (the error model),
:mod:`.guard` (token and size checks), :mod:`.service` (the opened index and gallery
model), this module (the routes).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
# definition time, and they refer to names local to the registration functions.
import re
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Form, Path, Request, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import StringConstraints

from . import problems
from .api import MAX_ID, AddResponse, APIError, DeleteResponse, Health, ItemOut, SearchResponse, search_request_model
from .faiss_index import normalize_rows
from .guard import TOKEN_ENV, RequestGuard, token_refusal
from .images import ImageRejected, decode_upload, png_thumbnail
from .metadata import NewItem
from .problems import documented
from .service import GalleryService
from .web import add_web_routes

BEARER = (f"the server's API token (${TOKEN_ENV}), sent as `Authorization: Bearer <token>`: the scheme name is "
          "case-insensitive (RFC 7235), then one or more spaces, then the token exactly")
CLASS_INDEX = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "¹".isdigit() is True, int("¹") fails
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="an id from a search or add result")]


def create_app(service: GalleryService) -> FastAPI:
    """The FastAPI application serving ``service``."""
    from .. import __version__

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()  # final snapshot: only start-up time depends on it

    app = FastAPI(title="edgequery gallery", version=__version__, lifespan=lifespan,
                  description="Visual search over a gallery embedded by the gallery model (faiss index). Phones "
                              "send query embeddings from a compatible (BCT-trained) encoder; see GET /v1/model. "
                              "Every 4xx/5xx answer is a Problem: {\"problem\": ..., \"fix\": ...}.")
    app.add_middleware(RequestGuard, limits=service.limits, token=service.token)
    problems.install(app)  # after the guard: the fault barrier is the outermost layer
    _add_read_routes(app, service)
    _add_search_routes(app, service)
    _add_write_routes(app, service, _token_dependency(service))
    _add_item_routes(app, service)
    add_web_routes(app, service.encoders)
    return app


def _token_dependency(service: GalleryService) -> Callable[..., None]:
    """A dependency that refuses a write without the right bearer token (and declares it for /docs).

    It checks the raw header with :func:`~.guard.token_refusal`, the guard's own check, so
    the two layers cannot disagree; ``HTTPBearer`` is only there to put the scheme in the schema.
    """
    bearer = HTTPBearer(auto_error=False, description=BEARER)

    def require_token(request: Request,
                      _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        refusal = token_refusal(service.token, request.headers.get("authorization", ""))
        if refusal is not None:
            raise refusal

    return require_token


# --------------------------------------------------------------------------- request checks


def _query_vector(service: GalleryService, req) -> np.ndarray:
    """The unit query vector of a search request, refused unless its model, shape and values fit this gallery."""
    store = service.store
    if req.model_version not in service.accepted:
        accepted = ", ".join(f"{a.model_version} ({a.role} {a.arch})" for a in service.accepted.values())
        raise APIError(409, f"embeddings of model_version {req.model_version!r} are not compatible with this "
                            f"gallery (gallery model_version {store.model_version}; accepted: {accepted})",
                       "use a query encoder trained with BCT against this gallery (`edgequery train query --bct "
                       "--gallery ...`, then `edgequery export`), and start the server with --export pointing "
                       "at its model card")
    v = np.asarray(req.embedding, dtype=np.float64)  # float64: 1e-30 and 1e19 keep their direction
    if v.shape != (store.dim,):
        raise APIError(422, f"the embedding has {v.size} values but this gallery's embeddings have {store.dim}",
                       f"send the {store.dim}-d output of the query encoder (see GET /v1/model)")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise APIError(422, f"the embedding contains NaN or Inf ({bad.size} values, first at index {bad[0]}; a "
                            "JSON number beyond float64's range, such as 1e400, reads as Inf)",
                       "check the encoder's input and output; a NaN usually means a broken image or export")
    if not np.any(v):
        raise APIError(422, "the embedding is all zeros, which has no direction to search",
                       "send the encoder's actual output")
    return normalize_rows(v[None, :])[0]


def _read_image(service: GalleryService, upload: UploadFile) -> torch.Tensor:
    try:
        return decode_upload(upload.file.read(), _file_name(upload), service.spec, service.limits.max_pixels,
                             service.limits.max_aspect_ratio)
    except ImageRejected as exc:
        raise APIError(exc.status, exc.problem, exc.fix) from None


def _file_name(upload: UploadFile) -> str:
    return (upload.filename or "image")[:200]


def _resolve_label(classes: list[str], value: str) -> tuple[int | None, str | None]:
    value = value.strip()
    if value == "":
        return None, None
    if value in classes:
        return classes.index(value), value
    if CLASS_INDEX.fullmatch(value) and int(value) < len(classes):
        return int(value), classes[int(value)]
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise APIError(422, f"label {shown!r} is not one of this gallery's classes",
                   f"use a class name or index (0..{len(classes) - 1}): {', '.join(classes)}")


def _new_items(service: GalleryService, images: list[UploadFile], labels: list[str] | None,
               sources: list[str] | None) -> tuple[list[torch.Tensor], list[NewItem]]:
    """Decoded images and their items for an add request, refused when the form does not add up."""
    n = len(images)
    limit = service.limits.max_images_per_add
    if n > limit:
        raise APIError(413, f"{n} images in one request, above the limit of {limit}",
                       "split the upload into several requests")
    labels = labels or []
    if len(labels) not in (0, 1, n):
        raise APIError(422, f"{len(labels)} labels for {n} images", "send one label for all, or one per image")
    if sources and len(sources) != n:
        raise APIError(422, f"{len(sources)} sources for {n} images", "send one source per image, or none")
    resolved = [_resolve_label(service.classes, labels[0] if len(labels) == 1 else labels[i]) if labels
                else (None, None) for i in range(n)]
    tensors = [_read_image(service, im) for im in images]
    cap = service.limits.max_source_chars
    items = [NewItem(source=sources[i] if sources else f"upload:{_file_name(images[i])}"[:cap],
                     label=resolved[i][0], label_name=resolved[i][1], thumbnail=png_thumbnail(tensors[i]))
             for i in range(n)]
    return tensors, items


def _search(service: GalleryService, vector: np.ndarray, version: str, k: int, label: int | None,
            t0: float) -> dict[str, Any]:
    hits = service.store.search(vector[None, :], k, label)[0]
    return {"model_version": version, "k": k, "results": [h.to_dict() for h in hits],
            "took_ms": round(1000 * (time.perf_counter() - t0), 3)}


# --------------------------------------------------------------------------- routes


def _add_read_routes(app: FastAPI, service: GalleryService) -> None:
    @app.get("/healthz", response_model=Health, summary="liveness", responses=documented())
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": len(service.store), "model_version": service.store.model_version}

    @app.get("/v1/model", summary="gallery model card, the query model versions it accepts, the server's limits",
             responses=documented())
    def model() -> dict[str, Any]:
        return service.model_card()


def _add_search_routes(app: FastAPI, service: GalleryService) -> None:
    SearchRequest = search_request_model(service.limits.max_k, service.store.dim,  # noqa: N806 (a class)
                                         list(service.accepted), service.classes)
    last_class = max(len(service.classes) - 1, 0)

    @app.post("/v1/search", response_model=SearchResponse, summary="nearest gallery items of a query embedding",
              responses=documented(409, 413, 422, notes={
                  413: "the body is above max_json_bytes (GET /v1/model)",
                  422: "a malformed body, the wrong dimension, NaN/Inf, a zero vector or k out of range"}))
    def search(req: SearchRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        return _search(service, _query_vector(service, req), req.model_version, req.k, req.label, t0)

    @app.post("/v1/search/image", response_model=SearchResponse,
              summary="embed an uploaded image with the gallery model and search",
              responses=documented(413, 422, notes={
                  413: "the upload is above max_upload_bytes, or the image above max_pixels (GET /v1/model)",
                  422: "not a decodable image, an image too thin (max_aspect_ratio), or k out of range"}))
    def search_image(image: Annotated[UploadFile, File(description="a PNG/JPEG/... image")],
                     k: Annotated[int, Form(ge=1, le=service.limits.max_k, description="how many results")] = 10,
                     label: Annotated[int | None, Form(ge=0, le=last_class,
                                                       description="only items of this class index")] = None
                     ) -> dict[str, Any]:
        t0 = time.perf_counter()
        emb = service.embed([_read_image(service, image)])[0]
        return _search(service, emb, service.store.model_version, k, label, t0)


def _add_write_routes(app: FastAPI, service: GalleryService, require_token: Callable[..., None]) -> None:
    store = service.store
    Label = Annotated[str, StringConstraints(max_length=service.limits.max_label_chars)]  # noqa: N806
    Source = Annotated[str, StringConstraints(max_length=service.limits.max_source_chars)]  # noqa: N806

    @app.post("/v1/gallery", status_code=201, response_model=AddResponse, summary="add images (needs the token)",
              dependencies=[Depends(require_token)],
              responses=documented(401, 403, 413, 422, notes={
                  413: "the upload is above max_upload_bytes, an image above max_pixels, or more than "
                       "max_images_per_add images (GET /v1/model)",
                  422: "not a decodable image, an unknown label, a label or source too long, or counts that "
                       "do not match"}))
    def add(images: Annotated[list[UploadFile], File(description="one or more images")],
            labels: Annotated[list[Label] | None, Form(description="class name or index: one for all images or "
                                                                   "one per image")] = None,
            sources: Annotated[list[Source] | None, Form(description="where each image came from (default: "
                                                                     "upload:<file name>)")] = None
            ) -> dict[str, Any]:
        tensors, items = _new_items(service, images, labels, sources)
        ids = store.add(service.embed(tensors), items)  # durable when this returns
        return {"added": [store.get(i).to_dict() for i in ids]}

    @app.delete("/v1/gallery/{item_id}", response_model=DeleteResponse, summary="delete an item (needs the token)",
                dependencies=[Depends(require_token)], responses=documented(401, 403, 404, 422))
    def delete(item_id: ItemId) -> dict[str, Any]:
        if not store.delete(item_id):  # durable when this returns
            raise APIError(404, f"no gallery item with id {item_id}", "ids come from search or add results; "
                                                                      "a deleted id is never reused")
        return {"deleted": item_id}


def _add_item_routes(app: FastAPI, service: GalleryService) -> None:
    store = service.store

    @app.get("/v1/gallery/{item_id}", response_model=ItemOut, summary="one item's metadata",
             responses=documented(404, 422))
    def get_item(item_id: ItemId) -> dict[str, Any]:
        item = store.get(item_id)
        if item is None:
            raise APIError(404, f"no gallery item with id {item_id}", "ids come from search or add results")
        return item.to_dict()

    @app.get("/v1/gallery/{item_id}/thumbnail", summary="one item's thumbnail (PNG)", response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "the PNG"}, **documented(404, 422)})
    def thumbnail(item_id: ItemId) -> Response:
        png = store.thumbnail(item_id)
        if png is None:
            raise APIError(404, f"no thumbnail for item {item_id}", "the item does not exist or has no thumbnail")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})
