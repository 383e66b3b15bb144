"""The exported query encoder in the browser: LiteRT.js and onnxruntime-web vs Python's runtimes.

Serves an export with ``edgequery serve --export``, opens the page in headless Chromium
(Debian's; the runtimes as ``scripts/build_web.sh`` vendored them) and, for each browser
runtime (LiteRT.js on the ``.tflite`` files, onnxruntime-web on the ``.onnx``, both wasm, one
thread):

* **parity**: the export's ``parity.npz`` images, each written as a PNG, picked in the page's
  file input and embedded there - pre-processing included - against the Python runtime's
  embedding of the same file (``parity.npz``); the minimum cosine over images;
* **latency**: the export's test image embedded ``--warmup`` times untimed, then ``--runs``
  timed runs of the model alone (``performance.now()`` around ``run``); median, p10, p90;

beside Python's ai-edge-litert and onnxruntime on the same files, same thread count
(:func:`edgequery.runtimes.run.measure_latency`).  Without ``--export``/``--index`` it makes
its own set in ``--cache``: a MobileNetV3-small gallery stand-in and a BCT query net of
``--arch``, each 4 epochs on 3000 Fashion-MNIST images (a few minutes here; latency and parity do
not depend on how well a net is trained, but the fp16 file's Recall@1 change needs a net that
retrieves), exported to TFLite (NCHW and NHWC, each also as fp16) and ONNX.  The Python rows cover
every file, fp16 included, with its size and the heterogeneous Recall@1 the export measured on 500
queries against a 2000-image gallery (the stand-in is no paragon: the fp16 *change* is the figure,
not the level; the card's raw-pixel kNN row says where the level stands).

    python benchmarks/browser_demo.py                        # the committed run
    python benchmarks/browser_demo.py --export runs/demo/export/query --index runs/demo/gallery_index
    python benchmarks/browser_demo.py --preset quick         # few runs: checks the script

Writes ``<out-dir>/browser_demo.json`` and ``browser_demo.png``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import _bench
from edgequery.artifacts.card import load_card

log = _bench.log
QUICK = {"runs": 5, "warmup": 1, "parity_images": 4}
SMALL_SET = {"n_train": 3000, "n_query": 500, "n_gallery": 2000, "epochs": 4}  # without --export


def parse(argv):
    ap = _bench.parser(__doc__, {"quick": QUICK})
    ap.add_argument("--export", type=Path, default=None, help="an export folder (default: make a small one)")
    ap.add_argument("--index", type=Path, default=None, help="an index built with the export's gallery model")
    ap.add_argument("--arch", default="mobilenet_v3_small", help="without --export: the query net's arch")
    ap.add_argument("--resolution", type=int, default=32, help="without --export: the input resolution")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per runtime (median, p10, p90)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    ap.add_argument("--parity-images", type=int, default=32, help="images of parity.npz embedded in the page")
    return _bench.parse(ap, argv)


def small_set(args) -> tuple[Path, Path]:
    """A gallery stand-in, a BCT query net of ``args.arch``, their export and index, in the cache."""
    from edgequery.data import DataSpec, load_splits
    from edgequery.export import ExportOptions
    from edgequery.recipes import train_gallery
    from edgequery.train import TrainConfig
    from edgequery.workflow import Workflow

    spec = DataSpec(resolution=args.resolution, n_train=SMALL_SET["n_train"], n_val=0,
                    n_query=max(SMALL_SET["n_query"], args.parity_images), n_gallery=SMALL_SET["n_gallery"])
    root = args.cache / f"browser-{_bench.data_tag(spec)}-{args.arch}"
    wf = Workflow(spec)
    gallery = root / "gallery.pt"
    with wf.stage("train_gallery_stand_in", gallery, "reused" if gallery.is_file() else "ran"):
        if not gallery.is_file():
            train_gallery(spec, TrainConfig(epochs=SMALL_SET["epochs"], batch_size=64), gallery,
                          arch="mobilenet_v3_small", splits=load_splits(spec, progress=False))
    query = wf.query(root / "query.pt", gallery, args.arch, True, SMALL_SET["epochs"], batch_size=64)
    export = root / "export-fp16"
    if not (export / "model_card.json").is_file():
        wf.export(query, export, gallery, ExportOptions(formats=("tflite", "onnx"), quantize=("fp16",), nhwc=True,
                                                        threads=(1,),
                                                        warmup=2, runs=5, parity_images=args.parity_images,
                                                        name=args.arch))
    index = root / "index"
    if not index.is_dir():
        wf.index(gallery, index)
    return export, index


def browser_rows(url: str, export: Path, args, work: Path) -> dict:
    """Parity and latency of each float file the page offers, embedded in headless Chromium."""
    from PIL import Image

    from edgequery.gallery.browser import Chromium

    parity = np.load(export / "parity.npz")
    images = parity["images"][:args.parity_images]
    pngs = []
    for i, im in enumerate(images):
        pngs.append(work / f"parity-{i}.png")
        Image.fromarray(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)).save(pngs[-1])
    rows = {}
    with Chromium() as browser:
        version = browser.send("Browser.getVersion")["product"]
        browser.open(url + "/")
        browser.wait_for("window.edgequery && window.edgequery.ready", timeout=120)
        for choice in browser.evaluate("window.edgequery.choices()"):
            name = choice.split("/", 1)[1]
            expected = parity[f"file:{name}"]
            cosines = []
            for i, png in enumerate(pngs):
                browser.set_files("#file", [png])
                got = np.asarray(browser.evaluate(f"window.edgequery.bench({choice!r}, 0)")["embedding"])
                cosines.append(float(got @ expected[i] / np.linalg.norm(got) / np.linalg.norm(expected[i])))
            browser.set_files("#file", [export / "test_image.png"])
            browser.evaluate(f"window.edgequery.bench({choice!r}, {args.warmup})")
            timed = browser.evaluate(f"window.edgequery.bench({choice!r}, {args.runs})")
            ms = np.asarray(timed["ms"])
            rows[name] = {"runtime": timed["runtime"], **_stats(ms),
                          "parity": {"images": len(cosines), "min_cosine": round(min(cosines), 7),
                                     "mean_cosine": round(float(np.mean(cosines)), 7),
                                     "against": "the Python runtime's embedding of the same file (parity.npz)"}}
            log.info("%-28s %-26s median %.3f ms  min cosine %.7f", name, timed["runtime"], rows[name]["median_ms"],
                     min(cosines))
    return {"browser": version, "files": rows}


def _stats(ms: np.ndarray) -> dict:
    return {"median_ms": round(float(np.median(ms)), 4), "p10_ms": round(float(np.percentile(ms, 10)), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4), "runs": int(len(ms))}


def python_rows(export: Path, card, args) -> dict:
    """ai-edge-litert / onnxruntime on every file of the export (fp16 too), one thread, the same test image.

    Each row also carries the file's size and, from the card, its heterogeneous Recall@1 (and,
    for a quantized file, the points it loses against its float32 file) as the export measured it.
    """
    from edgequery.export.fixtures import read_test_vector
    from edgequery.runtimes.run import measure_latency, open_runner

    vector = read_test_vector(export)
    x = np.asarray(vector["input"]["values"], dtype=np.float32).reshape(vector["input"]["shape"])
    rows = {}
    for f in card.files:
        runner = open_runner(export / f.file, f.format, threads=1, layout=f.layout)
        lat = measure_latency(runner, x, warmup=args.warmup, runs=args.runs)
        retrieval = {k: f.retrieval[k] for k in ("recall@1", "recall@1_ci95", "recall@1_drop_points")
                     if f.retrieval and k in f.retrieval}
        rows[f.file] = {"runtime": f"{f.runtime} (Python)", "quantization": f.quantization, "bytes": f.bytes,
                        **{k: lat[k] for k in ("median_ms", "p10_ms", "p90_ms", "runs")}, "retrieval": retrieval}
    return rows


def main(argv: list[str] | None = None) -> Path:
    from edgequery.gallery.web import vendored

    args = parse(argv)
    prov = _bench.start(args)
    packages = vendored()
    if packages is None:
        raise SystemExit("the browser runtimes are not vendored: run scripts/build_web.sh first")
    export, index = (args.export, args.index) if args.export else small_set(args)
    if index is None:
        raise SystemExit("--export needs --index: an index built with the export's gallery model")
    card, _ = load_card(export)
    work = Path(tempfile.mkdtemp(prefix="browser-demo-"))
    try:
        served = work / "index"
        shutil.copytree(index, served, ignore=shutil.ignore_patterns("*.log", ".lock"))
        with _bench.serving(served, "--export", str(export)) as (url, _pid):
            browser = browser_rows(url, export, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    python = python_rows(export, card, args)
    by_runtime = {"litertjs": [r for r in browser["files"].values() if r["runtime"].startswith("LiteRT.js")],
                  "onnxruntime_web": [r for r in browser["files"].values() if r["runtime"].startswith("onnxruntime")]}
    runtimes = {name: {"median_ms": min(r["median_ms"] for r in rows),
                       "files": [f for f, r in browser["files"].items() if r in rows]}
                for name, rows in by_runtime.items() if rows}
    body = {
        "encoder": {"arch": card.arch, "model_version": card.model_version, "resolution": card.input.resolution,
                    "export": export.name},
        "protocol": {"threads": 1, "warmup": args.warmup, "runs": args.runs, "batch": 1,
                     "browser_clock": "performance.now() around the runtime's run (model only: pre-processing "
                                      "and download excluded)",
                     "python_clock": "time.perf_counter around the runner's call (edgequery.runtimes.run)"},
        "browser": browser["browser"], "browser_runtimes": packages["packages"],
        "runtimes": runtimes,
        "parity": {name: {"min_cosine": min(browser["files"][f]["parity"]["min_cosine"] for f in r["files"])}
                   for name, r in runtimes.items()},
        "files": {"browser": browser["files"], "python": python},
    }
    path = _bench.write(args, "browser_demo", body, prov,
                        notes=["browser and Python timings are taken in the same run on the same machine; "
                               "headless Chromium shares the cores with the server process (idle while timing)"])
    plot(body, path.with_suffix(".png"))
    return path


def plot(body: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{f}\n{r['runtime']}", r) for part in ("browser", "python") for f, r in body["files"][part].items()]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.6 * len(rows)))
    y = np.arange(len(rows))
    med = [r["median_ms"] for _, r in rows]
    err = [[r["median_ms"] - r["p10_ms"] for _, r in rows], [r["p90_ms"] - r["median_ms"] for _, r in rows]]
    ax.barh(y, med, xerr=err, color=["#4477aa" if "Python" not in r["runtime"] else "#999999" for _, r in rows])
    ax.set_yticks(y, [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per embedding (median, p10-p90), batch 1, 1 thread")
    enc = body["encoder"]
    ax.set_title(f"{enc['arch']} at {enc['resolution']} px: {body['browser']} vs Python", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
