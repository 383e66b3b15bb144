"""``edgequery import gallery``: wrap an embedding model trained elsewhere as a gallery checkpoint."""

from __future__ import annotations

import argparse
import logging

from .common import HelpFormatter, add_data_args, spec_from_args

log = logging.getLogger(__name__)

DESCRIPTION = """\
Wrap your own embedding model - the one your gallery index was built with - as a gallery
checkpoint, without retraining it. Query nets, supernets, search, export and index then
work against it exactly as against a model `edgequery train gallery` made.

The model is one of:
  --format state-dict        a torchvision state dict (torch.save(model.state_dict())) of --arch,
                             plus --head: the linear layer from pooled features to your embedding
                             (a state dict with weight [D x 2048] and optional bias, bare or under
                             fc. / head. / embedding.; the weights file itself if the head is its fc).
                             Without --head the pooled features, L2-normalised, are the embedding.
  --format torchscript       a whole module saved with torch.jit.save: images -> embeddings
  --format exported-program  a whole module saved with torch.export.save: images -> embeddings

Its pre-processing is declared here, once: --resolution, --mean and --std (the images are
RGB, scaled to 0-1, normalised per channel), and --channel-order bgr for a model trained on
BGR images (its first convolution is flipped to take RGB, exactly). Query nets trained against
the checkpoint inherit this, and their model cards tell the app.

BCT trains query nets against the gallery model's classifier. Embedding models trained
with a metric loss have none, so the checkpoint's classifier is built from your labelled
images: each class's mean embedding (L2-normalised) over the training split of the data
(--dataset folder --data-root DIR: <DIR>/<class>/<images>). The checkpoint records that it
is a prototype classifier, and from how many images.
"""

EPILOG = """\
examples:
  edgequery import gallery --model resnet101.pth --head head.pth --resolution 224 \\
      --dataset folder --data-root my_images/ --out gallery.pt
  edgequery import gallery --model embedder.pt --format torchscript --resolution 160 \\
      --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 --dataset folder --data-root my_images/ --out gallery.pt
then: edgequery train query --gallery gallery.pt --arch mobilenet_v3_small --out query.pt
      edgequery index --gallery gallery.pt --from-embeddings my_embeddings.npz --out gallery_index/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="wrap your own gallery model (state dict or program) as a gallery checkpoint",
                       description="Bring a model trained elsewhere into edgequery.")
    isub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    g = isub.add_parser("gallery", help="your embedding model, as the gallery model", description=DESCRIPTION,
                        epilog=EPILOG, formatter_class=type("F", (HelpFormatter, argparse.RawDescriptionHelpFormatter), {}))
    from ..models.imported import IMPORT_FORMATS
    from ..models.zoo import BASELINE_ARCHS

    g.add_argument("--model", required=True, help="the model file (see --format)")
    g.add_argument("--format", choices=IMPORT_FORMATS, default="state-dict", help="what --model holds")
    g.add_argument("--arch", choices=BASELINE_ARCHS, default="resnet101",
                   help="state-dict: the torchvision architecture the weights are of")
    g.add_argument("--head", default=None, help="state-dict: the embedding head's state dict (see above)")
    g.add_argument("--channel-order", choices=["rgb", "bgr"], default="rgb",
                   help="the colour order the model was trained on")
    g.add_argument("--mean", default=None, metavar="R,G,B",
                   help="per-channel mean of the 0-1 pixels the model was trained on (default: ImageNet's)")
    g.add_argument("--std", default=None, metavar="R,G,B",
                   help="per-channel standard deviation (default: ImageNet's)")
    g.add_argument("--prototype-images", type=int, default=None, metavar="N",
                   help="make each class's prototype from at most N training images (default: all of them)")
    g.add_argument("--out", default="gallery.pt", help="the gallery checkpoint to write")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (embedding the prototype images)")
    g.add_argument("--force", action="store_true", help="replace an existing --out")
    add_data_args(g)
    g.set_defaults(handler=run_gallery, resolution=None)


def _triple(value: str | None, flag: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    from ..errors import EdgeQueryError

    if value is None:
        return default
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        out = ()
    if len(out) != 3 or (flag == "--std" and min(out) <= 0):
        raise EdgeQueryError(f"{flag} {value!r} is not three {'positive ' if flag == '--std' else ''}numbers",
                             f"write it like {flag} 0.485,0.456,0.406 (R, G, B of 0-1 pixels)")
    return out  # type: ignore[return-value]


def run_gallery(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..data import IMAGENET_MEAN, IMAGENET_STD
    from ..errors import EdgeQueryError
    from ..models.imported import import_gallery

    if args.resolution is None:
        raise EdgeQueryError("--resolution is needed: the input side your model was trained at",
                             "pass e.g. --resolution 224 (the pre-processing is declared once, here)")
    spec = replace(spec_from_args(args), mean=_triple(args.mean, "--mean", IMAGENET_MEAN),
                   std=_triple(args.std, "--std", IMAGENET_STD))
    ck = import_gallery(args.model, args.out, spec, fmt=args.format, arch=args.arch, head_file=args.head,
                        channel_order=args.channel_order, per_class=args.prototype_images, device=args.device,
                        force=args.force)
    m = ck["model"]
    log.info("wrote %s (imported %s %s, %d-d embedding, prototype classifier of %d classes from %d images, "
             "model_version %s)", args.out, args.format, m["arch"], m["embed_dim"], m["num_classes"],
             ck["classifier"]["images"], ck["model_version"])
    return 0
