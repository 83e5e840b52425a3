"""What ONNX Runtime's thread pool costs per kernel on this machine (issue 12; timing: run alone).

    python benchmarks/ort_thread_cost.py [--reps 200]

Times chains of identical ops (onnxruntime, this machine's CPU, 1 and 2 intra-op threads) and
prints one JSON object with the cost per op in us: the slope between a chain of 2 and of 22
ops, so the session's own per-run cost cancels.

- `relu16`: ReLUs on 16 floats: the executor's cost per node (a kernel too small to split);
- `dw3x3_c32_4x4`, `dw3x3_c64_7x7`: small depthwise convolutions, which MLAS splits over every
  thread of the pool whatever their size: on 2 threads minus on 1 is what starting and joining
  the second thread costs them (the profile's `fork_join` mechanism);
- `conv1x1_c16_7x7`: a small dense pointwise convolution, the same way;
- `dw3x3_c22_7x7`: a depthwise convolution the blocked layout leaves in NCHW (22 channels: not a
  multiple of 4), which MLAS runs as a GEMM per channel on the threads its size earns.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def chain(n: int, op: str, channels: int, hw: int, kernel: int = 3, depthwise: bool = True) -> tuple[bytes, tuple]:
    """ONNX bytes of `n` ops in a chain, and the input shape (1, channels, hw, hw)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        if op == "Relu":
            nodes.append(helper.make_node("Relu", [prev], [f"t{i}"]))
        else:
            w = rng.standard_normal((channels, 1 if depthwise else channels, kernel, kernel)).astype(np.float32) * 0.05
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"t{i}"], pads=[kernel // 2] * 4,
                                          group=channels if depthwise else 1))
        prev = f"t{i}"
    shape = (1, channels, hw, hw)
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), shape


def run_us(onnx_bytes: bytes, shape: tuple, threads: int, reps: int) -> float:
    """Median us of one session.run (onnxruntime with its default graph optimizations)."""
    from autovit.latmodel.ort_profile import median_run_ms, session

    return 1e3 * median_run_ms(session(onnx_bytes, threads), shape, reps, warmup=20)


CASES = {"relu16": ("Relu", 16, 1, 1, True), "dw3x3_c32_4x4": ("Conv", 32, 4, 3, True),
         "dw3x3_c64_7x7": ("Conv", 64, 7, 3, True), "conv1x1_c16_7x7": ("Conv", 16, 7, 1, False),
         "dw3x3_c22_7x7": ("Conv", 22, 7, 3, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    out: dict = {"us_per_op": {}}
    for name, (op, c, hw, k, dw) in CASES.items():
        per = {}
        for threads in (1, 2):
            short, shape = chain(2, op, c, hw, k, dw)
            long, _ = chain(22, op, c, hw, k, dw)
            per[f"threads_{threads}"] = round((run_us(long, shape, threads, args.reps)
                                               - run_us(short, shape, threads, args.reps)) / 20, 3)
        per["two_minus_one"] = round(per["threads_2"] - per["threads_1"], 3)
        out["us_per_op"][name] = per
        print(f"{name}: {per}", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
