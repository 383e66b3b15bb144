"""Checking a LUT against whole nets measured end to end, and calibrating it.

:func:`validate` - ``edgequery profile validate``: samples N random archs at the LUT's
resolutions, exports each *whole* net the way ``edgequery export`` does, times it on
the same device/runtime/threads and compares with the LUT's prediction: share within
±5 % and ±10 %, mean absolute percentage error, Spearman rho.  With ``calibrate`` it
fits a correction by relative least squares and stores it in the LUT: a factor
``scale * raw``, the line ``scale * raw + offset``, a factor growing with the net's weights
``(scale + k * weight_mb) * raw``, or ``scale * raw + per_block * blocks + per_weight_mb *
weight_mb`` (a whole net streams weights that a block timed alone keeps in cache), whichever
predicts better out of sample after 10 nets (on a tie, the one with fewer terms).

Two figures put those numbers in context.  The *noise ceiling* (``noise_rounds=True``):
the same nets timed a second time, in a separate pass after the first, and scored as if
the first pass predicted the second - no table can predict this machine's timings better
than they repeat.  The *calibration curve* (:func:`calibration_curve`): how accurate the
table is after a calibration fitted on only k measured nets (k = 0, 5, 10, 20; a user
should not have to time 100 nets on a phone), each k scored on the nets it was not
fitted on, over many random draws of the k.

The device must have the LUT's fingerprint (the same CPU, ISA, caches, OS/kernel,
runtime version and threads); ``allow_other_device`` validates on another one anyway,
and says so in the report (and, with ``calibrate``, in the LUT).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts.compat import check_compatible
from ..artifacts.lut import Calibration, OtherDeviceUse
from ..errors import EdgeQueryError
from .blocks import RUNTIME_SUFFIX
from .build import IDENTITY, Protocol, export_blocks, export_nets, file_name, time_files, work_folder
from .devices import Device
from .lut import LUT, now, restricted_space

log = logging.getLogger(__name__)


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Share within ±5 % / ±10 %, mean absolute % error, Spearman rho (predicted vs measured)."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = (p - m) / m
    rho = spearmanr(p, m).statistic if len(p) > 2 and np.ptp(p) > 0 and np.ptp(m) > 0 else float("nan")
    return {"n": len(p), "within_5pct": round(float(np.mean(np.abs(err) <= 0.05)), 4),
            "within_10pct": round(float(np.mean(np.abs(err) <= 0.10)), 4),
            "mape_pct": round(float(np.mean(np.abs(err)) * 100), 3),
            "mean_error_pct": round(float(np.mean(err) * 100), 3), "spearman_rho": round(float(rho), 4)}


# The calibration models, fewest terms first: the terms each fits (see :class:`edgequery.artifacts.lut.Calibration`).
MODELS = {"scale": ("raw",), "line": ("raw", "offset"), "weight-scaled": ("raw", "raw_x_weight_mb"),
          "blocks+weights": ("raw", "blocks", "weight_mb")}
PER_NET_TERMS = {"blocks", "weight_mb", "raw_x_weight_mb"}   # what only (raw ms, blocks, weight MB) per net can fit


def _terms(terms: Sequence) -> np.ndarray:
    """Per-net terms as an (n, 3) array of (raw ms, blocks, weight MB); a plain list of raw ms has only the first."""
    t = np.asarray(terms, float)
    return t[:, None] if t.ndim == 1 else t


def _columns(terms: np.ndarray, model: str) -> np.ndarray:
    have = {"raw": terms[:, 0], "offset": np.ones(len(terms))}
    if terms.shape[1] == 3:
        have.update(blocks=terms[:, 1], weight_mb=terms[:, 2], raw_x_weight_mb=terms[:, 0] * terms[:, 2])
    missing = [t for t in MODELS[model] if t not in have]
    if missing:
        raise EdgeQueryError(f"the {model} calibration needs each net's {', '.join(missing)}",
                             "pass (raw ms, blocks, weight MB) per net, or fit the line model")
    return np.stack([have[t] for t in MODELS[model]], axis=1)


def _fit(terms: np.ndarray, measured: np.ndarray, model: str) -> np.ndarray:
    """The model's coefficients minimising the *relative* error (what the ±5 % goal counts)."""
    design = _columns(terms, model) / measured[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    return coef


def _predict(coef: np.ndarray, terms: np.ndarray, model: str) -> np.ndarray:
    return _columns(terms, model) @ coef


def fit_calibration(terms: Sequence, measured: Sequence[float], device: str | None = None,
                    notes: Sequence[str] = (), model: str = "line") -> Calibration:
    """The correction ``--calibrate`` stores: ``model``'s terms fitted by relative least squares.

    ``terms``: per net, the raw ms (``line``) or (raw ms, blocks, weight MB) (either model)."""
    t, m = _terms(terms), np.asarray(measured, float)
    if len(t) < 3:
        raise EdgeQueryError(f"calibration needs at least 3 measured nets, got {len(t)}", "pass --n 20 or more")
    coef = dict(zip(MODELS[model], (round(float(c), 6) for c in _fit(t, m, model))))
    return Calibration(scale=coef["raw"], offset_ms=coef.get("offset", 0.0), per_block_ms=coef.get("blocks", 0.0),
                       per_weight_mb_ms=coef.get("weight_mb", 0.0), scale_per_weight_mb=coef.get("raw_x_weight_mb"),
                       model=model, fit="relative least squares",
                       fitted_on=len(t), fitted_at=now(), device=device, notes=list(notes))


def cross_validated(terms: Sequence, measured: Sequence[float], folds: int = 5, seed: int = 0,
                    model: str = "line") -> dict[str, Any]:
    """Accuracy of the calibrated prediction out of sample: each fold predicted by ``model`` fitted on the others."""
    t, m = _terms(terms), np.asarray(measured, float)
    order = np.random.default_rng(seed).permutation(len(t))
    pred = np.empty_like(m)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        pred[test] = _predict(_fit(t[train], m[train], model), t[test], model)
    return {**accuracy(pred, m), "folds": folds, "predicted_ms": [round(float(p), 5) for p in pred]}


def calibration_curve(terms: Sequence, measured: Sequence[float], sizes: Sequence[int] = (0, 5, 10, 20),
                      draws: int = 50, seed: int = 0, model: str = "line") -> dict[str, Any]:
    """Accuracy after a calibration fitted on ``k`` nets, for each ``k`` in ``sizes``, out of sample.

    For each k: ``draws`` random sets of k nets, ``model`` fitted on each, every other net
    predicted by it; the accuracy figures are the mean over the draws, with the worst draw's
    (the 5th percentile of within ±5 % / ±10 %) beside them.  k = 0 is the uncalibrated
    table.  Sizes that leave fewer than 5 nets to score are skipped, and so are sizes below
    the model's number of terms + 1.
    """
    t, m = _terms(terms), np.asarray(measured, float)
    rng = np.random.default_rng(seed)
    curve: dict[str, Any] = {}
    for k in sizes:
        if len(m) - k < 5 or (0 < k <= len(MODELS[model])):
            continue
        runs = []
        for _ in range(1 if k == 0 else draws):
            fit = rng.choice(len(m), size=k, replace=False)
            rest = np.setdiff1d(np.arange(len(m)), fit)
            pred = _predict(_fit(t[fit], m[fit], model), t[rest], model) if k else t[rest, 0]
            runs.append(accuracy(pred, m[rest]))
        keys = ("within_5pct", "within_10pct", "mape_pct", "mean_error_pct")
        curve[str(k)] = {**{key: round(float(np.mean([r[key] for r in runs])), 4) for key in keys},
                         "within_5pct_p5": round(float(np.percentile([r["within_5pct"] for r in runs], 5)), 4),
                         "within_10pct_p5": round(float(np.percentile([r["within_10pct"] for r in runs], 5)), 4),
                         "draws": len(runs), "scored_on": len(m) - k}
    return curve


def noise_ceiling(first: Sequence[float], second: Sequence[float]) -> dict[str, Any]:
    """How well a second timing pass of the same nets agrees with the first (the first 'predicting' the second)."""
    figures = accuracy(first, second)
    return {k: figures[k] for k in ("n", "within_5pct", "within_10pct", "mape_pct", "mean_error_pct")}


def out_of_sample(terms: Sequence, measured: Sequence[float], model: str = "line") -> dict[str, Any]:
    """From 10 nets on: ``model``'s 5-fold cross-validated calibration, its calibration curve and 10-net point."""
    if len(terms) < 10:
        return {}
    out = {"calibrated_cross_validated": cross_validated(terms, measured, model=model),
           "calibration_curve": calibration_curve(terms, measured, model=model)}
    if "10" in out["calibration_curve"]:
        out["calibrated_10_nets"] = out["calibration_curve"]["10"]
    return out


def _better(a: dict, b: dict) -> bool:
    """Whether out-of-sample figures ``a`` beat ``b``: the 10-net calibration's ±10 % + ±5 % shares, then 5-fold MAPE."""
    def key(o):
        ten = o.get("calibrated_10_nets", {})
        return (round(ten.get("within_10pct", 0) + ten.get("within_5pct", 0), 3),
                -o.get("calibrated_cross_validated", {}).get("mape_pct", np.inf))
    return key(a) > key(b)


def score_calibration(lut: LUT, terms: Sequence, measured: Sequence[float], calibrate: bool,
                      device: str | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The calibration figures of a validation from its nets' terms and measurements (no timing here).

    ``terms``: per net (raw ms, blocks, weight MB), or only the raw ms (then only the scale and the
    line are fitted).  Every model of :data:`MODELS` the terms allow is scored out of sample
    (``models``); the top-level figures are the winner's (``calibration_model``: the better
    10-net calibration).  With ``calibrate`` the winner, fitted on all nets, is stored in ``lut``
    (and saved to its file); ``device`` and ``notes`` (``--allow-other-device``: how that device
    differs) are stored with it.
    """
    t = _terms(terms)
    report: dict[str, Any] = {}
    if lut.calibration:
        stored = [lut.calibrated(*row) if t.shape[1] == 3 else lut.calibrated(row[0]) for row in t]
        report["with_stored_calibration"] = accuracy(stored, measured)
    fitted = {m: out_of_sample(t, measured, m) for m in MODELS if t.shape[1] == 3 or not PER_NET_TERMS & set(MODELS[m])}
    best = next(iter(fitted))
    for name, figures in fitted.items():   # fewest terms first: a tie keeps the simpler model
        if figures and _better(figures, fitted[best]):
            best = name
    report.update(fitted[best])
    if len(fitted) > 1 and fitted[best]:
        report["calibration_model"] = best
        report["models"] = {name: {"terms": list(MODELS[name]),
                                   "calibrated_cross_validated": {k: v for k, v in f["calibrated_cross_validated"].items()
                                                                  if k != "predicted_ms"},
                                   "calibration_curve": f["calibration_curve"]} for name, f in fitted.items()}
    if calibrate:
        lut.calibration = fit_calibration(t, measured, device, notes, model=best)
        if lut.path:
            lut.save(lut.path)
        report["calibration"] = lut.calibration.model_dump(mode="json")
        report["calibrated_in_sample"] = accuracy(_predict(_fit(t, np.asarray(measured, float), best), t, best),
                                                  measured)
    return report


def sample_archs(space, n: int, seed: int = 0) -> list:
    """Up to ``n`` distinct random archs of ``space`` (a tiny space may have fewer)."""
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    for _ in range(100 * n):
        a = space.sample(rng)
        if str(a) not in seen:
            seen.add(str(a))
            archs.append(a)
            if len(archs) == n:
                break
    if len(archs) < n:
        log.info(f"note: the space yielded only {len(archs)} distinct archs; validating on those")
    return archs


def _check_device(lut: LUT, device: Device, protocol: Protocol, allow_other_device: bool,
                  calibrate: bool) -> tuple[dict, list[str]]:
    """The device's fingerprint (as JSON) and the ``--allow-other-device`` notes; refuses another device.

    A calibration fitted on another device is recorded in the LUT's ``other_devices``.
    """
    fingerprint = device.fingerprint(lut.runtime, protocol.threads)
    notes = check_compatible(lut, fingerprint, a_name=lut.where, allow_other_device=allow_other_device)
    for note in notes:
        log.warning(note)
    if device.describe() != lut.device:
        log.info(f"note: validating a LUT measured with device {lut.device} on {device.describe()}")
    if notes and calibrate:
        lut.other_devices.append(OtherDeviceUse(action="calibrate", at=now(), device=device.describe(),
                                                fingerprint=fingerprint, notes=notes))
    return fingerprint.model_dump(mode="json"), notes


def interleaved_order(nets: Sequence[str], blocks_of: Sequence[Sequence[str]], first: Sequence[str] = ()) -> list[str]:
    """``first``, then each net followed by those of its block files not listed yet: timed in this
    order, in chunks, every net and its blocks share an agent session or sit next to each other."""
    order, seen = list(first), set(first)
    for net, blocks in zip(nets, blocks_of):
        for name in (net, *blocks):
            if name not in seen:
                seen.add(name)
                order.append(name)
    return order


def same_session(lut: LUT, sub, archs: Sequence, timed: dict, measured: Sequence[float]) -> dict[str, Any]:
    """The table rebuilt from the block timings of the validation's own session, scored on its nets."""
    ident = timed[IDENTITY + RUNTIME_SUFFIX[lut.runtime]].median_ms
    block = {b.key: timed[file_name(b.key, lut.runtime)].median_ms for a in archs for b in sub.blocks(a, lut.embed_dim)}
    raw = [ident + sum(block[b.key] - ident for b in sub.blocks(a, lut.embed_dim)) for a in archs]
    blocks_of = [sub.blocks(a, lut.embed_dim) for a in archs]
    terms = [(r, len(blocks), lut.weight_mb(sub, blocks)) for r, blocks in zip(raw, blocks_of)]
    ratio = [lut.block_ms(k) / ms for k, ms in block.items() if ms > 0]
    out = {"blocks_timed": len(block), "overhead_ms": ident, "raw_ms": [round(r, 5) for r in raw],
           "table_over_session_block_median": round(float(np.median(ratio)), 4), "uncalibrated": accuracy(raw, measured)}
    return {**out, **out_of_sample(terms, measured)}


def validate(lut: LUT, space, device: Device, n: int = 100, seed: int = 0, calibrate: bool = False,
             protocol: Protocol | None = None, workdir: str | Path | None = None, jobs: int = 1,
             allow_other_device: bool = False, noise_rounds: bool = False,
             interleave: bool = False) -> dict[str, Any]:
    """Measure ``n`` random whole nets and compare with ``lut``'s predictions (see the module docstring).

    With ``noise_rounds`` every net is timed twice, in two separate passes over all of them, and
    the report's ``noise_ceiling`` says how often the passes agree; the nets' figures are the
    first pass's.

    With ``interleave`` the blocks of those nets (and the identity model) are timed again, in the
    same passes, each net followed by its blocks (:func:`interleaved_order`): whatever the machine
    does during the validation hits both alike.  The report's ``same_session`` scores the table
    rebuilt from those block timings, beside the stored table's figures.

    With ``calibrate`` the fitted correction is stored in ``lut`` (and saved to its file);
    the report then holds the figures before *and* after it.  Fitting and scoring on the
    same nets flatters the calibrated figures, so they are labelled in-sample; the honest
    figure for a calibrated LUT is ``calibrated_cross_validated`` (5-fold: each net
    predicted by a line fitted on the other folds), present from 10 nets on.
    """
    if n < 1:
        raise EdgeQueryError(f"--n must be >= 1 (got {n})", "pass --n 100")
    protocol = protocol or Protocol.of(lut)
    if protocol.threads != lut.threads:
        raise EdgeQueryError(f"the LUT was measured with {lut.threads} thread(s), validation asks {protocol.threads}",
                             f"validate with --threads {lut.threads}")
    lut.check_space(space)
    sub = restricted_space(space, lut.resolutions)
    archs = sample_archs(sub, n, seed)
    folder = Path(workdir) if workdir else work_folder(lut.path or Path("lut.json"), lut.runtime)
    t0 = time.time()
    try:
        fingerprint, notes = _check_device(lut, device, protocol, allow_other_device, calibrate)
        names = export_nets(archs, lut.runtime, folder, lut.embed_dim, jobs, space=sub)
        order = names
        if interleave:
            used = list({b.key: b for a in archs for b in sub.blocks(a, lut.embed_dim)}.values())
            export_blocks(sub, used, lut.runtime, folder, jobs=jobs)
            order = interleaved_order(names, [[file_name(b.key, lut.runtime) for b in sub.blocks(a, lut.embed_dim)]
                                              for a in archs], first=[IDENTITY + RUNTIME_SUFFIX[lut.runtime]])
        what = "nets and their blocks" if interleave else "nets"
        timed = time_files(device, folder, order, lut.runtime, protocol, desc=f"time {what}")
        again = time_files(device, folder, order, lut.runtime, protocol, desc=f"time {what} again") if noise_rounds else None
    finally:
        device.close()
    measured = [timed[name] for name in names]
    blocks_of = [sub.blocks(a, lut.embed_dim) for a in archs]
    raw = [lut.raw([b.key for b in blocks]) for blocks in blocks_of]
    n_blocks = [len(blocks) for blocks in blocks_of]
    weights = [lut.weight_mb(sub, blocks) for blocks in blocks_of]
    flops = [sub.cost(a, lut.embed_dim)["flops"] for a in archs]
    meas = [m.median_ms for m in measured]
    report: dict[str, Any] = {
        "lut": str(lut.path), "device": device.describe(), "lut_device": lut.device, "fingerprint": fingerprint,
        "allow_other_device": allow_other_device, "device_notes": notes, "runtime": lut.runtime,
        "runtime_version": lut.runtime_version, "threads": lut.threads, "resolutions": list(lut.resolutions),
        "n": len(archs), "seed": seed, "protocol": protocol.to_dict(), "seconds": round(time.time() - t0, 1),
        "uncalibrated": accuracy(raw, meas),
        "previous_calibration": lut.calibration.model_dump(mode="json") if lut.calibration else None,
        "nets": [{"arch": str(a), "flops": f, "raw_ms": round(r, 5), "blocks": nb, "weight_mb": round(w, 4),
                  "measured_ms": m.median_ms, "measured_p10_ms": m.p10_ms, "measured_p90_ms": m.p90_ms}
                 for a, f, r, nb, w, m in zip(archs, flops, raw, n_blocks, weights, measured)]}
    if again is not None:
        second = [again[name].median_ms for name in names]
        report["noise_ceiling"] = noise_ceiling(meas, second)
        for net, ms in zip(report["nets"], second):
            net["measured_again_ms"] = ms
    if interleave:
        report["same_session"] = same_session(lut, sub, archs, timed, meas)
    report.update(score_calibration(lut, list(zip(raw, n_blocks, weights)), meas, calibrate, device.describe(), notes))
    return report
