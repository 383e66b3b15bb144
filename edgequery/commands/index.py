"""``edgequery index``: embed a gallery with the gallery model and build its faiss index."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter

log = logging.getLogger(__name__)

FACTORY_HELP = ('faiss index_factory string: "Flat" (exact), "IVF1024,PQ32" (compressed, needs >= 1024 '
                'training vectors), "IVF1024,PQ32,RFlat" (the same, re-ranked exactly: recall at the cost of '
                'keeping the vectors; see serve --k-factor), "HNSW32" (graph; deletes become tombstones), ... '
                "Always wrapped in IDMap2 for stable ids; inner product on L2-normalised vectors (cosine)")


DESCRIPTION = ("Embed images with the gallery checkpoint in resumable chunks (each chunk committed to "
               "OUT/gallery.sqlite with its labels, sources and thumbnails), then build the faiss index and "
               "snapshot it atomically. Rerun the same command after an interruption to resume; rerun "
               "with another --index-factory to re-index the stored embeddings without embedding again.")


EPILOG = 'example: edgequery index --gallery gallery.pt --images fashion-mnist --index-factory "HNSW32" --out gallery_index/'


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed gallery images with the gallery model and index them with faiss",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--gallery", required=True, help="gallery checkpoint (edgequery train gallery)")
    p.add_argument("--images", default="fashion-mnist",
                   help="fashion-mnist or digits (the gallery split of the gallery model's data spec), or an "
                        "ImageFolder directory <root>/<class>/<image>")
    p.add_argument("--index-factory", default="Flat", help=FACTORY_HELP)
    p.add_argument("--out", default="gallery_index", help="index directory to write")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--chunk", type=int, default=1024, help="images per committed (resumable) chunk")
    p.add_argument("--limit", type=int, default=None, help="index only the first N images")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true",
                   help="delete an existing index of other images or another gallery model in --out first")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..gallery.build import build_index

    s = build_index(args.gallery, args.images, args.index_factory, args.out, batch_size=args.batch_size,
                    chunk=args.chunk, device=args.device, force=args.force, limit=args.limit)
    log.info(f"wrote {s['out']}: {s['items']} items, faiss {s['factory']}, gallery model_version "
             f"{s['model_version']} ({s['embedded_now']} embedded now, {s['seconds']}s)")
    return 0
