"""``edgequery train supernet``: the flags and handler (registered by ``commands/train.py``)."""

from __future__ import annotations

import argparse

from ..commands.common import add_data_args, add_train_args, say, spec_from_args, train_config_from_args

DESCRIPTION = """\
Train a weight-sharing supernet whose every subnet embeds into the gallery model's
space (BCT's influence loss against the frozen gallery classifier, CMP-NAS's recipe).

Spaces:
  mbv3        MobileNetV3 stages, once-for-all style: per stage depth {2,3,4}, per block
              kernel {3,5,7} and expansion {3,4,6}, width x{0.5,0.75,1.0}, input 24/28/32 px
  shufflenet  Single Path One-Shot ShuffleNetV2: 20 positions x {3x3, 5x5, 7x7, Xception}
              x middle-channel scale {0.5 .. 1.5}; separate weights per choice block

Each step trains one uniformly sampled arch (single path); --sandwich trains the
largest, the smallest and a random arch each step instead (losses summed).  Archs are
drawn from (--seed, step), so torchrun ranks agree and a resumed run repeats them.

examples:
  edgequery train supernet --space mbv3 --gallery gallery.pt
  torchrun --nproc-per-node 2 -m edgequery train supernet --space shufflenet --gallery gallery.pt
"""


def register_supernet(tsub: argparse._SubParsersAction) -> None:
    s = tsub.add_parser("supernet", help="a weight-sharing supernet of a search space, trained with BCT",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--space", choices=["mbv3", "shufflenet"], default="mbv3", help="search space (default mbv3)")
    s.add_argument("--gallery", required=True, help="gallery checkpoint the subnets must be compatible with")
    s.add_argument("--out", default="supernet.pt", help="checkpoint to write (default supernet.pt)")
    s.add_argument("--sandwich", action="store_true",
                   help="sandwich rule: largest + smallest + random arch per step (default: one uniform arch)")
    s.add_argument("--bct-weight", type=float, default=1.0, help="lambda of the BCT influence loss (default 1)")
    add_data_args(s, inherit=True)
    add_train_args(s, epochs=10, lr=0.05)
    s.set_defaults(handler=run_supernet)


def run_supernet(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..data import DataSpec
    from .training import train_supernet

    gallery = load_checkpoint(args.gallery, "gallery")
    spec = spec_from_args(args, base=DataSpec.from_dict(gallery["data"]))
    ck = train_supernet(args.gallery, train_config_from_args(args), args.out, space=args.space,
                        sandwich=args.sandwich, bct_weight=args.bct_weight, spec=spec, force=args.force)
    say(f"wrote {args.out} ({args.space} supernet, model_version {ck['model_version']}, "
        f"compatible with gallery {ck['compatible_with']['gallery_version']})")
    return 0
