"""``edgequery demo``: every stage, small, into one folder.

Runs on the embedded defaults (Fashion-MNIST at 32x32, a few thousand training images,
a few epochs) on two CPU cores; ``--device cuda`` and larger ``--n-train``/epochs run the
same stages at full scale.  Finished stages are reused when the demo is rerun into the
same folder, unfinished ones resume.

Stages: gallery model (ResNet-101) -> MobileNetV3 query nets with and without BCT ->
(unless ``--no-search``) BCT supernet of the mbv3 space -> per-block latency table of
this machine (``profile``, device ``local``) -> evolutionary search under a latency
budget (default: the median predicted latency of random archs, so that it binds) ->
the chosen arch retrained with BCT -> evaluation of every query net against the gallery ->
the deployable query net (the searched one, else MobileNetV3 with BCT) exported to TFLite
and ONNX with parity checks and a model card (``export/``) -> the gallery split indexed
with faiss (``gallery_index/``), ready for ``edgequery serve``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import HelpFormatter, say, write_json

PRESET = {"n_train": 8000, "n_val": 1000, "n_query": 1000, "n_gallery": 5000, "resolution": 32,
          "gallery_epochs": 3, "query_epochs": 4, "supernet_epochs": 4, "population": 12, "generations": 4}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every stage on a small preset into one folder",
                       description="Train the ResNet-101 gallery model and MobileNetV3-small query nets with and "
                                   "without BCT; then train a BCT supernet, profile this machine's per-block "
                                   "latency, search under a latency budget and retrain the winner with BCT; "
                                   "evaluate paragon / homogeneous / heterogeneous retrieval of every query net; "
                                   "export the deployable query net to TFLite and ONNX (parity-checked, with a "
                                   "model card) and index the gallery split with faiss for `edgequery serve`. "
                                   "All into --out; rerunning reuses finished stages.",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-train", type=int, default=PRESET["n_train"])
    p.add_argument("--gallery-epochs", type=int, default=PRESET["gallery_epochs"])
    p.add_argument("--query-epochs", type=int, default=PRESET["query_epochs"])
    p.add_argument("--query-arch", default="mobilenet_v3_small")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder")
    g = p.add_argument_group("search stages")
    g.add_argument("--no-search", action="store_true", help="stop after the MobileNetV3 baselines")
    g.add_argument("--supernet-epochs", type=int, default=PRESET["supernet_epochs"])
    g.add_argument("--runtime", choices=["onnxruntime", "litert", "torch"], default="onnxruntime",
                   help="runtime the latency table is measured with (onnxruntime converts fastest)")
    g.add_argument("--latency-budget", default=None,
                   help="e.g. 0.4ms; default: the median predicted latency of 200 random archs")
    g.add_argument("--population", type=int, default=PRESET["population"])
    g.add_argument("--generations", type=int, default=PRESET["generations"])
    p.add_argument("--no-deploy", action="store_true",
                   help="skip exporting the query net (TFLite, ONNX) and indexing the gallery split with faiss")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import is_finished, load_checkpoint
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
    if not is_finished(gallery_path):
        t = time.time()
        train_gallery(spec, TrainConfig(epochs=args.gallery_epochs, device=args.device), gallery_path, splits=splits)
        timings["train_gallery"] = round(time.time() - t, 1)
    queries = {}
    for bct in (True, False):
        path = out / f"query-{args.query_arch}-{'bct' if bct else 'nobct'}.pt"
        if not is_finished(path):
            t = time.time()
            train_query(gallery_path, TrainConfig(epochs=args.query_epochs, device=args.device), path,
                        arch=args.query_arch, bct=bct, spec=spec, splits=splits)
            timings[f"train_query_{'bct' if bct else 'nobct'}"] = round(time.time() - t, 1)
        queries["bct" if bct else "no_bct"] = path

    search = None if args.no_search else _search_stages(args, out, spec, splits, gallery_path, timings)
    if search:
        queries["searched"] = search["query"]

    gallery_ck = load_checkpoint(gallery_path, "gallery")
    gallery_model = model_from_checkpoint(gallery_ck)
    cache: dict = {}
    summary = {"data": spec.to_dict(), "sizes": splits.sizes(), "gallery": {
        "arch": gallery_ck["model"]["arch"], "model_version": gallery_ck["model_version"],
        "epochs": args.gallery_epochs}, "query_arch": args.query_arch, "query_epochs": args.query_epochs,
        "eval": {}, "search": search and {k: v for k, v in search.items() if k != "query"}}
    for name, path in queries.items():
        report = evaluate_pair(model_from_checkpoint(load_checkpoint(path, "query")), gallery_model, splits,
                               device=args.device, gallery_cache=cache)
        summary["eval"][name] = report
        write_json(out / f"eval-{name}.json", report)
        title = {"bct": f"{args.query_arch} with BCT", "no_bct": f"{args.query_arch} without BCT",
                 "searched": f"searched {search and search['arch']} with BCT"}[name]
        print(format_report(report, f"\n{title}"))
    if not args.no_deploy:
        summary["deploy"] = deploy_stages(out, queries["searched" if search else "bct"], gallery_path,
                                          search and str(out / search["lut"]), timings)
    timings["total"] = round(time.time() - t0, 1)
    summary["seconds"] = timings
    write_json(out / "summary.json", summary)
    het = {k: round(100 * v["heterogeneous"]["recall@1"], 2) for k, v in summary["eval"].items()}
    say(f"[demo] heterogeneous Recall@1: {json.dumps(het)}; wrote {out / 'summary.json'}")
    if not args.no_deploy:
        d = summary["deploy"]
        say(f"[demo] serve it: edgequery serve --index {d['index']} --export {d['export']}")
    return 0


def deploy_stages(out: Path, query_path: Path, gallery_path: Path, lut: str | None, timings: dict) -> dict:
    """Export the query net (TFLite + ONNX, parity-checked, model card) into ``out/export/query`` and index
    the gallery split of the gallery model's data into ``out/gallery_index``.  An export of the same
    query model_version is reused; the index build resumes or reuses by itself."""
    from ..checkpoint import load_checkpoint
    from ..export.card import read_card
    from ..export.pipeline import ExportOptions, export_query
    from ..gallery.build import build_index

    export_dir = out / "export" / "query"
    version = load_checkpoint(query_path, "query")["model_version"]
    try:
        card, _ = read_card(export_dir)
    except Exception:  # noqa: BLE001 - no finished export there yet
        card = None
    if card is None or card["model_version"] != version:
        t = time.time()
        card = export_query(query_path, export_dir, gallery_path,
                            ExportOptions(threads=(1,), lut=lut, force=True, name="query"))
        timings["export"] = round(time.time() - t, 1)
    t = time.time()
    index = build_index(gallery_path, "fashion-mnist", "Flat", out / "gallery_index")
    timings["index"] = round(time.time() - t, 1)
    return {"export": str(export_dir), "index": str(out / "gallery_index"), "items": index["items"],
            "query_model_version": version,
            "files": {e["file"]: e["parity"]["cosine_min"] for e in card["files"]}}


def _search_stages(args, out: Path, spec, splits, gallery_path: Path, timings: dict) -> dict:
    """Supernet -> LUT of this machine -> search under a budget -> retrain the winner with BCT."""
    import numpy as np

    from ..checkpoint import is_finished
    from ..latency import load_lut, parse_device, profile, restricted_space
    from ..latency.profiler import Protocol
    from ..recipes import train_query
    from ..search import SearchConfig, chosen_arch, parse_budget, search_from_files
    from ..spaces import get_space
    from ..spaces.training import train_supernet
    from ..train import TrainConfig

    supernet_path = out / "supernet.pt"
    if not is_finished(supernet_path):
        t = time.time()
        train_supernet(gallery_path, TrainConfig(epochs=args.supernet_epochs, device=args.device), supernet_path,
                       space="mbv3", spec=spec, splits=splits)
        timings["train_supernet"] = round(time.time() - t, 1)
    # A quick protocol: the demo shows the pipeline; `edgequery profile` defaults are for real tables.
    space = restricted_space(get_space("mbv3"), [spec.resolution])
    lut_path = out / f"lut-local-{args.runtime}.json"
    t = time.time()
    profile(space, [spec.resolution], parse_device("local"), args.runtime,
            Protocol(threads=1, warmup=5, runs=20, min_seconds=0.02, rounds=1), lut_path, jobs=2,
            workdir=out / "lut-work" / args.runtime, log=say)
    timings["profile"] = round(time.time() - t, 1)
    lut = load_lut(lut_path, space=space)
    if args.latency_budget:
        budget = parse_budget(args.latency_budget)
    else:
        rng = np.random.default_rng(0)
        budget = round(float(np.median([lut.predict(space.sample(rng), space) for _ in range(200)])), 4)
        say(f"[demo] latency budget: {budget} ms (median predicted latency of 200 random archs on {lut_path.name})")
    search_path = out / "search.json"
    t = time.time()
    cfg = SearchConfig(budget_ms=budget, population=args.population, generations=args.generations)
    if not (search_path.exists() and json.loads(search_path.read_text()).get("complete")):
        search_from_files(supernet_path, gallery_path, lut_path, cfg, search_path, device=args.device)
    timings["search"] = round(time.time() - t, 1)
    arch = chosen_arch(search_path)
    query_path = out / "query-searched-bct.pt"
    if not is_finished(query_path):
        t = time.time()
        train_query(gallery_path, TrainConfig(epochs=args.query_epochs, device=args.device), query_path, arch=arch,
                    bct=True, spec=spec, splits=splits)
        timings["train_query_searched"] = round(time.time() - t, 1)
    chosen = json.loads(search_path.read_text())["chosen"]
    return {"query": query_path, "arch": arch, "budget_ms": budget, "lut": lut_path.name,
            "predicted_ms": chosen["latency_ms"], "supernet_m_het": chosen["m_het"], "supernet_m_hom": chosen["m_hom"]}
