"""Kernel time per op class from onnxruntime's own profiler.

A block's time alone cannot tell the calibration which of its ops is slow: a conv priced too fast
and an activation priced too slow cancel inside the block, and a network with another mix of ops
(a ResNet: 75 % convolutions) is then mispriced (docs/BENCHMARKS.md, "per-op residuals").
onnxruntime's profiler times every kernel of a run; summed per op class, those times give the
calibration one point per class and block (fit.ProfileCalibrator.fit, `op_ms`).

The profiler adds a few microseconds to every node, so only classes whose kernels take far
longer than that are used as points (`OP_POINT_MIN_MS`), and they are scaled so that a block's
profiled kernels sum to its unprofiled LUT time.

A shared machine runs in slow spells that do not slow every class alike (docs/BENCHMARKS.md
section 3.9: a profile caught in one gave layout 0.53 ms of a 0.44 ms block instead of 0.11), so
each block is profiled in several rounds, one pass over all blocks each, and keeps the round whose
kernels sum to the least: its fast state, the same statistic as the block's own time.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

# The model's categories (kernels.py) of onnxruntime's op types after its graph optimisations.
_CLASS_OF_OP = {
    **dict.fromkeys(("Add", "Mul", "Sub", "Div", "Pow", "Sqrt", "Erf", "Where", "Equal", "Neg", "Reciprocal"),
                    "elementwise"),
    **dict.fromkeys(("Relu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Tanh", "QuickGelu",
                     "FastGelu", "BiasGelu"), "activation"),
    **dict.fromkeys(("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                     "BatchNormalization", "GroupNorm", "InstanceNormalization", "ReduceMean"), "norm"),
    **dict.fromkeys(("Transpose", "Reshape", "Split", "Concat", "ReorderInput", "ReorderOutput", "Flatten",
                     "Squeeze", "Unsqueeze", "Gather", "Slice", "Expand", "Shape", "Identity", "Pad", "Tile",
                     "Resize"), "layout"),
    "Softmax": "attention",
}
_CONVS = ("Conv", "FusedConv", "NchwcConv")
_MATMULS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm")
# Classes used as calibration points: compute kernels whose time dwarfs the profiler's own cost.
OP_POINT_CLASSES = ("conv", "dwconv", "linear", "attention", "activation", "norm")
OP_POINT_MIN_MS = 0.1


def op_class(op: str, input_shapes: list[Any] | None = None, param_bytes: int = 0) -> str:
    """The model's category of an onnxruntime node: a convolution whose weight has one input
    channel per group (and more than one group) is depthwise; a MatMul without weights multiplies
    two activations (attention's QK and AV)."""
    if op in _CONVS:
        shapes = input_shapes or []
        w = list(shapes[1].values())[0] if len(shapes) > 1 and isinstance(shapes[1], dict) else None
        return "dwconv" if w and len(w) == 4 and w[1] == 1 and w[0] > 1 else "conv"
    if op in _MATMULS:
        return "linear" if param_bytes > 0 else "attention"
    if "Pool" in op:
        return "pooling"
    return _CLASS_OF_OP.get(op, "other")


def session(onnx_bytes: bytes, threads: int, profile_prefix: str | None = None, config: dict[str, str] | None = None):
    """An onnxruntime CPU session as `profile` and `validate` time them (all graph optimisations,
    `threads` intra-op threads), profiling into `profile_prefix`* when given; `config`: session
    configuration entries (e.g. {"session.set_denormal_as_zero": "1"})."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        o.enable_profiling, o.profile_file_prefix = True, profile_prefix
    for key, value in (config or {}).items():
        o.add_session_config_entry(key, value)
    return ort.InferenceSession(onnx_bytes, o, providers=["CPUExecutionProvider"])


def median_run_ms(sess, shape: tuple[int, ...], runs: int, warmup: int = 5) -> float:
    """Median ms of `runs` calls of sess.run on a seeded standard-normal input of `shape`, after
    `warmup` calls (benchmark scripts' timing; `profile` and `validate` use runner.py's policy)."""
    import time

    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1e3


def node_times(onnx_bytes: bytes, shape: tuple[int, ...], threads: int, runs: int = 30) -> list[dict]:
    """Every kernel of one profiled run: [{name, op, class, ms}], ms the median over `runs` runs
    after 5 warm-up runs (ms of the kernel alone, as onnxruntime's profiler reports it)."""
    with tempfile.TemporaryDirectory() as d:
        sess = session(onnx_bytes, threads, str(Path(d) / "p"))
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for _ in range(5 + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, list[float]] = defaultdict(list)
    info: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            name, a = e["name"][: -len("_kernel_time")], e.get("args", {})
            per[name].append(float(e["dur"]) / 1e3)
            op = str(a.get("op_name", ""))
            info[name] = {"op": op, "class": op_class(op, a.get("input_type_shape"), int(a.get("parameter_size", 0) or 0))}
    return [{"name": n, **info[n], "ms": float(np.median(v[-runs:]))} for n, v in per.items()]


def class_times(onnx_bytes: bytes, shape: tuple[int, ...], threads: int, runs: int = 30) -> dict[str, float]:
    """Kernel ms per op class of one run (see node_times)."""
    out: dict[str, float] = defaultdict(float)
    for n in node_times(onnx_bytes, shape, threads, runs):
        out[n["class"]] += n["ms"]
    return dict(out)


def op_points(op_ms: dict[str, float], block_ms: float) -> dict[str, float]:
    """The classes of one block usable as calibration points, in ms scaled so that the block's
    profiled kernels sum to its unprofiled time `block_ms`; the size threshold applies to the
    scaled time, so a profile taken in a slow spell does not add points."""
    total = sum(op_ms.values())
    if total <= 0:
        return {}
    scaled = {c: v * block_ms / total for c, v in op_ms.items()}
    return {c: v for c, v in scaled.items() if c in OP_POINT_CLASSES and v >= OP_POINT_MIN_MS}


# Per-op profiles of a block kept in a LUT entry: the fastest of this many rounds (`op_rounds`).
OP_ROUNDS = 3


def annotate_lut(lut, path: str | Path, blocks: list, onnx_of, threads: int, runs: int = 30,
                 rounds: int = OP_ROUNDS, on_progress=None) -> int:
    """Give every isolated entry of `blocks` in `lut` its `op_ms` (kernel ms per op class, see
    class_times): the round, of `rounds` passes over the blocks, whose kernels sum to the least;
    `onnx_of(block) -> ONNX bytes`, called once per block when its first profile is due. The LUT
    is saved after every block profile with the entry's best so far and its `op_rounds`, so an
    interrupted run loses at most one profile and resumes; an entry with `rounds` rounds is
    skipped (one written before rounds were counted counts as one). Returns how many entries
    were annotated; `on_progress(block)` after each block of each pass."""
    todo = []
    for block in blocks:
        e = lut.entries.get(lut.entry_key("isolated", block))
        if e is not None and _op_rounds(e) < rounds and all(e is not t for _, t in todo):
            todo.append((block, e))
    models: dict[int, bytes] = {}
    for r in range(rounds):
        for i, (block, e) in enumerate(todo):
            if _op_rounds(e) > r:
                continue  # this pass was done before an interruption
            if i not in models:
                models[i] = onnx_of(block)
            ms = class_times(models[i], tuple(block.input_shape()), threads, runs)
            if "op_ms" not in e or sum(ms.values()) < sum(e["op_ms"].values()):
                e["op_ms"] = ms
            e["op_rounds"] = r + 1
            lut.save(path)
            if on_progress:
                on_progress(block)
    return len(todo)


def op_rounds_left(lut, blocks: list, rounds: int = OP_ROUNDS) -> int:
    """Block profiles annotate_lut has left to run over `blocks` (a progress bar's total)."""
    entries = (lut.entries.get(lut.entry_key("isolated", b)) for b in blocks)
    return sum(max(0, rounds - _op_rounds(e)) for e in entries if e is not None)


def _op_rounds(entry: dict) -> int:
    """Rounds of per-op profiling an entry holds (an older entry with `op_ms` and no count: one)."""
    return int(entry.get("op_rounds", 1 if "op_ms" in entry else 0))
