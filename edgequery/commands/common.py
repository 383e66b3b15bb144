"""Flags shared by several commands, and turning them into configs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_data_args(p: argparse.ArgumentParser, inherit: bool = False) -> None:
    """Data-set flags.  With ``inherit`` every default is "as the gallery was trained"."""
    g = p.add_argument_group("data" + (" (default: as the gallery model was trained)" if inherit else ""))
    d = (lambda v: None) if inherit else (lambda v: v)
    g.add_argument("--dataset", choices=["fashion-mnist", "digits", "folder"], default=d("fashion-mnist"),
                   help="fashion-mnist (Debian package), digits (scikit-learn) or folder (ImageFolder at --data-root)")
    g.add_argument("--data-root", default=None,
                   help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist) or ImageFolder dir")
    g.add_argument("--resolution", type=int, default=d(32), help="input side in pixels")
    g.add_argument("--data-seed", type=int, default=d(0), help="seed of the train/val/query/gallery split")
    g.add_argument("--n-train", type=int, default=None, help="training images (default: all that is left)")
    g.add_argument("--n-val", type=int, default=d(1000), help="validation images held out of train")
    g.add_argument("--n-query", type=int, default=d(1000), help="query images")
    g.add_argument("--n-gallery", type=int, default=None, help="gallery images (default: all that is left)")


def spec_from_args(args: argparse.Namespace, base=None):
    """A DataSpec from flags; with ``base`` (a DataSpec), flags left unset keep its values."""
    from ..data import DataSpec

    fields = {"dataset": args.dataset, "root": args.data_root, "resolution": args.resolution,
              "seed": args.data_seed, "n_train": args.n_train, "n_val": args.n_val, "n_query": args.n_query,
              "n_gallery": args.n_gallery}
    if base is None:
        return DataSpec(**fields)
    changed = {k: v for k, v in fields.items() if v is not None}
    return None if not changed else DataSpec(**{**base.to_dict(), **changed})


def add_train_args(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help="epochs")
    g.add_argument("--batch-size", type=int, default=128, help="batch size per process")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (warm-up then cosine decay)")
    g.add_argument("--weight-decay", type=float, default=5e-5)
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no flip/translation augmentation")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, batch order and augmentation")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--force", action="store_true", help="retrain over a finished checkpoint at --out")


def train_config_from_args(args: argparse.Namespace, **extra):
    from ..train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       optimizer=args.optimizer, augment=args.augment, seed=args.seed, device=args.device,
                       extra=extra)


def write_json(path: str | Path, obj) -> None:
    """Atomically write pretty JSON."""
    from ..checkpoint import atomic_write

    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
