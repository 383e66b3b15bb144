"""The committed pre-processing fixture: ``export/fixture/`` (see ``export/README.md``).

Every export folder carries its own ``test_image.png`` and ``test_vector.json`` (the
image's model input and each file's expected embedding).  This module writes the one
fixture that is committed to the repository, so app code can be unit-tested without an
export at hand:

* ``test_image.png`` - the fixed test image: the first query image of the default data
  split (Fashion-MNIST test set, seed 0), resized to the default 32x32;
* ``expected.json`` - the float32 NCHW model input that image must pre-process to under
  the default mean/std, and - when written from an export (``--from-export``) - that
  export's expected embedding, labelled with its ``model_version`` and arch.

    python -m edgequery.export.fixture                       # image + expected input
    python -m edgequery.export.fixture --from-export export/mobilenet_v3_small-1a2b3c4d

``tests/test_export.py`` checks that the committed fixture still equals what the code
produces, so the documented pre-processing cannot drift silently.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeQueryError

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
    from .card import read_card, sha256_file
    from .pipeline import TEST_VECTOR, _write_png, input_spec, read_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec()
    image, x, source = reference_input(spec)
    _write_png(out / "test_image.png", image[0])
    if not np.array_equal(read_png(out / "test_image.png").numpy(), image.numpy()):
        raise AssertionError("PNG round trip changed the test image")
    doc: dict[str, Any] = {
        "image": "test_image.png", "image_sha256": sha256_file(out / "test_image.png"), "source": source,
        "preprocessing": {k: v for k, v in input_spec(spec.resolution, spec.mean, spec.std).items()
                          if k not in ("name", "layout")},
        "input": {"layout": "NCHW", "shape": list(x.shape), "dtype": "float32",
                  "values": [round(float(v), 7) for v in x.reshape(-1)]},
        "tolerance": {"input_max_abs_diff": 1e-4, "embedding_cosine_min": 0.9999},
        "expected_embedding": None,
    }
    if from_export is not None:
        card, _ = read_card(from_export)
        vector = json.loads((Path(from_export) / TEST_VECTOR).read_text())
        if card["input"]["resolution"] != spec.resolution or list(card["input"]["mean"]) != list(spec.mean) \
                or list(card["input"]["std"]) != list(spec.std) \
                or not np.allclose(vector["input"]["values"], doc["input"]["values"], atol=1e-6):
            raise EdgeQueryError(f"{from_export} was not exported with the default data spec and test image",
                                 "export a query net trained on the default split (fashion-mnist, seed 0, 32 px)")
        doc["expected_embedding"] = {"model_version": card["model_version"], "arch": card["arch"],
                                     "compatible_with": card.get("compatible_with"),
                                     "values": vector["expected_embedding"]["pytorch"],
                                     "note": "valid only for the encoder with this model_version"}
    (out / "expected.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(FIXTURE_DIR), help="fixture folder (default export/fixture)")
    ap.add_argument("--from-export", default=None, help="an export folder whose expected embedding to include")
    args = ap.parse_args(argv)
    doc = write_fixture(args.out, args.from_export)
    print(f"wrote {args.out}/test_image.png and expected.json"
          + (f" (embedding of {doc['expected_embedding']['model_version']})" if doc["expected_embedding"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
