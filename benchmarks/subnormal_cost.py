"""What a subnormal float costs the CPU kernels here (issue 12; timing: run alone, quiet).

    python benchmarks/subnormal_cost.py [--runs 30] > benchmarks/results/subnormal_cost_<tag>.json
    python benchmarks/subnormal_cost.py --torch compile > benchmarks/results/subnormal_cost_torch_<tag>.json

x86 cores handle an operand or result below fp32's normal range (|x| < 1.2e-38) in a microcode
assist unless the thread flushes them (FTZ/DAZ), which onnxruntime's threads do not by default.
A softmax whose scores carry a large negative additive mask (timm's shifted-window Swin adds
-100) writes subnormal probabilities: exp(-100) = 3.7e-44. This script times the pattern
Add(scores x 0.01, constant mask) -> Softmax(last axis) -> MatMul(probabilities, v) on one thread, with
masks that leave every probability normal (0), make some subnormal (-100), or push them below
exp's range (-1000: exactly 0 after the softmax), and prints one JSON object (onnxruntime by
default; `--torch eager|compile`: the same pattern in PyTorch, eagerly or under torch.compile, as
the `cpu-x86` profiles' measurements ran):

- `gemm_assist_ns`: ns per multiply-add vector instruction that reads a subnormal probability.
  MLAS's SGEMM broadcasts each element of the left matrix over the right matrix's columns in
  vectors of `lanes` floats, so a subnormal element costs ceil(columns / lanes) of them; the fit
  is over v's widths 16..64 (the `--widths`).
- `softmax_element_ns` / `softmax_underflow_element_ns`: ns per subnormal probability / per
  probability that rounds to 0 (its exp having left the normal range), over two masks of 24 of
  49 columns: contiguous (columns 25-48, three 16-float chunks of a row) and scattered (every
  other column, four chunks). A cost per vector chunk would make the scattered mask a third
  dearer; `ns_by_pattern` shows how far each runtime is from that (onnxruntime's MLAS softmax
  sits between the two readings, torch.compile's loop is per element).
- the same as assist counts (element ns / gemm_assist_ns), which is how the profiles state them.
- `assist_cycles`: gemm_assist_ns at the clock the GEMM probe `profile` runs reads on two threads
  (GFLOP/s / the FLOPs per clock of two cores of the detected `local-cpu`), the clock a
  calibrated `local-cpu` profile writes as [cpu] ghz: the profiles give cycles, which a part's
  clock turns into ns.

    python benchmarks/subnormal_cost.py --network swin_tiny_patch4_window7_224 --threads 2 --hw PROFILE

checks the result on a whole network instead: onnxruntime's profiler times every Softmax and the
MatMul reading it (median per node over --runs runs), printed beside the model's kernel ms with
and without the mechanism (--hw: a local-cpu profile, e.g. a calibrated one).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# heads x windows of Swin-T's first stage at batch 1: 64 windows of 7 x 7 tokens, 3 heads
BATCH, HEADS, TOKENS = 64, 3, 49


def masked_attention(mask: np.ndarray, width: int | None) -> bytes:
    """ONNX: scores (input) + mask -> Softmax(-1) [-> MatMul with a constant v of `width` columns]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Scores of a few hundredths, as a randomly initialised network's are: every masked probability
    # is then exp(mask) / (unmasked entries), a subnormal of at least one unit when the mask is -100
    # and 25 entries stay unmasked (log = -103.2 > -103.97, below which it rounds to 0); scores of
    # unit spread would round about half of them to 0 and halve the product's assists.
    nodes = [helper.make_node("Mul", ["scores", "temperature"], ["scaled"]),
             helper.make_node("Add", ["scaled", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["probs"], axis=-1)]
    inits = [numpy_helper.from_array(mask.astype(np.float32), "mask"),
             numpy_helper.from_array(np.array(0.01, np.float32), "temperature")]
    out = "probs"
    if width:
        v = np.random.default_rng(1).standard_normal((BATCH, HEADS, TOKENS, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(v, "v"))
        nodes.append(helper.make_node("MatMul", ["probs", "v"], ["out"]))
        out = "out"
    g = helper.make_graph(nodes, "masked_attention",
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [BATCH, HEADS, TOKENS, TOKENS])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def mask_of(value: float, columns: list[int]) -> np.ndarray:
    m = np.zeros((1, 1, TOKENS, TOKENS), np.float32)
    m[..., columns] = value
    return m


def torch_pattern_ms(mask: np.ndarray, width: int | None, runs: int, mode: str) -> float:
    """The same pattern in PyTorch on one thread (median ms of `runs` calls, the faster of two)."""
    import time

    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(BATCH, HEADS, TOKENS, TOKENS, generator=g)
    v = torch.randn(BATCH, HEADS, TOKENS, width or 1, generator=g)
    m = torch.from_numpy(mask)

    def pattern(s, m, v):
        p = (s * 0.01 + m).softmax(-1)
        return p @ v if width else p

    fn = torch.compile(pattern) if mode == "compile" else pattern
    best = float("inf")
    with torch.no_grad():
        for _ in range(2):
            for _ in range(5):
                fn(scores, m, v)
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn(scores, m, v)
                t.append(time.perf_counter() - t0)
            best = min(best, float(np.median(t)) * 1e3)
    return best


def network_check(name: str, threads: int, runs: int, hw: str) -> dict:
    """Per Softmax of timm model `name`, and the MatMul reading it: onnxruntime's kernel ms (its
    profiler, median per node) and the model's, with and without subnormal_assists."""
    from dataclasses import replace

    import onnx

    import autovit.nas  # noqa: F401 - registers the autovit: source
    from autovit.latmodel.convert import export_onnx_bytes
    from autovit.latmodel.costs import price_graph
    from autovit.latmodel.graph import build_graph
    from autovit.latmodel.hardware import profile_at_threads
    from autovit.latmodel.kernels import form_kernels
    from autovit.latmodel.ort_profile import node_times
    from autovit.latmodel.timing import kernel_time
    from autovit.latmodel.validate import zoo_candidates

    c = zoo_candidates([name])[0]
    onnx_bytes = export_onnx_bytes(c.build().eval(), c.shape)
    g = build_graph(onnx.load_from_string(onnx_bytes), source=c.name)
    on = profile_at_threads(hw, threads)[0]
    off = replace(on, mechanisms=tuple(m for m in on.mechanisms if m != "subnormal_assists"))
    kernels = {k.name: k for k in form_kernels(g, price_graph(g), on)}
    wanted = {k.name for k in kernels.values() if "Softmax" in k.op_types}
    wanted |= {n for n in g.order for p in g.graph.predecessors(n) if p in wanted and g.op(n).op_type == "MatMul"}
    measured = {r["name"]: r["ms"] for r in node_times(onnx_bytes, c.shape, threads, runs)}
    rows = []
    for n in g.order:
        if n in wanted and n in kernels and n in measured:
            k = kernels[n]
            rows.append({"node": n, "op": g.op(n).op_type, "measured_ms": round(measured[n], 4),
                         "model_ms": round(kernel_time(k, on, "fp32", 1.0).ms, 4),
                         "model_ms_without": round(kernel_time(k, off, "fp32", 1.0).ms, 4),
                         "masked": bool(k.exp_subnormal or k.exp_zero or k.subnormal_reads)})
    totals = {key: round(sum(r[key] for r in rows if r["masked"]), 3) for key in ("measured_ms", "model_ms", "model_ms_without")}
    return {"network": c.name, "threads": threads, "runs": runs, "hw": hw, "masked_kernels_total": totals, "kernels": rows}


def _fma_units() -> int:
    """FMA units per core of the local-cpu profile (its [cpu] table, as it loads)."""
    from autovit.latmodel.hardware import _resolved_dict

    return int(_resolved_dict("local-cpu")[0]["cpu"]["fma_units"])


def main() -> None:
    from autovit.latmodel.ort_profile import median_run_ms, session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--network", help="a timm model: check its masked softmaxes instead of timing the pattern")
    ap.add_argument("--threads", type=int, default=1, help="with --network: onnxruntime's intra-op threads")
    ap.add_argument("--hw", default="local-cpu", help="with --network: the profile to price its kernels with")
    ap.add_argument("--torch", choices=("eager", "compile"), help="time PyTorch's kernels instead of onnxruntime's")
    ap.add_argument("--lanes", type=int, help="fp32 lanes of the machine's vectors (default: the detected local-cpu's; AVX-512: 16, AVX2: 8)")
    ap.add_argument("--widths", default="16,32,64", help="columns of v to fit the GEMM's cost per instruction over")
    args = ap.parse_args()
    if args.lanes is None:
        from autovit.latmodel.hardware import load_profile

        args.lanes = load_profile("local-cpu").matrix_align["fp32"]
    if args.runs < 3 or args.lanes < 1:
        sys.exit("error: --runs must be at least 3 and --lanes at least 1")
    try:
        widths = [int(w) for w in args.widths.split(",") if w]
    except ValueError:
        sys.exit(f"error: --widths '{args.widths}' is not a comma-separated list of integers")
    if not widths or min(widths) < 1:
        sys.exit(f"error: --widths '{args.widths}' needs one or more widths, each a positive integer")
    if args.network:
        from autovit.latmodel.errors import AutoVitError

        if args.threads < 1:
            sys.exit("error: --threads must be at least 1")
        try:
            print(json.dumps(network_check(args.network, args.threads, args.runs, args.hw), indent=1))
        except AutoVitError as e:
            sys.exit(f"error: {e}")
        return
    shape = (BATCH, HEADS, TOKENS, TOKENS)
    rows = BATCH * HEADS * TOKENS

    def ms(mask: np.ndarray, width: int | None) -> float:
        if args.torch:
            return torch_pattern_ms(mask, width, args.runs, args.torch)
        # one thread: the per-instruction cost, without the pool's split (onnxruntime's threads each
        # pay their share of the assists; the model divides by the threads as for any other work)
        sess = session(masked_attention(mask, width), 1)
        return min(median_run_ms(sess, shape, args.runs) for _ in range(2))

    patterns = {"contiguous": list(range(25, TOKENS)), "scattered": list(range(1, TOKENS, 2))}
    out: dict = {"runtime": f"torch {args.torch}" if args.torch else "onnxruntime", "lanes": args.lanes, "runs": args.runs, "threads": 1,
                 "shape": {"batch": BATCH, "heads": HEADS, "tokens": TOKENS}, "softmax": {}, "gemm": {}}
    base = ms(mask_of(0.0, []), None)
    out["softmax"]["unmasked_ms"] = round(base, 4)
    per_elem: dict[str, list[float]] = {"subnormal": [], "underflow": []}
    for name, cols in patterns.items():
        elements = rows * len(cols)
        for kind, value in (("subnormal", -100.0), ("underflow", -1000.0)):
            t = ms(mask_of(value, cols), None)
            per_elem[kind].append((t - base) * 1e6 / elements)
            out["softmax"][f"{name}_{kind}_ms"] = round(t, 4)
            print(f"softmax {name} {kind}: {t:.3f} ms ({per_elem[kind][-1]:.2f} ns per element)", file=sys.stderr)
    cols = patterns["contiguous"]
    softmax_ms = out["softmax"]["contiguous_subnormal_ms"]
    fits = []
    for w in widths:
        plain = ms(mask_of(0.0, cols), w) - base
        masked = ms(mask_of(-100.0, cols), w) - softmax_ms
        instructions = rows * len(cols) * math.ceil(w / args.lanes)
        fits.append((masked - plain) * 1e6 / instructions)
        out["gemm"][str(w)] = {"plain_ms": round(plain, 4), "subnormal_ms": round(masked, 4),
                               "ns_per_instruction": round(fits[-1], 2)}
        print(f"gemm width {w}: {plain:.3f} -> {masked:.3f} ms ({fits[-1]:.1f} ns per instruction)", file=sys.stderr)
    assist = float(np.median(fits))
    from autovit.latmodel.hardware import flops_per_clock, load_profile
    from autovit.latmodel.runner import sgemm_probe

    local = load_profile("local-cpu")
    probe = sgemm_probe("onnxruntime", 2)
    gflops = max(probe() for _ in range(10))
    ghz = gflops / flops_per_clock(2, local.matrix_align["fp32"] * 32, _fma_units())
    out["gemm_probe"] = {"gflops_2_threads": round(gflops, 1), "ghz": round(ghz, 3)}
    elem, under = float(np.median(per_elem["subnormal"])), float(np.median(per_elem["underflow"]))
    out["fit"] = {"gemm_assist_ns": round(assist, 2), "assist_cycles": round(assist * ghz, 1),
                  "softmax_element_ns": round(elem, 2), "softmax_underflow_element_ns": round(under, 2),
                  "softmax_subnormal_assists": round(elem / assist, 3),
                  "softmax_underflow_assists": round(max(under, 0.0) / assist, 3),
                  "ns_by_pattern": {k: dict(zip(patterns, (round(x, 2) for x in v))) for k, v in per_elem.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
