"""Per-op residuals on this machine (issue 12): which op classes does the calibrated CPU model
misprice? onnxruntime's own profiler times every kernel of a network; this compares those times,
op class by op class, with the model's kernels.

    python benchmarks/cpu_per_op.py --collect --threads 1 --data DIR   # timing: a quiet machine, ~2 min
    python benchmarks/cpu_per_op.py --data DIR --threads 1 --hw local-cpu@calibrated \\
        [--lut LUT --validation VALIDATE.json]                         # offline

--collect exports the calib50 blocks, the default zoo and `--random` random subnets (seed 0) and
runs each twice with onnxruntime at `--threads`: without profiling (the run time) and with
(median per node over `--runs` runs). Writes DIR/per_op_t{threads}.json.

Offline, per set (calib50, zoo, random) and op class (the model's categories; onnxruntime nodes
are mapped by op type, a convolution with one input channel per group is depthwise, a MatMul
without weights is attention): the model's ms beside onnxruntime's kernel ms, and the profiler's
own cost per node ((profiled run - run) / nodes), which inflates small kernels: only classes whose
kernels take far longer than that say anything.

With --lut and --validation, the fit experiment: `calibrate`'s fit (the LUT's blocks and its
reference network) against the same fit with each block's large per-class kernel times
(>= --min-ms, scaled to the block's LUT time) as extra points, each scored on the measured rows of
a `validate --json` output (the random subnets and the zoo it rebuilds). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

ELEMENTWISE = {"Add", "Mul", "Sub", "Div", "Pow", "Sqrt", "Erf", "Where", "Equal", "Neg", "Reciprocal"}
ACTIVATIONS = {"Relu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Tanh", "QuickGelu", "FastGelu",
               "BiasGelu"}
NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "BatchNormalization",
         "GroupNorm", "InstanceNormalization", "ReduceMean"}
MATMULS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
LAYOUT = {"Transpose", "Reshape", "Split", "Concat", "ReorderInput", "ReorderOutput", "Flatten", "Squeeze",
          "Unsqueeze", "Gather", "Slice", "Expand", "Shape", "Identity", "Pad", "Tile", "Resize"}


def ort_category(node: dict) -> str:
    """The model's category (kernels.py) of one onnxruntime profiler node record."""
    op = node["op"]
    if op in ("Conv", "FusedConv", "NchwcConv"):
        shapes = node.get("in") or []
        w = list(shapes[1].values())[0] if len(shapes) > 1 and isinstance(shapes[1], dict) else None
        return "dwconv" if w and len(w) == 4 and w[1] == 1 and w[0] > 1 else "conv"
    if op in MATMULS:
        return "linear" if node.get("param_bytes", 0) > 0 else "attention"
    if op == "Softmax":
        return "attention"
    if op in NORMS:
        return "norm"
    if op in ACTIVATIONS:
        return "activation"
    if op in ELEMENTWISE:
        return "elementwise"
    if "Pool" in op:
        return "pooling"
    return "layout" if op in LAYOUT else "other"



def _session(onnx_bytes: bytes, threads: int, profile_dir: str | None):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir:
        o.enable_profiling, o.profile_file_prefix = True, profile_dir + "/p"
    return ort.InferenceSession(onnx_bytes, o, providers=["CPUExecutionProvider"])


def _median_run_ms(sess, feed, runs: int) -> float:
    for _ in range(5):
        sess.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(t))


def node_times(onnx_bytes: bytes, shape, threads: int, runs: int) -> dict:
    """{'run_ms', 'profiled_run_ms', 'nodes': [{name, op, in, param_bytes, ms}]}: medians over `runs`."""
    feed_value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    plain = _session(onnx_bytes, threads, None)
    run_ms = _median_run_ms(plain, {plain.get_inputs()[0].name: feed_value}, runs)
    with tempfile.TemporaryDirectory() as d:
        sess = _session(onnx_bytes, threads, d)
        profiled = _median_run_ms(sess, {sess.get_inputs()[0].name: feed_value}, runs)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per, info = defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name, a = e["name"][: -len("_kernel_time")], e["args"]
            per[name].append(e["dur"] / 1e3)
            info[name] = {"op": a.get("op_name"), "in": a.get("input_type_shape"),
                          "param_bytes": int(a.get("parameter_size", 0) or 0)}
    return {"run_ms": run_ms, "profiled_run_ms": profiled,
            "nodes": [{"name": n, **info[n], "ms": float(np.median(v[-runs:]))} for n, v in per.items()]}


def networks(n_random: int) -> dict[str, tuple]:
    """name -> (build, input shape): the calib50 blocks, the default zoo, n random subnets (seed 0)."""
    from autovit.latmodel.modules import calib50
    from autovit.latmodel.validate import DEFAULT_ZOO, random_candidates, zoo_candidates

    out = {"calib50|" + b.key: ((lambda b=b: b.build()), b.input_shape()) for b in calib50()}
    for c in zoo_candidates(list(DEFAULT_ZOO)) + random_candidates(n_random, ["xxs", "xs", "s"], 0):
        out[c.name] = (c.build, c.shape)
    return out


def collect(args) -> None:
    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.export import export_onnx_bytes

    out = Path(args.data) / f"per_op_t{args.threads}.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    for name, (build, shape) in networks(args.random).items():
        if name not in res:
            res[name] = {"shape": list(shape), **node_times(export_onnx_bytes(build().eval(), shape), shape,
                                                            args.threads, args.runs)}
            atomic_write_text(out, json.dumps(res))  # resumable
            print(f"{name}: {res[name]['run_ms']:.3f} ms", file=sys.stderr)


def group_of(name: str) -> str:
    return "calib50" if name.startswith("calib50|") else "zoo" if name.startswith("timm:") else "random"


def graph_of(name: str, build, shape, cache: Path):
    from benchmarks.cpu_whole_network import cached_graph

    return cached_graph(cache, name.replace("|", "_").replace("/", "_")[:150], build, tuple(shape))


def residuals(res: dict, builders: dict, profile, cache: Path) -> dict:
    """Per set and class: predicted ms, measured kernel ms, kernel and node counts."""
    from autovit.latmodel.estimate import estimate

    acc: dict = defaultdict(lambda: defaultdict(lambda: {"pred_ms": 0.0, "ort_ms": 0.0, "kernels": 0, "nodes": 0}))
    overhead: dict = defaultdict(list)
    for name, r in res.items():
        g = group_of(name)
        for k in estimate(graph_of(name, *builders[name], cache), profile).kernels:
            if k.ms > 0:
                a = acc[g][k.kernel.category]
                a["pred_ms"] += k.ms
                a["kernels"] += 1
        for n in r["nodes"]:
            a = acc[g][ort_category(n)]
            a["ort_ms"] += n["ms"]
            a["nodes"] += 1
        overhead[g].append(1e3 * (r["profiled_run_ms"] - r["run_ms"]) / max(len(r["nodes"]), 1))
    out = {}
    for g, cats in acc.items():
        out[g] = {"profiler_us_per_node_median": float(np.median(overhead[g])),
                  "classes": {c: {**a, "ratio": a["pred_ms"] / a["ort_ms"] if a["ort_ms"] else None,
                                  "ort_us_per_node": 1e3 * a["ort_ms"] / a["nodes"] if a["nodes"] else None}
                              for c, a in sorted(cats.items(), key=lambda kv: -kv[1]["ort_ms"])}}
    return out


def op_points(cal, blocks, measured, res: dict, min_ms: float):
    """(pricers, ms, kinds) of each block's per-class kernel time >= min_ms, scaled so that the
    block's profiled kernels sum to its LUT time (the profiler's inflation taken out pro rata)."""
    from autovit.latmodel.fit import block_model

    pricers, ms, kinds = [], [], []
    for b, lut_ms in zip(blocks, measured):
        r = res.get("calib50|" + b.key)
        if r is None:
            continue
        total = sum(n["ms"] for n in r["nodes"])
        by_class: dict[str, float] = defaultdict(float)
        for n in r["nodes"]:
            by_class[ort_category(n)] += n["ms"]
        model = block_model(b)
        for c, v in by_class.items():
            if v >= min_ms and c not in ("layout", "other", "elementwise"):
                pricers.append(lambda p, m=model, c=c: sum(k.ms for k in m.estimate(p).kernels
                                                         if k.kernel.category == c))
                ms.append(v * lut_ms / total)
                kinds.append("op:" + c)
    return pricers, ms, kinds


def fit_experiment(args, res: dict, builders: dict, cache: Path) -> dict:
    from autovit.cli.lat import reference_network
    from autovit.latmodel.estimate import estimate
    from autovit.latmodel.fit import ProfileCalibrator, network_pricer
    from autovit.latmodel.hardware import profile_at_threads
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.modules import BlockSpec
    from benchmarks.cpu_whole_network import candidates, ratio_metrics, rows_of

    lut = load_lut(args.lut, "local-cpu")
    base, _ = profile_at_threads("local-cpu", args.threads)
    entries = [e for e in lut.entries.values() if e.get("mode") == "isolated"]
    blocks = [BlockSpec.from_dict(e["block"]) for e in entries]
    measured = [float(e["median_ms"]) for e in entries]
    net = reference_network(lut)
    rows = [(r, c) for r, c in candidates(rows_of(Path(args.validation)))]
    graphs = [graph_of(c.name, c.build, c.shape, cache) for _, c in rows]
    out = {}
    for variant in ("blocks+network", "blocks+network+ops"):
        cal = ProfileCalibrator(base)
        pricers = [cal._pricer(b) for b in blocks] + [network_pricer(net.source)]
        ms, kinds, weights = measured + [net.ms], [b.kind for b in blocks] + ["network"], [1.0] * len(blocks) + [net.weight]
        if variant.endswith("ops"):
            p, m, k = op_points(cal, blocks, measured, res, args.min_ms)
            pricers, ms, kinds, weights = pricers + p, ms + m, kinds + k, weights + [1.0] * len(p)
        c = cal.fit_pricers(pricers, ms, kinds, weights)
        prof = cal.fitted_profile()
        per: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for (r, _), g in zip(rows, graphs):
            per[r["group"]][0].append(estimate(g, prof).latency_ms)
            per[r["group"]][1].append(r["measured_ms"])
        out[variant] = {"points": len(ms), "rms_log_error": c.rms_log_error, "params": c.params,
                        "at_bound": c.at_bound, "sets": {g: ratio_metrics(*v) for g, v in per.items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of per_op_t{threads}.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect", action="store_true", help="time the networks (a quiet machine)")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--hw", default="local-cpu@calibrated")
    ap.add_argument("--lut", help="calibration LUT measured at --threads (fit experiment)")
    ap.add_argument("--validation", help="`validate --json` output measured at --threads (fit experiment)")
    ap.add_argument("--min-ms", type=float, default=0.1, help="smallest per-class kernel time used as a fit point")
    ap.add_argument("--graphs", default=str(HERE / ".cache" / "per_op"), help="cache of exported graphs")
    args = ap.parse_args()
    Path(args.data).mkdir(parents=True, exist_ok=True)
    if args.collect:
        collect(args)
    from autovit.latmodel.hardware import load_profile

    res = json.loads((Path(args.data) / f"per_op_t{args.threads}.json").read_text())
    builders = networks(args.random)
    cache = Path(args.graphs)
    cache.mkdir(parents=True, exist_ok=True)
    out = {"threads": args.threads, "hw": args.hw,
           "residuals": residuals(res, builders, load_profile(args.hw), cache)}
    if args.lut and args.validation:
        out["fit_experiment"] = fit_experiment(args, res, builders, cache)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
