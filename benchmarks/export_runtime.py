"""On-device cost of the query encoder: exported size and latency, next to retrieval accuracy.

For MobileNetV3-small, MobileNetV3-large, ResNet-101 used *as the query encoder* (the
paragon's on-device cost) and, when given, a searched net, this script exports each net
to TFLite (litert-torch) and ONNX (torch.onnx) - float32, batch 1 - and measures:

* file size, parameters, FLOPs;
* latency in ai-edge-litert and onnxruntime at 1 thread (``--warmup`` untimed runs, then
  ``--runs`` timed runs; median, p10, p90; end to end);
* the **x-fold cost reduction** of each query net against ResNet-101 (latency ratio per
  runtime, and FLOPs ratio) - the figure that parallels CMP-NAS's 80x (DeepFashion2)
  and 23x (IJB-C);
* heterogeneous Recall@1 of each query net (its exported TFLite/ONNX files embedding the
  query split, the gallery model embedding the gallery split), the paragon's Recall@1
  (ResNet-101 on both sides), and for each trained query net its dynamic-range and int8
  files' size, latency and Recall@1 change - **only where trained checkpoints exist**:
  with ``--train``, the gallery and BCT query nets ``benchmarks/bct_compat.py`` trains
  (the workflow's stages: reused from ``--cache`` when that script made them); else the
  newest finished ones found in ``--cache``.  Without them, accuracy is reported as
  unavailable and latency/size are measured on randomly initialised nets (weights do not
  change float32 latency or size).

At 224 px (``--resolutions 32,224``) nets are randomly initialised: it is a cost figure
only (nothing is trained at 224 here).

    python benchmarks/export_runtime.py --resolutions 32,224 --gallery G --searched-query Q   # as committed
    python benchmarks/export_runtime.py --train          # trains/reuses bct_compat.py's models first
    python benchmarks/export_runtime.py --preset quick   # 3.7 min at load 4: 2 nets, few runs, tiny models

The committed run (32 and 224 px, dynamic + int8 variants) took about 10 min on 2 cores;
conversions are 7-17 s per file.  Timings are noisy on a shared machine: the JSON keeps
medians and p10/p90, and ratios are computed from medians measured in the same run.
Writes ``<out-dir>/export_runtime.json`` and ``export_runtime.png``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _bench
from edgequery.artifacts.checkpoint import GALLERY_MODEL
from edgequery.checkpoint import load_checkpoint
from edgequery.data import DataSpec, load_splits, resize_images, to_model_input
from edgequery.evaluate import embed, raw_pixel_baseline
from edgequery.export import ExportOptions, parity_figures, parity_passed, tool_versions
from edgequery.metrics import retrieval_metrics
from edgequery.models import build_embedding_net, model_from_checkpoint
from edgequery.runtimes.convert import to_onnx, to_tflite
from edgequery.runtimes.run import measure_latency, open_runner
from edgequery.workflow import Workflow

log = _bench.log
BASELINES = ("mobilenet_v3_small", "mobilenet_v3_large", "resnet101")
FORMATS = ("tflite", "onnx")
SMALL_INPUT_MAX = 64  # px: up to this side the gallery model is the recipe's small-input ResNet-101
QUICK = {**_bench.BCT_QUICK, "train": True, "nets": "mobilenet_v3_small,resnet101", "runs": 5, "warmup": 1,
         "quantize": "dynamic"}


def flops(net: torch.nn.Module, res: int) -> int:
    """2 x MACs of convolutions and matrix products at batch 1 (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 3, res, res))
    return int(counter.get_total_flops())


def export_params(net: torch.nn.Module) -> int:
    classifier = {id(p) for p in net.classifier.parameters()}
    return sum(p.numel() for p in net.parameters() if id(p) not in classifier)


def slug(text: str, n: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:n]


def measure_files(net: torch.nn.Module, res: int, work: Path, stem: str, args, x_real: np.ndarray | None) -> dict:
    """Export ``net`` to both formats, check parity on real images, time each file at 1 thread."""
    out = {}
    with torch.no_grad():
        x = x_real if x_real is not None else np.random.default_rng(0).normal(size=(4, 3, res, res)).astype(np.float32)
        ref = net.eval()(torch.from_numpy(x)).numpy()
    for fmt in FORMATS:
        path = work / f"{stem}.{fmt}"
        t = time.time()
        (to_tflite if fmt == "tflite" else to_onnx)(net, res, path)
        convert_s = time.time() - t
        runner = open_runner(path, fmt, threads=args.threads)
        par = parity_figures(runner.embed(x), ref)
        lat = measure_latency(runner, x[:1], warmup=args.warmup, runs=args.runs)
        out[fmt] = {"bytes": path.stat().st_size, "latency": lat, "convert_seconds": round(convert_s, 1),
                    "parity": {"cosine_min": par["cosine_min"], "passed": parity_passed(par),
                               "images": par["images"], "real_images": x_real is not None}}
        log.info("  %s.%s: %.2f MB, median %.3f ms (p10 %.3f, p90 %.3f), parity cos %.6f", stem, fmt,
                 path.stat().st_size / 1e6, lat["median_ms"], lat["p10_ms"], lat["p90_ms"], par["cosine_min"])
        path.unlink()
    return out


def find_checkpoints(cache: Path, resolution: int, gallery: Path | None = None) -> tuple[Path | None, dict[str, Path]]:
    """A finished ResNet-101 gallery at this resolution (``gallery``, else the newest in the cache)
    and the finished BCT query nets in the cache trained against it (newest per arch)."""
    def done(p: Path, kind: str) -> dict | None:
        try:
            ck = load_checkpoint(p, kind)
        except Exception:  # noqa: BLE001 - a foreign or unfinished file is simply not used
            return None
        ok = ck.get("train", {}).get("complete", False) and ck["data"]["resolution"] == resolution
        return ck if ok else None

    galleries = [gallery] if gallery else sorted((p for p in cache.glob("*.pt")
                                                  if "gallery" in p.name or "paragon" in p.name),
                                                 key=lambda p: p.stat().st_mtime)
    for gpath in reversed(galleries):
        g = done(gpath, "gallery")
        if g is None or not g["model"]["arch"].startswith("resnet101"):
            continue
        queries: dict[str, Path] = {}
        for qpath in sorted(cache.glob("*.pt"), key=lambda p: p.stat().st_mtime):
            q = done(qpath, "query")
            if q and (q.get("compatible_with") or {}).get("gallery_version") == g["model_version"]:
                queries[q["model"]["arch"]] = qpath   # newest wins
        return gpath, queries
    return None, {}


class Context:
    """One resolution's models: the gallery (if any), its splits, the trained query nets, a workflow."""

    def __init__(self, args, res: int, stages: dict):
        self.args, self.res = args, res
        archs = [a for a in args.nets.split(",") if a != "resnet101"]
        if args.train and res <= SMALL_INPUT_MAX:
            wf = Workflow(_bench.bct_spec(args, res), args.device, stages=stages)
            self.gpath, trained = _bench.bct_checkpoints(wf, args.cache, args.gallery_steps, args.query_steps,
                                                         archs, _bench.seeds(args.seeds)[:1], bcts=(True,))
            self.queries = {a: p for (a, _, _), p in trained.items()}
        else:
            self.gpath, self.queries = find_checkpoints(args.cache, res, args.gallery)
        self.gallery = load_checkpoint(self.gpath, "gallery") if self.gpath else None
        self.spec = self.splits = self.g_emb = self.baselines = None
        if self.gallery is not None:
            self.spec = DataSpec.from_dict(self.gallery["data"])
            self.splits = load_splits(self.spec)
            self.g_emb = embed(model_from_checkpoint(self.gallery), self.splits.gallery, self.spec,
                               desc="gallery model: gallery")
            self.baselines = {"raw_pixel_knn": _bench.r1_row(raw_pixel_baseline(self.splits))}
        self.wf = Workflow(self.spec, args.device, stages=stages)
        log.info("resolution %d: gallery %s; trained query nets: %s", res, self.gpath or "none (latency/size only)",
                 ", ".join(self.queries) or "none")


def paragon_row(ctx: Context, row: dict, work: Path) -> torch.nn.Module:
    """ResNet-101, the trained gallery model itself, as the query encoder.  From a stored paragon (its
    embeddings, no trunk) the files are of the same arch randomly initialised: latency and size do not
    depend on the weights; Recall@1 is the trained model's, from its stored query embeddings."""
    gallery = model_from_checkpoint(ctx.gallery)
    if ctx.gallery.get("stored"):
        spec = ctx.gallery["model"]
        torch.manual_seed(0)
        net = build_embedding_net(spec["arch"], spec["embed_dim"], spec["num_classes"], scale=spec["scale"],
                                  margin=spec["margin"]).eval()
        row["weights"] = (f"the gallery arch randomly initialised (files: latency, size, parity); Recall@1 of the "
                          f"trained model from the stored paragon {ctx.gpath.name}")
    else:
        net = gallery
        row["weights"] = f"trained gallery model {ctx.gpath.name}"
    x_real = to_model_input(ctx.splits.query.images[:16], ctx.spec).numpy()
    row.update(measure_files(net, ctx.res, work, "resnet101", ctx.args, x_real))
    m = retrieval_metrics(embed(gallery, ctx.splits.query, ctx.spec, desc="paragon: queries"),
                          ctx.splits.query.labels, ctx.g_emb, ctx.splits.gallery.labels, ci=True)
    row.update(_bench.r1_row(m), baselines=ctx.baselines)
    row["paragon_recall@1"] = m["recall@1"]
    row["het_recall@1"] = {"pytorch": m["recall@1"], "paragon": "the same model on both sides"}
    return net


def trained_row(ctx: Context, row: dict, ck_path: Path, work: Path) -> torch.nn.Module:
    """A trained BCT query net through the real export path (the workflow's export stage), retrieval per file."""
    args = ctx.args
    quantize = tuple(q for q in args.quantize.split(",") if q and q != "none")
    row["weights"] = f"trained query net {Path(ck_path).name} (BCT)"
    out_dir = work / slug(row["net"])
    # quantized files are exported too; the 1-point dynamic-range gate is lifted here
    # (max_dynamic_drop=100) so the benchmark reports the drop instead of stopping on it
    card = ctx.wf.export(ck_path, out_dir, ctx.gpath, ExportOptions(
        threads=(args.threads,), runs=args.runs, warmup=args.warmup, quantize=quantize, max_dynamic_drop=100.0),
        name=f"export_{row['net']}_r{ctx.res}")
    row["quantized"] = []
    for e in card["files"]:
        lat = e["latency"][f"threads={args.threads}"]
        log.info("  %s: %.2f MB, median %.3f ms, het R@1 %.2f", e["file"], e["bytes"] / 1e6, lat["median_ms"],
                 100 * e["retrieval"]["recall@1"])
        if e["quantization"] != "none":
            drop = e["retrieval"]["recall@1_drop_points"]
            row["quantized"].append({
                "file": e["file"], "format": e["format"], "quantization": e["quantization"], "bytes": e["bytes"],
                "latency": lat, "het_recall@1": e["retrieval"]["recall@1"], "recall@1_drop_points_vs_float32": drop,
                "within_1_point": drop <= 1.0, "cosine_min_vs_pytorch": e["parity"]["cosine_min"]})
            continue
        row[e["format"]] = {"bytes": e["bytes"], "latency": lat, "convert_seconds": e["convert_seconds"],
                            "parity": {k: e["parity"][k] for k in ("cosine_min", "passed", "images")}
                            | {"real_images": True}}
    row["het_recall@1"] = {"pytorch": card["retrieval"]["pytorch"]["recall@1"],
                           **{e["format"]: e["retrieval"]["recall@1"] for e in card["files"]
                              if e["quantization"] == "none"}}
    shutil.rmtree(out_dir, ignore_errors=True)
    net = model_from_checkpoint(load_checkpoint(ck_path, "query"))
    m = retrieval_metrics(embed(net, ctx.splits.query, ctx.spec, desc=f"{row['net']}: queries"),
                          ctx.splits.query.labels, ctx.g_emb, ctx.splits.gallery.labels, ci=True)
    row.update(_bench.r1_row(m), baselines=ctx.baselines)   # PyTorch's; the files' are in het_recall@1
    return net


def random_row(ctx: Context, row: dict, arch: str, work: Path, real: torch.Tensor) -> torch.nn.Module:
    """A randomly initialised net: size and latency only."""
    torch.manual_seed(0)
    net = build_embedding_net(arch, 128, 10).eval()
    net_res = getattr(net.trunk, "resolution", ctx.res)
    row["weights"] = "random initialisation (no trained checkpoint at this resolution)"
    x_real = to_model_input(resize_images(real, net_res), DataSpec()).numpy() if net_res <= SMALL_INPUT_MAX else None
    row.update(measure_files(net, net_res, work, slug(arch, 40), ctx.args, x_real))
    row["het_recall@1"] = None
    return net


def resolution_rows(args, res: int, work: Path, stages: dict, notes: list[str]) -> list[dict]:
    ctx = Context(args, res, stages)
    # (label, arch, checkpoint, searched); "resnet101" is the gallery model as a query encoder: the trained one
    # where there is one, else randomly initialised: the gallery recipe's small-input stem at small inputs,
    # the ImageNet stem at camera-sized ones
    gallery_arch = GALLERY_MODEL["arch"] if res <= SMALL_INPUT_MAX else "resnet101"
    nets = [(a, gallery_arch if a == "resnet101" else a, ctx.queries.get(a), False) for a in args.nets.split(",")]
    if args.searched_query:
        ck = load_checkpoint(args.searched_query, "query")
        nets.append((ck["model"]["arch"], ck["model"]["arch"], args.searched_query, True))
    elif args.searched_arch:
        nets.append((args.searched_arch, args.searched_arch, None, True))
    real = load_splits(DataSpec(n_train=16, n_val=0, n_query=16, n_gallery=16), progress=False).query.images
    rows = []
    for label, arch, ck_path, searched in nets:
        if searched and ":" in arch and f"r{res}," not in arch:
            notes.append(f"{res}px: the searched net {arch} is a {arch.split(':')[0]} arch at another input "
                         "resolution; not measured here")
            continue
        log.info("%s @ %dpx", label, res)
        row = {"net": label, "arch": arch, "role": "query encoder", "resolution": res, "searched": searched}
        with ctx.wf.stage(f"measure_{slug(label, 40)}_r{res}"):
            if label == "resnet101" and ctx.gallery is not None:
                net = paragon_row(ctx, row, work)
            elif ck_path is not None and ctx.gallery is not None:
                net = trained_row(ctx, row, ck_path, work)
            else:
                net = random_row(ctx, row, arch, work, real)
        row["params"] = export_params(net)
        row["flops"] = flops(net, getattr(net.trunk, "resolution", res))
        rows.append(row)
    notes.extend(missing_notes(ctx, args))
    return rows


def missing_notes(ctx: Context, args) -> list[str]:
    if ctx.gallery is None:
        return [f"{ctx.res}px: no trained ResNet-101 gallery checkpoint in {args.cache}; Recall@1 not reported, "
                "latency/size measured on randomly initialised nets"]
    missing = [a for a in args.nets.split(",") if a != "resnet101" and a not in ctx.queries]
    return [f"{ctx.res}px: no trained BCT query checkpoint for {', '.join(missing)} in {args.cache}; their "
            "latency/size are from randomly initialised nets"] if missing else []


def cost_reductions(results: list[dict], resolutions: list[int]) -> None:
    """x-fold cost reduction against ResNet-101 as the query encoder, per resolution and runtime."""
    for res in resolutions:
        ref = next((r for r in results if r["resolution"] == res and r["net"] == "resnet101"), None)
        for r in results:
            if r["resolution"] != res or ref is None:
                continue
            r["cost_reduction_vs_resnet101"] = {
                **{f"{fmt}_latency": round(ref[fmt]["latency"]["median_ms"] / r[fmt]["latency"]["median_ms"], 2)
                   for fmt in FORMATS},
                **{f"{fmt}_size": round(ref[fmt]["bytes"] / r[fmt]["bytes"], 2) for fmt in FORMATS},
                "flops": round(ref["flops"] / r["flops"], 2)}


def main(argv: list[str] | None = None) -> Path:
    ap = _bench.parser(__doc__, {"quick": QUICK})
    ap.add_argument("--resolutions", default="32", help="comma list of input sides (default 32; add 224 for cost)")
    ap.add_argument("--nets", default=",".join(BASELINES), help="comma list of baseline nets")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gallery", type=Path, default=None, help="gallery checkpoint (default: newest in --cache)")
    ap.add_argument("--train", action="store_true",
                    help="train (or reuse) bct_compat.py's gallery and BCT query nets through the workflow")
    _bench.add_bct_args(ap, "with --train")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--searched-query", type=Path, default=None,
                    help="a trained query checkpoint of the searched net (edgequery train query --arch search.json)")
    ap.add_argument("--searched-arch", default=None, help="a searched arch string (latency/size only, random init)")
    ap.add_argument("--quantize", default="dynamic,int8,fp16",
                    help="quantized variants exported for trained query nets (their Recall@1 change; 'none' to skip)")
    args = _bench.parse(ap, argv)
    prov = _bench.start(args)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    results, notes, stages = [], [], {}
    work = Path(tempfile.mkdtemp(prefix="export-runtime-"))
    try:
        for res in resolutions:
            results += resolution_rows(args, res, work, stages, notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cost_reductions(results, resolutions)
    body = {"protocol": {"batch": 1, "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
                         "statistic": "median (p10, p90) in ms, end to end incl. per-invocation overhead",
                         "precision": "float32 files (quantized variants: see `edgequery export --quantize`)",
                         "cost_reduction": "ResNet-101 median / net median, same runtime, same run"},
            "results": results, "tools": tool_versions(), "stages": stages}
    notes.append("medians and same-run ratios are the figures to read: other jobs may share the cores "
                 "(provenance.load_average)")
    path = _bench.write(args, "export_runtime", body, prov, notes)
    plot(results, path.with_suffix(".png"))
    return path


def _label(r: dict) -> str:
    """Tick label: a short net name, and its heterogeneous Recall@1 when measured."""
    name = "searched" if r.get("searched") else \
        r["net"].replace("mobilenet_v3_", "MBv3-").replace("resnet101", "ResNet-101")
    het = (r.get("het_recall@1") or {}).get("pytorch")
    return name if het is None else f"{name}\nhet R@1 {100 * het:.1f}" + (" (paragon)" if r["net"] == "resnet101" else "")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = sorted({r["resolution"] for r in results})
    fig, axes = plt.subplots(1, len(resolutions), figsize=(5.5 * len(resolutions), 3.8), squeeze=False)
    for ax, res in zip(axes[0], resolutions):
        rows = [r for r in results if r["resolution"] == res]
        labels = [_label(r) for r in rows]
        xs = np.arange(len(rows))
        for i, (fmt, colour) in enumerate((("tflite", "#4c72b0"), ("onnx", "#dd8452"))):
            med = [r[fmt]["latency"]["median_ms"] for r in rows]
            lo = [m - r[fmt]["latency"]["p10_ms"] for m, r in zip(med, rows)]
            hi = [r[fmt]["latency"]["p90_ms"] - m for m, r in zip(med, rows)]
            ax.bar(xs + (i - 0.5) * 0.38, med, 0.38, yerr=[lo, hi], capsize=3, color=colour,
                   label={"tflite": "LiteRT", "onnx": "onnxruntime"}[fmt])
            for x, r, m in zip(xs, rows, med):
                red = r.get("cost_reduction_vs_resnet101", {}).get(f"{fmt}_latency")
                if red and r["net"] != "resnet101":
                    top = r[fmt]["latency"]["p90_ms"]
                    ax.annotate(f"{red:.0f}x", (x + (i - 0.5) * 0.38, top), ha="center", va="bottom", fontsize=7,
                                xytext=(0, 2), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_ylabel("latency, ms (median, p10-p90; log)")
        ax.set_title(f"{res}x{res} input, batch 1, 1 thread")
        ax.legend(fontsize=8)
    fig.suptitle("Query encoder on-device cost vs ResNet-101 (x = cost reduction)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
