"""``edgequery index``: embed a gallery with the gallery model and build its index (faiss or Milvus)."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter

log = logging.getLogger(__name__)

FACTORY_HELP = ('faiss index_factory string: "Flat" (exact), "IVF1024,PQ32" (compressed, needs >= 1024 '
                'training vectors), "IVF1024,PQ32,RFlat" (the same, re-ranked exactly: recall at the cost of '
                'keeping the vectors; see serve --k-factor), "HNSW32" (graph; deletes become tombstones), ... '
                "Always wrapped in IDMap2 for stable ids; inner product on L2-normalised vectors (cosine)")


MILVUS_HELP = ('Milvus index (--backend milvus): TYPE[,param=value...] with TYPE one of FLAT, IVF_FLAT (nlist), '
               'IVF_SQ8 (nlist), HNSW (M, efConstruction), AUTOINDEX; e.g. "HNSW,M=32,efConstruction=200". '
               "Metric: inner product on L2-normalised vectors (cosine)")

DESCRIPTION = ("Embed images with the gallery checkpoint in resumable chunks, each made durable with its labels, "
               "sources and thumbnails before the next starts, then build the vector index. Two backends: "
               "faiss (default; OUT is a directory: OUT/gallery.sqlite + a faiss snapshot, served in one process) "
               "and Milvus (OUT is a URI: a path ending in .db = embedded Milvus Lite, no server needed; or "
               "http://host:19530 = a Milvus standalone or cluster, credentials in $EDGEQUERY_MILVUS_TOKEN). "
               "Rerun the same command after an interruption to resume; rerun with another --index-factory / "
               "--milvus-index to re-index the stored embeddings without embedding again.")


EPILOG = ('examples: edgequery index --gallery gallery.pt --images fashion-mnist --index-factory "HNSW32" '
          '--out gallery_index/ ; edgequery index --gallery gallery.pt --images fashion-mnist --backend milvus '
          '--milvus-index "HNSW,M=32" --out gallery.db')


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed gallery images with the gallery model and index them (faiss or Milvus)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--gallery", required=True,
                   help="gallery checkpoint (edgequery train gallery, or edgequery import gallery for your own model)")
    p.add_argument("--images", default="fashion-mnist",
                   help="fashion-mnist or digits (the gallery split of the gallery model's data spec), or an "
                        "ImageFolder directory <root>/<class>/<image>")
    p.add_argument("--from-embeddings", metavar="FILE", default=None,
                   help="index your gallery's embeddings as they are, instead of embedding --images: a .npy "
                        "(N x D floats; ids = row numbers), a .npz (embeddings, optional ids and labels) or a "
                        ".parquet (columns embedding, optional id and label). They must come from the --gallery "
                        "model (edgequery import gallery wraps yours): the index takes its model_version, and "
                        "query nets trained against it are served. Hits' source is the id")
    p.add_argument("--backend", choices=["faiss", "milvus"], default=None,
                   help="where the gallery lives (default: milvus when --out ends in .db or is an http:// URI, "
                        "else faiss)")
    p.add_argument("--index-factory", default="Flat", help=FACTORY_HELP)
    p.add_argument("--milvus-index", default="HNSW", help=MILVUS_HELP)
    p.add_argument("--out", default=None,
                   help="faiss: the index directory to write (default gallery_index/); milvus: the URI (default "
                        "gallery.db: embedded; or http://host:19530)")
    p.add_argument("--collection", default="gallery", help="milvus: the collection to write")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--chunk", type=int, default=1024, help="images per committed (resumable) chunk")
    p.add_argument("--limit", type=int, default=None, help="index only the first N images")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true",
                   help="delete an existing index of other images or another gallery model in --out first")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..gallery.build import build_index

    from ..gallery.milvus_store import backend_of

    out = args.out or ("gallery.db" if args.backend == "milvus" else "gallery_index")
    backend = backend_of(out, args.backend)
    factory = args.milvus_index if backend == "milvus" else args.index_factory
    if args.from_embeddings:
        from ..errors import EdgeQueryError
        from ..gallery.build import index_vectors

        if args.force or args.limit is not None:
            raise EdgeQueryError("--force and --limit do not apply to --from-embeddings",
                                 "write to a new --out (or --collection), and index the whole file")
        s = index_vectors(args.gallery, args.from_embeddings, factory, out, backend=backend,
                          collection=args.collection)
    else:
        s = build_index(args.gallery, args.images, factory, out, batch_size=args.batch_size,
                        chunk=args.chunk, device=args.device, force=args.force, limit=args.limit, backend=backend,
                        collection=args.collection)
    log.info(f"wrote {s['out']}: {s['items']} items, {backend} {s['factory']}, gallery model_version "
             f"{s['model_version']} ({s['embedded_now']} embedded now, {s['seconds']}s)")
    return 0
