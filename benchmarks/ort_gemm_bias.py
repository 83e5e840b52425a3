"""What a linear layer's bias costs onnxruntime (issue 12; timing: run alone, ~1 min).

    python benchmarks/ort_gemm_bias.py [--reps 400] [--out FILE]

onnxruntime's Gemm (a linear layer exported as Gemm, or a MatMul and its bias Add that its
MatMulAddFusion turns into one) does not add the bias inside the matrix product: its Compute
first broadcasts C into the whole (M, N) output (GemmBroadcastBias in
core/providers/cpu/math/gemm_helper.h: an Eigen row-wise assignment, on the calling thread), then
runs MLAS's SGEMM with beta = 1, which reads that output back and adds to it. A MatMul without
a bias runs the same SGEMM with beta = 0.

Per shape (M, N, K) of the linear layers AutoViT's subnets and the zoo run (one node, B a
constant: both prepack it), at 1 and 2 intra-op threads, the median run of the MatMul alone and
of the Gemm with a bias of N floats; their difference is what the bias costs, since both
sessions bind the same input and output. Prints one JSON object: per shape and thread count
the two medians (us), the difference (us), the output's bytes and the rate the difference
amounts to over them (GB/s of output written once more).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (M, N, K): tokens x out features x in features, from the random subnets' and the zoo's linear
# layers (benchmarks/results/cpu_per_op_s30_after.json's Gemm nodes), and a classifier
SHAPES = ((1024, 384, 64), (784, 384, 96), (784, 144, 96), (256, 432, 96), (196, 768, 192),
          (196, 192, 768), (49, 1024, 256), (1, 1000, 1152))


def linear(m: int, n: int, k: int, bias: bool) -> bytes:
    """ONNX bytes of one linear layer: MatMul (no bias) or Gemm with a bias of `n` floats."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.05, "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "c"))
        node = helper.make_node("Gemm", ["x", "w", "c"], ["y"])
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (m, k))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (m, n))], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--out", help="also write the JSON here (atomically)")
    args = ap.parse_args()
    if args.reps < 10:
        raise SystemExit("error: --reps must be at least 10 (runs per session for a median)")
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.ort_profile import median_run_ms, session

    out: dict = {"reps": args.reps, "shapes": {}}
    for m, n, k in SHAPES:
        row: dict = {"out_bytes": m * n * 4}
        for threads in (1, 2):
            # alternate the two sessions' timing rounds, so that a slow spell hits both
            sessions = {b: session(linear(m, n, k, b), threads) for b in (False, True)}
            meds: dict = {False: [], True: []}
            for _ in range(3):
                for b in (False, True):
                    meds[b].append(median_run_ms(sessions[b], (m, k), args.reps // 3, warmup=20) * 1e3)
            mm, gemm = (float(np.median(meds[b])) for b in (False, True))
            extra = gemm - mm
            row[f"threads_{threads}"] = {"matmul_us": round(mm, 2), "gemm_bias_us": round(gemm, 2),
                                         "bias_us": round(extra, 2),
                                         "gbps": round(m * n * 4 / (extra * 1e3), 2) if extra > 0 else None}
        out["shapes"][f"{m}x{n}x{k}"] = row
        print(m, n, k, row, file=sys.stderr)
    text = json.dumps(out, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
