"""The pipeline's stages as one library workflow, shared by ``edgequery demo`` and the benchmarks.

A :class:`Workflow` holds the data (a :class:`~edgequery.data.DataSpec`; its splits are
loaded once, on first use), the device, and a record of every stage it ran.  One method
per stage:

==============  ==================================================  ==========================
method          stage                                               artifact
==============  ==================================================  ==========================
``gallery``     train the gallery model (ResNet-101)                ``gallery.pt``
``query``       train a query net with or without BCT; also the     ``query-*.pt``
                retraining of a searched arch
``supernet``    train the BCT supernet of a search space            ``supernet.pt``
``profile``     measure the per-block latency table on a device     ``lut-*.json``
``search``      evolutionary search under a budget                  ``search.json``
``measure``     whole nets timed as the LUT was (predicted vs       ``latency-measured.json``
                measured)
``evaluate``    paragon / homogeneous / heterogeneous retrieval     reports (dicts)
``export``      TFLite + ONNX, parity-checked, with a model card    ``export/<name>/``
``index``       faiss index of the gallery split                    ``gallery_index/``
==============  ==================================================  ==========================

Every stage is idempotent.  A finished artifact made with the same settings is reused
(status ``reused``); an unfinished one is resumed (``resumed``: the library calls
continue a run of the same settings by themselves); otherwise the artifact is made
(``ran``).  A *finished* artifact made with other settings is refused with an
:class:`~edgequery.errors.EdgeQueryError` instead of being silently reused.  Each stage
logs one line when it starts and one when it ends, and lands in :attr:`Workflow.stages`
(status, wall seconds, artifact path).

:func:`run_demo` is ``edgequery demo``: every stage, small, into one folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import EdgeQueryError

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """``value`` as JSON would store it (tuples become lists), for comparing settings."""
    return json.loads(json.dumps(value, default=str))


def _data(obj: Any) -> Any:
    """A config or artifact (pydantic model or dataclass) as plain data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return asdict(obj) if is_dataclass(obj) else obj


def _dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


class Workflow:
    """Stages over one data spec and device; see the module docstring.

    ``stages`` maps each stage name to ``{"status", "seconds", "artifact"}``; a name used
    twice gets a ``#2`` suffix.  :meth:`derive` makes a workflow over other data that
    records into the same ``stages``.
    """

    def __init__(self, spec, device: str = "cpu", splits=None, stages: dict[str, dict] | None = None):
        self.spec, self.device = spec, device
        self._splits = splits
        self.stages: dict[str, dict[str, Any]] = {} if stages is None else stages
        self._gallery_embeddings: dict[str, dict] = {}   # gallery model_version -> evaluate_pair's cache

    @property
    def splits(self):
        if self._splits is None:
            from .data import load_splits

            self._splits = load_splits(self.spec)
        return self._splits

    def derive(self, spec) -> "Workflow":
        """A workflow over ``spec`` on the same device, recording into the same ``stages``."""
        return Workflow(spec, self.device, stages=self.stages)

    def seconds(self) -> dict[str, float]:
        """Wall seconds of every stage so far, by name."""
        return {name: rec["seconds"] for name, rec in self.stages.items()}

    @contextlib.contextmanager
    def stage(self, name: str, artifact: str | Path | None = None, status: str = "ran") -> Iterator[dict]:
        """Time a stage: one log line at its start, one at its end; the body may change ``rec["status"]``."""
        unique, n = name, 1
        while unique in self.stages:
            n += 1
            unique = f"{name}#{n}"
        rec = {"status": status, "seconds": 0.0, "artifact": None if artifact is None else str(artifact)}
        where = f" -> {artifact}" if artifact is not None else ""
        log.info("stage %s: %s%s", unique, "reusing the finished artifact" if status == "reused" else
                 "resuming" if status == "resumed" else "start", where)
        t0 = time.time()
        try:
            yield rec
        except BaseException:
            log.info("stage %s: failed after %.1f s", unique, time.time() - t0)
            raise
        rec["seconds"] = round(time.time() - t0, 1)
        self.stages[unique] = rec
        log.info("stage %s: %s in %.1f s", unique, "done" if rec["status"] == "ran" else rec["status"],
                 rec["seconds"])

    # ------------------------------------------------------------------ training stages

    def _train(self, name: str, kind: str, path: str | Path, expect: dict[str, Any], cfg,
               train: Callable[[Any], Any]) -> Path:
        path = Path(path)
        with self.stage(name, path, checkpoint_status(path, kind, expect, cfg)) as rec:
            if rec["status"] != "reused":
                train(cfg)
        return path

    def _train_config(self, epochs: int | None, train: dict[str, Any]):
        from .train import TrainConfig

        return TrainConfig(**({} if epochs is None else {"epochs": epochs}), device=self.device, **train)

    def gallery(self, path: str | Path, epochs: int | None = None, name: str = "train_gallery",
                model: dict[str, Any] | None = None, data: Any = None, **train: Any) -> Path:
        """Train (or reuse, or resume) the gallery model at ``path``: the gallery recipe
        (``GALLERY_MODEL`` / ``GALLERY_TRAIN`` of :mod:`edgequery.artifacts.checkpoint`) with ``model``
        (arch, embed_dim, scale, margin) and ``train`` (TrainConfig fields) changed; ``epochs``, when
        given, replaces the recipe's steps.  ``data`` (a DataSpec) trains it on other images than the
        workflow's (e.g. all training images, while the query nets train on a few thousand)."""
        from .artifacts.checkpoint import GALLERY_MODEL, GALLERY_TRAIN
        from .data import load_splits
        from .recipes import train_gallery

        model = {**GALLERY_MODEL, **(model or {})}
        train = {**GALLERY_TRAIN, **train}
        if epochs is not None:
            train.pop("steps")
        spec = data or self.spec
        expect = {**model, "data": spec.to_dict()}
        return self._train(name, "gallery", path, expect, self._train_config(epochs, train),
                           lambda cfg: train_gallery(spec, cfg, path, **model,
                                                     splits=self.splits if data is None else load_splits(data)))

    def query(self, path: str | Path, gallery_path: str | Path, arch: Any = "mobilenet_v3_small", bct: bool = True,
              epochs: int = 4, name: str | None = None, space: Any = None, **train: Any) -> Path:
        """Train (or reuse, or resume) a query net against the gallery.  A search-space arch (e.g. a searched
        one, retrained) is read in ``space`` (a SearchSpace, its config or name; default: the default one)."""
        from .checkpoint import load_checkpoint
        from .models import model_spec
        from .recipes import train_query

        model = model_spec(str(arch), 0, 0, space=space)   # the canonical arch string and its space's config
        version = load_checkpoint(gallery_path, "gallery")["model_version"]
        expect = {"arch": model["arch"], "space": model["space"], "bct": bct, "gallery_version": version,
                  "data": self.spec.to_dict()}
        return self._train(name or f"train_query_{'bct' if bct else 'nobct'}", "query", path, expect,
                           self._train_config(epochs, train),
                           lambda cfg: train_query(gallery_path, cfg, path, arch=model["arch"], bct=bct,
                                                   spec=self.spec, splits=self.splits, space=space))

    def supernet(self, path: str | Path, gallery_path: str | Path, space: Any = "mbv3", epochs: int = 4,
                 sandwich: bool = False, distill: float = 0.0, name: str = "train_supernet", **train: Any) -> Path:
        """Train (or reuse, or resume) the BCT supernet of ``space`` (a name or a SearchSpace)."""
        from .checkpoint import load_checkpoint
        from .spaces import get_space
        from .spaces.training import supernet_train_config, train_supernet

        space = get_space(space) if isinstance(space, str) else space
        version = load_checkpoint(gallery_path, "gallery")["model_version"]
        expect = {"space": space.config(), "sampling": "sandwich" if sandwich else "uniform",
                  **({"distill": distill} if distill else {}),
                  "gallery_version": version, "data": self.spec.to_dict()}
        cfg = supernet_train_config(self._train_config(epochs, train), sandwich, distill)
        return self._train(name, "supernet", path, expect, cfg,
                           lambda cfg: train_supernet(gallery_path, cfg, path, space=space, sandwich=sandwich,
                                                      distill=distill, spec=self.spec, splits=self.splits))

    # ------------------------------------------------------------------ latency and search

    def profile(self, path: str | Path, space, resolutions, runtime: str, protocol, device: str = "local",
                jobs: int = 1, workdir: str | Path | None = None, allow_other_device: bool = False,
                name: str = "profile"):
        """Measure (or finish, or reuse) the LUT of ``space`` at ``resolutions`` on ``device``; returns the LUT."""
        from .files import read_json
        from .latency import parse_device, profile

        path = Path(path)
        status = "ran"
        if path.is_file():
            status = "reused" if read_json(path, "latency table").get("complete") else "resumed"
        with self.stage(name, path, status):
            return profile(space, resolutions, parse_device(device), runtime, protocol, path, jobs=jobs,
                           workdir=workdir, allow_other_device=allow_other_device)

    def measure(self, path: str | Path, lut_path: str | Path, space, nets: dict[str, Any], resolution: int,
                name: str = "measure_nets") -> dict[str, Any]:
        """Export whole nets (``nets``: label -> parsed arch of ``space``, or a name such as
        ``mobilenet_v3_small`` at ``resolution``) and time them as the LUT at ``lut_path`` was timed, on
        this machine; writes (or reuses, when made for the same nets and table) ``path``: each net's
        measured and, for archs of the space, LUT-predicted latency."""
        from .files import read_json, write_json
        from .latency import Protocol, load_lut, measure_archs, parse_device

        path = Path(path)
        lut = load_lut(lut_path)
        wanted = {"lut": Path(lut_path).name, "lut_measured_at": lut.measured_at,
                  "lut_calibration": lut.calibration.model_dump(mode="json") if lut.calibration else None,
                  "nets": {label: str(a) for label, a in nets.items()}}
        if path.is_file():
            old = read_json(path, "measured latencies")
            if {k: old.get(k) for k in wanted} == wanted:
                with self.stage(name, path, "reused"):
                    return old
        with self.stage(name, path):
            protocol = Protocol.of(lut)
            timed = {}
            for named in (False, True):   # archs of the space, then nets named by torchvision: exported apart
                group = {label: a for label, a in nets.items() if isinstance(a, str) == named}
                if group:
                    got = measure_archs(list(group.values()), parse_device("local"), lut.runtime, protocol,
                                        path.with_name(path.stem + ".work"), embed_dim=lut.embed_dim,
                                        resolution=resolution, space=None if named else space)
                    timed.update(zip(group, got))
            rows = [{"label": label, "arch": str(a),
                     "predicted_ms": None if isinstance(a, str) else round(lut.predict(a, space), 5),
                     **{k: timed[label][k] for k in ("median_ms", "p10_ms", "p90_ms")}}
                    for label, a in nets.items()]
            out = {**wanted, "runtime": lut.runtime, "threads": lut.threads, "protocol": protocol.to_dict(),
                   "measured": rows}
            write_json(path, out)
        return out

    def search(self, path: str | Path, cfg, run: Callable[[], Any], expect: dict[str, Any] | None = None,
               name: str = "search") -> dict[str, Any]:
        """A finished search at ``path`` with config ``cfg`` (and the ``expect``-ed dotted keys) is reused;
        otherwise ``run()`` searches (resuming an unfinished one) and writes it there."""
        path = Path(path)
        prev = _search_data(path) if path.is_file() else None
        status = "resumed" if prev else "ran"
        if prev and prev.get("complete"):
            differ = [] if _plain(prev.get("config")) == _plain(_data(cfg)) else ["config"]
            differ += [k for k, v in (expect or {}).items() if _plain(_dig(prev, k)) != _plain(v)]
            if differ:
                raise EdgeQueryError(f"{path} holds a finished search made with other settings ({', '.join(differ)})",
                                     "delete it to search again, or write into another folder")
            status = "reused"
        with self.stage(name, path, status):
            if status != "reused":
                run()
        return _search_data(path)

    def search_files(self, path: str | Path, supernet_path: str | Path, gallery_path: str | Path,
                     lut_path: str | Path, cfg, name: str = "search") -> dict[str, Any]:
        """``edgequery search`` as a stage: the supernet's space, scored on its data, the LUT's cost."""
        from .checkpoint import load_checkpoint
        from .search import search_from_files

        expect = {"supernet.model_version": load_checkpoint(supernet_path, "supernet")["model_version"],
                  "gallery.model_version": load_checkpoint(gallery_path, "gallery")["model_version"]}
        return self.search(path, cfg, lambda: search_from_files(supernet_path, gallery_path, lut_path, cfg, path,
                                                                device=self.device), expect, name)

    # ------------------------------------------------------------------ evaluation and deployment

    def evaluate(self, queries: dict[str, Any], gallery_path: str | Path, name: str = "eval") -> dict[str, dict]:
        """Retrieval reports of each query net (a checkpoint path or a module) against the gallery model;
        the gallery model embeds the query and gallery splits once per workflow."""
        from .checkpoint import load_checkpoint
        from .evaluate import evaluate_pair
        from .models import model_from_checkpoint

        reports = {}
        with self.stage(name):
            gallery = load_checkpoint(gallery_path, "gallery")
            gallery_model = model_from_checkpoint(gallery)
            cache = self._gallery_embeddings.setdefault(gallery["model_version"], {})
            for label, net in queries.items():
                if not hasattr(net, "forward"):
                    net = model_from_checkpoint(load_checkpoint(net, "query"))
                reports[label] = report = evaluate_pair(net, gallery_model, self.splits, device=self.device,
                                                        gallery_cache=cache)
                log.info("eval %s: heterogeneous R@1 %.2f, homogeneous R@1 %.2f, paragon R@1 %.2f, raw-pixel kNN "
                         "R@1 %.2f", label, 100 * report["heterogeneous"]["recall@1"],
                         100 * report["homogeneous"]["recall@1"], 100 * report["paragon"]["recall@1"],
                         100 * report["baselines"]["raw_pixel_knn"]["recall@1"])
            for warning in dict.fromkeys(w for r in reports.values() for w in r["warnings"]):  # once per gallery
                log.warning(warning)
        return reports

    def export(self, query_path: str | Path, out: str | Path, gallery_path: str | Path | None = None,
               options=None, name: str = "export") -> dict[str, Any]:
        """Export the query net into ``out``; an export there of the same model_version and files is reused."""
        from .checkpoint import load_checkpoint
        from .export import ExportOptions, export_query

        opts = options or ExportOptions()
        version = load_checkpoint(query_path, "query")["model_version"]
        card = existing_card(out)
        same = card is not None and card.get("model_version") == version and _card_files(card) == _wanted_files(opts)
        with self.stage(name, out, "reused" if same else "ran"):
            if not same:
                card = export_query(query_path, out, gallery_path, replace(opts, force=True))
        return card

    def index(self, gallery_path: str | Path, out: str | Path, images: str = "fashion-mnist", factory: str = "Flat",
              name: str = "index") -> dict[str, Any]:
        """Index ``images`` embedded by the gallery model into ``out`` (build_index resumes and reuses by itself)."""
        from .gallery.build import build_index

        existed = Path(out).is_dir() and any(Path(out).iterdir())
        with self.stage(name, out) as rec:
            summary = build_index(gallery_path, images, factory, out, device=self.device)
            if existed:
                rec["status"] = "resumed" if summary.get("embedded_now") else "reused"
        return summary


# --------------------------------------------------------------------------- what is reusable


def checkpoint_status(path: Path, kind: str, expect: dict[str, Any], cfg) -> str:
    """``reused`` (finished, same settings), ``resumed`` (unfinished) or ``ran`` (nothing there) for a
    training stage writing ``path``; a finished checkpoint of other settings is refused."""
    from .checkpoint import load_checkpoint

    if not path.exists():
        return "ran"
    ck = load_checkpoint(path, kind)
    train = ck.get("train") or {}
    if not train.get("complete"):
        return "resumed"  # the recipe resumes it, or refuses a run of other settings
    identity, stored = ck.get("identity") or {}, train.get("config") or {}
    differ = [k for k, v in expect.items() if _plain(identity.get(k)) != _plain(v)]
    differ += cfg.differs_from(stored)  # what prepare_output compares for a resume
    if differ:
        raise EdgeQueryError(f"{path} holds a finished {kind} model made with other settings ({', '.join(differ)})",
                             "delete it to train again, or write into another folder")
    return "reused"


def _search_data(path: Path) -> dict[str, Any]:
    from .search import load_search

    return _data(load_search(path))


def existing_card(folder: str | Path) -> dict[str, Any] | None:
    """The model card of a finished export in ``folder``, or ``None`` when there is none (yet)."""
    from .export import read_card

    if not Path(folder).is_dir():
        return None
    try:
        card = read_card(folder)[0]
    except EdgeQueryError:
        return None
    return _data(card)


def _card_files(card: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["format"], e["quantization"]) for e in card.get("files", [])}


def _wanted_files(opts) -> set[tuple[str, str]]:
    return {(f, q) for f in opts.formats for q in ("none", *opts.quantize)}


def median_budget(lut, space, n: int = 200, seed: int = 0) -> float:
    """The median predicted latency (ms) of ``n`` random archs of ``space``: a budget that binds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return round(float(np.median([lut.predict(space.sample(rng), space) for _ in range(n)])), 4)


# --------------------------------------------------------------------------- edgequery demo


@dataclass
class DemoConfig:
    """``edgequery demo``'s settings (the command's flags; these defaults run in minutes on 2 CPU cores)."""

    out: Path = Path("runs/demo")
    device: str = "cpu"
    data_root: str | None = None
    n_train: int = 8000
    n_val: int = 1000
    n_query: int = 1000
    n_gallery: int = 5000
    resolution: int = 32
    # The demo's gallery recipe (measured: README, "Run the demo"): ResNet-101 with the ImageNet stem
    # (4x cheaper than the small-input stem at 32 px), residual branches starting at zero, 600 steps
    # over all training images (None: Fashion-MNIST's 59k, each seen about once and a third, so no
    # augmentation) - it beats raw pixels in about 5 minutes
    gallery_arch: str = "resnet101"
    gallery_steps: int = 600
    gallery_n_train: int | None = None
    query_epochs: int = 4
    query_arch: str = "mobilenet_v3_small"
    search: bool = True
    supernet_epochs: int = 4
    space_options: dict[str, list] = field(default_factory=dict)   # narrowed choice lists of the mbv3 space
    runtime: str = "onnxruntime"
    latency_budget: str | None = None   # e.g. "0.4ms"; None: the median predicted latency of random archs
    population: int = 12
    generations: int = 4
    deploy: bool = True
    profile_jobs: int = 2
    measured_nets: int = 10             # archs of the search timed end to end (the report's predicted vs measured)

    def spec(self):
        from .data import DataSpec

        return DataSpec(root=self.data_root, resolution=self.resolution, n_train=self.n_train, n_val=self.n_val,
                        n_query=self.n_query, n_gallery=self.n_gallery)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Every stage into ``cfg.out`` (see ``edgequery demo --help``); returns and writes ``summary.json``."""
    from .data import ensure_fashion_mnist
    from .files import write_json
    from .sysinfo import machine_info

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_fashion_mnist(cfg.data_root)
    wf = Workflow(cfg.spec(), cfg.device)
    log.info("demo: Fashion-MNIST %s at %d px -> %s", wf.splits.sizes(), cfg.resolution, out)
    gallery_data = replace(cfg.spec(), n_train=cfg.gallery_n_train)
    gallery_path = wf.gallery(out / "gallery.pt", model={"arch": cfg.gallery_arch}, data=gallery_data,
                              steps=cfg.gallery_steps, augment=False,
                              extra={"zero_init_residual": cfg.gallery_arch.startswith("resnet")})
    queries = {("bct" if bct else "no_bct"): wf.query(out / f"query-{cfg.query_arch}-{'bct' if bct else 'nobct'}.pt",
                                                      gallery_path, cfg.query_arch, bct, cfg.query_epochs)
               for bct in (True, False)}
    search = demo_search(wf, cfg, out, gallery_path) if cfg.search else None
    if search:
        queries["searched"] = Path(search.pop("query"))
    reports = wf.evaluate(queries, gallery_path)
    for label, report in reports.items():
        write_json(out / f"eval-{label}.json", report)
    summary = {"data": wf.spec.to_dict(), "sizes": wf.splits.sizes(),
               "gallery": demo_gallery_facts(gallery_path), "query_arch": cfg.query_arch,
               "query_epochs": cfg.query_epochs, "eval": reports, "search": search}
    if cfg.deploy:
        summary["deploy"] = demo_deploy(wf, out, queries["searched" if search else "bct"], gallery_path,
                                        search and str(out / search["lut"]))
    summary["stages"] = wf.stages
    summary["seconds"] = {**wf.seconds(), "total": round(time.time() - t0, 1)}
    summary["config"] = _plain(asdict(cfg))
    summary["machine"] = machine_info()
    summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(out / "summary.json", summary)
    log.info("demo: heterogeneous Recall@1 %s; wrote %s", json.dumps(
        {k: round(100 * v["heterogeneous"]["recall@1"], 2) for k, v in reports.items()}), out / "summary.json")
    return summary


def demo_gallery_facts(gallery_path: Path) -> dict[str, Any]:
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(gallery_path, "gallery")
    cfg = ck["train"]["config"]
    return {"arch": ck["model"]["arch"], "model_version": ck["model_version"], "steps": cfg["steps"],
            "train_images": ck["data"]["n_train"], "zero_init_residual": bool(cfg["extra"].get("zero_init_residual"))}


def demo_search(wf: Workflow, cfg: DemoConfig, out: Path, gallery_path: Path) -> dict[str, Any]:
    """Supernet -> LUT of this machine -> search under a budget -> the winner retrained with BCT."""
    from .latency import load_lut, restricted_space
    from .latency import Protocol
    from .search import SearchConfig, parse_budget
    from .spaces import get_space

    full = get_space("mbv3", **cfg.space_options)
    supernet_path = wf.supernet(out / "supernet.pt", gallery_path, full, cfg.supernet_epochs)
    # a quick protocol: the demo shows the pipeline; `edgequery profile` defaults are for real tables
    space = restricted_space(full, [cfg.resolution])
    lut_path = out / f"lut-local-{cfg.runtime}.json"
    wf.profile(lut_path, space, [cfg.resolution], cfg.runtime,
               Protocol(threads=1, warmup=5, runs=20, min_seconds=0.02, rounds=1), jobs=cfg.profile_jobs,
               workdir=out / "lut-work" / cfg.runtime)
    lut = load_lut(lut_path, space=space)
    if cfg.latency_budget:
        budget = parse_budget(cfg.latency_budget)
    else:
        budget = median_budget(lut, space)
        log.info("demo: latency budget %s ms (median predicted latency of 200 random archs on %s)", budget,
                 lut_path.name)
    scfg = SearchConfig(budget=budget, cost_unit="ms", population=cfg.population, generations=cfg.generations)
    result = wf.search_files(out / "search.json", supernet_path, gallery_path, lut_path, scfg)
    chosen = result["chosen"]
    wf.measure(out / "latency-measured.json", lut_path, space, measured_nets(result, space, cfg), cfg.resolution)
    query_path = wf.query(out / "query-searched-bct.pt", gallery_path, chosen["arch"], True, cfg.query_epochs,
                          name="train_query_searched", space=result.get("space"))
    return {"query": str(query_path), "arch": chosen["arch"], "budget_ms": budget, "lut": lut_path.name,
            "predicted_ms": chosen["latency_ms"], "supernet_m_het": chosen["m_het"], "supernet_m_hom": chosen["m_hom"]}


def measured_nets(result: dict[str, Any], space, cfg: DemoConfig) -> dict[str, Any]:
    """What the demo times end to end: the chosen arch and the rest of the search's Pareto front (all of
    it), then other evaluated archs until there are ``cfg.measured_nets`` archs of the space (predicted vs
    measured), and the query-net baseline (measured only: it is not an arch of the space)."""
    import numpy as np

    front = [c["arch"] for c in result["pareto_front"] if c["arch"] != result["chosen"]["arch"]]
    rest = [c["arch"] for c in result["history"] if c["arch"] not in front and c["arch"] != result["chosen"]["arch"]]
    rest = list(dict.fromkeys(rest))
    pick = np.random.default_rng(0).permutation(len(rest))[:max(0, cfg.measured_nets - 1 - len(front))]
    archs = {"chosen": result["chosen"]["arch"], **{f"front {i + 1}": a for i, a in enumerate(front)},
             **{f"evaluated {i + 1}": rest[j] for i, j in enumerate(sorted(pick))}}
    return {**{label: space.parse(a) for label, a in archs.items()}, cfg.query_arch: cfg.query_arch}


def demo_deploy(wf: Workflow, out: Path, query_path: Path, gallery_path: Path, lut: str | None) -> dict[str, Any]:
    """Export the query net (TFLite + ONNX, parity-checked, model card) into ``out/export/query`` and index
    the gallery split of the gallery model's data into ``out/gallery_index``."""
    from .export import ExportOptions

    export_dir = out / "export" / "query"
    card = wf.export(query_path, export_dir, gallery_path, ExportOptions(threads=(1,), lut=lut, name="query"))
    index = wf.index(gallery_path, out / "gallery_index")
    return {"export": str(export_dir), "index": str(out / "gallery_index"), "items": index["items"],
            "query_model_version": card["model_version"],
            "files": {e["file"]: e["parity"]["cosine_min"] for e in card["files"]}}
