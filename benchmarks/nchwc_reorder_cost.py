"""onnxruntime's NCHW <-> NCHWc reorders and its depthwise kernel, per node (issue 12; timing: quiet, ~1 min).

    python benchmarks/nchwc_reorder_cost.py [--hw PROFILE] [--runs 30]

A depthwise 3x3 convolution alone, for a few (channels, width) pairs: onnxruntime wraps it in a
ReorderInput and a ReorderOutput (NCHW -> blocked -> NCHW). Its profiler times the three nodes at 1
and 2 threads (median over --runs runs). Prints one JSON object, per shape and thread count: each
node's ms, the reorders' GB/s (bytes read + written over their time), and the price `--hw` gives
a reorder (timing._reorder_ms: its bytes at the cache rate times layout_penalty) and the
depthwise kernel (compute and memory as the model has them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHAPES = ((96, 112), (144, 56), (192, 28), (576, 14), (960, 7))


def depthwise(c: int, w: int):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, w, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    wt = numpy_helper.from_array(np.random.default_rng(0).standard_normal((c, 1, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, group=c)
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [wt]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def main() -> None:
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.graph import build_graph
    from autovit.latmodel.hardware import profile_at_threads
    from autovit.latmodel.ort_profile import node_times
    from autovit.latmodel.timing import _reorder_ms

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", default="local-cpu")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    out: dict = {"hw": args.hw, "rows": []}
    for c, w in SHAPES:
        m = depthwise(c, w)
        elems = c * w * w
        for threads in (1, 2):
            profile, _ = profile_at_threads(args.hw, threads)
            nodes = {n["op"]: n["ms"] for n in node_times(m.SerializeToString(), (1, c, w, w), threads, args.runs)}
            dw = next(t for t in LatencyModel(build_graph(m)).estimate(profile).kernels if t.kernel.category == "dwconv")
            reorder_bytes = 2 * elems * 4
            out["rows"].append({
                "channels": c, "width": w, "threads": threads, "nodes_ms": nodes,
                "reorder_gbps": {op: reorder_bytes / (ms * 1e-3) / 1e9 for op, ms in nodes.items() if op.startswith("Reorder") and ms > 0},
                "model_reorder_ms": _reorder_ms(elems, profile, "fp32"),
                "model_dw_compute_ms": dw.compute_ms, "model_dw_memory_ms": dw.memory_ms})
            print(c, w, threads, {k: round(v, 4) for k, v in nodes.items()}, round(out["rows"][-1]["model_reorder_ms"], 4),
                  round(dw.compute_ms, 4), file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    from autovit.latmodel.errors import AutoVitError

    try:
        main()
    except AutoVitError as e:  # a missing or broken input file, an unknown profile: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
