"""Calibrate a hardware profile's free parameters against measured blocks (a LUT).

An estimator in scikit-learn's sense: `fit(blocks, measured_ms)` learns the free parameters,
`predict(blocks)` answers, the result is plain attributes that can be saved. The fit is
scipy.optimize.least_squares on log latency (errors are relative), bounded, with a robust
(soft L1) loss so one odd block cannot drag the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.modules import BlockSpec

# Bounds of each free parameter (units as in the profile: fractions, us, multipliers, elements).
BOUNDS: dict[str, tuple[float, float]] = {
    "eff_matrix": (0.01, 1.0), "eff_gemm": (0.01, 1.0), "eff_vector": (0.005, 1.0), "eff_memory": (0.01, 1.0),
    "launch_us": (0.0, 500.0), "dispatch_us": (0.0, 500.0), "view_dispatch_us": (0.0, 500.0),
    # Strided copies of >3-D permutations run far below bandwidth on CPUs (ORT: 10-40x slower
    # than a streaming copy), so the layout multiplier needs room.
    "layout_penalty": (0.1, 100.0), "k_half": (0.0, 1024.0),
}


def block_model(block: BlockSpec) -> LatencyModel:
    """The latency model of one block, exported as networks are, at the block's own input shape."""
    from autovit.latmodel.sources import module_graph

    return LatencyModel(module_graph(block.build(), block.input_shape(), source=block.key))


@dataclass
class Calibration:
    """Fitted free parameters and how well they fit."""

    params: dict[str, float]
    stderr: dict[str, float]
    at_bound: list[str]
    n_points: int
    rms_log_error: float
    mape_by_kind: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "stderr": self.stderr, "at_bound": self.at_bound, "n_points": self.n_points,
                "rms_log_error": self.rms_log_error, "mape_by_kind": self.mape_by_kind, "warnings": self.warnings}


class ProfileCalibrator:
    """fit(blocks, measured_ms) -> Calibration; predict(blocks) -> ms with the fitted profile."""

    def __init__(self, profile: HardwareProfile, parameters: tuple[str, ...] | None = None):
        self.profile = profile
        names = parameters or HardwareProfile.FREE_PARAMETERS
        # A parameter the profile cannot use would be unidentifiable: leave it out.
        if profile.async_dispatch is False and profile.kind == "cpu":
            names = tuple(n for n in names if n != "launch_us")
        self.names = tuple(names)
        self._models: dict[str, LatencyModel] = {}
        self.calibration: Calibration | None = None

    def _model(self, block: BlockSpec) -> LatencyModel:
        if block.key not in self._models:
            self._models[block.key] = block_model(block)
        return self._models[block.key]

    def _predict_with(self, x: np.ndarray, blocks: list[BlockSpec]) -> np.ndarray:
        prof = replace(self.profile, **dict(zip(self.names, map(float, x))))
        return np.array([self._model(b).estimate(prof, 1).latency_ms for b in blocks])

    def fit(self, blocks: list[BlockSpec], measured_ms: list[float]) -> Calibration:
        y = np.asarray(measured_ms, float)
        if len(blocks) < len(self.names):
            raise AutoVitError(
                f"calibration needs at least as many measured blocks as free parameters "
                f"({len(self.names)}: {', '.join(self.names)}); the LUT has {len(blocks)}")
        lo = np.array([BOUNDS[n][0] for n in self.names])
        hi = np.array([BOUNDS[n][1] for n in self.names])
        x0 = np.clip([float(getattr(self.profile, n)) for n in self.names], lo, hi)
        # Work in units where every parameter's range is ~1, so finite differences behave.
        scale = np.maximum(hi - lo, 1e-9)

        def residuals(z: np.ndarray) -> np.ndarray:
            pred = self._predict_with(lo + z * scale, blocks)
            return np.log(np.maximum(pred, 1e-9)) - np.log(y)

        res = least_squares(residuals, (x0 - lo) / scale, bounds=(0.0, 1.0), loss="soft_l1", f_scale=0.1,
                            diff_step=1e-3)
        x = lo + res.x * scale
        r = res.fun
        dof = max(len(y) - len(x), 1)
        try:
            cov = np.linalg.pinv(res.jac.T @ res.jac) * float(r @ r) / dof
            stderr = np.sqrt(np.clip(np.diag(cov), 0, None)) * scale
        except np.linalg.LinAlgError:
            stderr = np.full(len(x), math.nan)
        at_bound = [n for n, z in zip(self.names, res.x) if z < 1e-3 or z > 1 - 1e-3]
        pred = np.exp(r) * y
        kinds: dict[str, list[float]] = {}
        for b, p, m in zip(blocks, pred, y):
            kinds.setdefault(b.kind, []).append(abs(p - m) / m * 100)
        warnings = [f"{n} is pinned at its bound {self._bound_text(n, x[i])}"
                    for i, n in enumerate(self.names) if n in at_bound]
        self.calibration = Calibration(
            params={n: float(v) for n, v in zip(self.names, x)},
            stderr={n: float(s) for n, s in zip(self.names, stderr)}, at_bound=at_bound, n_points=len(y),
            rms_log_error=float(np.sqrt(np.mean(r ** 2))),
            mape_by_kind={k: float(np.mean(v)) for k, v in kinds.items()}, warnings=warnings)
        return self.calibration

    @staticmethod
    def _bound_text(name: str, value: float) -> str:
        lo, hi = BOUNDS[name]
        return f"({value:g}; allowed {lo:g}..{hi:g}): the data cannot pin it down or the model lacks a term"

    def predict(self, blocks: list[BlockSpec]) -> np.ndarray:
        if self.calibration is None:
            raise AutoVitError("calibrate first: fit() has not run")
        x = np.array([self.calibration.params[n] for n in self.names])
        return self._predict_with(x, blocks)
