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
a `validate --json` output (the random subnets and the zoo it rebuilds). Prints one JSON object;
`row_costs` splits Softmax's and LayerNorm's kernel time into per-row and per-element parts;
`op_types` compares the model with each onnxruntime op type's kernels (less the profiler's own
`--node-us` per node), scaled by their network's predicted / measured run; `reorders` counts the
NCHW <-> blocked reorders the model prices against the ReorderInput / ReorderOutput nodes
onnxruntime ran, per set, with the networks whose counts differ; `depthwise` fits the depthwise
kernels' us against their outputs, measured and modelled, per filter size.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def node_class(node: dict) -> str:
    """A node record's op class (records collected before `class` was stored carry the shapes)."""
    from autovit.latmodel.ort_profile import op_class

    return node.get("class") or op_class(node["op"], node.get("in"), node.get("param_bytes", 0))


def timed_nodes(onnx_bytes: bytes, shape, threads: int, runs: int) -> dict:
    """{'run_ms' (unprofiled), 'profiled_run_ms', 'nodes'}: the profiler's own cost is the difference."""
    from autovit.latmodel.ort_profile import median_run_ms, node_times, session

    run_ms = median_run_ms(session(onnx_bytes, threads), shape, runs)
    with tempfile.TemporaryDirectory() as d:
        profiled = median_run_ms(session(onnx_bytes, threads, d + "/p"), shape, runs)
    return {"run_ms": run_ms, "profiled_run_ms": profiled, "nodes": node_times(onnx_bytes, shape, threads, runs)}


def networks(n_random: int) -> dict[str, tuple]:
    """name -> (build, input shape): the calib50 blocks, the default zoo, n random subnets (seed 0)."""
    from autovit.nas.blocks import calib50
    from autovit.latmodel.validate import DEFAULT_ZOO, zoo_candidates
    from autovit.nas.latency import random_candidates

    out = {"calib50|" + b.key: ((lambda b=b: b.build()), b.input_shape()) for b in calib50()}
    for c in zoo_candidates(list(DEFAULT_ZOO)) + random_candidates(n_random, ["xxs", "xs", "s"], 0):
        out[c.name] = (c.build, c.shape)
    return out


def collect(args) -> None:
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.convert import export_onnx_bytes

    out = Path(args.data) / f"per_op_t{args.threads}.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    for name, (build, shape) in networks(args.random).items():
        if name not in res:
            res[name] = {"shape": list(shape), **timed_nodes(export_onnx_bytes(build().eval(), shape), shape,
                                                             args.threads, args.runs)}
            atomic_write_text(out, json.dumps(res))  # resumable
            print(f"{name}: {res[name]['run_ms']:.3f} ms", file=sys.stderr)


def group_of(name: str) -> str:
    return "calib50" if name.startswith("calib50|") else "zoo" if name.startswith("timm:") else "random"


def graph_of(name: str, build, shape, cache: Path):
    from benchmarks.cpu_whole_network import cached_graph

    return cached_graph(cache, name.replace("|", "_").replace("/", "_")[:150], build, tuple(shape))


_PRICED: dict = {}


def priced(name: str, builders: dict, profile, cache: Path):
    """(graph, the model's estimate on `profile`) of collected network `name`, each priced once per
    profile: every view of this script reads the same estimate."""
    from autovit.latmodel.estimate import estimate

    hit = _PRICED.get((name, id(profile)))
    if hit is None or hit[0] is not profile:  # the profile kept beside it: an id is not reused while cached
        g = graph_of(name, *builders[name], cache)
        hit = _PRICED[(name, id(profile))] = (profile, g, estimate(g, profile))
    return hit[1], hit[2]


def profiler_ms_per_node(r: dict) -> float:
    """The profiler's own cost per node of one collected network: (profiled run - run) / nodes, ms."""
    return (r["profiled_run_ms"] - r["run_ms"]) / max(len(r["nodes"]), 1)


def residuals(res: dict, builders: dict, profile, cache: Path) -> dict:
    """Per set and class: predicted ms, measured kernel ms, kernel and node counts."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: {"pred_ms": 0.0, "ort_ms": 0.0, "kernels": 0, "nodes": 0}))
    overhead: dict = defaultdict(list)
    for name, r in res.items():
        g = group_of(name)
        for k in priced(name, builders, profile, cache)[1].kernels:
            if k.ms > 0:
                a = acc[g][k.kernel.category]
                a["pred_ms"] += k.ms
                a["kernels"] += 1
        for n in r["nodes"]:
            a = acc[g][node_class(n)]
            a["ort_ms"] += n["ms"]
            a["nodes"] += 1
        overhead[g].append(1e3 * profiler_ms_per_node(r))
    out = {}
    for g, cats in acc.items():
        out[g] = {"profiler_us_per_node_median": float(np.median(overhead[g])),
                  "classes": {c: {**a, "ratio": a["pred_ms"] / a["ort_ms"] if a["ort_ms"] else None,
                                  "ort_us_per_node": 1e3 * a["ort_ms"] / a["nodes"] if a["nodes"] else None}
                              for c, a in sorted(cats.items(), key=lambda kv: -kv[1]["ort_ms"])}}
    return out


ROW_OPS = ("Softmax", "LayerNormalization")


def matched_nodes(res: dict, builders: dict, profile, cache: Path):
    """Yields (network name, its collected record, a profiled node, the model's KernelTime of that
    node) for every node the model's kernels on `profile` name, matched by output tensor; networks
    `builders` does not know are skipped."""
    for name, r in res.items():
        if name not in builders:
            continue
        g, est = priced(name, builders, profile, cache)
        kernels = est.kernels
        # onnxruntime names a node it rewrote by its output, one it kept by the ONNX node's name
        by_out = {t: kt for kt in kernels for o in kt.kernel.ops for t in [o, *g.op(o).outputs]}
        for n in r["nodes"]:
            kt = by_out.get(n["name"]) or by_out.get(ort_node_source(n["name"]))
            if kt is not None:
                yield name, r, n, kt


def ort_node_source(name: str) -> str:
    """The ONNX node or tensor an onnxruntime node name comes from: a node its NCHWc transformer
    moved to the blocked layout is named by its output + "_nchwc"; one a fusion made is named by
    the first fused node + "/<Name>Fusion" (MatMulAddFusion, QuickGeluFusion/)."""
    name = name.removesuffix("_nchwc")
    parts = name.rstrip("/").split("/")
    kept = list(parts)
    while len(kept) > 1 and "Fusion" in kept[-1]:
        kept.pop()
    return "/".join(kept) if len(kept) < len(parts) else name


def row_costs(res: dict, builders: dict, profile, cache: Path) -> dict:
    """Per row-reducing op type (ROW_OPS): a least-squares fit of onnxruntime's kernel time, less
    the profiler's own cost per node of its network, as const + ns x rows + ns x elements, over
    every such node the model's kernels name (matched by output tensor); with the median model
    ms / measured ms. Tells a per-row cost from a per-element one (docs/COST_MODEL.md, "Softmax rows")."""
    pts: dict = defaultdict(list)
    for _, r, n, kt in matched_nodes(res, builders, profile, cache):
        if n["op"] in ROW_OPS and kt.kernel.rows:
            over = profiler_ms_per_node(r)
            pts[n["op"]].append((kt.kernel.rows, kt.kernel.out_elems, (n["ms"] - over) * 1e6, kt.ms * 1e6))
    out = {}
    for op, rows in pts.items():
        a = np.array(rows, float)
        coef, *_ = np.linalg.lstsq(np.c_[np.ones(len(a)), a[:, 0], a[:, 1]], a[:, 2], rcond=None)
        big = a[a[:, 2] > 20e3]  # nodes well above the profiler's own cost
        out[op] = {"nodes": len(a), "const_ns": float(coef[0]), "ns_per_row": float(coef[1]), "ns_per_elem": float(coef[2]),
                   "model_over_measured_median": float(np.median(big[:, 3] / big[:, 2])) if len(big) else None,
                   "nodes_over_20us": len(big)}
    return out


def op_type_residuals(res: dict, builders: dict, profile, cache: Path, node_us: float) -> dict:
    """Per set and (onnxruntime op type, model category): the model's ms of the kernels those nodes
    name (matched_nodes, each kernel once) beside the nodes' kernel ms less `node_us` each (what
    onnxruntime's profiler adds inside a kernel's event: benchmarks/ort_core_handoff.py), the
    latter times its network's predicted / measured run time: in a network priced right overall,
    a ratio above 1 is an op type priced too slow against the rest, below 1 too fast."""
    level = {name: priced(name, builders, profile, cache)[1].latency_ms / r["run_ms"]
             for name, r in res.items() if name in builders}
    acc: dict = defaultdict(lambda: defaultdict(lambda: {"pred_ms": 0.0, "measured_ms": 0.0, "nodes": 0}))
    seen: set = set()
    for name, _, n, kt in matched_nodes(res, builders, profile, cache):
        a = acc[group_of(name)][f"{n['op']}:{kt.kernel.category}"]
        a["measured_ms"] += (n["ms"] - node_us * 1e-3) * level[name]
        a["nodes"] += 1
        if (name, id(kt)) not in seen:
            seen.add((name, id(kt)))
            a["pred_ms"] += kt.ms
    return {g: {"median_level": float(np.median([v for k, v in level.items() if group_of(k) == g])),
                "op_types": {t: {**a, "ratio": a["pred_ms"] / a["measured_ms"] if a["measured_ms"] > 0 else None}
                             for t, a in sorted(cats.items(), key=lambda kv: -kv[1]["measured_ms"])}}
            for g, cats in acc.items()}


REORDER_OPS = ("ReorderInput", "ReorderOutput")


def reorder_residuals(res: dict, builders: dict, profile, cache: Path, node_us: float) -> dict:
    """Per set: the NCHW <-> blocked reorders the model prices (KernelTime.reorders, their ms) beside
    the ReorderInput / ReorderOutput nodes onnxruntime ran (their kernel ms less `node_us` each),
    with the networks whose counts differ: whether the model inserts the reorders onnxruntime's
    NCHWc rewrite does (mechanism nchwc_tensors), and what it charges for them."""
    acc: dict = defaultdict(lambda: {"model_reorders": 0, "model_ms": 0.0, "ort_reorders": 0, "ort_ms": 0.0,
                                     "networks": 0, "count_differs": {}})
    for name, r in res.items():
        if name not in builders:
            continue
        kernels = priced(name, builders, profile, cache)[1].kernels
        ours = sum(kt.reorders for kt in kernels)
        theirs = [n["ms"] - node_us * 1e-3 for n in r["nodes"] if n["op"] in REORDER_OPS]
        a = acc[group_of(name)]
        a["model_reorders"] += ours
        a["model_ms"] += sum(kt.reorder_ms for kt in kernels)
        a["ort_reorders"] += len(theirs)
        a["ort_ms"] += sum(theirs)
        a["networks"] += 1
        if ours != len(theirs):
            a["count_differs"][name] = [ours, len(theirs)]
    return {g: {**a, "ms_ratio": a["model_ms"] / a["ort_ms"] if a["ort_ms"] > 0 else None} for g, a in acc.items()}


def depthwise_slopes(res: dict, builders: dict, profile, cache: Path, node_us: float) -> dict:
    """Per filter size of the depthwise convolutions onnxruntime ran blocked: least-squares lines
    of its kernel us (less `node_us`) and of the model's against the outputs (us + us per 1,000
    outputs), over every such node the model's kernels name; the per-output slopes' ratio times
    the profile's efficiency.nchwc_dwconv is the share of the FMA peak MLAS's kernel reached."""
    pts: dict = defaultdict(list)
    seen: set = set()
    for name, _, n, kt in matched_nodes(res, builders, profile, cache):
        k = kt.kernel
        if n["op"] == "Conv" and k.category == "dwconv" and k.conv is not None and (name, id(kt)) not in seen:
            seen.add((name, id(kt)))
            pts[k.conv[4]].append((k.out_elems / 1e3, (n["ms"] - node_us * 1e-3) * 1e3, kt.ms * 1e3))
    out = {}
    for taps, rows in sorted(pts.items()):
        if len(rows) < 5:
            continue
        a = np.array(rows, float)
        x = np.c_[np.ones(len(a)), a[:, 0]]
        (m0, m1), (p0, p1) = (np.linalg.lstsq(x, a[:, i], rcond=None)[0] for i in (1, 2))
        out[f"{taps}_taps"] = {"nodes": len(a), "measured_us": [round(m0, 2), round(m1, 4)],
                               "model_us": [round(p0, 2), round(p1, 4)],
                               "implied_nchwc_dwconv": round(profile.eff_nchwc_dw * p1 / m1, 3) if m1 > 0 else None}
    return out


def block_op_ms(res: dict, blocks) -> list[dict | None]:
    """Per block: its collected kernel ms per op class (None where not collected)."""
    out = []
    for b in blocks:
        r = res.get("calib50|" + b.key)
        per: dict[str, float] = defaultdict(float)
        for n in (r or {}).get("nodes", []):
            per[node_class(n)] += n["ms"]
        out.append(dict(per) if r else None)
    return out


def fit_experiment(args, res: dict, builders: dict, cache: Path) -> dict:
    from autovit.cli.lat import reference_network
    from autovit.latmodel.estimate import estimate
    from autovit.latmodel.fit import ProfileCalibrator
    from autovit.latmodel.hardware import profile_at_threads
    from autovit.latmodel.lut import load_lut
    from autovit.nas.blocks import BlockSpec
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
        c = cal.fit(blocks, measured, net, block_op_ms(res, blocks) if variant.endswith("ops") else None)
        prof = cal.fitted_profile()
        per: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for (r, _), g in zip(rows, graphs):
            per[r["group"]][0].append(estimate(g, prof).latency_ms)
            per[r["group"]][1].append(r["measured_ms"])
        out[variant] = {"points": c.n_points, "rms_log_error": c.rms_log_error, "params": c.params,
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
    ap.add_argument("--node-us", type=float, default=2.8,
                    help="us onnxruntime's profiler adds inside every kernel's event (op_types; ort_core_handoff.py)")
    args = ap.parse_args()
    if not 0 <= args.node_us < 1000:
        raise SystemExit(f"error: --node-us must be from 0 to 1000 (us the profiler adds per node), got {args.node_us:g}")
    Path(args.data).mkdir(parents=True, exist_ok=True)
    from autovit.latmodel.errors import AutoVitError
    from autovit.latmodel.hardware import load_profile

    if args.collect:
        collect(args)
    try:
        profile = load_profile(args.hw)
    except AutoVitError as e:  # e.g. no local-cpu@calibrated yet: the timings are saved, say so
        raise SystemExit(f"error: {e}; the per-op timings are in {args.data}: price them with --hw PROFILE") from None
    res = json.loads((Path(args.data) / f"per_op_t{args.threads}.json").read_text())
    builders = networks(args.random)
    cache = Path(args.graphs)
    cache.mkdir(parents=True, exist_ok=True)
    out = {"threads": args.threads, "hw": args.hw,
           "residuals": residuals(res, builders, profile, cache), "row_costs": row_costs(res, builders, profile, cache),
           "op_types": op_type_residuals(res, builders, profile, cache, args.node_us),
           "reorders": reorder_residuals(res, builders, profile, cache, args.node_us),
           "depthwise": depthwise_slopes(res, builders, profile, cache, args.node_us)}
    if args.lut and args.validation:
        out["fit_experiment"] = fit_experiment(args, res, builders, cache)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
