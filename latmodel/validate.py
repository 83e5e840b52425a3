"""Check latency predictions against real measurements on this machine.

Models: candidates of a search space (random AutoViT subnets come from nas/latency.py) and a
zoo of timm architectures none of which is in any LUT. Four predictors priced on the same models:

- analytical: the latency model with the given profile (best: NAME@calibrated) on the
  exported network;
- analytical_blocks: for candidates with a block decomposition, the same model summed block
  by block as the search's oracle does (oracle.AnalyticalOracle in the construction of the LUT
  oracle given: AutoViT's is "network", each block inside its network);
- lut: the paper's LUT sum (candidates whose blocks are all in the LUT);
- flops / params: latency proportional to FLOPs or parameters, the factor fitted on the LUT's
  blocks (the calibration data), never on the validation models.

Measurement: every model is timed in `rounds` bursts, one pass over all models per round, so
a slow spell of a shared machine hits one burst of many models rather than every burst of a
few. A model's latency is the fast state of its bursts (the median of those within 25 % of the
fastest: bursts whose threads lost a core are left out, measure.fast_state_ms); with the drift
monitor (default) a reference model is timed before every few bursts and the run is scaled once
to the calibration LUT's reference speed (measure.DriftMonitor), so that the LUT and the
validation are measured at one machine speed. The raw figures (lowest burst, no correction) are
reported next to them. The noise floor is the median, over models, of the coefficient of
variation of the fast-state bursts (and of all bursts: raw).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from autovit.latmodel.errors import AutoVitError, UsageError
from autovit.latmodel.measure import at_reference, fast_rounds, fast_share, rounds_beside_fast_reference
from autovit.latmodel.metrics import proportional_factor  # noqa: F401 - re-exported

# The kinds of models of the paper's comparison (MobileNetV2/V3, MobileViT, DeiT, PiT, LeViT,
# EfficientNet, EfficientFormer, PoolFormer, ResNet) plus a few other mobile designs.
DEFAULT_ZOO = (
    "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100", "mobilevit_xxs", "mobilevit_xs",
    "mobilevit_s", "deit_tiny_patch16_224", "deit_small_patch16_224", "pit_ti_224", "pit_xs_224", "levit_128s",
    "levit_128", "efficientnet_b0", "efficientformer_l1", "poolformer_s12", "resnet50", "resnet18",
    "ghostnet_100", "regnetx_004", "mnasnet_100",
)
PREDICTORS = ("analytical", "analytical_blocks", "lut", "flops", "params")


@dataclass
class Candidate:
    """One model to validate on: how to build it, its input shape, and its predictions (ms)."""

    name: str
    group: str  # random | zoo
    build: Callable[[], Any]
    shape: tuple[int, ...]
    arch: Any = None  # what it was built from (reported with its `to_dict()` when it has one)
    blocks: Any = None  # its decomposition into blocks (oracle items), when a LUT can price it
    flops: float = 0.0
    params: int = 0
    predicted: dict[str, float | None] = field(default_factory=dict)
    round_ms: list[float] = field(default_factory=list)  # raw burst medians, one per round
    reference_ms: list[float] = field(default_factory=list)  # the drift monitor's burst before each
    ref_ms: float | None = None  # the reference speed measurements are expressed at (the LUT's)
    run_ms: float | None = None  # the reference model's speed in this run (DriftMonitor.run_ms)
    run_fastest_ms: float | None = None  # the run's fastest reference burst (DriftMonitor.fastest_ms)

    @property
    def measured_ms(self) -> float | None:
        """The fast state of the rounds at the LUT's reference speed (measure.at_reference)."""
        return at_reference(self.round_ms, self.run_ms, self.ref_ms) if self.round_ms else None

    @property
    def raw_ms(self) -> float | None:
        """The lowest raw burst median: the measurement without drift correction."""
        return min(self.round_ms) if self.round_ms else None

    @property
    def beside_fast_reference(self) -> int | None:
        """Rounds timed right after a fast-state reference burst (0: timed only while the
        machine ran slow); None without a drift monitor."""
        if not (self.reference_ms and self.run_fastest_ms):
            return None
        return rounds_beside_fast_reference(self.reference_ms, self.run_fastest_ms)

    @property
    def fast_share(self) -> float | None:
        """Share of the rounds in the fast state (the rest lost a core to something else)."""
        return fast_share(self.round_ms) if self.round_ms else None

    @staticmethod
    def _cv(xs: list[float]) -> float | None:
        return float(np.std(xs, ddof=1) / np.mean(xs)) if len(xs) >= 2 else None

    @property
    def cv(self) -> float | None:
        """Spread of the fast-state rounds (the noise left in a measurement)."""
        return self._cv(fast_rounds(self.round_ms)) if self.round_ms else None

    @property
    def raw_cv(self) -> float | None:
        return self._cv(self.round_ms)


def parse_models(spec: str) -> int:
    """'random:100' -> 100; 'none' -> 0."""
    if spec in ("none", "0"):
        return 0
    kind, _, n = spec.partition(":")
    if kind != "random" or not n.isdigit() or len(n) > 6:
        raise UsageError(f"--models {spec[:40]!r}: use random:N (N up to 999999, e.g. random:100) or none")
    return int(n)


def zoo_candidates(names: list[str]) -> list[Candidate]:
    from autovit.latmodel.sources import timm_model

    out = []
    for name in names:
        if name.startswith("autovit"):
            raise AutoVitError(f"--zoo {name}: the zoo is for models outside the AutoViT spaces (held out of every LUT)")
        model, side = timm_model(name)  # fails early, in one line, for a name timm does not know
        out.append(Candidate(f"timm:{name}", "zoo", (lambda m=model: m), (1, 3, side, side)))
    return out


def baseline_factors(lut, mode: str = "isolated") -> dict[str, float]:
    """ms per FLOP and ms per parameter, fitted on the LUT's blocks (the calibration data)."""
    from autovit.latmodel.blocks import block_from_dict
    from autovit.latmodel.oracle import BlockCounts

    entries = [e for e in lut.entries.values() if e.get("mode") == mode]
    if not entries:
        raise AutoVitError(f"the LUT has no '{mode}' entries to fit the FLOPs/params baselines on")
    counts = BlockCounts()
    flops, params = zip(*(counts.block(block_from_dict(e["block"])) for e in entries))
    y = np.array([float(e["median_ms"]) for e in entries])
    return {"flops": proportional_factor(np.array(flops, float), y),
            "params": proportional_factor(np.array(params, float), y)}


def price(cands: list[Candidate], profile, lut_oracle, factors: dict[str, float] | None,
          on_step: Callable[[Candidate, str | None], None] | None = None, block_oracle=None) -> list[tuple[str, str]]:
    """Fill every candidate's predictions; returns [(name, error)] for models that could not be
    priced. Candidates with `blocks` are priced block by block too: by `block_oracle` (an
    AnalyticalOracle on `profile`; default: the LUT oracle's analytical fallback) and by the
    LUT sum of `lut_oracle`."""
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.runner import failure_line
    from autovit.latmodel.sources import module_graph

    failed = []
    block_oracle = block_oracle or (lut_oracle.fallback if lut_oracle else None)
    for c in cands:
        try:
            model = LatencyModel(module_graph(c.build(), c.shape, source=c.name))
            est = model.estimate(profile)
            c.flops, c.params = est.flops, model.graph.params
            c.predicted["analytical"] = est.latency_ms
            blocks = c.blocks
            c.predicted["analytical_blocks"] = block_oracle.blocks_ms(blocks) if (block_oracle and blocks) else None
            c.predicted["lut"] = lut_oracle.lut_sum(blocks) if (lut_oracle and blocks) else None
            if factors:
                c.predicted["flops"] = factors["flops"] * c.flops
                c.predicted["params"] = factors["params"] * c.params
            err = None
        except AutoVitError:
            raise
        except Exception as e:  # noqa: BLE001 - one model the exporter cannot handle must not stop the rest
            err = failure_line(e)
            failed.append((c.name, err))
        if on_step:
            on_step(c, err)
    return failed


def measure(cands: list[Candidate], backend: str, threads: int, rounds: int, policy,
            on_step: Callable[[Candidate, str | None], None] | None = None,
            monitor=None, ref_ms: float | None = None) -> list[tuple[str, str]]:
    """Time every candidate in `rounds` passes (runner.measure_rounds); with a drift monitor,
    express them at `ref_ms` (the LUT's reference speed; default: this run's). Returns
    [(name, error)]."""
    from autovit.latmodel.runner import measure_rounds, prepare

    def record(c: Candidate, bursts, reference_ms: float | None) -> None:
        if reference_ms is not None:
            c.reference_ms.append(reference_ms)
        c.round_ms.append(bursts[0].median_ms)

    def passes(todo: list[Candidate], n: int) -> dict:
        return measure_rounds(todo, n, policy, key=lambda c: c.name,
                              runners=lambda c: [prepare(c.build(), c.shape, backend, threads)], record=record,
                              monitor=monitor, on_step=(lambda c, _m, err: on_step(c, err)) if on_step else None)

    failed = passes(cands, rounds)
    if monitor is not None:
        failed.update(retake_slow_only(cands, monitor, lambda todo: passes(todo, 1), skip=set(failed)))
        for c in cands:
            c.ref_ms, c.run_ms, c.run_fastest_ms = ref_ms or monitor.run_ms, monitor.run_ms, monitor.fastest_ms
    return list(failed.items())


# Extra passes over the models timed only in the slow state: the slow phases of this project's VM
# last from a few rounds to minutes (docs/BENCHMARKS.md §3.8), so a few more passes reach past
# most of them while bounding what a machine that stays slow costs (a pass: one burst per model).
RETAKE_PASSES = 3


def retake_slow_only(cands: list[Candidate], monitor, measure_pass: Callable[[list[Candidate]], dict],
                     passes: int = RETAKE_PASSES, skip: set | None = None) -> dict:
    """Time again, one round per pass and with a fresh reference burst before each, the
    candidates none of whose rounds followed a fast-state reference burst (their own fast state
    is then the slow one, which no factor undoes: docs/BENCHMARKS.md §3.11), up to `passes`
    times or until none is left. Their new rounds join the old; a round beside a fast reference
    makes their fast state the machine's. Returns the failures of the extra passes."""
    failed: dict = {}
    skip = set(skip or ())
    every, monitor.every = monitor.every, 1
    try:
        for _ in range(passes):
            fastest = monitor.fastest_ms
            todo = [c for c in cands if c.round_ms and c.name not in skip | set(failed) and fastest
                    and rounds_beside_fast_reference(c.reference_ms, fastest) == 0]
            if not todo:
                break
            failed.update(measure_pass(todo))
    finally:
        monitor.every = every
    return failed


def metrics(pred: list[float], meas: list[float]) -> dict[str, float]:
    """mape, rmspe, within_5, within_10 (%), kendall_tau, spearman of predictions as they are
    (no rescaling: a calibrated predictor must be right in ms)."""
    from autovit.latmodel.metrics import summary

    if len(pred) < 3:
        return {}
    s = summary(pred, meas, rescale=False)
    return {k: s[k] for k in ("mape", "rmspe", "within_5", "within_10", "kendall_tau", "spearman", "median_ape")}


def report(cands: list[Candidate]) -> dict[str, Any]:
    """Metrics per predictor, over all models and per group, plus the noise floor and rows."""
    done = [c for c in cands if c.measured_ms is not None and c.predicted.get("analytical") is not None]
    groups = {"all": done, "random": [c for c in done if c.group == "random"],
              "zoo": [c for c in done if c.group == "zoo"]}
    by_set: dict[str, dict[str, Any]] = {}
    for g, cs in groups.items():
        if not cs:
            continue
        by_set[g] = {"n_models": len(cs)}
        for p in PREDICTORS:
            pairs = [(c.predicted[p], c.measured_ms) for c in cs if c.predicted.get(p) is not None]
            if len(pairs) >= 3:
                by_set[g][p] = metrics([a for a, _ in pairs], [b for _, b in pairs]) | {"n": len(pairs)}
    cvs = [c.cv for c in done if c.cv is not None]
    raw_cvs = [c.raw_cv for c in done if c.raw_cv is not None]
    rows = [{"model": c.name, "group": c.group, "measured_ms": c.measured_ms, "raw_ms": c.raw_ms, "round_ms": c.round_ms,
             "reference_ms": c.reference_ms, "fast_share": c.fast_share,
             "rounds_beside_fast_reference": c.beside_fast_reference, "cv": c.cv, "raw_cv": c.raw_cv, "flops": c.flops, "params": c.params,
             **{f"pred_{p}_ms": c.predicted.get(p) for p in PREDICTORS},
             **({"arch": c.arch.to_dict()} if c.arch is not None and hasattr(c.arch, "to_dict") else {})}
            for c in done]
    out = {"n_models": len(done), "noise_floor_cv": float(np.median(cvs)) if cvs else math.nan,
           "noise_floor_cv_raw": float(np.median(raw_cvs)) if raw_cvs else math.nan,
           "reference_ms": done[0].ref_ms if done else None, "run_reference_ms": done[0].run_ms if done else None,
           "fast_share": float(np.mean([c.fast_share for c in done])) if done else math.nan,
           # timed only while the reference ran slow: their figures are the slow state's
           "slow_state_only": [c.name for c in done if c.beside_fast_reference == 0]}
    out["predictors"] = {p: v for p, v in by_set.get("all", {}).items() if p in PREDICTORS}
    out["by_set"] = by_set
    # The same predictors against the raw measurements (lowest burst, no drift correction).
    out["by_set_raw"] = {}
    for g, cs in groups.items():
        raw = {p: metrics([c.predicted[p] for c in cs if c.predicted.get(p) is not None],
                          [c.raw_ms for c in cs if c.predicted.get(p) is not None]) for p in PREDICTORS}
        if cs:
            out["by_set_raw"][g] = {p: m for p, m in raw.items() if m}
    out["rows"] = rows
    return out


def scatter_png(cands: list[Candidate], path) -> Any:
    """Predicted vs measured, log-log, one colour per predictor, with y = x and +-10 % lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autovit.latmodel.plots import _save

    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    colours = {"analytical": "tab:blue", "analytical_blocks": "tab:purple", "lut": "tab:green", "flops": "tab:orange",
               "params": "tab:gray"}
    lo, hi = math.inf, 0.0
    for p in PREDICTORS:
        for group, marker in (("random", "o"), ("zoo", "^")):
            pts = [(c.measured_ms, c.predicted[p]) for c in cands if c.group == group and c.measured_ms
                   and c.predicted.get(p)]
            if not pts:
                continue
            x, y = np.array(pts).T
            lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
            ax.scatter(x, y, s=14, marker=marker, alpha=0.7, color=colours[p], label=f"{p} ({group})")
    if hi > 0:
        line = np.array([lo * 0.8, hi * 1.25])
        ax.plot(line, line, "k-", lw=0.8)
        ax.plot(line, line * 1.1, "k:", lw=0.6)
        ax.plot(line, line * 0.9, "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("predicted vs measured (dotted: +-10 %)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)
