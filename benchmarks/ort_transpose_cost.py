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
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

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


def main() -> None:
    from autovit.latmodel.costs import _transpose_runs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    if args.runs < 3:
        sys.exit("error: --runs must be at least 3")
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
