"""The committed pre-processing fixture: ``export/fixture/`` (see ``export/README.md``).

Every export folder carries its own ``test_image.png`` and ``test_vector.json`` (the
image's model input and each file's expected embedding).  This module writes the one
fixture that is committed to the repository, so app code can be unit-tested without an
export at hand:

* ``test_image.png`` - the fixed test image: the first query image of the default data
  split (Fashion-MNIST test set, seed 0), resized to the default 32x32;
* ``expected.json`` - the float32 NCHW model input that image must pre-process to under
  the default mean/std, and - when written from an export (``--from-export``) - that
  export's expected embedding, labelled with its ``model_version`` and arch;
* ``model_card.json`` (only ``--from-export``) - that export's model card, a real example
  of the format (:class:`edgequery.artifacts.card.ModelCard`); its ``fixtures`` and
  ``files`` hashes are those of the export folder it came from.

    python -m edgequery.export.fixture                       # image + expected input
    python -m edgequery.export.fixture --from-export export/mobilenet_v3_small-1a2b3c4d

``tests/test_export.py`` checks that the committed fixture still equals what the code
produces, so the documented pre-processing cannot drift silently, and that the example
card is valid under the current schema.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts.card import CARD_NAME
from ..errors import EdgeQueryError
from ..files import sha256_file, write_json

log = logging.getLogger("edgequery.export.fixture")  # not __name__: also run as __main__
FIXTURE_DIR = Path(__file__).resolve().parents[2] / "export" / "fixture"


def reference_input(spec=None) -> tuple["torch.Tensor", np.ndarray, dict[str, Any]]:  # noqa: F821
    """The fixed test image (uint8 ``1 x C x R x R``), its model input and where it comes from."""
    from ..data import DataSpec, load_splits, to_model_input

    spec = spec or DataSpec()
    splits = load_splits(spec, progress=False)
    image = splits.query.images[:1]
    x = to_model_input(image, spec).numpy()
    source = {"dataset": spec.dataset, "split": "query", "index_in_split": 0, "seed": spec.seed,
              "n_query": spec.n_query, "resolution": spec.resolution,
              "label": splits.classes[int(splits.query.labels[0])]}
    return image, x, source


def write_fixture(out: str | Path = FIXTURE_DIR, from_export: str | Path | None = None) -> dict[str, Any]:
    """Write ``test_image.png`` and ``expected.json`` into ``out``; returns the JSON written."""
    from ..data import DataSpec
    from .build import input_spec
    from .card import read_card
    from .fixtures import input_values, read_png, read_test_vector, write_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec()
    image, x, source = reference_input(spec)
    write_png(out / "test_image.png", image[0])
    if not np.array_equal(read_png(out / "test_image.png").numpy(), image.numpy()):
        raise AssertionError("PNG round trip changed the test image")
    doc: dict[str, Any] = {
        "image": "test_image.png", "image_sha256": sha256_file(out / "test_image.png"), "source": source,
        "preprocessing": {k: v for k, v in input_spec(spec.resolution, spec.mean, spec.std).items()
                          if k not in ("name", "layout")},
        "input": input_values(x),
        "tolerance": {"input_max_abs_diff": 1e-4, "embedding_cosine_min": 0.9999},
        "expected_embedding": None,
    }
    if from_export is not None:
        card, _ = read_card(from_export)
        vector = read_test_vector(Path(from_export))
        if card.input.resolution != spec.resolution or card.input.mean != list(spec.mean) \
                or card.input.std != list(spec.std) \
                or not np.allclose(vector["input"]["values"], doc["input"]["values"], atol=1e-6):
            raise EdgeQueryError(f"{from_export} was not exported with the default data spec and test image",
                                 "export a query net trained on the default split (fashion-mnist, seed 0, 32 px)")
        compat = card.compatible_with
        doc["expected_embedding"] = {"model_version": card.model_version, "arch": card.arch,
                                     "compatible_with": compat.model_dump() if compat else None,
                                     "values": vector["expected_embedding"]["pytorch"],
                                     "note": "valid only for the encoder with this model_version"}
    write_json(out / "expected.json", doc)
    if from_export is not None:
        card.save(out / CARD_NAME)
    else:
        (out / CARD_NAME).unlink(missing_ok=True)  # a card is only kept beside its expected embedding
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(FIXTURE_DIR), help="fixture folder (default export/fixture)")
    ap.add_argument("--from-export", default=None, help="an export folder whose expected embedding to include")
    args = ap.parse_args(argv)
    from ..log import setup_logging

    setup_logging()
    doc = write_fixture(args.out, args.from_export)
    emb = doc["expected_embedding"]
    log.info("wrote %s/test_image.png and expected.json%s", args.out,
             f" (embedding of {emb['model_version']}) and {CARD_NAME}" if emb else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
