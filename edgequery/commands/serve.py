"""``edgequery serve``: the gallery's HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from .common import HelpFormatter, say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve an index over HTTP: search by embedding or image, add/delete with a token",
        description="Serve a gallery index built by `edgequery index`. Endpoints: GET /healthz, GET /v1/model, "
                    "POST /v1/search, POST /v1/search/image, POST /v1/gallery and DELETE /v1/gallery/{id} "
                    "(bearer token), GET / (demo page); OpenAPI docs at /docs. Query embeddings are accepted "
                    "from the gallery model itself and from query models vouched for with --export/--query "
                    "(trained with BCT against this gallery); others get HTTP 409. Writes are refused unless "
                    "a token is configured: set $EDGEQUERY_API_TOKEN or pass --token-file. An acknowledged "
                    "add/delete is already durable in OUT/gallery.sqlite and survives kill -9.",
        epilog="example: EDGEQUERY_API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') "
               "edgequery serve --index gallery_index/ --export export/mbv3_small --port 8080",
        formatter_class=HelpFormatter)
    p.add_argument("--index", required=True, help="index directory (edgequery index --out)")
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
    g.add_argument("--max-k", type=int, default=100, help="largest k a search may ask for")
    g.add_argument("--max-upload-mb", type=float, default=8.0, help="largest multipart request")
    g.add_argument("--max-pixels", type=int, default=25_000_000, help="largest decoded image (width x height)")
    g.add_argument("--max-images-per-add", type=int, default=64)
    g.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per search")
    g.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
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

    from ..errors import EdgeQueryError
    from ..gallery.app import Limits, create_app, open_service, read_token
    from ..train import resolve_device

    if not 0 < args.port < 65536:
        raise EdgeQueryError(f"--port {args.port} is not a TCP port", "pass a port between 1 and 65535")
    for name in ("max_k", "max_pixels", "max_images_per_add", "nprobe", "ef_search", "k_factor", "faiss_threads",
                 "snapshot_every"):
        if getattr(args, name) < 1:
            raise EdgeQueryError(f"--{name.replace('_', '-')} must be at least 1", "pass 1 or more")
    if args.max_upload_mb <= 0:
        raise EdgeQueryError("--max-upload-mb must be positive", "pass e.g. 8")
    token = read_token(args.token_file)
    limits = Limits(max_k=args.max_k, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                    max_pixels=args.max_pixels, max_images_per_add=args.max_images_per_add)
    faiss.omp_set_num_threads(args.faiss_threads)
    service = open_service(args.index, args.gallery, args.export, args.query, token, limits, nprobe=args.nprobe,
                           ef_search=args.ef_search, k_factor=args.k_factor, snapshot_every=args.snapshot_every,
                           device=str(resolve_device(args.device)))
    accepted = ", ".join(f"{a.model_version} ({a.role})" for a in service.accepted.values())
    say(f"serving {len(service.store)} items ({service.store.describe()['factory']}) on http://{args.host}:{args.port}"
        f" — docs at /docs; accepting model_version {accepted}; writes "
        + ("enabled (bearer token)" if token else "disabled (no token configured)"))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        say(f"note: binding {args.host} exposes the API beyond this machine; put TLS in front of it")
    try:
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=10)
    finally:
        service.close()
    return 0
