"""The API's one error model: every 4xx/5xx answer is ``{"problem": ..., "fix": ...}``.

Refusals come from five places; each becomes a :class:`~.api.Problem` here:

* the routes' own checks raise :class:`~.api.APIError` (404, 409, 413, 422, ...);
* request validation (pydantic): 422 naming the fields (:func:`_invalid_request`);
* the framework: an unknown path (404), a method a path does not take (405, with
  ``Allow``), a body that cannot be parsed (400: JSON nested too deeply, a form field above
  the multipart parser's 1 MB part limit) — :func:`_framework_error`;
* the request guard, before any parsing (401/403/413): :func:`send_problem`;
* the connection layer (:mod:`.connections`: 400 malformed HTTP, 408 too slow, 503 too
  many connections), below ASGI: :func:`raw_problem`.

Anything unexpected is caught by :class:`FaultBarrier`: a 500 Problem with
``Connection: close``; the traceback goes to the server log, never into the answer (it
could name server paths).  :func:`documented` lists, for the OpenAPI schema, the statuses
a route can answer, each with the Problem body; :data:`COMMON` are those every route can.
"""

from __future__ import annotations

import http
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import APIError, Problem

log = logging.getLogger(__name__)

MEANING = {
    400: "the request could not be parsed (malformed HTTP, JSON nested too deeply, a form field above 1 MB)",
    401: "missing or wrong bearer token",
    403: "writes are disabled: the server runs without an API token",
    404: "no such item",
    408: "the request's headers or body arrived too slowly",
    409: "an embedding from a model this gallery does not accept",
    413: "the request body or an image is too large",
    422: "the request does not follow the schema, or a value in it is unusable",
    500: "an internal error (the server logged it)",
    503: "the server has too many open connections",
}
COMMON = (400, 408, 500, 503)  # any request can get these (connection layer, fault barrier)
INTERNAL_ERROR = APIError(500, "the server failed on this request (an internal error; the server log has the details)",
                          "retry; if it keeps failing, report it to the server's operator with the time of the request")


def documented(*codes: int, notes: dict[int, str] | None = None) -> dict[int, dict]:
    """OpenAPI ``responses`` for a route that can refuse with ``codes`` (plus :data:`COMMON`)."""
    notes = notes or {}
    out: dict[int, dict] = {}
    for code in sorted({*codes, *COMMON}):
        out[code] = {"model": Problem, "description": notes.get(code, MEANING[code])}
        if code == 401:
            out[code]["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
    return out


def install(app: FastAPI) -> None:
    """Answer every refusal of ``app`` as a Problem; call after adding the other middleware."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _framework_error)
    app.add_middleware(FaultBarrier)  # the last one added is the outermost


# --------------------------------------------------------------------------- handlers


async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _shown(value) -> str:
    """``=value`` for a short scalar input worth echoing in a validation message, else ``""``."""
    if isinstance(value, (bool, int, float, str)) and len(repr(value)) <= 40:
        return f"={value!r}"
    return ""


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for e in exc.errors()[:5]:
        if e.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "path", "query", "form")]
        where = ".".join(loc) or "body"
        parts.append(f"{where}{_shown(e.get('input')) if loc else ''}: {e['msg']}")
    return JSONResponse({"problem": "malformed request: " + "; ".join(parts),
                         "fix": "follow the request schema at /docs (GET /openapi.json); the server's limits are in "
                                "GET /v1/model"}, status_code=422)


async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status, headers = exc.status_code, dict(exc.headers or {})
    what = f"{request.method} {request.url.path[:200]}"
    if status == 404:
        problem, fix = f"there is no route {what}", "the API's routes are listed at /docs (GET /openapi.json)"
    elif status == 405:
        allowed = _allowed_methods(request)
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"} | {"Allow": allowed}
        problem, fix = f"{what}: the method is not allowed here (allowed: {allowed})", f"use {allowed}; see /docs"
    elif status == 400 and isinstance(exc.__cause__, RecursionError):
        problem, fix = "the JSON body is nested too deeply to parse", "send the flat request body described at /docs"
    elif status == 400:
        problem = f"the request body could not be parsed: {exc.detail}"
        fix = "send JSON (application/json) or multipart form data as /docs describes; keep each form field under 1 MB"
    else:
        problem, fix = f"{what}: {exc.detail}", "see /docs"
    return JSONResponse({"problem": problem, "fix": fix}, status_code=status, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette's 405 names only the first route's)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


# --------------------------------------------------------------------------- below the framework


async def send_problem(send, error: APIError, close: bool = False) -> None:
    """Answer ``error`` through an ASGI ``send`` (``close``: and end the connection)."""
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def raw_problem(status: int, problem: str, fix: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection (for the layer below ASGI)."""
    payload = json.dumps({"problem": problem, "fix": fix}).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n")
    return head.encode() + payload


class FaultBarrier:
    """ASGI middleware: an unexpected exception becomes a logged 500 Problem that closes the connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception(f"internal error answering {scope['method']} {scope['path'][:200]}")
            if started:
                raise  # half an answer is out: uvicorn closes the connection
            await send_problem(send, INTERNAL_ERROR, close=True)
