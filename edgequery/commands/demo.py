"""``edgequery demo``: every stage, small, into one folder.

Runs on the embedded defaults (Fashion-MNIST at 32x32, a few thousand training images,
a few epochs) in about ten minutes on two CPU cores; ``--device cuda`` and larger
``--n-train``/epochs run the same stages at full scale.  Finished stages are reused
when the demo is rerun into the same folder, unfinished ones resume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import HelpFormatter, say, write_json

PRESET = {"n_train": 8000, "n_val": 1000, "n_query": 1000, "n_gallery": 5000, "resolution": 32,
          "gallery_epochs": 3, "query_epochs": 4}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every stage on a small preset into one folder",
                       description="Train the ResNet-101 gallery model, MobileNetV3-small query nets with and "
                                   "without BCT, and evaluate paragon / homogeneous / heterogeneous retrieval, "
                                   "all into --out. Rerunning reuses finished stages.",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-train", type=int, default=PRESET["n_train"])
    p.add_argument("--gallery-epochs", type=int, default=PRESET["gallery_epochs"])
    p.add_argument("--query-epochs", type=int, default=PRESET["query_epochs"])
    p.add_argument("--query-arch", default="mobilenet_v3_small")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder")
    p.set_defaults(handler=run)


def _done(path: Path) -> bool:
    from ..checkpoint import load_checkpoint

    return path.exists() and load_checkpoint(path).get("train", {}).get("complete", False)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..data import DataSpec, ensure_fashion_mnist, load_splits
    from ..evaluate import evaluate_pair, format_report
    from ..models import model_from_checkpoint
    from ..recipes import train_gallery, train_query
    from ..train import TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_fashion_mnist(args.data_root)
    spec = DataSpec(root=args.data_root, resolution=PRESET["resolution"], n_train=args.n_train,
                    n_val=PRESET["n_val"], n_query=PRESET["n_query"], n_gallery=PRESET["n_gallery"])
    splits = load_splits(spec)
    say(f"[demo] data: Fashion-MNIST {splits.sizes()} at {spec.resolution}px -> {out}")
    t0 = time.time()
    timings = {}

    gallery_path = out / "gallery.pt"
    if not _done(gallery_path):
        t = time.time()
        train_gallery(spec, TrainConfig(epochs=args.gallery_epochs, device=args.device), gallery_path, splits=splits)
        timings["train_gallery"] = round(time.time() - t, 1)
    queries = {}
    for bct in (True, False):
        path = out / f"query-{args.query_arch}-{'bct' if bct else 'nobct'}.pt"
        if not _done(path):
            t = time.time()
            train_query(gallery_path, TrainConfig(epochs=args.query_epochs, device=args.device), path,
                        arch=args.query_arch, bct=bct, spec=spec, splits=splits)
            timings[f"train_query_{'bct' if bct else 'nobct'}"] = round(time.time() - t, 1)
        queries["bct" if bct else "no_bct"] = path

    gallery_ck = load_checkpoint(gallery_path, "gallery")
    gallery_model = model_from_checkpoint(gallery_ck)
    cache: dict = {}
    summary = {"data": spec.to_dict(), "sizes": splits.sizes(), "gallery": {
        "arch": gallery_ck["model"]["arch"], "model_version": gallery_ck["model_version"],
        "epochs": args.gallery_epochs}, "query_arch": args.query_arch, "query_epochs": args.query_epochs,
        "eval": {}}
    for name, path in queries.items():
        report = evaluate_pair(model_from_checkpoint(load_checkpoint(path, "query")), gallery_model, splits,
                               device=args.device, gallery_cache=cache)
        summary["eval"][name] = report
        write_json(out / f"eval-{name}.json", report)
        print(format_report(report, f"\n{args.query_arch} {'with' if name == 'bct' else 'without'} BCT"))
    timings["total"] = round(time.time() - t0, 1)
    summary["seconds"] = timings
    write_json(out / "summary.json", summary)
    het = {k: round(100 * v["heterogeneous"]["recall@1"], 2) for k, v in summary["eval"].items()}
    say(f"[demo] heterogeneous Recall@1: {json.dumps(het)}; wrote {out / 'summary.json'}")
    return 0
