"""Flags shared by several commands, and turning them into configs."""

from __future__ import annotations

import argparse
import logging


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


def add_train_args(p: argparse.ArgumentParser, steps: int, lr: float, weight_decay: float = 5e-5,
                   label_smoothing: float = 0.0, random_erasing: float = 0.0) -> None:
    g = p.add_argument_group("training")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=steps,
                        help="optimisation steps (batches); the epochs follow from the data set's size, so the "
                             "same schedule fits 3k images and 60k")
    length.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of --steps")
    g.add_argument("--batch-size", type=int, default=128, help="batch size per process")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (warm-up then cosine decay)")
    g.add_argument("--weight-decay", type=float, default=weight_decay)
    g.add_argument("--label-smoothing", type=float, default=label_smoothing, help="of the classifier loss")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: autocast + channels-last, about 2x faster on CPUs with AMX / AVX-512 BF16 and on "
                        "recent GPUs; auto picks bf16 where the device is fast at it")
    g.add_argument("--augment", default=None, metavar="OPS",
                   help="training augmentations, comma-separated: hflip (random horizontal flip), shift (random "
                        "shift by up to 1/8 of the side), or none. Default: hflip,shift, but only shift for "
                        "--dataset digits - a flip is wrong wherever a mirrored image is another thing (digits, "
                        "text, signs, left/right parts): pass --augment shift for such data. Recorded in the "
                        "checkpoint")
    g.add_argument("--random-erasing", type=float, default=random_erasing, metavar="P",
                   help="erase one random rectangle (2-25 %% of the image, filled with noise) in this share of the "
                        "training images (Zhong et al. 2017); 0 turns it off")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, batch order and augmentation")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--force", action="store_true", help="retrain over a finished checkpoint at --out")


# data sets a horizontal flip turns into other things (a mirrored 2 or 7 is no digit)
NO_FLIP_DATASETS = ("digits",)


def augment_from_args(args: argparse.Namespace, dataset: str) -> list[str]:
    """``--augment`` as operations; unset: hflip + shift, or shift alone on a data set flips are wrong for."""
    from ..artifacts.checkpoint import AUGMENTATIONS, augment_ops
    from ..errors import EdgeQueryError

    if args.augment is None:
        ops = [a for a in AUGMENTATIONS if not (a == "hflip" and dataset in NO_FLIP_DATASETS)]
        logging.getLogger(__name__).info("augmentation: %s (the default for %s; --augment changes it)",
                                         ",".join(ops) or "none", dataset)
        return ops
    try:
        return augment_ops(args.augment)
    except ValueError as exc:
        raise EdgeQueryError(f"--augment {args.augment!r}: {exc}",
                             "pass e.g. --augment hflip,shift, --augment shift or --augment none") from None


def train_config_from_args(args: argparse.Namespace, dataset: str, **extra):
    """The TrainConfig the training flags ask for; ``dataset`` (the data trained on) picks the default
    augmentation."""
    from ..train import TrainConfig

    length = {"epochs": args.epochs} if args.epochs is not None else {"steps": args.steps}
    return TrainConfig(**length, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       label_smoothing=args.label_smoothing, optimizer=args.optimizer, precision=args.precision,
                       augment=augment_from_args(args, dataset), random_erasing=args.random_erasing, seed=args.seed,
                       device=args.device, extra=extra)


def add_space_args(p: argparse.ArgumentParser, default: str | None = "mbv3", required: bool = False) -> None:
    """``--space NAME`` and ``--space-option KEY=V1,V2`` (repeatable): the search space and its choice lists."""
    g = p.add_argument_group("search space")
    g.add_argument("--space", choices=["mbv3", "shufflenet"], default=default, required=required,
                   help="search space" + (f" (default {default})" if default else ""))
    g.add_argument("--space-option", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="override one of the space's choice lists, e.g. resolutions=128,160,224 or widths=0.75,1.0 "
                        "(repeatable; mbv3: resolutions widths depths kernels expands; shufflenet: resolutions ops "
                        "channels). The configuration travels with every artifact made from the space")


def parse_space_options(items: list[str]) -> dict[str, list]:
    """``["resolutions=128,224", "ops=a,b"]`` -> ``{"resolutions": [128, 224], "ops": ["a", "b"]}``."""
    from ..errors import EdgeQueryError

    out: dict[str, list] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise EdgeQueryError(f"--space-option {item!r} is not KEY=V1,V2,...",
                                 "write it like --space-option resolutions=128,160,224")

        def value(v: str):
            v = v.strip()
            for cast in (int, float):
                try:
                    return cast(v)
                except ValueError:
                    pass
            return v

        out[key] = [value(v) for v in values.split(",") if v.strip()]
    return out


def space_from_args(args: argparse.Namespace):
    """The search space ``--space`` / ``--space-option`` describe."""
    from ..spaces import get_space

    return get_space(args.space, **parse_space_options(getattr(args, "space_option", [])))

