"""BCT compatibility on Fashion-MNIST: paragon / homogeneous / heterogeneous retrieval.

Takes the benchmarks' gallery model - the gallery recipe on all 59k training images, the one
``benchmarks/paragon.py`` trains (shared through ``--cache``; trained here if missing) - and
trains MobileNetV3-small and -large query nets with and without BCT, each with every seed of
``--seeds`` (the stages of :mod:`edgequery.workflow`), then evaluates every query net against
the gallery with 95 % bootstrap CIs, beside the raw-pixel kNN baseline of the same split.
Writes ``<out-dir>/bct_compat.json`` (``benchmarks/results/`` by default) and ``bct_compat.png``.

    python benchmarks/bct_compat.py                  # the full run: 8 query nets on 59k images
    python benchmarks/bct_compat.py --preset quick   # 1000 images, 20 steps, MBv3-small: checks the script

``--settings`` picks the query nets' training: ``nobct``, ``bct`` (against the gallery model's trained
classifier) and ``bct-prototypes`` (against a *prototype classifier*: each class's mean gallery
embedding of the 1000 validation images, L2-normalised - what ``edgequery import gallery`` gives a
model trained without a classifier; the stored paragon holds embeddings of those images, not of the
training split), by default for MobileNetV3-small only (``--prototype-archs``).  A run of other
settings or archs than the defaults writes
``bct_compat-<settings>-<archs>.json`` instead, so it never replaces the full file.

Each query net trains ``--query-steps`` (2300: 5 epochs of 59k at batch 128).  A claim that BCT
lifts heterogeneous Recall@1 is made (``claims``) only where every seed's CI with BCT lies
above every seed's CI without it.  Each training run checkpoints per epoch into the cache, so a
killed run resumes; a finished one is reused.
"""

from __future__ import annotations

from pathlib import Path

import _bench
from edgequery.checkpoint import load_checkpoint
from edgequery.evaluate import format_report
from edgequery.workflow import Workflow

QUICK = {**_bench.BCT_QUICK, "query_archs": "mobilenet_v3_small"}
SETTINGS = ("nobct", "bct", "bct-prototypes")
CLASSIFIER = {"nobct": None, "bct": "trained", "bct-prototypes": "prototypes"}  # the frozen classifier of each
ARCHS = "mobilenet_v3_small,mobilenet_v3_large"
PROTOTYPE_ARCHS = "mobilenet_v3_small"  # the question (prototypes vs the trained classifier) asked of one arch


def main(argv: list[str] | None = None) -> Path:
    ap = _bench.parser(__doc__, {"quick": QUICK})
    _bench.add_bct_args(ap)
    ap.add_argument("--query-archs", default=ARCHS, help="comma list")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"comma list of {', '.join(SETTINGS)} (see above)")
    ap.add_argument("--prototype-archs", default=PROTOTYPE_ARCHS,
                    help="the archs of the bct-prototypes setting (comma list; each must be in --query-archs)")
    ap.add_argument("--device", default="cpu")
    args = _bench.parse(ap, argv)
    settings = [t for t in SETTINGS if t in args.settings.split(",")]
    if not settings or len(settings) != len(args.settings.split(",")):
        ap.error(f"--settings {args.settings!r}: use a comma list of {', '.join(SETTINGS)}")
    prov = _bench.start(args)

    spec = _bench.bct_spec(args)
    wf = Workflow(spec, args.device)
    archs = args.query_archs.split(",")
    seeds = _bench.seeds(args.seeds)
    gallery_path, queries = _bench.bct_checkpoints(
        wf, args.cache, args.gallery_steps, args.query_steps, archs, seeds,
        bcts=[b for b, t in ((False, "nobct"), (True, "bct")) if t in settings])
    queries = {(arch, "bct" if bct else "nobct", seed): path for (arch, bct, seed), path in queries.items()}
    prototypes = None
    if "bct-prototypes" in settings:
        proto_gallery, prototypes = _bench.prototype_gallery(wf, args.cache, gallery_path)
        gver = load_checkpoint(gallery_path, "gallery")["model_version"]
        proto_archs = args.prototype_archs.split(",")
        if not set(proto_archs) <= set(archs):
            ap.error(f"--prototype-archs {args.prototype_archs!r} must be among --query-archs {args.query_archs!r}")
        for arch in proto_archs:
            for seed in seeds:
                name = f"{arch}-bct-prototypes-s{seed}"
                path = _bench.query_checkpoint_path(args.cache, name, wf.spec, args.query_steps, gver)
                queries[(arch, "bct-prototypes", seed)] = wf.query(path, proto_gallery, arch, True, None,
                                                                   name=f"train_query_{name}",
                                                                   steps=args.query_steps, seed=seed)
    names = {key: f"{key[0]}-{key[1]}-s{key[2]}" for key in queries}
    reports = wf.evaluate({names[key]: path for key, path in queries.items()}, gallery_path)
    results = []
    for (arch, setting, seed), path in queries.items():
        report = reports[names[(arch, setting, seed)]]
        print(format_report(report, f"\n{names[(arch, setting, seed)]}"), flush=True)
        ckpt = load_checkpoint(path, "query")
        results.append({"query_arch": arch, "bct": setting != "nobct", "seed": seed, "checkpoint": path.name,
                        "classifier": CLASSIFIER[setting],
                        **_bench.r1_row(report["heterogeneous"]),
                        "homogeneous": _bench.r1_row(report["homogeneous"]),
                        "baselines": _bench.baselines_of(report),
                        "metrics": {k: report[k] for k in ("homogeneous", "heterogeneous")},
                        "train_config": ckpt["train"]["config"], "train_seconds": _bench.train_seconds(ckpt)})
    first = next(iter(reports.values()))
    gallery = load_checkpoint(gallery_path, "gallery")
    body = {
        "data": {"dataset": spec.dataset, "resolution": spec.resolution, "sizes": wf.splits.sizes(),
                 "classes": wf.splits.num_classes, "spec": spec.to_dict()},
        "gallery": {"arch": gallery["model"]["arch"], "checkpoint": gallery_path.name,
                    "embed_dim": gallery["model"]["embed_dim"], "model_version": gallery["model_version"],
                    "train_config": gallery["train"]["config"], "train_seconds": _bench.train_seconds(gallery),
                    **_bench.r1_row(first["paragon"])},
        "baselines": _bench.baselines_of(first),
        "query_steps": args.query_steps,
        "prototype_classifier": prototypes,
        "results": results,
        "summary": summary(results),
        "claims": claims(results, first["paragon"]),
        "warnings": first["warnings"],
        "stages": wf.stages,   # status reused / ran / resumed and wall seconds of each stage this run
    }
    preset_archs = QUICK["query_archs"] if args.preset == "quick" else ARCHS
    default = settings == list(SETTINGS) and args.query_archs == preset_archs and args.prototype_archs == PROTOTYPE_ARCHS
    variant = "" if default else "-" + "+".join(settings) + "-" + "+".join(a.replace("mobilenet_v3_", "mbv3")
                                                                            for a in archs)
    path = _bench.write(args, "bct_compat", body, prov, notes=first["warnings"], variant=variant)
    plot(results, first["paragon"]["recall@1"], first["baselines"]["raw_pixel_knn"]["recall@1"],
         path.with_suffix(".png"))
    return path


def _settings(results: list[dict]) -> dict[str, list[dict]]:
    """The rows of each (arch, BCT) setting, over seeds."""
    out: dict[str, list[dict]] = {}
    for r in results:
        classifier = r.get("classifier", "trained") if r["bct"] else None  # rows before prototypes had none
        setting = next(t for t, c in CLASSIFIER.items() if c == classifier)
        out.setdefault(f"{r['query_arch']}-{setting}", []).append(r)
    return out


def summary(results: list[dict]) -> dict[str, dict]:
    """Per setting: heterogeneous and homogeneous Recall@1 over the seeds."""
    return {name: {"heterogeneous": _bench.seed_summary(rows),
                   "homogeneous": _bench.seed_summary([{**r["homogeneous"], "seed": r["seed"]} for r in rows])}
            for name, rows in _settings(results).items()}


def claims(results: list[dict], paragon: dict) -> dict[str, dict]:
    """BCT's claims on these figures, each decided by the CIs over every seed: BCT lifts heterogeneous
    Recall@1 above training without it; BCT's heterogeneous retrieval against its own homogeneous one;
    its gap to the paragon."""
    settings = _settings(results)
    paragon_row = [{"recall_at_1": paragon["recall@1"], "recall_at_1_ci95": paragon["recall@1_ci95"]}]
    out = {}
    for arch in dict.fromkeys(r["query_arch"] for r in results):
        with_bct, without = settings.get(f"{arch}-bct"), settings.get(f"{arch}-nobct")
        protos = settings.get(f"{arch}-bct-prototypes")
        out[arch] = {}
        if with_bct:
            own = [r["homogeneous"] for r in with_bct]
            out[arch].update({
                "bct_vs_no_bct_het": _bench.compare(with_bct, without) if without else None,
                "bct_het_vs_hom": _bench.compare(with_bct, own),
                "bct_het_vs_paragon": _bench.compare(with_bct, paragon_row),
                "bct_het_gap_to_paragon_points": round(100 * (paragon["recall@1"] - _bench.seed_summary(with_bct)
                                                              ["recall_at_1_mean"]), 2)})
        if protos:
            out[arch].update({
                "prototypes_vs_trained_classifier_het": _bench.compare(protos, with_bct) if with_bct else None,
                "prototypes_vs_no_bct_het": _bench.compare(protos, without) if without else None,
                "prototypes_het_gap_to_paragon_points": round(100 * (paragon["recall@1"] - _bench.seed_summary(
                    protos)["recall_at_1_mean"]), 2)})
    return out


def plot(results: list[dict], paragon_r1: float, raw_r1: float, path: Path) -> None:
    """Heterogeneous and homogeneous Recall@1 of each setting (mean over seeds, whiskers spanning the
    seeds' 95 % CIs), against the paragon and raw pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = _settings(results)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    for i, (setting, colour) in enumerate((("homogeneous", "#4c72b0"), ("heterogeneous", "#dd8452"))):
        means, lo, hi = [], [], []
        for rows in settings.values():
            s = _bench.seed_summary([r if setting == "heterogeneous" else {**r["homogeneous"], "seed": r["seed"]}
                                     for r in rows])
            means.append(100 * s["recall_at_1_mean"])
            lo.append(means[-1] - 100 * min(c[0] for c in s["recall_at_1_ci95_per_seed"]))
            hi.append(100 * max(c[1] for c in s["recall_at_1_ci95_per_seed"]) - means[-1])
        ax.bar([x + (i - 0.5) * width for x in range(len(settings))], means, width, yerr=[lo, hi], capsize=3,
               label=setting, color=colour)
    labels = [name.replace("mobilenet_v3_", "MBv3-").replace("-nobct", "\nno BCT").replace(
        "-bct-prototypes", "\nBCT, prototypes").replace("-bct", "\nBCT") for name in settings]
    ax.set_xticks(range(len(settings)), labels)
    ax.axhline(100 * paragon_r1, color="#555555", lw=1, label=f"paragon {100 * paragon_r1:.1f}")
    ax.axhline(100 * raw_r1, color="k", lw=0.8, ls="--", label=f"raw-pixel kNN {100 * raw_r1:.1f}")
    ax.set_ylabel("Recall@1 (%)")
    ax.set_ylim(0, 100)
    seeds = sorted({r["seed"] for r in results})
    ax.set_title(f"Fashion-MNIST: query nets vs the ResNet-101 gallery (seeds {', '.join(map(str, seeds))})",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
