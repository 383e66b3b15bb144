"""``edgequery report --run DIR``: one self-contained HTML page for a folder ``edgequery demo`` wrote.

What it reads (all written by the demo's stages; a stage the run skipped - ``--no-search``,
``--no-deploy`` - leaves its section saying so instead of failing):

* ``summary.json``: the stages (status, seconds), data, gallery model, machine, and every query
  net's retrieval report (paragon / homogeneous / heterogeneous, 95 % intervals, raw-pixel kNN);
* ``search.json``: every evaluated candidate, the Pareto front and the chosen arch;
* ``latency-measured.json``: whole nets timed as the latency table was (the chosen arch, the rest
  of the Pareto front, other evaluated archs, the MobileNetV3 baseline) beside the table's
  prediction;
* the latency table (``lut-*.json``): the chosen arch's per-block latencies;
* ``export/query/``: the model card (parity, size, latency and retrieval per file) and the ONNX
  file, which embeds a few query images for the retrieval grid against ``gallery_index/``.

Nothing is recomputed but the retrieval grid's few queries (the exported file through
onnxruntime, the gallery through the faiss index): the figures are the run's own.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeQueryError
from ..files import read_json
from .page import Page, figure_png, pct, pct_ci, pyplot

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
SETTINGS = (("heterogeneous", "heterogeneous (q,g)"), ("homogeneous", "homogeneous (q,q)"))
NET_TITLES = {"bct": "{arch} with BCT", "no_bct": "{arch} without BCT", "searched": "searched arch with BCT"}
METRIC_NAMES = {"recall@1": "Recall@1", "map@r": "mAP@R"}   # a search's metric as a reader writes it


def write_run_report(run: str | Path, out: str | Path | None = None, queries: int = 8, top: int = 5) -> Path:
    """Write the report of run folder ``run`` to ``out`` (default ``<run>/report.html``); returns its path."""
    run = Path(run)
    return run_report(run, queries, top).write(Path(out) if out else run / REPORT_NAME)


def run_report(run: Path, queries: int = 8, top: int = 5) -> Page:
    """The report of run folder ``run`` as a :class:`Page`."""
    if queries < 1 or top < 1:
        raise EdgeQueryError(f"--queries {queries} --top {top}: both must be at least 1", "e.g. --queries 8 --top 5")
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise EdgeQueryError(f"{run} has no summary.json: it is not a finished `edgequery demo` run folder",
                             "pass the --out folder of a finished `edgequery demo` (default runs/demo)")
    summary = read_json(summary_path, "run summary", "rerun `edgequery demo` into this folder")
    page = Page(f"edgequery run report: {run.name}",
                "What ran, how good the query nets are next to the gallery model and raw pixels, what the search "
                "found at which measured latency, and what was exported.")
    pipeline_section(page, run, summary)
    accuracy_section(page, summary)
    ran_search = bool(summary.get("search"))   # a rerun with --no-search may leave an older search's files
    search = read_json(run / "search.json", "search result") if ran_search and (run / "search.json").is_file() else None
    measured = (read_json(run / "latency-measured.json", "measured latencies")
                if ran_search and (run / "latency-measured.json").is_file() else None)
    search_section(page, summary, search, measured)
    lut_section(page, measured)
    blocks_section(page, run, summary, search)
    deploy = summary.get("deploy")
    out = (summary.get("config") or {}).get("out")
    retrieval_section(page, run, deploy, queries, top, out)
    export_section(page, run, deploy, out)
    page.footer = f"edgequery report --run {run} (figures from the run's own files; nothing re-measured)."
    return page


# --------------------------------------------------------------------------- sections


def pipeline_section(page: Page, run: Path, summary: dict[str, Any]) -> None:
    page.section("Pipeline", "pipeline")
    data, sizes = summary.get("data", {}), summary.get("sizes", {})
    g = summary.get("gallery", {})
    page.items([
        f"data: {data.get('dataset', '?')} at {data.get('resolution', '?')} px; "
        + ", ".join(f"{k} {v}" for k, v in sizes.items()),
        f"gallery model: {g.get('arch', '?')}, {g.get('steps', '?')} steps on {g.get('train_images') or 'all'} "
        f"training images{', residual branches starting at zero' if g.get('zero_init_residual') else ''} "
        f"(model_version {g.get('model_version', '?')})",
        f"query nets: {summary.get('query_arch', '?')}, {summary.get('query_epochs', '?')} epochs",
        f"machine: {machine_text(summary.get('machine'))}",
        f"finished: {summary.get('finished_at', 'not recorded')}; "
        f"total {summary.get('seconds', {}).get('total', 0) / 60:.1f} min",
    ])
    stages = summary.get("stages", {})
    page.table(["stage", "status", "seconds", "artifact"],
               [[name, rec.get("status", ""), f"{rec.get('seconds', 0):.1f}", _relative(rec.get("artifact"), run)]
                for name, rec in stages.items()], numeric=(2,), name="stages",
               caption="reused: a finished artifact of the same settings was found; resumed: an unfinished one "
                       "was continued.")


def machine_text(m: dict[str, Any] | None) -> str:
    if not m:
        return "not recorded (a run folder from before reports)"
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('os', '')} {m.get('kernel', '')}, "
            f"{m.get('host', '')}; torch {m.get('torch', '?')}, {m.get('torch_threads', '?')} torch thread(s)"
            f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}")


def accuracy_section(page: Page, summary: dict[str, Any]) -> None:
    page.section("Retrieval accuracy", "accuracy")
    reports = summary.get("eval") or {}
    if not reports:
        page.text("No query net was evaluated in this run.", "missing")
        return
    first = next(iter(reports.values()))
    rows, css = [], []
    gallery_arch = (summary.get("gallery") or {}).get("arch", "gallery model")
    rows.append([f"{gallery_arch} gallery model", "paragon (g,g)", pct_ci(first["paragon"]),
                 pct(first["paragon"]["recall@10"]), pct(first["paragon"]["map@r"])])
    css.append("")
    for name, report in reports.items():
        for key, label in SETTINGS:
            m = report[key]
            rows.append([net_title(name, summary), label, pct_ci(m), pct(m["recall@10"]), pct(m["map@r"])])
            css.append("")
    raw = first["baselines"]["raw_pixel_knn"]
    rows.append(["raw pixels (cosine kNN)", "baseline", pct_ci(raw), pct(raw["recall@10"]), pct(raw["map@r"])])
    css.append("baseline")
    s = first.get("sizes", {})
    page.table(["net", "setting", "Recall@1 [95 % CI]", "Recall@10", "mAP@R"], rows, numeric=(2, 3, 4),
               row_css=css, name="accuracy",
               caption=f"{s.get('query', '?')} test queries against {s.get('gallery', '?')} gallery images. "
                       f"Heterogeneous: queries by the query net, gallery by the gallery model ({gallery_arch}: what "
                       "the product does). "
                       "Intervals: bootstrap over queries; two figures differ only where their intervals do not "
                       "overlap.")
    for warning in dict.fromkeys(w for r in reports.values() for w in r.get("warnings", [])):
        page.text(warning, "note")
    page.figure(accuracy_plot(reports, summary), "Heterogeneous and homogeneous Recall@1 of each query net with 95 % "
                "intervals; the paragon's band and the raw-pixel line for scale.", name="accuracy")


def net_title(name: str, summary: dict[str, Any]) -> str:
    title = NET_TITLES.get(name, name).format(arch=summary.get("query_arch", "query net"))
    if name == "searched" and summary.get("search"):
        title = f"searched {summary['search']['arch']} with BCT"
    return title


def accuracy_plot(reports: dict[str, Any], summary: dict[str, Any]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.75 * len(reports)))
    first = next(iter(reports.values()))
    para, raw = first["paragon"], first["baselines"]["raw_pixel_knn"]
    ax.axvspan(*[100 * x for x in para["recall@1_ci95"]], color="tab:green", alpha=0.15, label="paragon 95 % CI")
    ax.axvline(100 * para["recall@1"], color="tab:green", lw=1)
    ax.axvline(100 * raw["recall@1"], color="grey", ls="--", lw=1, label="raw-pixel kNN")
    for i, (name, report) in enumerate(reports.items()):
        for dy, (key, label), colour in ((-0.15, SETTINGS[0], "tab:blue"), (0.15, SETTINGS[1], "tab:orange")):
            m = report[key]
            lo, hi = (100 * x for x in m["recall@1_ci95"])
            ax.errorbar(100 * m["recall@1"], i + dy, xerr=[[100 * m["recall@1"] - lo], [hi - 100 * m["recall@1"]]],
                        fmt="o", color=colour, capsize=3, label=label if i == 0 else None)
    ax.set_yticks(range(len(reports)), [_short(net_title(n, summary)) for n in reports])
    ax.invert_yaxis()
    ax.set_xlabel("Recall@1 (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / len(reports)), ncol=4, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)


def _short(text: str, width: int = 42) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def search_section(page: Page, summary: dict[str, Any], search: dict[str, Any] | None,
                   measured: dict[str, Any] | None) -> None:
    page.section("Search: accuracy vs latency", "search")
    if not search or not search.get("chosen"):
        page.text("No search in this run (edgequery demo --no-search, or it has not finished).", "missing")
        return
    cfg, chosen = search["config"], search["chosen"]
    page.items([
        f"budget {cfg['budget']} {cfg['cost_unit']}, reward {cfg['reward']} (mix {cfg['mix']}) on "
        f"{METRIC_NAMES[cfg['metric']]}, "
        f"population {cfg['population']}, {cfg['generations']} generations: {len(search['history'])} archs evaluated "
        "with the supernet's weights",
        f"chosen: {chosen['arch']}, predicted {_candidate_cost(chosen):.3f} {_unit(search)}, supernet "
        f"heterogeneous {METRIC_NAMES[cfg['metric']]} {pct(chosen['m_het'])}",
    ])
    page.figure(pareto_plot(summary, search, measured), "Every arch the search evaluated (supernet weights, "
                "validation queries) at its LUT-predicted latency, the Pareto front, and the nets timed end to end "
                "(arrows: predicted -> measured). Stars: the chosen arch retrained with BCT and the "
                f"{summary.get('query_arch', 'baseline')} baseline with BCT, at measured latency, scored on the test "
                "queries.", name="pareto")
    if measured:
        rows = [[r["label"], r["arch"], "–" if r["predicted_ms"] is None else f"{r['predicted_ms']:.3f}",
                 f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
                 "–" if r["predicted_ms"] is None else f"{100 * (r['predicted_ms'] / r['median_ms'] - 1):+.1f} %"]
                for r in measured["measured"]]
        page.table(["net", "arch", "predicted ms", "measured ms", "p10-p90 ms", "prediction error"], rows,
                   numeric=(2, 3, 4, 5), name="measured",
                   caption=f"Batch 1, {measured['runtime']}, {measured['threads']} thread(s), this machine, the "
                           "latency table's timing protocol.")


def _candidate_cost(c: dict[str, Any]) -> float:
    """What the search's budget limits: predicted latency (ms) or MFLOPs (``cost_unit``)."""
    return c["latency_ms"] if c.get("latency_ms") is not None else c["cost"]


def _unit(search: dict[str, Any]) -> str:
    return search["config"]["cost_unit"]


def pareto_plot(summary: dict[str, Any], search: dict[str, Any], measured: dict[str, Any] | None) -> bytes:
    """The search's candidates and Pareto front on its own metric; the retrained nets on the same metric, test split."""
    metric = search["config"]["metric"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    hist = search["history"]
    ax.scatter([_candidate_cost(c) for c in hist], [100 * c["m_het"] for c in hist], s=14, color="lightgrey",
               label=f"evaluated (predicted {_unit(search)}, supernet)")
    front = sorted(search["pareto_front"], key=_candidate_cost)
    ax.plot([_candidate_cost(c) for c in front], [100 * c["m_het"] for c in front], "-o", ms=4, color="tab:orange",
            label="Pareto front (predicted)")
    het = {c["arch"]: c["m_het"] for c in hist}
    for r in (measured or {}).get("measured", []):
        if r["predicted_ms"] is not None and r["arch"] in het:
            y = 100 * het[r["arch"]]
            ax.annotate("", (r["median_ms"], y), (r["predicted_ms"], y),
                        arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 0.8})
            ax.plot(r["median_ms"], y, "s", ms=4, color="tab:blue")
    ax.plot([], [], "s", ms=4, color="tab:blue", label="measured (same nets)")
    if search["config"]["cost_unit"] == "ms":
        ax.axvline(search["config"]["budget"], color="red", ls=":", lw=1, label="budget")
    ms = {r["label"]: r["median_ms"] for r in (measured or {}).get("measured", [])}
    reports = summary.get("eval") or {}
    if "searched" in reports and "chosen" in ms:
        ax.plot(ms["chosen"], 100 * reports["searched"]["heterogeneous"][metric], "*", ms=14, color="tab:red",
                label="chosen, retrained (measured ms, test)")
    arch = summary.get("query_arch")
    if "bct" in reports and arch in ms:
        ax.plot(ms[arch], 100 * reports["bct"]["heterogeneous"][metric], "*", ms=14, color="tab:purple",
                label=f"{arch} + BCT (measured ms, test)")
    ax.set_xlabel("latency, batch 1 (ms)" if _unit(search) == "ms" else
                  f"{_unit(search)} (evaluated archs); measured nets at their latency in ms")
    ax.set_ylabel(f"heterogeneous {METRIC_NAMES[metric]} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return figure_png(fig)


def lut_section(page: Page, measured: dict[str, Any] | None) -> None:
    page.section("Latency table: predicted vs measured", "lut")
    rows = [r for r in (measured or {}).get("measured", []) if r["predicted_ms"] is not None]
    if not rows:
        page.text("No net was timed end to end in this run (it ran no search).", "missing")
        return
    pred = np.array([r["predicted_ms"] for r in rows])
    meas = np.array([r["median_ms"] for r in rows])
    err = np.abs(pred / meas - 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    lo, hi = min(pred.min(), meas.min()) * 0.9, max(pred.max(), meas.max()) * 1.1
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="prediction = measurement")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.12, label="±10 %")
    ax.scatter(meas, pred, color="tab:blue", zorder=3)
    for r in rows:
        if r["label"] == "chosen":
            ax.annotate("chosen", (r["median_ms"], r["predicted_ms"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted by the latency table (ms)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    page.figure(figure_png(fig), f"{len(rows)} archs of the space: mean absolute error {100 * err.mean():.1f} %, "
                f"largest {100 * err.max():.1f} %.", name="lut-scatter", width=520)


def blocks_section(page: Page, run: Path, summary: dict[str, Any], search: dict[str, Any] | None) -> None:
    page.section("Per-block latency of the chosen arch", "blocks")
    lut_name = (summary.get("search") or {}).get("lut")
    if not search or not search.get("chosen") or not lut_name or not (run / lut_name).is_file():
        page.text("No search (or no latency table) in this run.", "missing")
        return
    from ..latency import load_lut
    from ..spaces import space_from_config

    space = space_from_config(search["space"])
    lut = load_lut(run / lut_name)
    br = lut.breakdown(space, search["chosen"]["arch"])
    blocks = br["blocks"]
    ms = np.array([b["ms"] for b in blocks])
    labels = [block_label(b["key"]) for b in blocks]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(blocks)), 2.6))
    im = ax.imshow(ms[None, :], cmap="magma_r", aspect="auto")
    for i, v in enumerate(ms):
        ax.text(i, 0, f"{v:.3f}", ha="center", va="center", fontsize=7,
                color="white" if v > ms.max() * 0.6 else "black", rotation=90)
    ax.set_xticks(range(len(blocks)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, label="ms", fraction=0.03, pad=0.01)
    page.figure(figure_png(fig), f"The {len(blocks)} blocks of {search['chosen']['arch']} in order, each its "
                f"latency-table time without the runtime's per-invocation overhead ({lut.runtime}, {lut.threads} "
                f"thread(s)). Their sum plus that overhead once ({br['overhead_ms']:.3f} ms) is the table's "
                f"prediction, {br['raw_ms']:.3f} ms"
                + (f", {br['predicted_ms']:.3f} ms calibrated." if br["calibrated"] else "."), name="block-heatmap")


def block_label(key: str) -> str:
    """A short label of a LUT block key: its kind, output shape and fields (``mb 24x16x16 k5 e3``)."""
    from ..spaces.base import parse_key

    kind, _, out_shape, fields = parse_key(key)
    return " ".join([kind, "x".join(map(str, out_shape)), *(f"{k}{v}" for k, v in fields.items())])


def retrieval_section(page: Page, run: Path, deploy: dict[str, Any] | None, queries: int, top: int,
                      out: str | None) -> None:
    page.section("Retrieval examples through the exported net", "retrieval")
    if not deploy:
        page.text("Nothing was exported in this run (edgequery demo --no-deploy).", "missing")
        return
    try:
        grid, right, shown = retrieval_grid(_path(deploy["export"], run, out), _path(deploy["index"], run, out),
                                            queries, top)
    except EdgeQueryError as exc:
        page.text(f"No retrieval examples: {exc.problem} ({exc.fix})", "missing")
        return
    page.figure(grid, f"{shown} test queries (left), embedded by the exported ONNX file (onnxruntime, batch 1), "
                f"and their top {top} in the faiss index of the gallery model's embeddings; green: same class as the "
                f"query, red: another. {right} of {shown * top} hits are right.", name="retrieval-grid")


def retrieval_grid(export_dir: Path, index_dir: Path, queries: int, top: int) -> tuple[bytes, int, int]:
    """The grid's PNG, how many hits are right, how many queries it shows: test queries of the export's data
    through its float32 ONNX file, searched in the faiss index at ``index_dir``."""
    import torch
    from PIL import Image

    from ..data import DataSpec, load_splits, resize_images, to_model_input
    from ..export import read_card
    from ..export.options import file_runner
    from ..gallery.service import open_store

    card = read_card(export_dir)[0]
    onnx = next((e for e in card.files if e.format == "onnx" and e.quantization == "none"), None)
    if onnx is None:
        raise EdgeQueryError(f"{export_dir} has no float32 ONNX file to embed the queries with",
                             "export with --formats onnx (edgequery demo does)")
    spec = DataSpec.from_dict(card.model.data)
    qs = load_splits(spec).query
    n = min(queries, len(qs))
    pick = torch.from_numpy(np.random.default_rng(0).choice(len(qs), n, replace=False))
    q = qs.subset(pick)
    inp = card.input
    x = to_model_input(resize_images(q.images, inp.resolution),
                       DataSpec(resolution=inp.resolution, mean=tuple(inp.mean), std=tuple(inp.std))).numpy()
    runner = file_runner(export_dir, onnx)
    emb = np.concatenate([runner.embed(x[i:i + 1]) for i in range(n)])
    store = open_store(index_dir, progress=False)
    try:
        hits = store.search(emb.astype(np.float32), top)
        thumbs = [[store.thumbnail(h.id) for h in row] for row in hits]
    finally:
        store.close()
    plt = pyplot()
    fig, axes = plt.subplots(n, top + 1, figsize=(1.35 * (top + 1), 1.45 * n), squeeze=False)
    right = 0
    for i in range(n):
        label = int(q.labels[i])
        _show(axes[i][0], q.images[i].permute(1, 2, 0).numpy(), q.classes[label], "black", 3)
        for j, (hit, thumb) in enumerate(zip(hits[i], thumbs[i])):
            ok = hit.label == label
            right += ok
            img = np.asarray(Image.open(io.BytesIO(thumb))) if thumb else np.zeros((8, 8), np.uint8)
            _show(axes[i][j + 1], img, f"{hit.label_name or hit.source} {hit.score:.2f}",
                  "tab:green" if ok else "tab:red", 3)
        for j in range(len(hits[i]) + 1, top + 1):
            axes[i][j].axis("off")
    axes[0][0].set_title("query\n" + axes[0][0].get_title(), fontsize=7)
    fig.tight_layout()
    return figure_png(fig), right, n


def _show(ax, img: np.ndarray, title: str, colour: str, width: float) -> None:
    img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    ax.set_title(title, fontsize=7)


def export_section(page: Page, run: Path, deploy: dict[str, Any] | None, out: str | None) -> None:
    page.section("Export: parity, size and latency per runtime", "export")
    if not deploy:
        page.text("Nothing was exported in this run (edgequery demo --no-deploy).", "missing")
        return
    from ..export import read_card

    card = read_card(_path(deploy["export"], run, out))[0]
    threads = sorted({t for e in card.files for t in e.latency}, key=lambda t: int(t.split("=")[1]))
    rows = []
    for e in card.files:
        lat = [f"{e.latency[t]['median_ms']:.3f}" if t in e.latency else "–" for t in threads]
        rows.append([e.file, f"{e.format} / {e.runtime}", e.layout, e.quantization, f"{e.bytes / 1e6:.2f}",
                     f"{e.parity['cosine_min']:.7f}", "passed" if e.parity.get("passed") else "FAILED", *lat,
                     pct_ci(e.retrieval) if e.retrieval else "–"])
    page.table(["file", "format / runtime", "layout", "quantization", "MB", "parity cosine min", "parity",
                *[f"ms, {t.replace('=', ' ')}" for t in threads], "het Recall@1"], rows,
               numeric=(4, 5, *range(7, 7 + len(threads))), name="export",
               caption=f"{card.arch} (model_version {card.model_version}). Parity: each file's embeddings against "
                       f"PyTorch on {card.parity_protocol.images if card.parity_protocol else '?'} real query images. "
                       "Latency: batch 1 on this machine, median.")
    lp = card.lut_prediction
    if lp and lp.status == "predicted":
        measured = [e.latency.get(f"threads={lp.threads}", {}).get("median_ms") for e in card.files
                    if e.runtime == lp.runtime and e.quantization == "none" and e.layout == "NCHW"]
        page.text(f"The latency table predicted {lp.predicted_ms:.3f} ms for this net ({lp.runtime}, {lp.threads} "
                  f"thread(s)); the export measured "
                  f"{', '.join(f'{m:.3f} ms' for m in measured if m is not None) or 'no file of that runtime'}.")
    elif lp:
        page.text(f"No latency-table prediction: {lp.reason}", "missing")


def _path(recorded: str, run: Path, out: str | None) -> Path:
    """A folder the summary recorded (``out``: the demo's --out as it was given, relative to where the demo
    ran): the same place inside ``run``, so a moved run folder, or one read from elsewhere, is read whole."""
    path = Path(recorded)
    if out is not None:
        try:
            return run / path.relative_to(out)
        except ValueError:
            pass
    if path.is_absolute() and path.exists():
        return path
    raise EdgeQueryError(f"{recorded}, which {run / 'summary.json'} names, is not inside {run}",
                         "run the report on the demo's folder as the demo left it")


def _relative(p: str | None, run: Path) -> str:
    if not p:
        return ""
    try:
        return str(Path(p).resolve().relative_to(run.resolve()))
    except ValueError:
        return p
