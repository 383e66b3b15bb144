"""The ``edgequery`` command, the top layer: one sub-command per stage (see ``edgequery --help``).

Nothing else in the package imports this layer.  Each stage lives in
``edgequery/commands/<name>.py`` with a ``register(subparsers)``
function; modules import torch and friends only inside their handlers, so ``--help``
stays instant.  Errors a user can cause are :class:`~edgequery.errors.EdgeQueryError`:
printed on one line, exit code 2, traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import EdgeQueryError
from ..log import NORMAL, QUIET, VERBOSE, setup_logging, sigterm_as_interrupt

COMMAND_MODULES = ("data", "train", "imports", "eval", "profile", "search", "demo", "index", "serve", "export",
                   "report")

EPILOG = """\
stages, in order:
  edgequery train gallery            ResNet-101 gallery model           -> gallery.pt
   or edgequery import gallery       your own embedding model, as it is -> gallery.pt
  edgequery train query --bct        small query net, BCT-compatible    -> query.pt
  edgequery train supernet           weight-sharing supernet, BCT       -> supernet.pt
  edgequery eval                     paragon / homogeneous / heterogeneous retrieval
  edgequery profile                  per-block latency table on a device -> lut-<device>-<runtime>.json
  edgequery search                   best compatible subnet under a latency budget -> search.json
  edgequery train query --arch S     retrain the searched arch with BCT -> query.pt
  edgequery export / verify          TFLite + ONNX, parity-checked, model card -> export/<name>/
  edgequery index                    embed the gallery, build the faiss index -> gallery_index/
  edgequery serve                    HTTP search API + demo page over an index
  edgequery demo                     every stage, small, in one folder, ending with its report
  edgequery report                   one self-contained HTML page of a run folder -> report.html

run `edgequery COMMAND --help` for each command's options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgequery", description="Compatible, latency-aware query encoders for heterogeneous visual search.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgequery {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="print debug lines and the converters' own output (litert-torch, TensorFlow, onnx)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"edgequery.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    setup_logging(QUIET if args.quiet else VERBOSE if args.verbose else NORMAL)
    try:
        with sigterm_as_interrupt():
            return int(args.handler(args) or 0)
    except EdgeQueryError as exc:
        if args.debug:
            raise
        print(f"edgequery: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgequery: interrupted (checkpoints written so far are kept; rerun to resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if args.debug:
            raise
        print(f"edgequery: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1

