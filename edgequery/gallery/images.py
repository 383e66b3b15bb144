"""Untrusted image bytes -> the gallery model's input, with limits; and thumbnails.

An upload is attacker-controlled, so decoding is bounded before any pixel is
decompressed: the HTTP layer caps the request size (:class:`~.app.RequestGuard`), and
:func:`decode_upload` reads only the header first and refuses images whose pixel count
exceeds ``max_pixels`` — a 50 kB PNG can declare 40 000 x 40 000 pixels (6.4 GB once
decoded), the classic decompression bomb.  JPEGs are decoded at a reduced scale
(``draft``) when they are much larger than the model's input anyway.

Pre-processing is the gallery data's: grey data sets (Fashion-MNIST, digits) convert the
upload to grey, others to RGB; then the same shorter-side resize + centre crop that
:func:`edgequery.data.load_image_folder` applies, at the gallery's resolution.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from ..data import DataSpec, _square_resize
from ..errors import EdgeQueryError

GREY_DATASETS = ("fashion-mnist", "digits")


class ImageRejected(EdgeQueryError):
    """An upload that is refused; ``status`` is the HTTP status that says why (413 or 422)."""

    def __init__(self, status: int, problem: str, fix: str):
        super().__init__(problem, fix)
        self.status = status


def decode_upload(data: bytes, name: str, spec: DataSpec, max_pixels: int) -> torch.Tensor:
    """Decode one uploaded image to ``uint8 C x R x R`` (C = 1 for grey galleries, else 3)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRejected(422, f"upload {name!r} is empty", "attach the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageRejected(413, f"image {name!r} is {w}x{h} = {w * h} pixels, above this server's limit "
                                         f"of {max_pixels}", "downscale it before uploading (the model only sees "
                                                             f"{spec.resolution}x{spec.resolution})")
            im.draft("RGB", (2 * spec.resolution, 2 * spec.resolution))  # JPEG only: decode at reduced scale
            grey = spec.dataset in GREY_DATASETS
            im = im.convert("L").convert("RGB") if grey else im.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(413, f"image {name!r} was refused as a decompression bomb ({exc})",
                            "upload an ordinary photo of at most a few megapixels") from None
    except UnidentifiedImageError:
        raise ImageRejected(422, f"upload {name!r} is not an image format this server can decode",
                            "send a PNG, JPEG, WebP, GIF, BMP or TIFF file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(422, f"image {name!r} is truncated or corrupt ({exc})",
                            "re-encode or re-upload the file") from None
    x = _square_resize(im, spec.resolution)
    return x[:1].clone() if grey else x


def png_thumbnail(image: torch.Tensor) -> bytes:
    """A PNG of a ``uint8 C x R x R`` image (what the demo page shows for a result)."""
    from PIL import Image

    arr = image.detach().cpu().numpy().astype(np.uint8)
    im = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
