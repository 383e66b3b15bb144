"""``edgequery verify``: re-check an export folder before an app or a server uses it.

In order, stopping at the first failure with one :class:`~edgequery.errors.EdgeQueryError`:

1. **sha256** of every file the card lists (model files and fixtures);
2. **ONNX metadata** - the card identity inside each ``.onnx`` equals the card's;
3. **parity** - each file, re-run in its runtime on the stored real images and the test
   vector, reproduces PyTorch's recorded embeddings (float32 files) or its own recorded
   outputs (quantized files);
4. **compatibility** (with ``--gallery``) - the gallery is the one the encoder was trained
   against (:func:`edgequery.artifacts.compat.check_compatible`).

The card itself is read through :class:`~edgequery.artifacts.card.ModelCard`, so a card
with unknown keys or a newer format is refused before any of these.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..artifacts.card import ModelCard
from ..errors import EdgeQueryError
from ..files import sha256_file
from .options import file_runner
from .card import embedded_identity, read_card, read_onnx_metadata
from .fixtures import PARITY_FILE, TEST_IMAGE, TEST_VECTOR, read_png, read_test_vector
from .parity import (FP32_MIN_COSINE, REPLAY_MIN_COSINE, describe_shortfall, parity_figures, parity_passed,
                     replay_passed)

log = logging.getLogger(__name__)
REEXPORT = "re-create the export with `edgequery export`"


def check_hashes(folder: Path, card: ModelCard, card_path: Path) -> str:
    listed = [(e.file, e.sha256) for e in card.files] + [(n, f.sha256) for n, f in card.fixtures.items()]
    for fname, digest in listed:
        path = folder / fname
        if not path.is_file():
            raise EdgeQueryError(f"{path} is listed in {card_path.name} but missing",
                                 f"copy the whole export folder, or {REEXPORT}")
        actual = sha256_file(path)
        if actual != digest:
            raise EdgeQueryError(f"{path} was modified after export: sha256 {actual[:16]}... but the model card "
                                 f"records {digest[:16]}...", f"restore the original file, or {REEXPORT}")
    return f"{len(listed)} files match the model card"


def check_onnx_metadata(folder: Path, card: ModelCard, card_path: Path) -> str | None:
    """``None`` when the export has no ONNX file."""
    ident = card.identity()
    onnx_files = [e.file for e in card.files if e.format == "onnx"]
    for fname in onnx_files:
        embedded = embedded_identity(read_onnx_metadata(folder / fname))
        if embedded is None or {k: embedded.get(k) for k in ident} != ident:
            raise EdgeQueryError(f"{fname}'s metadata_props do not match {card_path.name}",
                                 f"{REEXPORT} (the card and files come from different exports)")
    return "agrees with the model card" if onnx_files else None


def check_parity(folder: Path, card: ModelCard, threads: int) -> Iterator[tuple[str, str]]:
    """Each file against the stored embeddings; yields ``(check, detail)`` as each file passes."""
    from ..data import DataSpec, to_model_input

    inp = card.input
    spec = DataSpec(resolution=inp.resolution, mean=tuple(inp.mean), std=tuple(inp.std))
    stored = np.load(folder / PARITY_FILE, allow_pickle=False)
    x = to_model_input(torch.from_numpy(stored["images"]), spec).numpy()
    vector = read_test_vector(folder)
    x_test = to_model_input(read_png(folder / TEST_IMAGE), spec).numpy()
    if not np.allclose(x_test.reshape(-1), np.asarray(vector["input"]["values"], np.float32), atol=1e-5):
        raise EdgeQueryError(f"{TEST_IMAGE} does not pre-process to the input recorded in {TEST_VECTOR}", REEXPORT)
    for e in card.files:
        runner = file_runner(folder, e, threads)
        got = np.concatenate([runner.embed(x_test), runner.embed(x)])
        replay = e.quantization != "none"
        if replay:
            want, against, min_cos = stored[f"file:{e.file}"], "its own outputs at export time", REPLAY_MIN_COSINE
        else:
            want, against, min_cos = stored["pytorch"], "PyTorch", FP32_MIN_COSINE
        want = np.concatenate([np.asarray([vector["expected_embedding"][e.file]], np.float32), want])
        par = parity_figures(got, want)
        if not (replay_passed(par) if replay else parity_passed(par, min_cos)):
            raise EdgeQueryError(
                f"{e.file} no longer reproduces {against} on the stored real images: {describe_shortfall(par, min_cos)}",
                f"check the installed {e.runtime} against the card's tools ({card.tools}), or re-export")
        yield (f"parity {e.file}", f"min cosine {par['cosine_min']:.7f} vs {against} on {par['images']} real images "
                                  f"({e.runtime}, {threads} thread(s))")


def check_gallery(folder: Path, card: ModelCard, gallery_path: str | Path) -> str:
    from ..artifacts.compat import check_compatible
    from ..checkpoint import load_checkpoint

    gallery = load_checkpoint(gallery_path, "gallery")
    check_compatible(card, gallery, a_name=str(folder), b_name=str(gallery_path))
    return f"gallery {gallery_path} is model_version {gallery['model_version']}, as the card says"


def verify_export(folder: str | Path, gallery_path: str | Path | None = None, threads: int = 1,
                  progress: bool = True) -> dict[str, Any]:
    """Re-check an export folder (see the module docstring); returns a report of the checks that passed.

    ``progress=False`` logs the per-check lines at debug level only.
    """
    folder = Path(folder)
    card, card_path = read_card(folder)
    report: dict[str, Any] = {"export": str(folder), "model_version": card.model_version, "checks": []}

    def ok(check: str, detail: str | None) -> None:
        if detail is not None:
            report["checks"].append({"check": check, "detail": detail})
            log.log(logging.INFO if progress else logging.DEBUG, "ok  %s: %s", check, detail)

    ok("sha256", check_hashes(folder, card, card_path))
    ok("onnx metadata", check_onnx_metadata(folder, card, card_path))
    for check, detail in check_parity(folder, card, threads):
        ok(check, detail)
    if gallery_path is not None:
        ok("compatibility", check_gallery(folder, card, gallery_path))
    else:
        report["compatibility"] = "not checked (no --gallery)"
    report["compatible_with"] = card.compatible_with.model_dump() if card.compatible_with else None
    report["passed"] = True
    return report
