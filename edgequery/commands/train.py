"""``edgequery train gallery|query``: train the gallery model and query nets."""

from __future__ import annotations

import argparse

from .common import HelpFormatter, add_data_args, add_train_args, say, spec_from_args, train_config_from_args

QUERY_ARCH_HELP = ("mobilenet_v3_small | mobilenet_v3_large | a search-space arch string (mbv3:..., "
                   "shufflenet:...) | a search.json whose chosen arch to retrain")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the gallery model, a query net or a supernet",
                       description="Train a model. Each run checkpoints after every epoch to --out and resumes "
                                   "an unfinished run with the same settings automatically.")
    tsub = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    g = tsub.add_parser("gallery", help="the server-side gallery model (ResNet-101 + embedding head)",
                        description="Train the gallery model: a torchvision trunk (ResNet-101 by default), a "
                                    "linear embedding head (L2-normalised) and a cosine classifier.",
                        formatter_class=HelpFormatter)
    g.add_argument("--out", default="gallery.pt", help="checkpoint to write")
    g.add_argument("--arch", default="resnet101", help="gallery trunk (a torchvision name)")
    g.add_argument("--embed-dim", type=int, default=128, help="embedding dimension")
    g.add_argument("--weights", default=None,
                   help="start from torchvision weights (IMAGENET1K_V2, DEFAULT) or a local state-dict file")
    g.add_argument("--scale", type=float, default=16.0, help="cosine classifier scale s")
    g.add_argument("--margin", type=float, default=0.0, help="cosine margin m (CosFace); 0 = normalised softmax")
    add_data_args(g)
    add_train_args(g, epochs=5, lr=0.05)
    g.set_defaults(handler=run_gallery)

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
                        "instead of from scratch")
    add_data_args(q, inherit=True)
    add_train_args(q, epochs=5, lr=0.05)
    q.set_defaults(handler=run_query)
    from ..spaces.cli import register_supernet
    register_supernet(tsub)


def run_gallery(args: argparse.Namespace) -> int:
    from ..recipes import train_gallery

    ck = train_gallery(spec_from_args(args), train_config_from_args(args), args.out, arch=args.arch,
                       embed_dim=args.embed_dim, weights=args.weights, scale=args.scale, margin=args.margin,
                       force=args.force)
    say(f"wrote {args.out} (gallery {args.arch}, model_version {ck['model_version']})")
    return 0


def run_query(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..data import DataSpec
    from ..errors import EdgeQueryError
    from ..recipes import train_query

    arch = args.arch
    if arch.endswith(".json"):
        from ..search import chosen_arch

        arch = chosen_arch(arch)
        say(f"retraining the arch chosen in {args.arch}: {arch}")
    init_state = None
    if args.init_from_supernet:
        from ..spaces import load_supernet

        if ":" not in arch:
            raise EdgeQueryError(f"--init-from-supernet needs a search-space arch, not {arch!r}",
                                 "pass --arch search.json or an mbv3:/shufflenet: arch string")
        supernet, _ = load_supernet(args.init_from_supernet)
        init_state = supernet.extract(arch).state_dict()
    gallery = load_checkpoint(args.gallery, "gallery")
    spec = spec_from_args(args, base=DataSpec.from_dict(gallery["data"]))
    ck = train_query(args.gallery, train_config_from_args(args), args.out, arch=arch, bct=args.bct,
                     bct_weight=args.bct_weight, weights=args.weights, spec=spec, force=args.force,
                     init_state=init_state)
    compat = ck["compatible_with"]
    say(f"wrote {args.out} (query {arch}, model_version {ck['model_version']}, "
        + (f"compatible with gallery {compat['gallery_version']})" if compat else "not trained for compatibility)"))
    return 0
