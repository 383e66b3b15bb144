"""``edgequery eval``: paragon, homogeneous and heterogeneous retrieval of a query net."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter, add_data_args, spec_from_args

log = logging.getLogger(__name__)


DESCRIPTION = ("Embed the query split with the query net and the gallery split with the gallery model; print "
               "Recall@1, Recall@10 and mAP@R for the paragon (g,g), homogeneous (q,q) and heterogeneous (q,g) "
               "settings, each Recall@1 with a 95 % bootstrap interval over queries, beside the raw-pixel cosine "
               "kNN baseline on the same split, and write them as JSON. Warns when the gallery model does not "
               "beat raw pixels.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="retrieval metrics of a query net against its gallery model",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--query", required=True, help="query checkpoint")
    p.add_argument("--gallery", required=True, help="gallery checkpoint")
    p.add_argument("--out", default="eval.json", help="JSON file to write")
    p.add_argument("--device", default="cpu")
    add_data_args(p, inherit=True)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..artifacts.compat import check_compatible
    from ..checkpoint import load_checkpoint
    from ..data import DataSpec, load_splits
    from ..evaluate import evaluate_pair, format_report
    from ..files import write_json
    from ..models import model_from_checkpoint
    from ..train import resolve_device

    device = resolve_device(args.device)
    gallery = load_checkpoint(args.gallery, "gallery")
    query = load_checkpoint(args.query, "query")
    check_compatible(query, gallery, a_name=str(args.query), b_name=str(args.gallery))  # no-BCT nets pass: shown
    base = DataSpec.from_dict(gallery["data"])
    spec = spec_from_args(args, base=base) or base
    splits = load_splits(spec)
    report = evaluate_pair(model_from_checkpoint(query), model_from_checkpoint(gallery), splits, device=device)
    report.update(query={"path": str(args.query), "arch": query["model"]["arch"],
                         "model_version": query["model_version"], "bct": query.get("bct")},
                  gallery={"path": str(args.gallery), "arch": gallery["model"]["arch"],
                           "model_version": gallery["model_version"]},
                  data=spec.to_dict())
    if query.get("compatible_with") is None:
        log.warning("this query net was trained without BCT; heterogeneous figures show how incompatible it is")
    print(format_report(report, f"{query['model']['arch']} vs gallery {gallery['model']['arch']}"))
    for warning in report["warnings"]:
        log.warning(warning)
    write_json(args.out, report)
    log.info("wrote %s", args.out)
    return 0
