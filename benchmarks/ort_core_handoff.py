"""onnxruntime's thread decision for element-wise ops, and what a tensor costs to cross cores
(issue 12; timing: run alone, ~1 min).

    python benchmarks/ort_core_handoff.py [--reps 300]

Times chains of ops (the slope between a chain of 2 and one of 22 ops, so the session's per-run
cost cancels; onnxruntime at 1 and 2 intra-op threads; tensors of (1, elems / 64, 64) floats) and
prints one JSON object:

- `threads`: Relu, Add and Sigmoid chains at sizes around the point where onnxruntime's
  ThreadPool::TryParallelFor starts a second thread. It asks Eigen's TensorCostModel
  (`numThreads`: (elements x cost - 100,000 cycles) / 100,000 + 0.9 threads, a cost of
  11 / 64 cycles per byte loaded or stored plus the functor's `Cost()` cycles per element: Relu
  1, Sigmoid 2; a binary op 1). Where 2 threads run the op no faster than 1, it ran on one.
- `handoff`: a chain alternating a Sigmoid that runs on both threads with a Relu that runs on one
  (65,536 floats: 256 KiB each), against the mean of the two ops' own chains. In its own chain an
  op reads what the same cores wrote; alternating, the single-threaded Relu reads the half of its
  input the other core wrote, and the other core reads half the Relu's output back for the next
  Sigmoid. The extra time per pair over the bytes that crossed is the rate a tensor crosses
  between cores' private caches (`cross_core_gbps`); the same at 1 thread is the control.
- `copies`: a Transpose (then a Reshape back, so that onnxruntime cannot fold two transposes
  into none) and a Split into two halves concatenated back the other way round, at 1 and 2
  threads: whether a copy uses a second thread (the model, ort_parallel_for: never).
- `profiler_node_us`: what onnxruntime's profiler adds inside every kernel's event: the median
  profiled kernel time of a ReLU on 16 floats (a chain of 100) less its unprofiled time per op;
  `cpu_per_op.py --node-us` takes it off every profiled node.
- `batchnorm`: onnxruntime's BatchNormalization (batch_norm.h: an Eigen loop per (sample,
  channel), no thread pool) on a few token and image shapes, at 1 and 2 threads.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THREAD_SIZES = (16384, 65536, 98304, 262144)
COPY_SIZES = (16384, 49152, 196608)
HANDOFF_ELEMS = 65536
BN_SHAPES = ((196, 128), (49, 256), (196, 640), (1, 64, 56, 56), (1, 256, 7, 7))


def chain(n: int, ops: tuple[str, ...], shape: tuple[int, ...]) -> bytes:
    """ONNX bytes of `n` ops in a chain cycling through `ops`; a binary op adds the graph input."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    if "BatchNormalization" in ops:
        rng = np.random.default_rng(0)
        inits = [numpy_helper.from_array(rng.random(shape[1]).astype(np.float32) + 0.5, name) for name in "sbmv"]
    if "Transpose" in ops:
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), "shape"))
    for i in range(n):
        op = ops[i % len(ops)]
        if op == "Transpose":
            nodes += [helper.make_node("Transpose", [prev], [f"p{i}"], perm=[0, 2, 1]),
                      helper.make_node("Reshape", [f"p{i}", "shape"], [f"t{i}"])]
        elif op == "Split":
            nodes += [helper.make_node("Split", [prev], [f"a{i}", f"b{i}"], axis=1, num_outputs=2),
                      helper.make_node("Concat", [f"b{i}", f"a{i}"], [f"t{i}"], axis=1)]
        else:
            inputs = {"Add": [prev, "x"], "BatchNormalization": [prev, "s", "b", "m", "v"]}.get(op, [prev])
            nodes.append(helper.make_node(op, inputs, [f"t{i}"]))
        prev = f"t{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def us_per_op(ops: tuple[str, ...], shape: tuple[int, ...], threads: int, reps: int) -> float:
    """us per op of a chain cycling through `ops` (the slope between 2 and 22 cycles)."""
    from autovit.latmodel.ort_profile import median_run_ms, session

    short = median_run_ms(session(chain(2 * len(ops), ops, shape), threads), shape, reps, warmup=30)
    long = median_run_ms(session(chain(22 * len(ops), ops, shape), threads), shape, reps, warmup=30)
    return (long - short) / (20 * len(ops)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args()
    if args.reps < 10:
        raise SystemExit("error: --reps must be at least 10 (runs per chain for a median)")
    from autovit.latmodel.ort_profile import node_times

    out: dict = {"threads": {}, "handoff": {}, "copies": {}, "profiler_node_us": {}, "batchnorm": {}}
    for op in ("Relu", "Add", "Sigmoid"):
        for elems in THREAD_SIZES:
            shape = (1, elems // 64, 64)
            t1, t2 = (round(us_per_op((op,), shape, th, args.reps), 3) for th in (1, 2))
            out["threads"][f"{op}_{elems}"] = {"threads_1_us": t1, "threads_2_us": t2, "speedup": round(t1 / t2, 3)}
            print(op, elems, t1, t2, file=sys.stderr)
    shape = (1, HANDOFF_ELEMS // 64, 64)
    for threads in (1, 2):
        own = {op: us_per_op((op,), shape, threads, args.reps) for op in ("Sigmoid", "Relu")}
        alt = us_per_op(("Sigmoid", "Relu"), shape, threads, args.reps)
        extra_pair_us = 2 * alt - sum(own.values())
        row = {"sigmoid_us": round(own["Sigmoid"], 3), "relu_us": round(own["Relu"], 3),
               "alternating_us_per_op": round(alt, 3), "extra_us_per_pair": round(extra_pair_us, 3)}
        if threads == 2:
            # Per pair, half the Sigmoid's output crosses to the Relu's core and half the Relu's back.
            crossed = 2 * HANDOFF_ELEMS * 4 / 2
            row["crossed_bytes_per_pair"] = crossed
            row["cross_core_gbps"] = round(crossed / (extra_pair_us * 1e3), 2) if extra_pair_us > 0 else None
        out["handoff"][f"threads_{threads}"] = row
        print("handoff", threads, row, file=sys.stderr)
    for op in ("Transpose", "Split"):  # per Transpose + Reshape, per Split + Concat
        for elems in COPY_SIZES:
            shape = (1, elems // 64, 64)
            t1, t2 = (round(us_per_op((op,), shape, th, args.reps), 3) for th in (1, 2))
            out["copies"][f"{op}_{elems}"] = {"threads_1_us": t1, "threads_2_us": t2, "speedup": round(t1 / t2, 3)}
            print(op, elems, t1, t2, file=sys.stderr)
    for threads in (1, 2):
        shape = (1, 16)
        profiled = float(np.median([n["ms"] for n in node_times(chain(100, ("Relu",), shape), shape, threads, 30)])) * 1e3
        out["profiler_node_us"][f"threads_{threads}"] = round(profiled - us_per_op(("Relu",), shape, threads, args.reps), 3)
    for bshape in BN_SHAPES:
        t1, t2 = (round(us_per_op(("BatchNormalization",), bshape, th, args.reps), 3) for th in (1, 2))
        elems = int(np.prod(bshape))
        out["batchnorm"]["x".join(map(str, bshape))] = {"elems": elems, "threads_1_us": t1, "threads_2_us": t2,
                                                        "ns_per_elem_2": round(t2 * 1e3 / elems, 4)}
        print("bn", bshape, t1, t2, file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
