"""``edgequery export`` and ``edgequery verify``: phone-ready encoder files, checked.

``export`` turns a query checkpoint into ``export/<name>/`` (TFLite + ONNX files, model
card, test vector); ``verify`` re-checks such a folder before an app or a server uses it.
See :mod:`edgequery.export` and ``export/README.md`` (the artifact contract).
"""

from __future__ import annotations

import argparse
import logging

from ..files import write_json

log = logging.getLogger(__name__)

EXPORT_EPILOG = """\
examples:
  edgequery export --query query.pt --gallery gallery.pt
  edgequery export --query query.pt --gallery gallery.pt --quantize dynamic,int8 --nhwc --out export/phone
  edgequery export --query query.pt --formats onnx              # no --gallery: parity and latency only

checks (the export fails, leaving any previous export in place, when one does not hold):
  compatibility  the query net must have been trained with BCT against a gallery (its checkpoint
                 records the gallery model_version); --allow-incompatible exports it anyway, marked
  parity         every float32 file, in its runtime, on real images: cosine to PyTorch >= 0.9999
  retrieval      (--gallery) heterogeneous Recall@1 of every file; a dynamic-range file may lose at
                 most --max-dynamic-drop points vs its float32 file; int8 is reported
  latency        every file, batch 1, at each --threads count: median, p10, p90 in the card
"""

VERIFY_EPILOG = """\
examples:
  edgequery verify export/mobilenet_v3_small-1a2b3c4d
  edgequery verify export/phone --gallery gallery.pt     # also: is this the gallery it fits?

exit status 0 when every check passes; 2 with a one-line reason otherwise (a modified file, a
runtime that no longer reproduces the recorded embeddings, a different gallery).
"""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a query net to TFLite/ONNX with parity checks and a model card",
                       description="Convert a query checkpoint to TFLite (LiteRT) and ONNX files with input "
                                   "'image' and output 'embedding' (L2-normalised inside the graph), check each "
                                   "file against PyTorch on real images, optionally quantize, measure retrieval "
                                   "and latency, and write model_card.json, a test image and its expected "
                                   "embedding beside them.",
                       epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--query", required=True, help="query checkpoint (from `edgequery train query`)")
    p.add_argument("--gallery", default=None,
                   help="the gallery checkpoint it was trained against: checks the pairing and measures "
                        "heterogeneous Recall@1 of every file (required with --quantize)")
    p.add_argument("--out", default=None, help="export folder (default: export/<arch>-<model_version[:8]>)")
    p.add_argument("--name", default=None, help="the export's name in its card (default: the folder's)")
    p.add_argument("--formats", type=_csv, default=("tflite", "onnx"), help="tflite, onnx or both (default both)")
    p.add_argument("--quantize", type=_csv, default=(),
                   help="none (default), dynamic, int8, fp16 (TFLite: float16 weights, half the size), or a comma "
                        "list: extra quantized files beside float32")
    p.add_argument("--calibration", type=int, default=200,
                   help="training images used to calibrate int8 activations (default 200)")
    p.add_argument("--nhwc", action=argparse.BooleanOptionalAction, default=None,
                   help="the app-facing TFLite file: NHWC float32 pixels 0-255, normalised inside, with TFLite "
                        "metadata (loads in MediaPipe's ImageEmbedder); on by default with tflite, --no-nhwc skips it")
    p.add_argument("--allow-incompatible", action="store_true",
                   help="export a query net trained without BCT (the card marks it; servers refuse it)")
    p.add_argument("--max-dynamic-drop", type=float, default=1.0,
                   help="Recall@1 points a dynamic-range file may lose vs float32 (default 1)")
    p.add_argument("--parity-images", type=int, default=256, help="real images for the parity check (default 256)")
    p.add_argument("--eval-queries", type=int, default=None,
                   help="query images for Recall@1 (default: the whole query split)")
    p.add_argument("--threads", type=_ints, default=(1, 2), help="thread counts to time (default 1,2)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per file and thread count (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default 10)")
    p.add_argument("--lut", default=None,
                   help="a latency LUT (`edgequery profile`) whose prediction to record beside the measured "
                        "latency (needs edgequery.latency; the card says when it is unavailable)")
    p.add_argument("--force", action="store_true", help="replace an existing export at --out")
    p.set_defaults(handler=run_export)

    v = sub.add_parser("verify", help="re-check an export folder: hashes, parity, compatibility",
                       description="Check that every file of an export matches the sha256 in its model card, "
                                   "that ONNX metadata agrees with the card, that each file still reproduces the "
                                   "recorded embeddings of real images in its runtime, and (with --gallery) that "
                                   "the gallery is the one the encoder was trained to be compatible with.",
                       epilog=VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("export", help="export folder (holding model_card.json)")
    v.add_argument("--gallery", default=None, help="gallery checkpoint the encoder is meant to be used with")
    v.add_argument("--threads", type=int, default=1, help="runtime threads for the parity check (default 1)")
    v.add_argument("--json", default=None, help="also write the report as JSON to this file")
    v.set_defaults(handler=run_verify)


def run_export(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, export_query

    opts = ExportOptions(formats=args.formats, quantize=args.quantize, nhwc=args.nhwc, calibration=args.calibration,
                         parity_images=args.parity_images, eval_queries=args.eval_queries, threads=args.threads,
                         warmup=args.warmup, runs=args.runs, allow_incompatible=args.allow_incompatible,
                         max_dynamic_drop=args.max_dynamic_drop, lut=args.lut, name=args.name, force=args.force)
    card = export_query(args.query, args.out, args.gallery, opts)
    print(f"exported {card['arch']} (model_version {card['model_version']}) to {card['path']}/")
    for e in card["files"]:
        lat = next(iter(e["latency"].values()))
        r1 = (e["retrieval"] or {}).get("recall@1")
        print(f"  {e['file']:<32} {e['bytes'] / 1e6:8.2f} MB  min cos {e['parity']['cosine_min']:.6f}  "
              f"{lat['median_ms']:8.3f} ms ({lat['threads']} thr)" + (f"  het R@1 {100 * r1:.2f}" if r1 is not None
                                                                       else ""))
    log.info("wrote %s/model_card.json; check it any time with `edgequery verify %s`", card["path"], card["path"])
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..export import verify_export

    report = verify_export(args.export, args.gallery, threads=args.threads)
    if args.json:
        write_json(args.json, report)
    print(f"{args.export}: all {len(report['checks'])} checks passed")
    return 0
