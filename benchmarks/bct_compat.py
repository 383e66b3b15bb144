"""BCT compatibility on Fashion-MNIST: paragon / homogeneous / heterogeneous retrieval.

Trains (or reuses, from ``--cache``) a ResNet-101 gallery model and MobileNetV3-small and
-large query nets with and without BCT, then evaluates every query net against the
gallery.  Writes ``benchmarks/results/bct_compat.json`` and ``bct_compat.png``.

    python benchmarks/bct_compat.py                 # the committed preset (~15 min alone on 2 cores)
    python benchmarks/bct_compat.py --n-train 2000 --gallery-epochs 1 --query-epochs 1   # smoke run

Each training run checkpoints per epoch into the cache, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgequery.checkpoint import is_finished, load_checkpoint
from edgequery.commands.common import write_json
from edgequery.data import DataSpec, load_splits
from edgequery.evaluate import evaluate_pair, format_report
from edgequery.models import model_from_checkpoint
from edgequery.recipes import train_gallery, train_query
from edgequery.sysinfo import machine_info
from edgequery.train import TrainConfig

HERE = Path(__file__).resolve().parent
QUERY_ARCHS = ("mobilenet_v3_small", "mobilenet_v3_large")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--n-gallery", type=int, default=9000)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--gallery-epochs", type=int, default=4)
    ap.add_argument("--query-epochs", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bct_compat.json")
    args = ap.parse_args()

    spec = DataSpec(resolution=args.resolution, n_train=args.n_train, n_val=1000, n_query=args.n_query,
                    n_gallery=args.n_gallery)
    splits = load_splits(spec)
    tag = f"n{args.n_train}-r{args.resolution}"
    gallery_path = args.cache / f"gallery-r101-{tag}-e{args.gallery_epochs}.pt"
    seconds = {}
    if not is_finished(gallery_path):
        t = time.time()
        train_gallery(spec, TrainConfig(epochs=args.gallery_epochs, device=args.device), gallery_path, splits=splits)
        seconds["gallery"] = round(time.time() - t, 1)
    gallery = load_checkpoint(gallery_path, "gallery")
    gallery_model = model_from_checkpoint(gallery)

    results, cache = [], {}
    for arch in QUERY_ARCHS:
        for bct in (False, True):
            name = f"{arch}-{'bct' if bct else 'nobct'}"
            path = args.cache / f"query-{name}-{tag}-e{args.query_epochs}-g{gallery['model_version']}.pt"
            if not is_finished(path):
                t = time.time()
                train_query(gallery_path, TrainConfig(epochs=args.query_epochs, device=args.device), path,
                            arch=arch, bct=bct, spec=spec, splits=splits)
                seconds[name] = round(time.time() - t, 1)
            report = evaluate_pair(model_from_checkpoint(load_checkpoint(path, "query")), gallery_model, splits,
                                   device=args.device, gallery_cache=cache)
            print(format_report(report, f"\n{name}"), flush=True)
            results.append({"query_arch": arch, "bct": bct, **{k: report[k] for k in
                                                               ("paragon", "homogeneous", "heterogeneous")}})

    paragon_r1 = results[0]["paragon"]["recall@1"]
    checks = {}
    for r in results:
        het, hom = r["heterogeneous"]["recall@1"], r["homogeneous"]["recall@1"]
        key = f"{r['query_arch']}-{'bct' if r['bct'] else 'nobct'}"
        if r["bct"]:
            checks[key] = {"het_ge_hom": het >= hom, "het_within_3pt_of_paragon": paragon_r1 - het <= 0.03}
        else:
            checks[key] = {"het_near_chance_le_20pct": het <= 0.20}
    out = {
        "benchmark": "bct_compat",
        "command": "python benchmarks/bct_compat.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("cache", "out")),
        "data": {"dataset": "fashion-mnist", "resolution": args.resolution, "sizes": splits.sizes(),
                 "classes": splits.num_classes},
        "gallery": {"arch": "resnet101", "epochs": args.gallery_epochs, "embed_dim": gallery["model"]["embed_dim"],
                    "model_version": gallery["model_version"]},
        "query_epochs": args.query_epochs,
        "train_config": TrainConfig().to_dict(),
        "results": results,
        "paper_premise_checks": checks,
        "train_seconds_this_run": seconds,
        "machine": machine_info(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, out)
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(checks, indent=1))
    print(f"wrote {args.out}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['query_arch'].replace('mobilenet_v3_', 'MBv3-')}\n{'BCT' if r['bct'] else 'no BCT'}"
              for r in results]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.27
    for i, (setting, colour) in enumerate((("paragon", "#999999"), ("homogeneous", "#4c72b0"),
                                           ("heterogeneous", "#dd8452"))):
        ax.bar([x + (i - 1) * width for x in range(len(results))], [100 * r[setting]["recall@1"] for r in results],
               width, label=setting, color=colour)
    ax.set_xticks(range(len(results)), labels)
    ax.set_ylabel("Recall@1 (%)")
    ax.set_ylim(0, 100)
    ax.axhline(10, color="k", lw=0.6, ls=":")
    ax.set_title("Fashion-MNIST: query nets vs ResNet-101 gallery")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
