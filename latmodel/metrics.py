"""Accuracy of latency predictions: rank agreement and relative error (nn-Meter's vocabulary)."""
from __future__ import annotations

import numpy as np
from scipy import stats

from autovit.latmodel.errors import AutoVitError


def global_scale(pred: np.ndarray, meas: np.ndarray) -> float:
    """The one factor s minimising the median |log(s * pred / meas)|: a predictor that is right
    up to a constant (e.g. a runtime's fixed overhead ratio) is judged on its shape."""
    return float(np.exp(np.median(np.log(meas / pred))))


def ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """Absolute percentage error per model (%)."""
    return np.abs(pred - meas) / meas * 100.0


def summary(pred, meas, rescale: bool = True) -> dict[str, float]:
    """kendall_tau, spearman, median_ape, mape, rmspe, within_5/10/25 (%), and the scale used."""
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    s = global_scale(p, m) if rescale else 1.0
    e = ape(p * s, m)
    rel = (p * s - m) / m
    return {
        "kendall_tau": float(stats.kendalltau(p, m).statistic),
        "spearman": float(stats.spearmanr(p, m).statistic),
        "scale": s,
        "median_ape": float(np.median(e)),
        "mape": float(np.mean(e)),
        "rmspe": float(np.sqrt(np.mean(rel ** 2)) * 100.0),
        "within_5": float(np.mean(e <= 5) * 100.0),
        "within_10": float(np.mean(e <= 10) * 100.0),
        "within_25": float(np.mean(e <= 25) * 100.0),
    }


def lstsq_fit(features: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """Non-negative least-squares fit of latency on features (with an intercept); returns predictions."""
    from scipy.optimize import nnls

    x = np.column_stack([features, np.ones(len(meas))])
    norm = x.max(axis=0)
    norm[norm == 0] = 1
    coef, _ = nnls(x / norm, meas)
    return np.maximum((x / norm) @ coef, 1e-9)


def proportional_factor(x: np.ndarray, y: np.ndarray) -> float:
    """k of y ~ k * x, fitted on log scale (relative errors, as the other predictors)."""
    ok = (x > 0) & (y > 0)
    if not ok.any():
        raise AutoVitError("cannot fit a proportional baseline: no calibration point with positive FLOPs/params")
    return float(np.exp(np.mean(np.log(y[ok]) - np.log(x[ok]))))
