"""BCT compatibility on Fashion-MNIST: paragon / homogeneous / heterogeneous retrieval.

Trains (or reuses, from ``--cache``) a ResNet-101 gallery model and MobileNetV3-small and
-large query nets with and without BCT - the stages of :mod:`edgequery.workflow` - then
evaluates every query net against the gallery.  Writes ``<out-dir>/bct_compat.json``
(``benchmarks/results/`` by default) and ``bct_compat.png``.

    python benchmarks/bct_compat.py                  # the full run: ~25 min on 2 cores from an empty cache
    python benchmarks/bct_compat.py --preset quick   # 3.5 min at load 4: 1000 images, 1 epoch, MBv3-small

The full run's training took 1351 s in the committed results (gallery 779 s, the four
query nets 89-196 s each), plus a minute of evaluation.  Each training run checkpoints
per epoch into the cache, so a killed run resumes; a finished one is reused.
"""

from __future__ import annotations

from pathlib import Path

import _bench
from edgequery.checkpoint import load_checkpoint
from edgequery.evaluate import format_report
from edgequery.workflow import Workflow

QUICK = {**_bench.BCT_QUICK, "query_archs": "mobilenet_v3_small"}


def main(argv: list[str] | None = None) -> Path:
    ap = _bench.parser(__doc__, {"quick": QUICK})
    _bench.add_bct_args(ap)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--query-archs", default="mobilenet_v3_small,mobilenet_v3_large", help="comma list")
    ap.add_argument("--device", default="cpu")
    args = _bench.parse(ap, argv)
    prov = _bench.start(args)

    spec = _bench.bct_spec(args, args.resolution)
    wf = Workflow(spec, args.device)
    archs = args.query_archs.split(",")
    gallery_path, queries = _bench.bct_checkpoints(wf, args.cache, args.gallery_epochs, args.query_epochs, archs)
    reports = wf.evaluate({f"{a}-{'bct' if b else 'nobct'}": p for (a, b), p in queries.items()}, gallery_path)
    results = []
    for ((arch, bct), path), (name, report) in zip(queries.items(), reports.items()):
        print(format_report(report, f"\n{name}"), flush=True)
        results.append({"query_arch": arch, "bct": bct, "checkpoint": path.name,
                        "train_config": load_checkpoint(path, "query")["train"]["config"],
                        **{k: report[k] for k in ("paragon", "homogeneous", "heterogeneous")}})
    gallery = load_checkpoint(gallery_path, "gallery")
    body = {
        "data": {"dataset": spec.dataset, "resolution": spec.resolution, "sizes": wf.splits.sizes(),
                 "classes": wf.splits.num_classes, "spec": spec.to_dict()},
        "gallery": {"arch": gallery["model"]["arch"], "epochs": args.gallery_epochs, "checkpoint": gallery_path.name,
                    "embed_dim": gallery["model"]["embed_dim"], "model_version": gallery["model_version"],
                    "train_config": gallery["train"]["config"], "train_seconds": _bench.train_seconds(gallery)},
        "query_epochs": args.query_epochs,
        "results": results,
        "paper_premise_checks": premise_checks(results),
        "stages": wf.stages,   # status reused / ran / resumed and wall seconds of each stage this run
    }
    path = _bench.write(args, "bct_compat", body, prov)
    plot(results, path.with_suffix(".png"))
    return path


def premise_checks(results: list[dict]) -> dict[str, dict[str, bool]]:
    """BCT's claims on these figures: compatible nets beat their own homogeneous retrieval and come near
    the paragon; nets trained without BCT are near chance against the gallery."""
    paragon_r1 = results[0]["paragon"]["recall@1"]
    checks = {}
    for r in results:
        het, hom = r["heterogeneous"]["recall@1"], r["homogeneous"]["recall@1"]
        key = f"{r['query_arch']}-{'bct' if r['bct'] else 'nobct'}"
        if r["bct"]:
            checks[key] = {"het_ge_hom": het >= hom, "het_within_3pt_of_paragon": paragon_r1 - het <= 0.03}
        else:
            checks[key] = {"het_near_chance_le_20pct": het <= 0.20}
    return checks


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
    plt.close(fig)


if __name__ == "__main__":
    main()
