"""``edgequery train gallery|query|supernet``: train the gallery model, query nets and supernets."""

from __future__ import annotations

import argparse
import logging

from ..artifacts.checkpoint import GALLERY_MODEL, GALLERY_TRAIN
from .common import (HelpFormatter, add_data_args, add_space_args, add_train_args, parse_space_options,
                     space_from_args, spec_from_args, train_config_from_args)

log = logging.getLogger(__name__)

QUERY_ARCH_HELP = ("mobilenet_v3_small | mobilenet_v3_large | a search-space arch string (mbv3:..., "
                   "shufflenet:...; read in the space --space-option configures) | a search.json whose chosen arch "
                   "to retrain (in the space the search ran in)")

SUPERNET_DESCRIPTION = """\
Train a weight-sharing supernet whose every subnet embeds into the gallery model's
space (BCT's influence loss against the frozen gallery classifier, CMP-NAS's recipe).

Spaces (default choices; --space-option changes any choice list, e.g. resolutions=64,96):
  mbv3        MobileNetV3 stages, once-for-all style: per stage depth {2,3,4}, per block
              kernel {3,5,7} and expansion {3,4,6}, width x{0.5,0.75,1.0}, input 24/28/32 px
  shufflenet  Single Path One-Shot ShuffleNetV2: 20 positions x {3x3, 5x5, 7x7, Xception}
              x middle-channel scale {0.5 .. 1.5}; separate weights per choice block

The space's configuration is stored in the checkpoint: profile, search and retraining
use that space.  Each step trains one uniformly sampled arch (single path); --sandwich
trains the largest, the smallest and a random arch each step instead (losses summed), and
--inplace-distill W adds in-place distillation: the two smaller archs are also pulled towards
the largest's embedding (BigNAS / once-for-all).
Archs are drawn from (--seed, step), so torchrun ranks agree and a resumed run repeats them.

examples:
  edgequery train supernet --space mbv3 --gallery gallery.pt
  edgequery train supernet --space mbv3 --space-option resolutions=64 --resolution 64 --gallery gallery.pt
  torchrun --nproc-per-node 2 -m edgequery.commands train supernet --space shufflenet --gallery gallery.pt
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the gallery model, a query net or a supernet",
                       description="Train a model. Each run checkpoints after every epoch to --out and resumes "
                                   "an unfinished run with the same settings automatically.")
    tsub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    _register_gallery(tsub)
    _register_query(tsub)
    _register_supernet(tsub)


def _register_gallery(tsub: argparse._SubParsersAction) -> None:
    g = tsub.add_parser("gallery", help="the server-side gallery model (ResNet-101 + embedding head)",
                        description="Train the gallery model: a torchvision trunk (ResNet-101 by default), a "
                                    "linear embedding head (L2-normalised) and a cosine classifier. The defaults "
                                    "are the gallery recipe (README, 'The gallery model'): on Fashion-MNIST's 59k "
                                    "training images about an hour on 2 CPU cores with bf16, minutes on a GPU; "
                                    f"on a small data set the same {GALLERY_TRAIN['steps']} steps are more epochs.",
                        formatter_class=HelpFormatter)
    g.add_argument("--out", default="gallery.pt", help="checkpoint to write")
    g.add_argument("--arch", default=GALLERY_MODEL["arch"],
                   help="gallery trunk: resnet101_small_input (3x3 stride-1 stem, for 32-64 px inputs), resnet101 "
                        "(torchvision's ImageNet stem, for 128 px and up) or another torchvision name we build "
                        "(mobilenet_v3_small/large: for quick experiments)")
    g.add_argument("--embed-dim", type=int, default=GALLERY_MODEL["embed_dim"], help="embedding dimension")
    g.add_argument("--weights", default=None,
                   help="start from torchvision weights (IMAGENET1K_V2, DEFAULT) or a local state-dict file")
    g.add_argument("--scale", type=float, default=GALLERY_MODEL["scale"], help="cosine classifier scale s")
    g.add_argument("--margin", type=float, default=GALLERY_MODEL["margin"],
                   help="cosine margin m (CosFace); 0 = normalised softmax")
    g.add_argument("--zero-init-residual", action="store_true",
                   help="start every residual branch at zero (its last BatchNorm scale 0: each block begins as "
                        "the identity), so a deep ResNet trains like a shallow one at first; it is what lets a "
                        "few hundred steps beat raw pixels (edgequery demo), recorded in the checkpoint")
    add_data_args(g)
    add_train_args(g, **{k: GALLERY_TRAIN[k] for k in ("steps", "lr", "weight_decay", "label_smoothing",
                                                            "random_erasing") if k in GALLERY_TRAIN})
    g.set_defaults(handler=run_gallery)


def _register_query(tsub: argparse._SubParsersAction) -> None:
    q = tsub.add_parser("query", help="a small query net, compatible with the gallery by BCT",
                        description="Train a query net whose embedding lives in the gallery model's space. "
                                    "With --bct (default) the loss adds the frozen gallery classifier's "
                                    "cross-entropy on the query embedding (BCT's influence loss).",
                        formatter_class=HelpFormatter)
    q.add_argument("--arch", default="mobilenet_v3_small", help=QUERY_ARCH_HELP)
    q.add_argument("--gallery", required=True, help="gallery checkpoint to be compatible with")
    q.add_argument("--out", default="query.pt", help="checkpoint to write")
    q.add_argument("--bct", action=argparse.BooleanOptionalAction, default=True,
                   help="train with the BCT influence loss")
    q.add_argument("--bct-weight", type=float, default=1.0, help="lambda of the influence loss")
    q.add_argument("--weights", default=None, help="start the trunk from torchvision weights or a state dict")
    q.add_argument("--init-from-supernet", metavar="SUPERNET", default=None,
                   help="for a search-space arch: start from the supernet's inherited weights (fine-tune) "
                        "instead of from scratch (the arch is read in the supernet's space)")
    add_space_args(q, default=None)
    add_data_args(q, inherit=True)
    add_train_args(q, steps=2300, lr=0.05)
    q.set_defaults(handler=run_query)


def _register_supernet(tsub: argparse._SubParsersAction) -> None:
    s = tsub.add_parser("supernet", help="a weight-sharing supernet of a search space, trained with BCT",
                        description=SUPERNET_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--gallery", required=True, help="gallery checkpoint the subnets must be compatible with")
    s.add_argument("--out", default="supernet.pt", help="checkpoint to write (default supernet.pt)")
    s.add_argument("--sandwich", action="store_true",
                   help="sandwich rule: largest + smallest + random arch per step (default: one uniform arch)")
    s.add_argument("--inplace-distill", type=float, default=0.0, metavar="W",
                   help="with --sandwich: in-place distillation, the smaller archs pulled towards the largest's "
                        "embedding with weight W x (1 - cosine) (BigNAS / once-for-all; default 0: off)")
    s.add_argument("--bct-weight", type=float, default=1.0, help="lambda of the BCT influence loss (default 1)")
    add_space_args(s)
    add_data_args(s, inherit=True)
    add_train_args(s, steps=4600, lr=0.05)
    s.set_defaults(handler=run_supernet)


def _gallery_spec(args: argparse.Namespace):
    """The data spec the flags ask for, on top of the gallery's own (``None``: the gallery's), and the
    data set trained on (which picks the default augmentation)."""
    from ..checkpoint import load_checkpoint
    from ..data import DataSpec

    own = DataSpec.from_dict(load_checkpoint(args.gallery, "gallery")["data"])
    spec = spec_from_args(args, base=own)
    return spec, (spec or own).dataset


def run_gallery(args: argparse.Namespace) -> int:
    from ..recipes import train_gallery

    extra = {"zero_init_residual": True} if args.zero_init_residual else {}
    spec = spec_from_args(args)
    ck = train_gallery(spec, train_config_from_args(args, spec.dataset, **extra), args.out, arch=args.arch,
                       embed_dim=args.embed_dim, weights=args.weights, scale=args.scale, margin=args.margin,
                       force=args.force)
    log.info("wrote %s (gallery %s, model_version %s)", args.out, args.arch, ck["model_version"])
    return 0


def query_arch_and_space(args: argparse.Namespace, supernet=None):
    """The arch ``--arch`` names and the space to read it in (``None`` for a torchvision arch).

    A search.json brings its own space; an arch string is read in the space
    ``--space``/``--space-option`` configure, else the supernet's (``--init-from-supernet``),
    else its space's default configuration.
    """
    from ..errors import EdgeQueryError
    from ..spaces import arch_space_name

    arch, options = args.arch, parse_space_options(args.space_option)
    if arch.endswith(".json"):
        from ..search import chosen_arch_and_space

        if options or args.space:
            raise EdgeQueryError(f"--space/--space-option were given with {arch}, which records its own space",
                                 "drop them: the chosen arch is retrained in the space the search ran in")
        arch, space = chosen_arch_and_space(arch)
        log.info("retraining the arch chosen in %s: %s", args.arch, arch)
        return arch, space
    if ":" not in arch:
        if options or args.space:
            raise EdgeQueryError(f"--space/--space-option apply to search-space archs, not {arch!r}",
                                 "drop them, or pass an arch string such as mbv3:r64,...")
        return arch, None
    name = arch_space_name(arch)
    if args.space and args.space != name:
        raise EdgeQueryError(f"--arch {arch[:40]}... is of space {name!r}, not --space {args.space}",
                             f"pass --space {name} or an arch of the {args.space} space")
    if not options and supernet is not None:
        return arch, supernet.space
    args.space = name
    return arch, space_from_args(args)


def run_query(args: argparse.Namespace) -> int:
    from ..errors import EdgeQueryError
    from ..recipes import train_query

    supernet = None
    if args.init_from_supernet:
        from ..spaces import load_supernet

        supernet, _ = load_supernet(args.init_from_supernet)
    arch, space = query_arch_and_space(args, supernet)
    init_state = None
    if supernet is not None:
        if space is None:
            raise EdgeQueryError(f"--init-from-supernet needs a search-space arch, not {arch!r}",
                                 "pass --arch search.json or an mbv3:/shufflenet: arch string")
        init_state = supernet.extract(arch).state_dict()
    spec, dataset = _gallery_spec(args)
    ck = train_query(args.gallery, train_config_from_args(args, dataset), args.out, arch=arch, bct=args.bct,
                     bct_weight=args.bct_weight, weights=args.weights, spec=spec, force=args.force,
                     init_state=init_state, space=space)
    compat = ck["compatible_with"]
    log.info("wrote %s (query %s, model_version %s, %s)", args.out, ck["model"]["arch"], ck["model_version"],
             f"compatible with gallery {compat['gallery_version']}" if compat else "not trained for compatibility")
    return 0


def run_supernet(args: argparse.Namespace) -> int:
    from ..spaces.training import train_supernet

    space = space_from_args(args)
    spec, dataset = _gallery_spec(args)
    ck = train_supernet(args.gallery, train_config_from_args(args, dataset), args.out, space=space,
                        sandwich=args.sandwich, bct_weight=args.bct_weight, distill=args.inplace_distill, spec=spec,
                        force=args.force)
    log.info("wrote %s (%s supernet, %s, model_version %s, compatible with gallery %s)", args.out, space.name,
             space.describe(), ck["model_version"], ck["compatible_with"]["gallery_version"])
    return 0
