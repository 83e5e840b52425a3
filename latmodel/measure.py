"""Measuring latency the way a performance engineer would accept.

Warm-up runs first, then timed runs until the 95 % confidence interval of the median is within
`ci_pct` of it (distribution-free: order statistics of a binomial around the median) or the
cap is reached. The median and inter-quartile range are kept; runs beyond 1.5 IQR of the
quartiles are flagged as outliers, not dropped (the median already resists them).

Backends time one callable each: `onnxruntime` (CPU), `torch` (CPU eager), `torch-cuda` (CUDA
events around each run, synchronised), `coreml` (macOS only).
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from autovit.latmodel.errors import AutoVitError

BACKENDS = ("onnxruntime", "torch", "torch-cuda", "coreml")


@dataclass(frozen=True)
class Measurement:
    """Latency statistics of one module, in ms."""

    median_ms: float
    iqr_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    outliers: int
    ci_pct: float  # half-width of the 95 % CI of the median, as % of the median
    converged: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 10
    min_repeats: int = 20
    max_repeats: int = 300
    ci_pct: float = 2.0  # stop when the median's 95 % CI half-width is within this %
    max_seconds: float = 20.0  # per module, on top of warm-up
    rounds: int = 1  # bursts per module, spread over the run (see profiler.py); their fast state is kept (fast_state_ms)


def median_ci_halfwidth_pct(samples: list[float]) -> float:
    """Half-width of the distribution-free 95 % CI of the median, as % of the median."""
    xs = sorted(samples)
    n = len(xs)
    if n < 6:
        return float("inf")
    # Ranks n/2 -+ 1.96 sqrt(n)/2 bound the median with ~95 % probability (binomial, p = 1/2).
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    med = statistics.median(xs)
    return (xs[hi] - xs[lo]) / 2 / med * 100 if med > 0 else float("inf")


def summarize(samples_ms: list[float], ci_target: float) -> Measurement:
    xs = sorted(samples_ms)
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    iqr = q3 - q1
    outliers = sum(1 for x in xs if x < q1 - 1.5 * iqr or x > q3 + 1.5 * iqr)
    ci = median_ci_halfwidth_pct(xs)
    return Measurement(med, iqr, q1, q3, len(xs), outliers, ci, ci <= ci_target)


def time_callable(run: Callable[[], object], policy: TimingPolicy = TimingPolicy(),
                  clock: Callable[[], float] = time.perf_counter,
                  timed: Callable[[Callable[[], object]], float] | None = None) -> Measurement:
    """Median latency (ms) of `run()` under `policy`.

    `timed`, when given, times one call itself and returns ms (CUDA events do this); otherwise
    the wall clock around the call is used.
    """
    for _ in range(policy.warmup):
        run()
    samples: list[float] = []
    start = clock()
    while len(samples) < policy.max_repeats:
        if timed is not None:
            samples.append(timed(run))
        else:
            t0 = clock()
            run()
            samples.append((clock() - t0) * 1e3)
        if len(samples) >= policy.min_repeats and (
                median_ci_halfwidth_pct(samples) <= policy.ci_pct or clock() - start > policy.max_seconds):
            break
    return summarize(samples, policy.ci_pct)


@dataclass
class DriftMonitor:
    """A fixed reference model timed before every `every` measurements, to express a run's
    measurements at one machine speed.

    Shared and virtual machines disturb timing on two time scales (this project's 2-vCPU VM,
    docs/BENCHMARKS.md §3.8): a burst runs up to 1.8x slower in phases and, for small
    workloads, from one burst to the next, and a whole run can sit at another speed than the
    one before it (a validation run's reference model 10-17 % slower than in the profiling run
    minutes earlier). Per-round scaling by the adjacent reference burst mixes the two (the
    reference flips state on its own), so a measurement is its fast state (`fast_state_ms`)
    and a run is scaled once, by the reference's fast state in it (`run_ms`) against the LUT's
    (`at_reference`). Raw rounds are always kept.
    """

    run: Callable[[], object]
    policy: TimingPolicy
    timed: Callable | None = None
    every: int = 8
    model: str = ""
    history: list = field(default_factory=list)
    _since: int = 0

    def before_item(self) -> float:
        """The reference burst median (ms) adjacent to the next measurement."""
        if not self.history or self._since >= self.every:
            self.history.append(time_callable(self.run, self.policy, timed=self.timed).median_ms)
            self._since = 0
        self._since += 1
        return self.history[-1]

    @property
    def fastest_ms(self) -> float | None:
        return min(self.history) if self.history else None

    @property
    def run_ms(self) -> float | None:
        """The reference model's fast state in this run (ms): the run's speed."""
        return fast_state_ms(self.history) if self.history else None


# A slowed burst runs 1.6-1.8x its fast time on this project's VM (docs/BENCHMARKS.md §3.8);
# rounds within 25 % of the fastest are the same state.
FAST_STATE_TOL = 1.25


def fast_rounds(rounds_ms: list[float], tol: float = FAST_STATE_TOL) -> list[float]:
    """The rounds of the fast state: those within `tol` of the fastest. One fast round among
    slow ones counts: on this project's VM the fast phases of the whole machine can be one round
    long (every model of a validation run fast in its first round only, docs/BENCHMARKS.md
    §3.8), so a lone fast round is more often the state than luck (a burst is the median of
    >= 6 runs)."""
    if not rounds_ms or not all(r > 0 and math.isfinite(r) for r in rounds_ms):
        raise ValueError(f"fast state of {len(rounds_ms)} rounds: need at least one, all finite and > 0")
    fastest = min(rounds_ms)
    return [r for r in rounds_ms if r <= tol * fastest]


def fast_state_ms(rounds_ms: list[float], tol: float = FAST_STATE_TOL) -> float:
    """The median of the fast-state rounds (ms, `fast_rounds`): the latency with the cores the
    run asked for, robust to bursts slowed by the machine."""
    return float(statistics.median(fast_rounds(rounds_ms, tol)))


def fast_share(rounds_ms: list[float], tol: float = FAST_STATE_TOL) -> float:
    """Share of the rounds in the fast state (1.0: no burst lost a core)."""
    return len(fast_rounds(rounds_ms, tol)) / len(rounds_ms)


def rounds_beside_fast_reference(reference_ms: list[float], fastest_reference_ms: float,
                                 tol: float = FAST_STATE_TOL) -> int:
    """How many of an item's rounds followed a reference burst in the run's fast state (within
    `tol` of the run's fastest reference burst, ms). 0: the item was timed only while the
    machine ran slow, and its own fast state (relative to its fastest round) is the slow one,
    which on this project's VM is 1.1-1.6x the fast one depending on the network
    (docs/BENCHMARKS.md §3.11), so no single factor can undo it."""
    return sum(r <= tol * fastest_reference_ms for r in reference_ms)


def at_reference(rounds_ms: list[float], run_ms: float | None, ref_ms: float | None) -> float:
    """A measurement's value at the reference speed (ms): its fast state, scaled by the LUT's
    reference speed `ref_ms` over the run's `run_ms` (DriftMonitor); unscaled without both."""
    value = fast_state_ms(rounds_ms)
    return value * ref_ms / run_ms if (ref_ms and run_ms) else value


def cuda_event_timer(torch_module) -> Callable[[Callable[[], object]], float]:
    """Times one call with CUDA events; synchronises so the kernel work is inside the interval."""
    def timed(run: Callable[[], object]) -> float:
        start = torch_module.cuda.Event(enable_timing=True)
        end = torch_module.cuda.Event(enable_timing=True)
        torch_module.cuda.synchronize()
        start.record()
        run()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    return timed


def check_backend(backend: str) -> None:
    """Fail early, in one line, when a backend cannot run on this machine."""
    if backend not in BACKENDS:
        raise AutoVitError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    if backend == "coreml" and platform.system() != "Darwin":
        raise AutoVitError("--backend coreml needs macOS (Core ML runs models only there); use onnxruntime or torch here")
    if backend == "torch-cuda":
        import torch

        if not torch.cuda.is_available():
            raise AutoVitError("--backend torch-cuda needs a CUDA GPU and none is visible; use onnxruntime or torch here")


def physical_cores() -> int:
    """Physical cores of this machine: distinct (socket, core) pairs in /proc/cpuinfo, else the
    logical CPU count."""
    try:
        cores: set[tuple[str | None, str]] = set()
        with open("/proc/cpuinfo") as f:
            phys = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":")[1].strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def environment(backend: str, threads: int | None) -> dict:
    """What a measurement depends on, recorded next to it."""
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    governor = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            governor = f.read().strip()
    except OSError:
        pass
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(), "governor": governor,
        "os": platform.platform(), "python": platform.python_version(), "backend": backend, "threads": threads,
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "numpy": numpy.__version__},
    }
