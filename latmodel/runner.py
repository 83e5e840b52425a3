"""Timing many things on this machine: ready-to-time runners, the drift monitor's reference,
and the one measurement loop that `profile` (blocks into a LUT) and `validate` (whole models)
share.

The loop measures every item in `rounds` bursts, one pass over all items per round, so a slow
spell of a shared machine hits one burst of many items rather than every burst of a few. With
a drift monitor (measure.DriftMonitor) a reference model is timed before every few bursts; an
item the backend cannot run is reported and the rest go on.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.measure import DriftMonitor, Measurement, TimingPolicy, check_backend, cuda_event_timer, time_callable

Runner = tuple[Callable[[], object], Callable | None]


def prepare(module, shape: tuple[int, ...], backend: str, threads: int) -> Runner:
    """A ready-to-time call of `module` on one input of `shape` with `backend`: (run, timed),
    where `timed` (CUDA events) times one call itself and None means wall clock."""
    import numpy as np
    import torch

    check_backend(backend)
    if backend == "onnxruntime":
        import onnxruntime as ort

        from autovit.latmodel.convert import export_onnx_bytes

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(export_onnx_bytes(module, shape), opts, providers=["CPUExecutionProvider"])
        feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return _first_calls((lambda: sess.run(None, feed))), None
    if backend in ("torch", "torch-cuda"):
        cuda = backend == "torch-cuda"
        if not cuda:
            torch.set_num_threads(threads)
        device = "cuda" if cuda else "cpu"
        module = module.eval().to(device)
        x = torch.randn(shape, device=device)

        def run() -> None:
            with torch.inference_mode():
                module(x)
        return _first_calls(run), (cuda_event_timer(torch) if cuda else None)
    raise AutoVitError(f"backend '{backend}' cannot measure here")  # coreml: check_backend already refused off macOS


# The first calls of a new session allocate its memory arenas and wake its thread pool; they are
# several times slower than the rest (seen here: 17 ms, then 8 ms), so every runner makes them
# once, before any burst's own warm-up.
FIRST_CALLS = 5


def _first_calls(run: Callable[[], object]) -> Callable[[], object]:
    for _ in range(FIRST_CALLS):
        run()
    return run


def drift_monitor(reference_module, input_shape: tuple[int, ...], backend: str, threads: int, policy: TimingPolicy,
                  every: int = 8, name: str = "reference") -> DriftMonitor:
    """`reference_module` (best: a network made of what the measured items are made of) ready
    to time between measurements; `name` is recorded in the LUT as its reference model."""
    run, timed = prepare(reference_module, input_shape, backend, threads)
    return DriftMonitor(run, policy, timed, every, name)


# The GEMM of the peak probe: n x n by n x n in fp32, 2 n^3 FLOPs (268 MFLOP at 512): large
# enough that MLAS runs it at its full rate on every thread, small enough to sit in cache.
PROBE_N = 512


def sgemm_probe(backend: str, threads: int) -> Callable[[], float] | None:
    """A ready-to-time peak probe: each call times a short burst of a PROBE_N^3 fp32 MatMul on
    `threads` threads and returns its rate (GFLOP/s, the burst's median). None for a backend
    that does not run on this CPU. `profile` calls it after every round and keeps the fastest:
    a shared machine's slow spells halve it (this project's VM: 233 against 458 GFLOP/s in
    one run), and no GEMM runs faster than the peak, so the fastest burst is the truest."""
    from torch import nn

    if backend not in ("onnxruntime", "torch"):
        return None
    run, _ = prepare(nn.Linear(PROBE_N, PROBE_N, bias=False).eval(), (PROBE_N, PROBE_N), backend, threads)
    policy = TimingPolicy(warmup=3, min_repeats=10, max_repeats=40, ci_pct=2.0, max_seconds=2.0)
    return lambda: 2 * PROBE_N ** 3 / (time_callable(run, policy).median_ms * 1e6)


# Element-wise passes per stream probe: the rate is of the passes, not of one session.run's overhead.
STREAM_PASSES = 32


def stream_probe(backend: str, threads: int, mib: float) -> Callable[[], float] | None:
    """A ready-to-time streaming probe: each call times a short burst of STREAM_PASSES ReLU passes
    over an fp32 activation of `mib` MiB on `threads` threads and returns the rate (GB/s, bytes
    read + written, the burst's median). onnxruntime runs the passes in place: the working set is
    the one activation. Each pass's dispatch is in the rate, so it errs low; timing 16 and 32 passes
    and taking the difference would remove that, but two sessions' spinning thread pools disturb
    each other's bursts and the difference was unstable (docs/COST_MODEL.md, "Two cache levels").
    `profile` sizes one probe within the
    cores' private caches and one beyond them (cli/lat.py) and keeps each one's fastest burst.
    None for a backend that does not run on this CPU."""
    from torch import nn

    if backend not in ("onnxruntime", "torch"):
        return None
    channels = max(int(mib * 2**20 / 4 / 1024), 1)
    shape = (1, channels, 32, 32)
    run, _ = prepare(nn.Sequential(*[nn.ReLU() for _ in range(STREAM_PASSES)]).eval(), shape, backend, threads)
    policy = TimingPolicy(warmup=3, min_repeats=10, max_repeats=40, ci_pct=2.0, max_seconds=2.0)
    moved = 2 * 4 * channels * 32 * 32 * STREAM_PASSES
    return lambda: moved / (time_callable(run, policy).median_ms * 1e6)


# The handoff probe: chains of HANDOFF_PAIRS Sigmoid-ReLU pairs on HANDOFF_ELEMS floats. onnxruntime
# runs such a Sigmoid on every thread and such a ReLU on the calling one (Eigen's cost model: the
# mechanism ort_parallel_for), so on t threads the share 1 - 1/t of each Sigmoid's output crosses
# to the ReLU's core and as much of each ReLU's output back to the next Sigmoid's threads: 21
# crossings in the alternating chain (the last ReLU's output leaves the graph), and half of one
# more where it reads the graph's input against the two chains alone (the Sigmoids alone read it
# so too, the ReLUs alone do not).
HANDOFF_ELEMS = 65536
HANDOFF_PAIRS = 11
_HANDOFF_CROSSINGS = 2 * HANDOFF_PAIRS - 0.5


def handoff_probe(backend: str, threads: int) -> Callable[[], dict[str, float]] | None:
    """A ready-to-time cross-core probe: each call times a short burst of three chains of
    2 x HANDOFF_PAIRS ops on (1, HANDOFF_ELEMS / 64, 64) floats (Sigmoids and ReLUs alternating,
    Sigmoids alone, ReLUs alone) and returns each burst's median ms, {"alternating", "sigmoid",
    "relu"}: handoff_gbps turns them into the rate a tensor crosses between cores' private caches
    (the mechanism core_handoff). None for a backend other than onnxruntime (whose thread rule the
    chain relies on) or a single thread (nothing crosses)."""
    if backend != "onnxruntime" or threads < 2:
        return None
    from torch import nn

    n = 2 * HANDOFF_PAIRS
    chains = {"alternating": [nn.Sigmoid() if i % 2 == 0 else nn.ReLU() for i in range(n)],
              "sigmoid": [nn.Sigmoid() for _ in range(n)], "relu": [nn.ReLU() for _ in range(n)]}
    shape = (1, HANDOFF_ELEMS // 64, 64)
    runs = {k: prepare(nn.Sequential(*mods).eval(), shape, backend, threads)[0] for k, mods in chains.items()}
    policy = TimingPolicy(warmup=3, min_repeats=10, max_repeats=40, ci_pct=2.0, max_seconds=2.0)
    return lambda: {k: time_callable(run, policy).median_ms for k, run in runs.items()}


def handoff_gbps(ms: dict[str, float], threads: int = 2) -> float | None:
    """GB/s a tensor crossed between cores at in handoff_probe's chain times (ms) on `threads`
    threads: the alternating chain's time over the mean of the two others' against the bytes
    that crossed (_HANDOFF_CROSSINGS x the share 1 - 1/threads of HANDOFF_ELEMS floats). None where
    the difference is within the bursts' 2 % noise (nothing measurable crossed) or implies less
    than 0.1 GB/s (no cache hands data over that slowly): the profile keeps its figure."""
    extra_ms = ms["alternating"] - (ms["sigmoid"] + ms["relu"]) / 2
    if threads < 2 or extra_ms <= 0.02 * ms["alternating"]:
        return None
    gbps = _HANDOFF_CROSSINGS * HANDOFF_ELEMS * 4 * (1 - 1 / threads) / (extra_ms * 1e6)
    return gbps if gbps >= 0.1 else None


def failure_line(e: Exception) -> str:
    """One line for an exception a backend or exporter raised."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def measure_rounds(items: Sequence[Any], rounds: int, policy: TimingPolicy,
                   key: Callable[[Any], Hashable], runners: Callable[[Any], list[Runner]],
                   record: Callable[[Any, list[Measurement], float | None], None],
                   done: Callable[[Any, int], bool] | None = None, monitor: DriftMonitor | None = None,
                   on_step: Callable[[Any, Measurement | None, str | None], None] | None = None,
                   after_round: Callable[[int], None] | None = None) -> dict[Hashable, str]:
    """Time every item in `rounds` passes (module doc). Per item: `runners(item)` (built once)
    -> one burst each, handed to `record(item, bursts, reference_ms)` with the drift monitor's
    reference burst (ms, or None without a monitor); an item for which `done(item, round)` is
    true is skipped that round. `on_step(item, first burst or None, error or None)` follows
    every burst; `after_round(round)` follows every pass. Returns {key: error} of the items that
    failed (each is tried once)."""
    built: dict[Hashable, list[Runner]] = {}
    failures: dict[Hashable, str] = {}
    for r in range(rounds):
        for item in items:
            k = key(item)
            if k in failures or (done is not None and done(item, r)):
                continue
            try:
                if k not in built:
                    built[k] = runners(item)
                reference_ms = monitor.before_item() if monitor is not None else None
                bursts = [time_callable(run, policy, timed=timed) for run, timed in built[k]]
            except AutoVitError:
                raise
            except Exception as e:  # noqa: BLE001 - an item the backend cannot run: report it, go on with the rest
                failures[k] = failure_line(e)
                if on_step:
                    on_step(item, None, failures[k])
                continue
            record(item, bursts, reference_ms)
            if on_step:
                on_step(item, bursts[0], None)
        if after_round is not None:
            after_round(r)
    return failures
