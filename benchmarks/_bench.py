"""What every benchmark script shares: presets, the output folder, notes, and the one result writer.

Each script builds an ``argparse`` parser with :func:`parser` (adds ``--preset``,
``--out-dir``, ``--cache``, ``--note``), whose defaults are the *full* run - the one the
committed results come from.  ``--preset quick`` replaces some defaults by a small run
that finishes here in a few minutes (flags given explicitly still win).  :func:`parse`
applies the preset and sets up logging; :func:`start` records the provenance (commit,
command, the configuration after defaults and preset, machine, load average);
:func:`write` writes the results file through :func:`edgequery.artifacts.provenance.write_result`
- the only way a script writes results.  Notes come from ``--note`` or from code, never
from editing a file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, NamedTuple

HERE = Path(__file__).resolve().parent


def _this_checkouts_package() -> None:
    """Run this checkout's ``edgequery`` - in this process and in the ones it starts (timing agents, workers) -
    not the one a shared virtualenv has installed from another checkout: the provenance's commit is this one's."""
    root = str(HERE.parent)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


_this_checkouts_package()

from edgequery.artifacts.provenance import BenchmarkResult, Provenance, write_result  # noqa: E402
from edgequery.log import NORMAL, QUIET, VERBOSE, setup_logging, sigterm_as_interrupt  # noqa: E402

RESULTS = HERE / "results"
CACHE = HERE / ".cache"
STORED_PARAGON = HERE / "assets" / "paragon-stored.pt"  # paragon.py writes it; committed (a few MB)
# What the benchmarks' paragon changes in the gallery recipe (measured on the full data, paragon.json):
# 4600 steps (10 epochs of the 59k training images) in place of 3680, every residual branch starting at
# zero (Goyal et al. 2017), no random erasing (it cost 0.6 points at 8 epochs, inside the noise).
# `edgequery train gallery` keeps its recipe until these are measured on small data sets too.
PARAGON_EXTRA = {"steps": 4600, "random_erasing": 0.0, "extra": {"zero_init_residual": True}}

log = logging.getLogger("edgequery.benchmarks")
_PROCESS = contextlib.ExitStack()   # what lasts as long as the script: the SIGTERM handler

# bct_compat.py's data and schedules: its defaults (the full run: the paragon's data, all 59k training
# images, and its gallery model) and its quick preset.  Scripts that need the same trained gallery and
# query nets (export_runtime.py --train) take these, so they reuse them.
BCT_FULL = {"n_train": None, "n_query": 1000, "n_gallery": None, "gallery_steps": None, "query_steps": 2300,
            "seeds": "0,1"}
BCT_QUICK = {"n_train": 1000, "n_query": 200, "n_gallery": 500, "gallery_steps": 20, "query_steps": 20,
             "seeds": "0,1"}


def parser(doc: str | None, presets: dict[str, dict[str, Any]], cache: Path = CACHE) -> argparse.ArgumentParser:
    """An ArgumentParser with the flags every benchmark has; ``presets`` maps a preset name to flag values."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("every benchmark")
    g.add_argument("--preset", choices=["full", *presets], default="full",
                   help="full: the defaults below (the committed run); "
                        + "; ".join(f"{name}: {_flags(values)}" for name, values in presets.items())
                        + " (explicit flags win)")
    g.add_argument("--out-dir", type=Path, default=RESULTS, help="folder the results JSON (and PNG) go to")
    g.add_argument("--cache", type=Path, default=cache, help="trained checkpoints and other reusable work")
    g.add_argument("--note", action="append", default=[], help="a note recorded in the results (repeatable)")
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    loud.add_argument("-v", "--verbose", action="store_true", help="debug lines and converter output")
    ap.set_defaults(_presets=presets)
    return ap


def _flags(values: dict[str, Any]) -> str:
    """``{"n_train": 1000}`` as ``--n-train 1000``."""
    return ", ".join("--" + key.replace("_", "-") + f" {value}" for key, value in values.items())


def parse(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with the chosen preset's values as defaults; set up logging."""
    first, _ = ap.parse_known_args(argv)
    presets = first._presets
    if first.preset != "full":
        known = {a.dest for a in ap._actions}
        unknown = set(presets[first.preset]) - known
        if unknown:
            raise SystemExit(f"preset {first.preset} sets unknown flags {sorted(unknown)} (a bug in the script)")
        ap.set_defaults(**presets[first.preset])
    args = ap.parse_args(argv)
    del args._presets
    setup_logging(QUIET if args.quiet else VERBOSE if args.verbose else NORMAL)
    if argv is None:  # run as a script (tests pass argv): `kill` stops it as Ctrl-C does, its clean-up runs
        _PROCESS.enter_context(sigterm_as_interrupt())
    return args


def start(args: argparse.Namespace) -> Provenance:
    """The provenance of this run, begun now: the configuration is ``args`` as parsed (defaults and preset applied)."""
    return Provenance.start(config={k: v for k, v in vars(args).items() if k not in ("quiet", "verbose")})


def write(args: argparse.Namespace, benchmark: str, results: dict[str, Any], provenance: Provenance,
          notes: Iterable[str] = (), variant: str = "") -> Path:
    """Write ``<out-dir>/<benchmark><variant>.json``: the envelope, code notes, ``--note`` notes, the results
    (``variant``, e.g. ``-sandwich``, names a run of the script whose settings differ from its default's)."""
    notes = list(notes)
    if args.preset != "full":
        notes.insert(0, f"--preset {args.preset}: a small run (little data, short training, few nets) that checks "
                        "the script end to end; its figures are not a measurement of the method (a gallery model "
                        "trained this briefly loses to raw pixels): the full preset is")
    path = write_result(Path(args.out_dir) / f"{benchmark}{variant}.json", benchmark, results, provenance,
                        notes=[*notes, *args.note])
    log.info("wrote %s", path)
    return path


def previous(path: Path, benchmark: str) -> BenchmarkResult | None:
    """The results file already at ``path`` when it is this benchmark's (for scripts that keep earlier parts)."""
    if not path.is_file():
        return None
    try:
        old = BenchmarkResult.load(path)
    except Exception as exc:  # noqa: BLE001 - an older file without the envelope is not kept
        log.warning("not keeping the parts of %s: %s", path, exc)
        return None
    return old if old.benchmark == benchmark else None


def kept_provenance(old: BenchmarkResult) -> dict[str, Any]:
    """What a part kept from an earlier run records about that run (its own envelope's provenance)."""
    return old.provenance.model_dump(mode="json")


def digest(settings: Any) -> str:
    """6 hex chars naming a JSON-able set of settings (for cache file names)."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:6]


def data_tag(spec) -> str:
    """A short name for a data spec: its sizes and resolution, and a hash of the whole spec."""
    return f"n{spec.n_train}-r{spec.resolution}-{digest(spec.to_dict())}"


def paragon_spec(n_train: int | None = None, n_query: int = 1000, n_gallery: int | None = None,
                 resolution: int = 32):
    """The data of the benchmarks' gallery model: Fashion-MNIST at 32 px, all of it by default."""
    from edgequery.data import DataSpec

    return DataSpec(resolution=resolution, n_train=n_train, n_query=n_query, n_gallery=n_gallery)


def paragon_checkpoint(wf, cache: Path, stored: bool = True, **train) -> Path:
    """The gallery recipe with :data:`PARAGON_EXTRA` trained on ``wf``'s data (``train``: TrainConfig
    fields changed from those; ``None`` values keep them), trained, resumed or reused through the workflow in
    ``cache`` (``paragon.py`` makes the full one; every benchmark asking for it shares the file).

    With ``stored`` and no such file in ``cache``, the committed stored paragon
    (:data:`STORED_PARAGON`: that model's embeddings of the validation and test images and its
    classifier, see :mod:`edgequery.models.stored`) is used when it was made from exactly this
    model - so a benchmark on a new machine does not retrain ResNet-101 for two hours first."""
    from edgequery.artifacts.checkpoint import GALLERY_MODEL, GALLERY_TRAIN

    train = {**PARAGON_EXTRA, **{k: v for k, v in train.items() if v is not None}}
    settings = {**GALLERY_MODEL, **GALLERY_TRAIN, "seed": 0, **train}  # seed: TrainConfig's default, named
    path = cache / f"paragon-{data_tag(wf.spec)}-{digest(settings)}.pt"
    if stored and not path.exists() and stored_paragon_of(path.name):
        return STORED_PARAGON
    return wf.gallery(path, **train)


def stored_paragon_of(name: str) -> bool:
    """Whether the committed stored paragon was made from the trained checkpoint called ``name``."""
    from edgequery.checkpoint import load_checkpoint

    if not STORED_PARAGON.is_file():
        return False
    info = load_checkpoint(STORED_PARAGON, "gallery")["stored"]
    if info["source"] != name:
        log.info("not using %s: it was made from %s, this run's gallery model is %s (trained here instead)",
                 STORED_PARAGON.name, info["source"], name)
        return False
    log.info("gallery model: the committed stored paragon %s (%s's embeddings of %s, and its classifier); "
             "`python benchmarks/paragon.py` trains the model itself", STORED_PARAGON,
             info["source"], ", ".join(f"{n} {k} images" for k, n in info["sets"].items()))
    return True


def seeds(text: str) -> list[int]:
    """``--seeds 0,1`` as ``[0, 1]``."""
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1") from None
    if not out or len(set(out)) != len(out):
        raise SystemExit(f"--seeds {text!r}: give one or more distinct seeds, e.g. --seeds 0,1")
    return out


def add_bct_args(ap: argparse.ArgumentParser, what: str = "", queries: bool = True) -> None:
    """The data and schedule flags of bct_compat.py's models (defaults: its full run); ``queries``: also
    the query nets' steps and seeds."""
    g = ap.add_argument_group("trained models" + (f" ({what})" if what else ""))
    g.add_argument("--n-train", type=int, default=BCT_FULL["n_train"], help="training images (default: all 59k)")
    g.add_argument("--n-query", type=int, default=BCT_FULL["n_query"])
    g.add_argument("--n-gallery", type=int, default=BCT_FULL["n_gallery"],
                   help="gallery images (default: the test split's other 9k)")
    g.add_argument("--gallery-steps", type=int, default=BCT_FULL["gallery_steps"],
                   help="the gallery model's steps (default: the gallery recipe's; benchmarks/paragon.py trains it)")
    if queries:
        g.add_argument("--query-steps", type=int, default=BCT_FULL["query_steps"])
        g.add_argument("--seeds", default=BCT_FULL["seeds"], help="training seeds of the query nets (comma list)")


def bct_spec(args: argparse.Namespace, resolution: int = 32):
    """The data spec of bct_compat.py's models at ``resolution``."""
    return paragon_spec(args.n_train, args.n_query, args.n_gallery, resolution)


def bct_checkpoints(wf, cache: Path, gallery_steps: int | None, query_steps: int, archs: Iterable[str],
                    seeds: Iterable[int], bcts: Iterable[bool] = (False, True)
                    ) -> tuple[Path, dict[tuple[str, bool, int], Path]]:
    """The gallery and the query nets ``bct_compat.py`` trains (through the workflow's stages), named by
    their settings in ``cache`` so that every script asking for the same ones reuses them; the query
    nets are keyed ``(arch, bct, seed)``."""
    from edgequery.checkpoint import load_checkpoint

    gallery_path = paragon_checkpoint(wf, cache, steps=gallery_steps)
    gver = load_checkpoint(gallery_path, "gallery")["model_version"]
    queries = {}
    for arch in archs:
        for bct in bcts:
            for seed in seeds:
                name = f"{arch}-{'bct' if bct else 'nobct'}-s{seed}"
                path = query_checkpoint_path(cache, name, wf.spec, query_steps, gver)
                queries[(arch, bct, seed)] = wf.query(path, gallery_path, arch, bct, None, name=f"train_query_{name}",
                                                      steps=query_steps, seed=seed)
    return gallery_path, queries


def prototype_gallery(wf, cache: Path, gallery_path: Path) -> tuple[Path, dict[str, Any]]:
    """The gallery checkpoint ``gallery_path`` with a prototype classifier instead of its trained one: each
    class's mean embedding of the validation images (the ones a stored paragon holds besides the test
    split), L2-normalised (:func:`edgequery.models.imported.with_prototype_classifier`); and what made it."""
    from edgequery.checkpoint import load_checkpoint
    from edgequery.models.imported import with_prototype_classifier

    gallery = load_checkpoint(gallery_path, "gallery")
    path = cache / f"{gallery_path.stem}-prototypes-val{len(wf.splits.val)}.pt"
    if not path.exists():
        with_prototype_classifier(gallery, wf.splits.val, path, "val")
    made = load_checkpoint(path, "gallery")
    return path, {"checkpoint": path.name, **made["classifier"], "model_version": made["model_version"]}


def query_checkpoint_path(cache: Path, name: str, spec, steps: int, gallery_version: str) -> Path:
    """Where a benchmark keeps the query net ``name`` (e.g. ``mobilenet_v3_small-bct-s0``) trained ``steps``
    on ``spec`` against the gallery ``gallery_version``: one name, so every script reuses the same net."""
    return cache / f"query-{name}-{data_tag(spec)}-t{steps}-g{gallery_version}.pt"


def require_this_machine(lut) -> None:
    """Refuse a LUT measured on another machine (or before fingerprints were recorded): its predictions and
    timings taken here would not be comparable.  Scripts call it as soon as they load the table."""
    from edgequery.artifacts.compat import check_compatible
    from edgequery.errors import EdgeQueryError
    from edgequery.latency import parse_device

    try:
        check_compatible(lut, parse_device("local").fingerprint(lut.runtime, lut.threads), a_name=lut.where)
    except EdgeQueryError as exc:
        raise EdgeQueryError(exc.problem, "measure this machine's table first (python benchmarks/lut_accuracy.py, "
                                          "or edgequery profile) and pass it with --lut") from exc


def measure_here(archs: list, lut, folder: Path, space=None, resolution: int | None = None,
                 jobs: int = 2) -> list[float]:
    """Median latency (ms) of each arch (parsed archs of ``space``, or names such as ``mobilenet_v3_large`` at
    ``resolution``), exported to the LUT's runtime and timed on this machine with the LUT's protocol
    (:func:`require_this_machine` first)."""
    from edgequery.latency import Protocol, measure_archs, parse_device

    require_this_machine(lut)
    timed = measure_archs(archs, parse_device("local"), lut.runtime, Protocol.of(lut), folder, jobs=jobs,
                          resolution=resolution, space=space)
    return [t["median_ms"] for t in timed]


def r1_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """A benchmark row's Recall@1 fields from a :func:`edgequery.metrics.retrieval_metrics` result."""
    return {"recall_at_1": metrics["recall@1"], "recall_at_1_ci95": metrics["recall@1_ci95"],
            "map_at_r": metrics["map@r"]}


def baselines_of(report: dict[str, Any]) -> dict[str, Any]:
    """A row's ``baselines``: raw-pixel kNN on the row's query/gallery split, as :func:`r1_row` fields."""
    return {"raw_pixel_knn": r1_row(report["baselines"]["raw_pixel_knn"])}


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """Whether runs ``a`` beat runs ``b`` on Recall@1 beyond the noise: ``"higher"`` when every 95 % CI
    of ``a`` (one per seed) lies above every CI of ``b``, ``"lower"`` for the reverse, else
    ``"within the noise"``.  Rows as :func:`r1_row` makes them."""
    a_lo, a_hi = min(r["recall_at_1_ci95"][0] for r in a), max(r["recall_at_1_ci95"][1] for r in a)
    b_lo, b_hi = min(r["recall_at_1_ci95"][0] for r in b), max(r["recall_at_1_ci95"][1] for r in b)
    return "higher" if a_lo > b_hi else "lower" if a_hi < b_lo else "within the noise"


def seed_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max Recall@1 over the seeds of one setting, and the seeds' CIs."""
    r1 = [r["recall_at_1"] for r in rows]
    return {"seeds": [r["seed"] for r in rows], "recall_at_1_mean": sum(r1) / len(r1),
            "recall_at_1_range": [min(r1), max(r1)],
            "recall_at_1_ci95_per_seed": [r["recall_at_1_ci95"] for r in rows]}


def train_seconds(ckpt: dict) -> float:
    """Wall-clock training time recorded in a checkpoint (sum over epochs; survives reuse and resume)."""
    return round(sum(h["seconds"] for h in ckpt["train"]["history"]), 1)


def replot(args, name: str, plot, variant: str = "") -> Path:
    """``--replot``: redraw ``<out-dir>/<name><variant>.png`` from the stored ``<name><variant>.json`` (a run of
    benchmark ``name``, see :func:`write`) with ``plot``; measures nothing."""
    path = Path(args.out_dir) / f"{name}{variant}.json"
    stored = previous(path, name)
    if stored is None:
        raise SystemExit(f"--replot: no {name} results in {path}")
    plot(stored.results, path.with_suffix(".png"))
    log.info("redrew %s from %s (nothing measured)", path.with_suffix(".png"), path)
    return path


class Serving(NamedTuple):
    url: str
    pid: int


@contextlib.contextmanager
def serving(index: Path | str, *flags: str, log_dir: Path | None = None):
    """``edgequery serve`` over ``index`` (a directory or a Milvus URI; and ``flags``) in a subprocess on a free
    loopback port; yields its :class:`Serving` (URL, pid) once healthy, stops it after.  Its output goes to
    ``server.log`` in ``log_dir`` (default: beside the index directory)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = Path(log_dir or Path(index).parent) / "server.log"
    with open(log_path, "w") as server_log:
        proc = subprocess.Popen([sys.executable, "-m", "edgequery.commands", "serve", "--index", str(index),
                                 "--port", str(port), "--log-level", "warning", *flags],
                                stdout=server_log, stderr=server_log)
        try:
            deadline = time.time() + 300
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
                time.sleep(0.3)
            yield Serving(url, proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
