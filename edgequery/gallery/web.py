"""The page at ``/`` and what it needs: its static files, the vendored browser runtimes, the encoders.

The page (``static/index.html`` + ``app.js`` + ``app.css``) embeds the user's photo **on
the device** with the exported query encoder - LiteRT.js running the ``.tflite``, or
onnxruntime-web running the ``.onnx``, both on wasm - then posts the embedding and its
``model_version`` to ``POST /v1/search``.  A third, labelled mode uploads the photo and lets
the server embed it with the gallery model (``POST /v1/search/image``).

* ``GET /v1/encoders`` lists the query encoders the server may hand out: the exports given
  to ``serve --export`` (only those it accepts, :mod:`.compat`), each with its files (format,
  layout, size, sha256, URL) and the pre-processing the page must apply.
* ``GET /v1/encoders/{model_version}/{file}`` serves ``model_card.json`` or one of the files
  that card lists - by exact name, never a path, so nothing else in the folder is reachable.
* ``/static/...`` serves the page's files and ``vendor/``, the runtimes copied from npm by
  ``scripts/build_web.sh`` (pinned in ``web/package-lock.json``; no CDN at run time).

Every response of these routes carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (cross-origin isolation: what the runtimes'
threaded wasm builds need for ``SharedArrayBuffer``) and ``Cross-Origin-Resource-Policy:
same-origin``; the page itself a strict Content-Security-Policy: scripts, styles, models and
wasm from this origin only (``'wasm-unsafe-eval'`` lets it compile wasm, nothing else).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at definition time.
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles

from ..artifacts.card import CARD_NAME, ModelCard, load_card
from .api import APIError
from .images import GREY_DATASETS
from .problems import documented

STATIC = FilePath(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
BUILD_HINT = "run `scripts/build_web.sh` (it vendors LiteRT.js and onnxruntime-web from npm), then restart the server"
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}
PAGE_CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
            "img-src 'self' blob: data:; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
RUNTIMES = {"tflite": "litertjs", "onnx": "onnxruntime_web"}  # card file format -> the page's runtime

mimetypes.add_type("text/javascript", ".mjs")  # module scripts must come with a JavaScript type
mimetypes.add_type("application/wasm", ".wasm")  # WebAssembly.instantiateStreaming insists on it


@dataclass(frozen=True)
class Encoder:
    """An export the server hands to the page: its card and the folder its files are in."""

    card: ModelCard
    folder: FilePath
    colour: str  # "grey" | "rgb": what the gallery data was, so what the page converts a photo to

    def describe(self) -> dict[str, Any]:
        inp = self.card.input
        base = f"/v1/encoders/{self.card.model_version}"
        files = [{"file": f.file, "format": f.format, "runtime": RUNTIMES[f.format], "layout": f.layout,
                  "quantization": f.quantization, "bytes": f.bytes, "sha256": f.sha256, "url": f"{base}/{f.file}",
                  "pixel_input": f.pixel_input,  # set: the file takes 0-255 pixels and normalises them itself
                  "input_shape": f.io["input"]["shape"], "input_name": f.io["input"]["name"],
                  "output_name": f.io["output"]["name"]}
                 for f in self.card.files if f.format in RUNTIMES and f.quantization == "none"]
        return {"model_version": self.card.model_version, "arch": self.card.arch, "embed_dim": self.card.embed_dim,
                "card_url": f"{base}/{CARD_NAME}", "files": files,
                "input": {"resolution": inp.resolution, "colour": self.colour, "mean": list(inp.mean),
                          "std": list(inp.std), "scale": inp.scale, "resize": inp.resize}}

    def file(self, name: str) -> FilePath | None:
        """The path of ``name`` when the card lists it (or it is the card), else ``None``."""
        if name == CARD_NAME or any(f.file == name for f in self.card.files):
            return self.folder / name
        return None


def encoders_of(exports: list[str], accepted: dict, dataset: str) -> dict[str, Encoder]:
    """model_version -> :class:`Encoder` for each export folder (or card) the server accepts."""
    out: dict[str, Encoder] = {}
    for e in exports:
        card, card_path = load_card(e)
        if card.model_version in accepted:
            out[card.model_version] = Encoder(card, FilePath(card_path).parent,
                                              "grey" if dataset in GREY_DATASETS else "rgb")
    return out


class _IsolatedStatic(StaticFiles):
    """Static files with the cross-origin isolation headers."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(ISOLATION)
        return response


def vendored() -> dict[str, Any] | None:
    """What ``scripts/build_web.sh`` vendored (``vendor/VERSIONS.json``), or ``None`` before it ran."""
    try:
        return json.loads((VENDOR / "VERSIONS.json").read_text())
    except (OSError, ValueError):
        return None


def add_web_routes(app: FastAPI, encoders: dict[str, Encoder]) -> None:
    """The page, its static files and the encoder routes (see the module docstring)."""
    page = (STATIC / "index.html").read_text()
    app.mount("/static", _IsolatedStatic(directory=STATIC), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={**ISOLATION, "Content-Security-Policy": PAGE_CSP})

    @app.get("/v1/encoders", summary="the query encoders this server hands to on-device clients, and the "
                                     "browser runtimes it serves", responses=documented())
    def list_encoders() -> dict[str, Any]:
        runtimes = vendored()
        return {"encoders": [e.describe() for e in encoders.values()],
                "browser_runtimes": runtimes and runtimes["packages"],
                "note": None if runtimes else f"the browser runtimes are not vendored: {BUILD_HINT}"}

    Version = Annotated[str, Path(max_length=64, description="an encoder's model_version (GET /v1/encoders)")]  # noqa: N806
    Name = Annotated[str, Path(max_length=200, description="model_card.json or a file its card lists")]  # noqa: N806

    @app.get("/v1/encoders/{model_version}/{name}", summary="an encoder's model card or one of its files",
             response_class=FileResponse, responses={200: {"content": {"application/octet-stream": {}}},
                                                     **documented(404, 422)})
    def encoder_file(model_version: Version, name: Name) -> FileResponse:
        encoder = encoders.get(model_version)
        if encoder is None:
            raise APIError(404, f"no encoder with model_version {model_version!r} is served here",
                           "GET /v1/encoders lists them; start the server with --export DIR to serve one")
        path = encoder.file(name)
        if path is None:
            raise APIError(404, f"{name!r} is not a file of encoder {model_version}",
                           f"ask for {CARD_NAME} or a file its card lists (GET /v1/encoders)")
        if not path.is_file():
            raise APIError(404, f"{name} of encoder {model_version} is listed in its card but missing on the server",
                           "re-export the encoder into the folder given to --export")
        media = "application/json" if name == CARD_NAME else "application/octet-stream"
        return FileResponse(path, media_type=media, headers={**ISOLATION, "Cache-Control": "no-cache"})
