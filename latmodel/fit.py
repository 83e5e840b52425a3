"""Calibrate a hardware profile's free parameters against measured blocks (a LUT).

An estimator in scikit-learn's sense: `fit(blocks, measured_ms)` learns the free parameters,
`predict(blocks)` answers, the result is plain attributes that can be saved. The fit is
scipy.optimize.least_squares on log latency (errors are relative), bounded, with a robust
(soft L1) loss so one odd block cannot drag the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
from scipy.optimize import least_squares

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.blocks import Block
from autovit.latmodel.ort_profile import op_points

# Bounds of each free parameter (units as in the profile: fractions, us, multipliers, elements).
BOUNDS: dict[str, tuple[float, float]] = {
    "eff_matrix": (0.01, 1.0), "eff_gemm": (0.01, 1.0), "eff_vector": (0.005, 1.0), "eff_memory": (0.01, 1.0),
    "launch_us": (0.0, 500.0), "dispatch_us": (0.0, 500.0), "view_dispatch_us": (0.0, 500.0),
    # Strided copies of >3-D permutations run far below bandwidth on CPUs (ORT: 10-40x slower
    # than a streaming copy), so the layout multiplier needs room.
    "layout_penalty": (0.1, 100.0), "k_half": (0.0, 1024.0),
    "run_us": (0.0, 500.0), "layout_run_ns": (0.0, 100.0), "transcendental_flops": (1.0, 200.0),
    "reduce_row_ns": (0.0, 1000.0), "softmax_row_ns": (0.0, 1000.0), "fork_join_us": (0.0, 100.0),
    # Class factors (hardware.CLASS_PARAMETERS) are relative to the engine-wide efficiency: a
    # class may run up to 10x below or above it.
    "eff_attention": (0.1, 10.0), "eff_dwconv": (0.1, 10.0),
}
# The log error of a good prediction: the robust loss's scale, and the noise a prior weighs
# its parameters' deviations against (a MAP fit with residuals in units of this noise).
NOISE = 0.1


def block_model(block: Block) -> LatencyModel:
    """The latency model of one block, exported as networks are, at the block's own input shape."""
    from autovit.latmodel.sources import module_graph

    return LatencyModel(module_graph(block.build(), block.input_shape(), source=block.key))


Pricer = Callable[[HardwareProfile], float]


def block_pricer(block: Block, mode: str = "isolated") -> Pricer:
    """profile -> predicted ms of what a LUT entry of `mode` measured for `block`: the block
    alone (isolated), or lead-in + block minus lead-in (ablation, see profiler.py)."""
    if mode == "isolated":
        model = block_model(block)
        # At the graph's own batch: a transformer block's input is (patches, tokens, C), batch 1
        # of the network is `patches` sequences here.
        return lambda prof: model.estimate(prof).latency_ms
    from torch import nn

    from autovit.latmodel.profiler import lead_in
    from autovit.latmodel.sources import module_graph

    shape = block.input_shape()
    with_block = LatencyModel(module_graph(nn.Sequential(lead_in(block), block.build()).eval(), shape, block.key))
    without = LatencyModel(module_graph(lead_in(block).eval(), shape, block.key))
    return lambda prof: with_block.estimate(prof).latency_ms - without.estimate(prof).latency_ms


def network_pricer(source: str) -> Pricer:
    """profile -> predicted ms of a whole network (any registered source: `timm:NAME`, an .onnx
    file, `autovit:PRESET` once `autovit.nas` is imported) at batch 1, priced from its exported
    graph as `estimate` prices it."""
    from autovit.latmodel.sources import graph_for

    model = LatencyModel(graph_for(source))
    return lambda prof: model.estimate(prof).latency_ms


@dataclass
class ReferenceNetwork:
    """A whole network measured at the LUT's speed: the drift monitor's reference model, whose
    time *is* the LUT's reference speed (`reference.ref_ms`), so every LUT measured with the
    monitor holds one whole network for free. `weight`: how many points it counts as in the fit
    (the caller's choice; `autovit-lat calibrate` uses the preset's number of blocks)."""

    source: str
    ms: float
    weight: float = 1.0
    # Its pricer once built (network_pricer exports the whole model: seconds), so a caller that
    # checked it can hand it on to the fit.
    pricer: Pricer | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of_lut(cls, lut, trusted: Callable[[str], bool]) -> "ReferenceNetwork | None":
        """The network `lut.reference` names, or None when it names none or one the caller does
        not trust: `trusted(source)` says whether the caller will build and export that model (a
        LUT comes from elsewhere; a file path in it must not make calibrate read that file)."""
        ref = getattr(lut, "reference", None) or {}
        source = str(ref.get("model") or "")
        if not source or not trusted(source) or not ref.get("ref_ms"):
            return None
        return cls(source, float(ref["ref_ms"]))

    @classmethod
    def of_lut_networks(cls, lut, trusted: Callable[[str], bool], weight: float = 1.0) -> list["ReferenceNetwork"]:
        """The whole networks a LUT timed beside its blocks (`lut.networks`), those the caller
        trusts to build (as of_lut), each counted as `weight` points."""
        return [cls(source, float(e["median_ms"]), weight) for source, e in (getattr(lut, "networks", None) or {}).items()
                if trusted(source)]

    def describe(self) -> str:
        return f"{self.source} {self.ms:.4g} ms, weight {self.weight:g}"


def _weighted_soft_l1(w: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """scipy's soft-L1 loss, rho(z) = 2 (sqrt(1 + z) - 1), with point i counted w[i] times
    (least_squares takes a callable returning rho and its first two derivatives)."""
    def loss(z: np.ndarray) -> np.ndarray:
        t = 1.0 + z
        return np.vstack([2.0 * (np.sqrt(t) - 1.0), t ** -0.5, -0.5 * t ** -1.5]) * w

    return loss


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
    """fit(blocks, measured_ms) -> Calibration; predict(blocks) -> ms with the fitted profile.

    `fit_pricers` fits to anything priced by the model (whole networks, for example): a pricer
    maps a profile to predicted ms."""

    def __init__(self, profile: HardwareProfile, parameters: tuple[str, ...] | None = None, mode: str = "isolated",
                 prior: float | None = None):
        """`prior`: None fits by the data alone; a width sigma (log units) makes the fit a MAP
        estimate: each parameter's log deviation from the profile's value costs as much as a
        point off by NOISE x deviation / sigma (a log-normal prior centred on the data-sheet
        value), so the data move a parameter only as far as they need to. Terms the profile
        prices at 0 (a cost the device's model does not have) are then left at 0, and a fit
        may have fewer points than parameters."""
        if prior is not None and not (math.isfinite(prior) and prior > 0):
            raise AutoVitError(f"a prior's width must be a number > 0 (log units, e.g. 0.69 for a factor of 2); got {prior!r}")
        self.profile = profile
        self.mode = mode
        self.prior = prior
        names = parameters or HardwareProfile.FREE_PARAMETERS
        # A term the profile does not have (None: it falls back on another) is not fitted.
        names = tuple(n for n in names if getattr(profile, n) is not None)
        if prior is not None:
            names = tuple(n for n in names if float(getattr(profile, n)) > 0)
        # A parameter the profile cannot use would be unidentifiable: leave it out.
        if profile.async_dispatch is False and profile.kind == "cpu":
            names = tuple(n for n in names if n != "launch_us")
        if profile.ane is not None:
            # Core ML runs the compiled program without the host per task: the task cost is
            # launch_us (neural_engine.py), and a host dispatch term would only duplicate it.
            names = tuple(n for n in names if n not in ("dispatch_us", "view_dispatch_us"))
        self.names = tuple(names)
        self._pricers: dict[str, Pricer] = {}
        self._models: dict[str, LatencyModel] = {}
        self.calibration: Calibration | None = None

    def _pricer(self, block: Block) -> Pricer:
        if block.key not in self._pricers:
            try:
                self._pricers[block.key] = block_pricer(block, self.mode)
            except AutoVitError:
                raise
            except Exception as e:  # torch or the exporter refuses a block a LUT describes
                raise AutoVitError(f"block {block.key}: cannot be built to price it ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:100] if str(e) else ''}); drop it from the LUT") from None
        return self._pricers[block.key]

    def _class_pricer(self, block: Block, cls: str) -> Pricer:
        """profile -> predicted ms of the kernels of category `cls` in `block` (isolated)."""
        if block.key not in self._models:
            self._models[block.key] = block_model(block)
        model = self._models[block.key]
        return lambda prof: sum(k.ms for k in model.estimate(prof).kernels if k.kernel.category == cls)

    def _profile_with(self, x: np.ndarray) -> HardwareProfile:
        return replace(self.profile, **dict(zip(self.names, map(float, x))))

    @staticmethod
    def _price(pricers: list[Pricer], prof: HardwareProfile) -> np.ndarray:
        # Ablation differences can come out <= 0 for a tiny block; keep logs finite.
        return np.maximum(np.array([p(prof) for p in pricers]), 1e-6)

    def _visible(self, pricers: list[Pricer]) -> tuple[str, ...]:
        """The parameters these data can see: one that changes no prediction (a per-run term of
        an op the blocks lack) is unidentifiable and keeps its data-sheet value."""
        base = self._price(pricers, self.profile)
        seen = []
        for n in self.names:
            lo, hi = BOUNDS[n]
            v = float(getattr(self.profile, n))
            bumped = replace(self.profile, **{n: hi if v < (lo + hi) / 2 else lo})
            if np.any(np.abs(self._price(pricers, bumped) - base) > 1e-6 * base):
                seen.append(n)
        return tuple(seen)

    def fit(self, blocks: list[Block], measured_ms: list[float],
            network: ReferenceNetwork | list[ReferenceNetwork] | None = None,
            op_ms: list[dict[str, float] | None] | None = None) -> Calibration:
        """Fit to measured blocks and, with `network` (one or a list), to whole networks as well; with `op_ms`
        (per block: kernel ms per op class from the runtime's profiler, or None), to each
        block's large op classes too.

        Blocks alone cannot tell a cost a block pays once per `session.run` (run_us, the
        reorders at its ends) from one it pays per op or per byte: every block has both. A whole
        network pays the first once and the second for every block, so one network in the fit
        separates them (docs/BENCHMARKS.md, "whole networks on this machine"). Nor can they
        tell a slow convolution from a slow activation inside the same block; per-class kernel
        times can (ort_profile.py)."""
        pricers = [self._pricer(b) for b in blocks]
        kinds = [b.kind for b in blocks]
        weights = [1.0] * len(blocks)
        measured_ms = list(measured_ms)
        for b, block_ms, ops in zip(blocks, measured_ms[:len(blocks)], op_ms or []):
            for cls, ms in op_points(ops or {}, block_ms).items():
                pricers.append(self._class_pricer(b, cls))
                measured_ms.append(ms)
                kinds.append("op:" + cls)
                weights.append(1.0)
        for net in [network] if isinstance(network, ReferenceNetwork) else network or []:
            pricers.append(net.pricer or network_pricer(net.source))
            measured_ms.append(net.ms)
            kinds.append("network")
            weights.append(net.weight)
        return self.fit_pricers(pricers, measured_ms, kinds, weights)

    def fit_pricers(self, pricers: list[Pricer], measured_ms: list[float], kinds: list[str],
                    weights: list[float] | None = None) -> Calibration:
        """`weights`: how many points each measurement counts as (default 1 each): a point of
        weight w adds w times its robust loss, exactly as w copies of it would."""
        y = np.asarray(measured_ms, float)
        w = np.asarray(weights if weights is not None else [1.0] * len(y), float)
        if len(w) != len(y) or not np.all(np.isfinite(w) & (w > 0)):
            raise AutoVitError(f"calibration weights must be {len(y)} finite numbers > 0")
        if not len(y) or not np.all(np.isfinite(y) & (y > 0)):
            raise AutoVitError("calibration needs measured latencies, all finite and > 0; "
                               f"got {len(y)} values" + (" with bad ones" if len(y) else ""))
        self.names = self._visible(pricers)
        if not self.names:
            raise AutoVitError("none of the free parameters changes a prediction on these blocks; "
                               "measure a varied set (`autovit-lat profile --preset calib50`)")
        if len(pricers) < len(self.names) and self.prior is None:
            raise AutoVitError(
                f"calibration needs at least as many measured blocks as free parameters "
                f"({len(self.names)}: {', '.join(self.names)}); the LUT has {len(pricers)}")
        lo = np.array([BOUNDS[n][0] for n in self.names])
        hi = np.array([BOUNDS[n][1] for n in self.names])
        x0 = np.clip([float(getattr(self.profile, n)) for n in self.names], lo, hi)
        # Work in units where every parameter's range is ~1, so finite differences behave.
        scale = np.maximum(hi - lo, 1e-9)

        def residuals(z: np.ndarray) -> np.ndarray:
            x = lo + z * scale
            pred = self._price(pricers, self._profile_with(x))
            return np.concatenate([np.log(pred) - np.log(y), self._prior_residuals(x, x0)])

        wp = np.concatenate([w, np.ones(len(x0) if self.prior is not None else 0)])
        loss = "soft_l1" if np.all(wp == 1.0) else _weighted_soft_l1(wp)
        res = least_squares(residuals, (x0 - lo) / scale, bounds=(0.0, 1.0), loss=loss, f_scale=NOISE,
                            diff_step=1e-3)
        x = lo + res.x * scale
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(res.fun))):
            raise AutoVitError("the fit did not converge to finite values; nothing was written (check the LUT's entries)")
        self.calibration = self._summary(res, x, scale, y, wp, kinds)
        return self.calibration

    def _prior_residuals(self, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """One residual per parameter under a prior (none without): its log deviation from the
        profile's value in units of the prior's width, weighed against the points' noise."""
        if self.prior is None:
            return np.zeros(0)
        return NOISE * (np.log(np.maximum(x, 1e-12)) - np.log(x0)) / self.prior

    def _summary(self, res, x: np.ndarray, scale: np.ndarray, y: np.ndarray, w: np.ndarray,
                 kinds: list[str]) -> Calibration:
        """The Calibration of a solved fit; errors are over the measured points only (not the
        prior's residuals), standard errors from the Jacobian of all of them."""
        r_all = res.fun
        r = r_all[:len(y)]
        dof = max(len(y) - len(x), 1)
        try:
            cov = np.linalg.pinv(res.jac.T @ (res.jac * w[:, None])) * float(r_all @ (r_all * w)) / dof
            stderr = np.sqrt(np.clip(np.diag(cov), 0, None)) * scale
        except np.linalg.LinAlgError:
            stderr = np.full(len(x), math.nan)
        at_bound = [n for n, z in zip(self.names, res.x) if z < 1e-4 or z > 1 - 1e-4]
        pred = np.exp(r) * y
        by_kind: dict[str, list[float]] = {}
        for k, p, m in zip(kinds, pred, y):
            by_kind.setdefault(k, []).append(abs(p - m) / m * 100)
        warnings = [f"{n} is pinned at its bound {self._bound_text(n, x[i])}"
                    for i, n in enumerate(self.names) if n in at_bound]
        return Calibration(
            params={n: float(v) for n, v in zip(self.names, x)},
            stderr={n: float(s) for n, s in zip(self.names, stderr)}, at_bound=at_bound, n_points=len(y),
            rms_log_error=float(np.sqrt(np.mean(r ** 2))),
            mape_by_kind={k: float(np.mean(v)) for k, v in by_kind.items()}, warnings=warnings)

    @staticmethod
    def _bound_text(name: str, value: float) -> str:
        lo, hi = BOUNDS[name]
        return f"({value:g}; allowed {lo:g}..{hi:g}): the data cannot pin it down or the model lacks a term"

    def fitted_profile(self) -> HardwareProfile:
        if self.calibration is None:
            raise AutoVitError("calibrate first: fit() has not run")
        return replace(self.profile, **self.calibration.params)

    def predict(self, blocks: list[Block]) -> np.ndarray:
        prof = self.fitted_profile()
        return np.array([self._pricer(b)(prof) for b in blocks])
