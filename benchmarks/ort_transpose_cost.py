"""Which transposes onnxruntime copies at bandwidth and which run by run (issue 12; timing: run alone).

    python benchmarks/ort_transpose_cost.py [--runs 200] > benchmarks/results/ort_transpose_cost_<tag>.json

onnxruntime's Transpose (core/providers/cpu/tensor/transpose.cc, DoTranspose) copies a
permutation that keeps every axis longer than 1 in order as a plain copy, one that moves a single
axis (`IsTransposeMovingSingleAxis`, judged on the permutation as written, size-1 axes included)
through MLAS's blocked transpose, and any other through its generic loop, which copies the input's
unchanged suffix run by run: when the last axis moves, element by element. So XCiT's qkv permute
(1, 196, 3, 4, 32) -> (3, 1, 4, 32, 196) runs element by element while the same move of the
token axis without the leading size-1 and qkv axes is one blocked transpose. Prints one JSON
object: per case, the median us of `--runs` calls on 2 threads, ns per element beyond an empty
call's, and the model's runs with and without the raw-permutation rule (costs.OpCost.runs,
raw_runs: mechanism ort_transpose).

    python benchmarks/ort_transpose_cost.py --network xcit_nano_12_p16_224 [--runs 20]

profiles a timm model instead (2 threads): its median run ms, and its Transpose nodes as
onnxruntime's profiler times them (median per node), those its optimiser created
(`Transpose_token_*`, the permutes it pushed through other ops) apart.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = [
    ((1, 196, 3, 4, 32), (2, 0, 3, 4, 1)),  # XCiT's qkv permute: token axis last, qkv axis first
    ((1, 196, 1, 4, 32), (2, 0, 3, 4, 1)),  # ... one third of it, as onnxruntime's optimiser splits it
    ((1, 196, 1, 4, 32), (0, 2, 3, 4, 1)),  # the token axis last, nothing else moved
    ((196, 4, 32), (1, 2, 0)),              # the same move without size-1 axes
    ((1, 196, 4, 32), (0, 2, 3, 1)),
    ((1, 197, 3, 3, 64), (2, 0, 3, 1, 4)),  # ViT's qkv permute: the last axis stays, 64-float runs
    ((1, 4, 196, 32), (0, 1, 3, 2)),        # k^T
    ((1, 196, 1, 4, 32), (2, 0, 1, 3, 4)),  # only size-1 axes move: a copy
]


def transpose_model(shape: tuple[int, ...], perm: tuple[int, ...]) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=list(perm))], "t", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def median_us(shape: tuple[int, ...], perm: tuple[int, ...], runs: int) -> float:
    from autovit.latmodel.ort_profile import median_run_ms, session

    return median_run_ms(session(transpose_model(shape, perm), 2), shape, runs, warmup=20) * 1e3


def network_transposes(name: str, runs: int) -> dict:
    """A timm model's run ms and its Transpose nodes' kernel ms on 2 threads (onnxruntime's profiler)."""
    import autovit.nas  # noqa: F401 - registers the autovit: source
    from autovit.latmodel.convert import export_onnx_bytes
    from autovit.latmodel.ort_profile import median_run_ms, node_times, session
    from autovit.latmodel.validate import zoo_candidates

    c = zoo_candidates([name])[0]
    onnx_bytes = export_onnx_bytes(c.build().eval(), c.shape)
    nodes = node_times(onnx_bytes, c.shape, 2, runs)
    moved = [n["ms"] for n in nodes if n["op"] == "Transpose" and n["name"].startswith("Transpose_token")]
    other = [n["ms"] for n in nodes if n["op"] == "Transpose" and not n["name"].startswith("Transpose_token")]
    return {"network": c.name, "threads": 2, "runs": runs,
            "run_ms": round(median_run_ms(session(onnx_bytes, 2), c.shape, runs), 3),
            "all_nodes_ms": round(sum(n["ms"] for n in nodes), 3),
            "transposes": {"count": len(moved) + len(other), "ms": round(sum(moved) + sum(other), 3)},
            "optimiser_transposes": {"count": len(moved), "ms": round(sum(moved), 3),
                                     "median_us": round(1e3 * float(np.median(moved)), 1) if moved else None}}


def main() -> None:
    from autovit.latmodel.costs import _transpose_runs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--network", help="a timm model: profile its Transpose nodes instead of timing the cases")
    args = ap.parse_args()
    if args.runs < 3:
        sys.exit("error: --runs must be at least 3")
    if args.network:
        from autovit.latmodel.errors import AutoVitError

        try:
            print(json.dumps(network_transposes(args.network, args.runs), indent=1))
        except AutoVitError as e:
            sys.exit(f"error: {e}")
        return
    empty = min(median_us((1, 16), (1, 0), args.runs) for _ in range(2))
    out: dict = {"threads": 2, "runs": args.runs, "empty_call_us": round(empty, 2), "cases": []}
    for shape, perm in CASES:
        us = min(median_us(shape, perm, args.runs) for _ in range(2))
        n = math.prod(shape)
        out["cases"].append({"shape": list(shape), "perm": list(perm), "us": round(us, 2),
                             "ns_per_element": round((us - empty) * 1e3 / n, 3),
                             "runs": _transpose_runs(shape, perm), "raw_runs": _transpose_runs(shape, perm, raw=True)})
        print(f"{shape} {perm}: {us:.1f} us", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
