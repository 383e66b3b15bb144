"""Untrusted image bytes -> the gallery model's input, with limits; and thumbnails.

An upload is attacker-controlled, so the work it can cause is bounded *before* it is
done.  The HTTP layer caps the request size (:class:`~.guard.RequestGuard`); then
:func:`decode_upload` reads only the image header and refuses, without decoding a pixel:

* more than ``max_pixels`` pixels (w x h) — a 50 kB PNG can declare 40 000 x 40 000
  pixels (6.4 GB once decoded), the classic decompression bomb.  Pillow's own bomb check
  fires first above its ``MAX_IMAGE_PIXELS``; its refusal is reported with the server's
  limit too (``serve`` never allows a ``--max-pixels`` above Pillow's);
* a longer side more than ``max_aspect_ratio`` times the shorter one — a 470-byte
  1 x 200 000 PNG is no photo, and the shorter-side resize of the data pipeline would
  scale it *up* to ``R x 6 400 000 R`` pixels;
* more than ``max_pixels`` pixels after that shorter-side resize (the same bound, for
  what the data pipeline would have made of it).

The resize itself never materialises the upscaled image: :func:`crop_resize` resizes
only the centre square's source region to ``R x R`` (PIL's ``box``: the same sampling
positions and filter; a horizontal pass, then a vertical one), which gives the pixels
:func:`edgequery.data.square_resize` (resize, then crop) gives to within one level of
rounding, at a cost bounded by ``R x max(R, h)`` whatever the input's shape (the pixel
limits bound ``h``).  JPEGs are decoded at a reduced scale
(``draft``) when they are much larger than the model's input anyway.

Pre-processing is the gallery data's: grey data sets (Fashion-MNIST, digits) convert the
upload to grey, others to RGB; then the shorter-side resize + centre crop of
:func:`edgequery.data.load_image_folder`, at the gallery's resolution.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import torch

from ..data import DataSpec
from ..errors import EdgeQueryError

GREY_DATASETS = ("fashion-mnist", "digits")
MAX_ASPECT_RATIO = 20.0


class ImageRejected(EdgeQueryError):
    """An upload that is refused; ``status`` is the HTTP status that says why (413 or 422)."""

    def __init__(self, status: int, problem: str, fix: str):
        super().__init__(problem, fix)
        self.status = status


def resized_size(w: int, h: int, resolution: int) -> tuple[int, int]:
    """The size the shorter-side resize of :func:`edgequery.data.square_resize` makes of ``w x h``."""
    s = resolution / min(w, h)
    return max(resolution, round(w * s)), max(resolution, round(h * s))


def crop_resize(im, resolution: int):
    """``square_resize``'s pixels (shorter side to ``R``, centre crop; +-1 from rounding) without making the
    resized image."""
    from PIL import Image

    w, h = im.size
    rw, rh = resized_size(w, h, resolution)
    left, top = (rw - resolution) // 2, (rh - resolution) // 2
    sx, sy = w / rw, h / rh  # source pixels per resized pixel
    x0, y0, x1, y1 = left * sx, top * sy, (left + resolution) * sx, (top + resolution) * sy
    # Two one-axis resamples, horizontal first: Pillow's own two-pass order, which Pillow >= 13 may
    # swap for some shapes (a level of difference in some pixels); fixed here, so the page's
    # pre-processing (static/preprocess.js) and app code can reproduce it exactly.
    wide = im.resize((resolution, h), Image.BILINEAR, box=(x0, 0, x1, h))
    return wide.resize((resolution, resolution), Image.BILINEAR, box=(0, y0, resolution, y1))


def check_size(name: str, w: int, h: int, spec: DataSpec, max_pixels: int, max_aspect: float) -> None:
    """Refuse an image of ``w x h`` before it is decoded (see the module docstring)."""
    small = f"downscale it before uploading (the model only sees {spec.resolution}x{spec.resolution})"
    if min(w, h) < 1:
        raise ImageRejected(422, f"image {name!r} is {w}x{h}, which has no pixels", "upload an actual image")
    if w * h > max_pixels:
        raise ImageRejected(413, f"image {name!r} is {w}x{h} = {w * h} pixels, above this server's limit of "
                                 f"{max_pixels}", small)
    if max(w, h) > max_aspect * min(w, h):
        raise ImageRejected(422, f"image {name!r} is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.0f}:1, "
                                 f"above this server's limit of {max_aspect:g}:1",
                            "crop it to the object (the model sees a centred square)")
    rw, rh = resized_size(w, h, spec.resolution)
    if rw * rh > max_pixels:
        raise ImageRejected(413, f"image {name!r} is {w}x{h}, {rw}x{rh} = {rw * rh} pixels once its shorter side "
                                 f"is resized to {spec.resolution}, above this server's limit of {max_pixels}",
                            "crop it to the object (the model sees a centred square)")


def _bomb_refusal(name: str, exc: Exception, max_pixels: int) -> ImageRejected:
    """Pillow's decompression-bomb refusal, told with the server's limit."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{found.group(1)} pixels" if found else "more pixels than Pillow decodes"
    return ImageRejected(413, f"image {name!r} is {size}, above this server's limit of {max_pixels}",
                         "upload an ordinary photo of at most a few megapixels")


def decode_upload(data: bytes, name: str, spec: DataSpec, max_pixels: int,
                  max_aspect: float = MAX_ASPECT_RATIO) -> torch.Tensor:
    """Decode one uploaded image to ``uint8 C x R x R`` (C = 1 for grey galleries, else 3)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRejected(422, f"upload {name!r} is empty", "attach the image file's bytes")
    grey = spec.dataset in GREY_DATASETS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
            check_size(name, *im.size, spec, max_pixels, max_aspect)
            im.draft("RGB", (2 * spec.resolution, 2 * spec.resolution))  # JPEG only: decode at reduced scale
            im = im.convert("L") if grey else im.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_refusal(name, exc, max_pixels) from None
    except UnidentifiedImageError:
        raise ImageRejected(422, f"upload {name!r} is not an image format this server can decode",
                            "send a PNG, JPEG, WebP, GIF, BMP or TIFF file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(422, f"image {name!r} is truncated or corrupt ({exc})",
                            "re-encode or re-upload the file") from None
    x = torch.from_numpy(np.asarray(crop_resize(im, spec.resolution), dtype=np.uint8).copy())
    return x[None] if grey else x.permute(2, 0, 1)


def png_thumbnail(image: torch.Tensor) -> bytes:
    """A PNG of a ``uint8 C x R x R`` image (what the demo page shows for a result)."""
    from PIL import Image

    arr = image.detach().cpu().numpy().astype(np.uint8)
    im = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
