"""``edgequery demo``: every stage, small, into one folder (the stages are :mod:`edgequery.workflow`'s).

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
with faiss (``gallery_index/``), ready for ``edgequery serve`` -> the run's HTML report
(``report.html``, :mod:`edgequery.report`), whose path it prints last.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import HelpFormatter

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from ..workflow import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="run every stage on a small preset into one folder",
                       description="Train the ResNet-101 gallery model and MobileNetV3-small query nets with and "
                                   "without BCT; then train a BCT supernet, profile this machine's per-block "
                                   "latency, search under a latency budget and retrain the winner with BCT; "
                                   "evaluate paragon / homogeneous / heterogeneous retrieval of every query net; "
                                   "export the deployable query net to TFLite and ONNX (parity-checked, with a "
                                   "model card) and index the gallery split with faiss for `edgequery serve`. "
                                   "All into --out; rerunning reuses finished stages. Ends by writing the run's "
                                   "self-contained HTML report (--out/report.html, see `edgequery report`) and "
                                   "printing its path.",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default=str(d.out), help="output folder")
    p.add_argument("--device", default=d.device)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--gallery-steps", type=int, default=d.gallery_steps,
                   help="optimisation steps of the gallery model (batch 128; ResNet-101 with the ImageNet stem, "
                        "residual branches starting at zero: about 0.5 s a step on 2 CPU cores)")
    p.add_argument("--gallery-n-train", type=int, default=d.gallery_n_train,
                   help="training images of the gallery model (default: all of Fashion-MNIST's 59k; the query "
                        "nets and the supernet train on --n-train)")
    p.add_argument("--query-epochs", type=int, default=d.query_epochs)
    p.add_argument("--query-arch", default=d.query_arch)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder")
    g = p.add_argument_group("search stages")
    g.add_argument("--no-search", action="store_true", help="stop after the MobileNetV3 baselines")
    g.add_argument("--supernet-epochs", type=int, default=d.supernet_epochs)
    g.add_argument("--space-option", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="narrow a choice list of the mbv3 space, e.g. kernels=3 or widths=0.5 (repeatable): fewer "
                        "blocks to time (the whole space at 32 px has 263, about 4 minutes here), a smaller search")
    g.add_argument("--runtime", choices=["onnxruntime", "litert", "torch"], default=d.runtime,
                   help="runtime the latency table is measured with (onnxruntime converts fastest)")
    g.add_argument("--latency-budget", default=None,
                   help="e.g. 0.4ms; default: the median predicted latency of 200 random archs")
    g.add_argument("--population", type=int, default=d.population)
    g.add_argument("--generations", type=int, default=d.generations)
    p.add_argument("--no-deploy", action="store_true",
                   help="skip exporting the query net (TFLite, ONNX) and indexing the gallery split with faiss")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace):
    from ..workflow import DemoConfig
    from .common import parse_space_options

    return DemoConfig(out=Path(args.out), device=args.device, data_root=args.data_root, n_train=args.n_train,
                      gallery_steps=args.gallery_steps, gallery_n_train=args.gallery_n_train,
                      query_epochs=args.query_epochs, query_arch=args.query_arch,
                      search=not args.no_search, supernet_epochs=args.supernet_epochs,
                      space_options=parse_space_options(args.space_option), runtime=args.runtime,
                      latency_budget=args.latency_budget, population=args.population, generations=args.generations,
                      deploy=not args.no_deploy)


def run(args: argparse.Namespace) -> int:
    from ..errors import EdgeQueryError
    from ..evaluate import format_report
    from ..report import write_run_report
    from ..report.run import net_title
    from ..workflow import run_demo

    cfg = config_from_args(args)
    summary = run_demo(cfg)
    for name, report in summary["eval"].items():
        print(format_report(report, f"\n{net_title(name, summary)}"))
    if "deploy" in summary:
        d = summary["deploy"]
        log.info("serve it: edgequery serve --index %s --export %s", d["index"], d["export"])
    try:
        path = write_run_report(cfg.out)
    except EdgeQueryError as exc:   # the run itself is finished and kept: say why its page is missing
        log.warning("no report: %s (%s); the run is complete in %s", exc.problem, exc.fix, cfg.out)
        return 0
    print(f"\nreport: {path}")
    return 0
