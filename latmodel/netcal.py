"""Whole-network calibration: fit a profile's free parameters to measured networks, alone or
together with the measured blocks of a LUT.

The fit is fit.ProfileCalibrator's (bounded least squares on log latency, soft L1): each
measured network is one point, priced by the analytical model at batch 1 in the Core ML format
it was timed in; blocks of a LUT add their points. The same refusals hold: fewer usable points
than visible parameters, non-finite or non-positive latencies.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.network_graphs import coreml_profile

Pricer = Callable[[Any], float]


def network_pricer(model, fmt: str = "mlprogram", batch: int = 1, dtype: str | None = None) -> Pricer:
    """profile -> predicted ms of a network (a LatencyModel) timed in Core ML format `fmt`."""
    return lambda prof: model.estimate(coreml_profile(prof, fmt), batch, dtype).latency_ms


def lut_points(calibrator, lut, mode: str) -> tuple[list[Pricer], list[float], list[str]]:
    """(pricers, measured ms, kinds) of a LUT's entries of `mode`, for fit_pricers."""
    from autovit.latmodel.blocks import block_from_dict

    entries = [e for e in lut.entries.values() if e.get("mode") == mode]
    if not entries:
        raise AutoVitError(f"the LUT has no {mode} entries to calibrate on; pass --mode "
                           + " or ".join(sorted({e['mode'] for e in lut.entries.values()}) or ["isolated"]))
    blocks = [block_from_dict(e["block"]) for e in entries]
    return [calibrator._pricer(b) for b in blocks], [float(e["median_ms"]) for e in entries], [b.kind for b in blocks]


def calibrate(profile, nets: list[tuple[Pricer, float]], lut=None, mode: str = "isolated"):
    """Fit `profile` to measured networks [(pricer, ms)] and, with `lut`, its blocks of `mode`.
    Returns (Calibration, fitted profile)."""
    from autovit.latmodel.fit import ProfileCalibrator

    cal = ProfileCalibrator(profile, mode=mode)
    pricers, meas, kinds = [p for p, _ in nets], [m for _, m in nets], ["network"] * len(nets)
    if lut is not None:
        bp, bm, bk = lut_points(cal, lut, mode)
        pricers, meas, kinds = pricers + bp, meas + bm, kinds + bk
    fit = cal.fit_pricers(pricers, meas, kinds)
    return fit, cal.fitted_profile()


def calibrated_evaluate(profile, dtype: str, train: tuple, test: tuple, prior: float | None = None,
                        class_factors: bool = False) -> dict:
    """Fit `profile`'s free parameters to the `train` networks, score it on the `test` ones
    (each a tuple of nets [(LatencyModel, batch, params)], measured ms, FLOPs); the FLOPs- and
    parameter-proportional baselines are fitted on the same training rows. `prior`: the width
    (log units) of a prior centred on the profile's values (fit.ProfileCalibrator), None for
    none; `class_factors`: fit the per-class efficiencies (hardware.CLASS_PARAMETERS) too."""
    from autovit.latmodel.fit import ProfileCalibrator
    from autovit.latmodel.hardware import CLASS_PARAMETERS, HardwareProfile
    from autovit.latmodel.metrics import summary
    from autovit.latmodel.metrics import proportional_factor

    (tr_nets, tr_meas, tr_flops), (te_nets, te_meas, te_flops) = train, test
    price = lambda nets, p: np.array([lm.estimate(p, b, dtype).latency_ms for lm, b, _ in nets])  # noqa: E731
    t0 = time.time()
    names = HardwareProfile.FREE_PARAMETERS + (CLASS_PARAMETERS if class_factors else ())
    cal = ProfileCalibrator(profile, names, prior=prior)
    pricers = [lambda p, lm=lm, b=b: lm.estimate(p, b, dtype).latency_ms for lm, b, _ in tr_nets]
    fit = cal.fit_pricers(pricers, list(tr_meas), ["network"] * len(tr_nets))
    fitted = cal.fitted_profile()
    m_tr, mt = np.array(tr_meas), np.array(te_meas)
    params_tr, params_te = np.array([p for _, _, p in tr_nets]), np.array([p for _, _, p in te_nets])
    base = {"flops": proportional_factor(np.array(tr_flops), m_tr) * np.array(te_flops),
            "params": proportional_factor(params_tr, m_tr) * params_te}
    keep = ("kendall_tau", "spearman", "median_ape", "mape", "within_10", "within_25")
    rounded = lambda pred: {key: round(v, 4) for key, v in summary(pred, mt, rescale=False).items() if key in keep}  # noqa: E731
    return {
        **rounded(price(te_nets, fitted)), "uncalibrated": rounded(price(te_nets, profile)),
        "baselines": {b: rounded(p) for b, p in base.items()},
        "fitted": {key: round(v, 5) for key, v in fit.params.items()}, "at_bound": fit.at_bound,
        "train_rms_log_error": round(fit.rms_log_error, 4), "fit_s": round(time.time() - t0, 1),
        **({"prior": prior} if prior is not None else {}), **({"class_factors": True} if class_factors else {}),
    }
