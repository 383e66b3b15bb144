"""``edgequery data setup|info``: get the real data set, and look at a split."""

from __future__ import annotations

import argparse

from .common import add_data_args, spec_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="install Fashion-MNIST or describe a data split")
    dsub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    s = dsub.add_parser("setup", help="make sure Fashion-MNIST is present (apt-get install dataset-fashion-mnist)",
                        description="Checks for the Fashion-MNIST IDX files and, when they are missing at the "
                                    "default location, installs the Debian package dataset-fashion-mnist "
                                    "(needs root or password-less sudo).")
    s.add_argument("--data-root", default=None, help="folder to check instead of the Debian location")
    s.set_defaults(handler=run_setup)
    i = dsub.add_parser("info", help="sizes and classes of a split")
    add_data_args(i)
    i.set_defaults(handler=run_info)


def run_setup(args: argparse.Namespace) -> int:
    from ..data import ensure_fashion_mnist

    print(f"Fashion-MNIST present at {ensure_fashion_mnist(args.data_root)}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..data import load_splits

    splits = load_splits(spec_from_args(args))
    print(f"dataset {splits.spec.dataset}, resolution {splits.spec.resolution}, {splits.num_classes} classes: "
          + ", ".join(splits.classes))
    for name, size in splits.sizes().items():
        print(f"  {name:<8}{size:>7}")
    return 0
