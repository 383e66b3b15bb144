"""The gallery's HTTP API (FastAPI; interactive docs at ``/docs``, schema at ``/openapi.json``).

==========================  ======  ==========================================================
``GET  /healthz``                   liveness + item count
``GET  /v1/model``                  gallery model card, accepted query model versions, limits
``POST /v1/search``                 ``{embedding, model_version, k}`` -> top-k ids, scores, labels
``POST /v1/search/image``           multipart ``image`` (+ ``k``): embedded server-side by the
                                    gallery model (the paragon path), then searched
``POST /v1/gallery``        token   multipart ``images`` (+ ``labels``, ``sources``): add items
``DELETE /v1/gallery/{id}`` token   delete an item
``GET  /v1/gallery/{id}``           one item's metadata; ``/thumbnail`` its small PNG
``GET  /``                          a demo page: upload a photo, see the nearest gallery items
==========================  ======  ==========================================================

Every refusal is JSON ``{"problem": ..., "fix": ...}``: 401/403 for auth, 404 for an
unknown id, 409 for an embedding from a model this gallery does not accept (see
:mod:`.compat`), 413 for an oversized body or image, 422 for a malformed request
(wrong dimension, NaN/Inf, ``k`` out of range, not an image, ...).

Writes need ``Authorization: Bearer <token>``, checked before the body is parsed; the token comes from the environment
(``EDGEQUERY_API_TOKEN``) or a file, never from a flag, so it does not show in ``ps``.
Without a configured token the server is read-only.  An add or delete is acknowledged
(201/200) only after it is durable in SQLite (:mod:`.store`).

Request bodies are capped *before* parsing by :class:`RequestGuard` (uploads at
``max_upload_bytes``, JSON at ``max_json_bytes``) and images by pixel count
(:mod:`.images`), so neither a huge upload nor a decompression bomb can exhaust memory.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
# definition time, and they refer to names local to create_app().
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ..data import DataSpec
from ..errors import EdgeQueryError
from .compat import AcceptedVersion
from .images import GREY_DATASETS, ImageRejected, decode_upload, png_thumbnail
from .metadata import NewItem
from .store import GalleryStore

TOKEN_ENV = "EDGEQUERY_API_TOKEN"
MIN_TOKEN_LENGTH = 16
UPLOAD_PATHS = ("/v1/search/image", "/v1/gallery")


@dataclass
class Limits:
    """Request limits; all are reported by ``GET /v1/model``."""

    max_k: int = 100
    max_upload_bytes: int = 8 << 20       # per multipart request
    max_json_bytes: int = 1 << 20         # per JSON request
    max_pixels: int = 25_000_000          # per decoded image (w * h)
    max_images_per_add: int = 64


class APIError(Exception):
    """A refusal with an HTTP status, what was wrong and what to do about it."""

    def __init__(self, status: int, problem: str, fix: str, headers: dict[str, str] | None = None):
        super().__init__(problem)
        self.status, self.problem, self.fix, self.headers = status, problem, fix, headers


# --------------------------------------------------------------------------- the service


class GalleryService:
    """Everything a request handler needs: the store, the gallery model and the policy."""

    def __init__(self, store: GalleryStore, gallery: dict, gallery_path: str, spec: DataSpec,
                 accepted: dict[str, AcceptedVersion], token: str | None = None, limits: Limits | None = None,
                 device: str = "cpu"):
        from ..models import model_from_checkpoint

        self.store, self.spec, self.accepted = store, spec, accepted
        self.limits = limits or Limits()
        self.token = token
        self.device = device
        self.gallery_path = gallery_path
        self.gallery_info = {"arch": gallery["model"]["arch"], "model_version": gallery["model_version"],
                             "embed_dim": gallery["model"]["embed_dim"], "checkpoint": str(gallery_path)}
        self.classes: list[str] = list(store.meta("classes", gallery.get("classes") or []))
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
            "accepted_model_versions": [a.to_dict() for a in self.accepted.values()],
            "policy": "a query embedding is accepted only when its model_version is the gallery model's or that of "
                      "a query model whose model card / checkpoint says it was trained (BCT) against this gallery",
            "index": self.store.describe(),
            "limits": asdict(self.limits),
            "writes_enabled": self.token is not None,
        }

    def close(self) -> None:
        self.store.close()


def read_token(token_file: str | None = None, env: dict | None = None) -> str | None:
    """The API token from ``token_file`` or ``$EDGEQUERY_API_TOKEN``; ``None`` = read-only server."""
    import os

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


def open_service(index_dir: str | Path, gallery_path: str | None = None, exports: list[str] = (),
                 queries: list[str] = (), token: str | None = None, limits: Limits | None = None,
                 nprobe: int = 16, ef_search: int = 128, k_factor: float = 4.0, snapshot_every: int = 1000,
                 device: str = "cpu",
                 progress: bool = True) -> GalleryService:
    """Open an index directory for serving, checking it against the gallery model and exports."""
    from ..checkpoint import load_checkpoint
    from .compat import accepted_versions
    from .store import FaissGalleryStore

    store = FaissGalleryStore(index_dir, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor,
                              snapshot_every=snapshot_every, progress=progress)
    try:
        recorded = (store.meta("gallery") or {}).get("path")
        path = gallery_path or recorded
        if not path:
            raise EdgeQueryError(f"the index at {index_dir} does not record its gallery checkpoint",
                                 "pass --gallery gallery.pt")
        if not Path(path).is_file():
            raise EdgeQueryError(f"the gallery checkpoint {path} (recorded when the index was built) is missing",
                                 "pass --gallery with the checkpoint's current path")
        gallery = load_checkpoint(path, "gallery")
        if gallery["model_version"] != store.model_version:
            raise EdgeQueryError(f"gallery {path} is model_version {gallery['model_version']}, but the index at "
                                 f"{index_dir} was built with model_version {store.model_version}",
                                 "pass the gallery checkpoint the index was built with, or rebuild the index "
                                 "with `edgequery index`")
        accepted = accepted_versions(gallery, str(path), list(exports), list(queries))
        spec = DataSpec.from_dict(store.meta("data"))
        return GalleryService(store, gallery, str(path), spec, accepted, token, limits, device)
    except BaseException:
        store.close()
        raise


# --------------------------------------------------------------------------- request guard


def is_write(method: str, path: str) -> bool:
    path = path.rstrip("/")
    return (method == "POST" and path == "/v1/gallery") or (method == "DELETE" and path.startswith("/v1/gallery/"))


class RequestGuard:
    """ASGI middleware that checks a request *before* anything parses its body.

    * writes (``POST /v1/gallery``, ``DELETE /v1/gallery/{id}``) without the right
      bearer token are refused (401/403) — no multipart parsing for strangers;
    * bodies above the limit (uploads ``max_upload_bytes``, anything else
      ``max_json_bytes``) are refused with 413: at once when ``Content-Length``
      says so, else as soon as the running count passes it.

    A refused body is drained up to ``drain_factor`` x its limit so the client gets to
    read the answer instead of a reset connection; beyond that the connection is closed.
    The route handlers check the token again (and declare it for /docs).
    """

    def __init__(self, app, service: "GalleryService", drain_factor: int = 8):
        self.app, self.service, self.drain_factor = app, service, drain_factor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        limits = self.service.limits
        upload = path.rstrip("/") in UPLOAD_PATHS
        limit = limits.max_upload_bytes if upload else limits.max_json_bytes
        headers = dict(scope.get("headers") or [])
        if is_write(method, path):
            refusal = token_refusal(self.service.token, headers.get(b"authorization", b"").decode("latin-1"))
            if refusal is not None:
                return await self._refuse(refusal, limit, receive, send)
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None
        what = "upload" if upload else "JSON request"
        too_big = APIError(413, f"the {what} is larger than this server's limit of {limit} bytes",
                           "send a smaller image (the model only needs a small one)" if upload
                           else "send one embedding per request")
        if declared is not None and declared > limit:
            return await self._refuse(too_big, limit, receive, send, declared=declared)
        body, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await self._refuse(too_big, limit, receive, send, already=size, more=more)
        data, delivered = b"".join(body), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, error: "APIError", limit: int, receive, send, declared: int | None = None,
                      already: int = 0, more: bool = True) -> None:
        cap = limit * self.drain_factor
        drained = already
        if declared is None or declared <= cap:
            while more and drained <= cap:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                drained += len(message.get("body", b""))
                more = message.get("more_body", False)
        payload = json.dumps({"problem": error.problem, "fix": error.fix}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
        if more:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def token_refusal(token: str | None, authorization: str) -> "APIError | None":
    """Why a write with this ``Authorization`` header is refused, or ``None`` if it may proceed."""
    if token is None:
        return APIError(403, "writes are disabled: this server was started without an API token",
                        f"restart `edgequery serve` with ${TOKEN_ENV} set (or --token-file)")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return APIError(401, "missing or wrong bearer token",
                        "send the header `Authorization: Bearer <the server's API token>`",
                        headers={"WWW-Authenticate": "Bearer"})
    return None


# --------------------------------------------------------------------------- request / response schemas


class SearchRequest(BaseModel):
    embedding: list[float] = Field(description="the query embedding (as many floats as the gallery's embedding "
                                               "dim, see GET /v1/model; the server L2-normalises it)")
    model_version: str = Field(description="model_version of the model that computed the embedding; "
                                           "GET /v1/model lists the accepted ones")
    k: int = Field(10, description="how many results (1..max_k, see GET /v1/model)")


class HitOut(BaseModel):
    id: int
    score: float = Field(description="cosine similarity")
    label: int | None
    label_name: str | None
    source: str


class SearchResponse(BaseModel):
    model_version: str
    k: int
    results: list[HitOut]
    took_ms: float


class ItemOut(BaseModel):
    id: int
    label: int | None
    label_name: str | None
    source: str
    added_at: float


class AddResponse(BaseModel):
    added: list[ItemOut]


# --------------------------------------------------------------------------- the app


def create_app(service: GalleryService) -> FastAPI:
    """The FastAPI application serving ``service``."""
    from .. import __version__
    from .demo_page import PAGE

    store, limits = service.store, service.limits

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()  # final snapshot: only start-up time depends on it

    app = FastAPI(title="edgequery gallery", version=__version__, lifespan=lifespan,
                  description="Visual search over a gallery embedded by the gallery model (faiss index). Phones "
                              "send query embeddings from a compatible (BCT-trained) encoder; see GET /v1/model.")
    app.add_middleware(RequestGuard, service=service)
    bearer = HTTPBearer(auto_error=False, description=f"the server's API token (${TOKEN_ENV})")

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return JSONResponse({"problem": exc.problem, "fix": exc.fix}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        parts = []
        for e in errors[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append("the body is not valid JSON" if e.get("type") == "json_invalid" else f"{where}: {e['msg']}")
        return JSONResponse({"problem": "malformed request: " + "; ".join(parts),
                             "fix": "follow the request schema at /docs (GET /openapi.json)"}, status_code=422)

    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        header = f"Bearer {creds.credentials}" if creds is not None else ""
        refusal = token_refusal(service.token, header)
        if refusal is not None:
            raise refusal

    def check_k(k: int) -> int:
        if not 1 <= k <= limits.max_k:
            raise APIError(422, f"k={k} is out of range", f"ask for 1 <= k <= {limits.max_k} results")
        return k

    def run_search(vector: np.ndarray, version: str, k: int, t0: float) -> dict[str, Any]:
        hits = store.search(vector[None, :], k)[0]
        return {"model_version": version, "k": k, "results": [h.to_dict() for h in hits],
                "took_ms": round(1000 * (time.perf_counter() - t0), 3)}

    def read_image(upload: UploadFile) -> torch.Tensor:
        try:
            return decode_upload(upload.file.read(), upload.filename or "image", service.spec, limits.max_pixels)
        except ImageRejected as exc:
            raise APIError(exc.status, exc.problem, exc.fix) from None

    @app.get("/healthz", summary="liveness")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": len(store), "model_version": store.model_version}

    @app.get("/v1/model", summary="gallery model card and the query model versions it accepts")
    def model() -> dict[str, Any]:
        return service.model_card()

    @app.post("/v1/search", response_model=SearchResponse, summary="nearest gallery items of a query embedding",
              responses={409: {"description": "embedding from a model this gallery does not accept"},
                         422: {"description": "wrong dimension, NaN/Inf, zero vector or k out of range"}})
    def search(req: SearchRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        if req.model_version not in service.accepted:
            accepted = ", ".join(f"{a.model_version} ({a.role} {a.arch})" for a in service.accepted.values())
            raise APIError(409, f"embeddings of model_version {req.model_version!r} are not compatible with this "
                                f"gallery (gallery model_version {store.model_version}; accepted: {accepted})",
                           "use a query encoder trained with BCT against this gallery (`edgequery train query --bct "
                           "--gallery ...`, then `edgequery export`), and start the server with --export pointing "
                           "at its model card")
        check_k(req.k)
        v = np.asarray(req.embedding, dtype=np.float32)
        if v.shape != (store.dim,):
            raise APIError(422, f"the embedding has {v.size} values but this gallery's embeddings have {store.dim}",
                           f"send the {store.dim}-d output of the query encoder (see GET /v1/model)")
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise APIError(422, f"the embedding contains NaN or Inf ({bad.size} values, first at index {bad[0]})",
                           "check the encoder's input and output; a NaN usually means a broken image or export")
        if not np.any(v):
            raise APIError(422, "the embedding is all zeros, which has no direction to search",
                           "send the encoder's actual output")
        return run_search(v, req.model_version, req.k, t0)

    @app.post("/v1/search/image", response_model=SearchResponse,
              summary="embed an uploaded image with the gallery model and search",
              responses={413: {"description": "upload or image too large"},
                         422: {"description": "not a decodable image, or k out of range"}})
    def search_image(image: Annotated[UploadFile, File(description="a PNG/JPEG/... image")],
                     k: Annotated[int, Form()] = 10) -> dict[str, Any]:
        t0 = time.perf_counter()
        check_k(k)
        emb = service.embed([read_image(image)])[0]
        return run_search(emb, store.model_version, k, t0)

    @app.post("/v1/gallery", status_code=201, response_model=AddResponse, summary="add images (needs the token)",
              dependencies=[Depends(require_token)])
    def add(images: Annotated[list[UploadFile], File(description="one or more images")],
            labels: Annotated[list[str] | None, Form(description="class name or index: one for all images or "
                                                                 "one per image")] = None,
            sources: Annotated[list[str] | None, Form(description="where each image came from (default: "
                                                                  "upload:<file name>)")] = None
            ) -> dict[str, Any]:
        n = len(images)
        if n > limits.max_images_per_add:
            raise APIError(413, f"{n} images in one request, above the limit of {limits.max_images_per_add}",
                           "split the upload into several requests")
        labels = labels or []
        if len(labels) not in (0, 1, n):
            raise APIError(422, f"{len(labels)} labels for {n} images", "send one label for all, or one per image")
        if sources and len(sources) != n:
            raise APIError(422, f"{len(sources)} sources for {n} images", "send one source per image, or none")
        resolved = [resolve_label(labels[0] if len(labels) == 1 else labels[i]) if labels else (None, None)
                    for i in range(n)]
        tensors = [read_image(im) for im in images]
        emb = service.embed(tensors)
        items = [NewItem(source=sources[i] if sources else f"upload:{images[i].filename or 'image'}",
                         label=resolved[i][0], label_name=resolved[i][1], thumbnail=png_thumbnail(tensors[i]))
                 for i in range(n)]
        ids = store.add(emb, items)  # durable when this returns
        return {"added": [store.get(i).to_dict() for i in ids]}

    def resolve_label(value: str) -> tuple[int | None, str | None]:
        value = value.strip()
        if value == "":
            return None, None
        if value in service.classes:
            return service.classes.index(value), value
        if value.isdigit() and int(value) < len(service.classes):
            return int(value), service.classes[int(value)]
        raise APIError(422, f"label {value!r} is not one of this gallery's classes",
                       f"use a class name or index: {', '.join(service.classes)}")

    @app.delete("/v1/gallery/{item_id}", summary="delete an item (needs the token)",
                dependencies=[Depends(require_token)])
    def delete(item_id: int) -> dict[str, Any]:
        if not store.delete(item_id):  # durable when this returns
            raise APIError(404, f"no gallery item with id {item_id}", "ids come from search or add results; "
                                                                      "a deleted id is never reused")
        return {"deleted": item_id}

    @app.get("/v1/gallery/{item_id}", response_model=ItemOut, summary="one item's metadata")
    def get_item(item_id: int) -> dict[str, Any]:
        item = store.get(item_id)
        if item is None:
            raise APIError(404, f"no gallery item with id {item_id}", "ids come from search or add results")
        return item.to_dict()

    @app.get("/v1/gallery/{item_id}/thumbnail", summary="one item's thumbnail (PNG)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def thumbnail(item_id: int) -> Response:
        png = store.thumbnail(item_id)
        if png is None:
            raise APIError(404, f"no thumbnail for item {item_id}", "the item does not exist or has no thumbnail")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def demo_page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff"})

    return app
