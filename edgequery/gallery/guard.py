"""The request guard: who may write, and how big a request may be — checked before any parsing.

* :class:`Limits` — the server's limits (all reported by ``GET /v1/model``): request and
  image sizes here and in :mod:`.images`, field sizes in :mod:`.app`, connections and
  timeouts in :mod:`.connections`;
* :func:`token_refusal` — why a write with a given ``Authorization`` header is refused
  (403 without a configured token, 401 for a missing or wrong bearer token).  The header
  is ``Bearer <token>``: the scheme name in any case (RFC 7235 makes it case-insensitive),
  one or more spaces, then the token exactly (compared in constant time).  The guard and
  the routes both use this one function, so they never disagree;
* :class:`RequestGuard` — ASGI middleware applying both before FastAPI parses a body, so
  a stranger's upload is never parsed and no body above its limit is ever buffered.

The API token comes from the environment (:data:`TOKEN_ENV`) or a file
(:func:`edgequery.gallery.service.read_token`), never from a flag, so it does not show in ``ps``.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from .api import APIError
from .problems import send_problem

TOKEN_ENV = "EDGEQUERY_API_TOKEN"
MIN_TOKEN_LENGTH = 16
UPLOAD_PATHS = ("/v1/search/image", "/v1/gallery")


@dataclass
class Limits:
    """The server's limits; all are reported by ``GET /v1/model`` (``edgequery serve --help``: the flags)."""

    max_k: int = 100
    max_upload_bytes: int = 8 << 20       # per multipart request
    max_json_bytes: int = 1 << 20         # per request that is not an upload
    max_pixels: int = 25_000_000          # per image: decoded (w * h) and after the shorter-side resize
    max_aspect_ratio: float = 20.0        # per image: longer side / shorter side
    max_images_per_add: int = 64
    max_label_chars: int = 256            # per label form value
    max_source_chars: int = 1024          # per source form value (and per default upload:<file name>)
    max_connections: int = 100            # open HTTP connections (.connections)
    header_timeout: float = 10.0          # seconds for a request's headers to arrive
    body_timeout: float = 60.0            # seconds for a request's body to arrive after its headers
    keep_alive_timeout: float = 5.0       # seconds an idle keep-alive connection stays open
    max_header_bytes: int = 16 << 10      # request line + headers


WRITE_ROUTES = (("POST", re.compile(r"/v1/gallery/?")), ("DELETE", re.compile(r"/v1/gallery/[^/]+/?")))


def is_write(method: str, path: str) -> bool:
    """Whether ``method path`` is one of the write routes (not, say, ``DELETE .../thumbnail``)."""
    return any(method == m and pattern.fullmatch(path) for m, pattern in WRITE_ROUTES)


def token_refusal(token: str | None, authorization: str) -> APIError | None:
    """Why a write with this ``Authorization`` header is refused, or ``None`` if it may proceed."""
    if token is None:
        return APIError(403, "writes are disabled: this server was started without an API token",
                        f"restart `edgequery serve` with ${TOKEN_ENV} set (or --token-file)")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(" ").encode("latin-1", "replace"),
                                                             token.encode()):
        return APIError(401, "missing or wrong bearer token",
                        "send the header `Authorization: Bearer <the server's API token>`",
                        headers={"WWW-Authenticate": "Bearer"})
    return None


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

    def __init__(self, app, limits: Limits, token: str | None, drain_factor: int = 8):
        self.app, self.limits, self.token, self.drain_factor = app, limits, token, drain_factor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        upload = path.rstrip("/") in UPLOAD_PATHS
        limit = self.limits.max_upload_bytes if upload else self.limits.max_json_bytes
        headers = dict(scope.get("headers") or [])
        if is_write(method, path):
            refusal = token_refusal(self.token, headers.get(b"authorization", b"").decode("latin-1"))
            if refusal is not None:
                return await self._refuse(refusal, limit, receive, send)
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None
        too_big = self._too_big(upload, limit)
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
        return await self.app(scope, _replay(b"".join(body), receive), send)

    @staticmethod
    def _too_big(upload: bool, limit: int) -> APIError:
        what = "upload" if upload else "JSON request"
        return APIError(413, f"the {what} is larger than this server's limit of {limit} bytes",
                        "send a smaller image (the model only needs a small one)" if upload
                        else "send one embedding per request")

    async def _refuse(self, error: APIError, limit: int, receive, send, declared: int | None = None,
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
        await send_problem(send, error, close=more)


def _replay(data: bytes, receive):
    """An ASGI ``receive`` that hands the buffered body over once, then defers to ``receive``."""
    delivered = False

    async def replay():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()

    return replay
