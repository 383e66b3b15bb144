"""``edgequery serve``: the gallery's HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter

log = logging.getLogger(__name__)


# flag, Limits field, type, the flag's unit in the field's unit, default (= Limits'), help
LIMIT_FLAGS = (
    ("--max-k", "max_k", int, 1, 100, "largest k a search may ask for"),
    ("--max-upload-mb", "max_upload_bytes", float, 1 << 20, 8.0, "largest multipart request"),
    ("--max-pixels", "max_pixels", int, 1, 25_000_000,
     "largest image in pixels (width x height), as uploaded and after the shorter-side resize"),
    ("--max-aspect-ratio", "max_aspect_ratio", float, 1, 20.0,
     "refuse images whose longer side is more than this many times the shorter one"),
    ("--max-images-per-add", "max_images_per_add", int, 1, 64, "images in one add request"),
    ("--max-connections", "max_connections", int, 1, 100,
     "open HTTP connections; one more evicts the longest-stalled client, or gets 503"),
    ("--header-timeout", "header_timeout", float, 1, 10.0,
     "seconds a client has to send a request's headers (else 408)"),
    ("--body-timeout", "body_timeout", float, 1, 60.0,
     "seconds a client has to send a request's body after its headers (else 408)"),
    ("--keep-alive-timeout", "keep_alive_timeout", float, 1, 5.0, "seconds an idle keep-alive connection stays open"),
)


DESCRIPTION = ("Serve a gallery index built by `edgequery index`. Endpoints: GET /healthz, GET /v1/model, "
               "POST /v1/search, POST /v1/search/image, POST /v1/gallery and DELETE /v1/gallery/{id} "
               "(bearer token), GET / (demo page); OpenAPI docs at /docs. The gallery is a faiss index directory or a "
               "Milvus collection (same API, same checks). Query embeddings are accepted "
               "from the gallery model itself and from query models vouched for with --export/--query "
               "(trained with BCT against this gallery); others get HTTP 409. Writes are refused unless "
               "a token is configured: set $EDGEQUERY_API_TOKEN or pass --token-file. An acknowledged "
               "add/delete is already durable (committed to gallery.sqlite, or flushed in Milvus) and survives "
               "kill -9. Every refusal is JSON "
               "{problem, fix}. The work a request may cause, the connections and their timeouts are bounded by "
               "the limits below (GET /v1/model reports them). The server speaks plain HTTP: beyond loopback, "
               "put a TLS-terminating proxy in front of it.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an index over HTTP: search by embedding or image, add/delete with a token",
        description=DESCRIPTION,
        epilog="example: EDGEQUERY_API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') "
               "edgequery serve --index gallery_index/ --export export/mbv3_small --port 8080",
        formatter_class=HelpFormatter)
    p.add_argument("--index", required=True,
                   help="the gallery (edgequery index --out): a faiss index directory, or a Milvus URI (a path "
                        "ending in .db for embedded Milvus Lite, or http://host:19530 for a Milvus server; "
                        "credentials in $EDGEQUERY_MILVUS_TOKEN)")
    p.add_argument("--backend", choices=["faiss", "milvus"], default=None,
                   help="default: milvus when --index ends in .db or is an http:// URI, else faiss")
    p.add_argument("--collection", default="gallery", help="milvus: the gallery's collection")
    p.add_argument("--gallery", default=None,
                   help="gallery checkpoint (default: the path recorded in the index); must be the model the "
                        "index was built with")
    p.add_argument("--export", action="append", default=[], metavar="DIR",
                   help="an export folder (or its model_card.json) whose query model_version to accept; repeatable")
    p.add_argument("--query", action="append", default=[], metavar="CKPT",
                   help="a query checkpoint whose model_version to accept; repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token-file", default=None,
                   help="file holding the API token for writes (default: $EDGEQUERY_API_TOKEN; neither = read-only)")
    g = p.add_argument_group("limits and search parameters")
    for flag, _field, kind, _scale, default, text in LIMIT_FLAGS:
        g.add_argument(flag, type=kind, default=default, help=text)
    g.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per search (faiss and Milvus)")
    g.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth (faiss and Milvus)")
    g.add_argument("--k-factor", type=float, default=4.0,
                   help="an index with exact re-ranking (factory ending in ,RFlat) re-ranks k x this many candidates")
    g.add_argument("--faiss-threads", type=int, default=1,
                   help="OpenMP threads per faiss search (requests already run in parallel)")
    g.add_argument("--snapshot-every", type=int, default=1000,
                   help="writes between faiss snapshots (start-up speed only; durability never depends on it)")
    g.add_argument("--device", default="cpu", help="device of the gallery model (image endpoints)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import faiss
    import uvicorn

    from ..gallery.app import create_app
    from ..gallery.connections import ensure_descriptors, uvicorn_options
    from ..gallery.service import open_service, read_token
    from ..train import resolve_device

    limits = limits_from_args(args)
    ensure_descriptors(limits.max_connections)
    token = read_token(args.token_file)
    faiss.omp_set_num_threads(args.faiss_threads)
    service = open_service(args.index, args.gallery, args.export, args.query, token, limits, nprobe=args.nprobe,
                           ef_search=args.ef_search, k_factor=args.k_factor, snapshot_every=args.snapshot_every,
                           device=str(resolve_device(args.device)), backend=args.backend,
                           collection=args.collection)
    accepted = ", ".join(f"{a.model_version} ({a.role})" for a in service.accepted.values())
    writes = "enabled (bearer token)" if token else "disabled (no token configured)"
    index = service.store.describe()
    log.info(f"serving {len(service.store)} items ({index['engine']} {index['factory']}) on "
             f"http://{args.host}:{args.port} — docs at /docs; accepting model_version {accepted}; writes {writes}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(f"binding {args.host} exposes the API beyond this machine; put TLS in front of it")
    try:
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=10, **uvicorn_options(limits))
    finally:
        service.close()
    return 0


def limits_from_args(args: argparse.Namespace):
    """The server's :class:`~edgequery.gallery.guard.Limits` from the flags, refusing nonsense values."""
    from PIL import Image

    from ..errors import EdgeQueryError
    from ..gallery.guard import Limits

    if not 0 < args.port < 65536:
        raise EdgeQueryError(f"--port {args.port} is not a TCP port", "pass a port between 1 and 65535")
    for name in ("nprobe", "ef_search", "k_factor", "faiss_threads", "snapshot_every"):
        if getattr(args, name) < 1:
            raise EdgeQueryError(f"--{name.replace('_', '-')} must be at least 1", "pass 1 or more")
    values = {}
    for flag, field, kind, scale, default, _text in LIMIT_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if not (value >= 1 if kind is int else value > 0):
            raise EdgeQueryError(f"{flag} must be {'at least 1' if kind is int else 'positive'}",
                                 f"pass a positive number (default {default})")
        values[field] = int(value * scale) if kind is int or scale != 1 else value
    pillow_max = Image.MAX_IMAGE_PIXELS
    if pillow_max and args.max_pixels > pillow_max:
        raise EdgeQueryError(f"--max-pixels {args.max_pixels} is above the {pillow_max} pixels Pillow decodes",
                             f"pass --max-pixels {pillow_max} or less")
    return Limits(**values)
