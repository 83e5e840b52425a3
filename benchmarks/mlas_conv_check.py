"""MLAS's direct convolution against onnxruntime's profiler (nothing timed; issue 12, §3.17).

    python benchmarks/mlas_conv_check.py [--data benchmarks/results/per_op_s27] [--threads 2] [--hw PROFILE]

Reads the per-node times `cpu_per_op.py --collect` saved (DIR/per_op_t{threads}.json) and, for every
dense convolution the model's kernels name (matched by output tensor, as cpu_per_op's row_costs),
the share of the FMA peak the mechanism mlas_conv_tiles gives it (timing.mlas_conv_share, local-cpu's
figures). Prints one JSON object:
- `resnets`: ResNet-18's and -50's convolutions grouped by filter size and output width: how many,
  the median measured GFLOP/s (kernel time as profiled) and the median share;
- `fit`: over every dense convolution, measured ms = c0 + FLOPs / rate, and the same with FLOPs /
  share, each fitted by least squares on relative error: c0 (ms), rate (GFLOP/s), and the spread
  of log(fitted / measured) (std, median of its absolute value);
- with --hw (a calibrated local-cpu profile), `depthwise`: every depthwise convolution node's
  model ms (that profile's) over its measured kernel ms, the median over all, over those above
  30 us, and per output width.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def conv_nodes(res: dict, builders: dict, profile, cache: Path) -> list[dict]:
    """Per dense convolution node: its network, FLOPs, measured ms, filter elements, output width, share."""
    from autovit.latmodel.timing import mlas_conv_share
    from benchmarks.cpu_per_op import matched_nodes

    out = []
    for name, _, n, kt in matched_nodes(res, builders, profile, cache):
        k = kt.kernel
        if n["op"] != "Conv" or k.category != "conv" or not k.conv or k.conv[3] != 1 or not k.conv_cols:
            continue
        out.append({"network": name, "flops": k.flops, "ms": n["ms"], "filter": k.conv[4], "width": k.conv_cols[1],
                    "share": mlas_conv_share(k, profile)})
    return out


def depthwise(res: dict, builders: dict, profile, cache: Path) -> dict:
    """Model ms / measured ms of the depthwise convolution nodes (see the module doc)."""
    from benchmarks.cpu_per_op import matched_nodes

    pts = [(kt.ms / n["ms"], n["ms"], kt.kernel.act_shapes[-1][-1])
           for _, _, n, kt in matched_nodes(res, builders, profile, cache)
           if kt.kernel.category == "dwconv" and kt.kernel.act_shapes and n["ms"] > 0]
    widths: dict = defaultdict(list)
    for ratio, _, w in pts:
        widths[w].append(ratio)
    return {"n": len(pts), "median": float(np.median([p[0] for p in pts])),
            "median_above_30us": float(np.median([p[0] for p in pts if p[1] > 0.03])),
            "by_width": {str(w): {"n": len(v), "median": float(np.median(v))} for w, v in sorted(widths.items())}}


def _in_repo(path: str) -> str:
    """`path` relative to the repository when it lies inside it (saved outputs name no machine's folders)."""
    p = Path(path).resolve()
    return str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else path


def fit(nodes: list[dict], shares: bool) -> dict:
    y = np.array([n["ms"] for n in nodes])
    x = np.array([n["flops"] / (n["share"] if shares else 1.0) for n in nodes]) / 1e9
    a = np.c_[np.ones(len(x)), x]
    w = 1.0 / y  # relative error
    (c0, c1), *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
    r = np.log((a @ np.array([c0, c1])) / y)
    return {"c0_ms": float(c0), "rate_gflops": float(1e3 / c1) if c1 > 0 else None,
            "log_std": float(r.std()), "median_abs_log": float(np.median(np.abs(r))), "n": len(y)}


def main() -> None:
    from autovit.latmodel.checks import read_json
    from autovit.latmodel.hardware import load_profile
    from benchmarks.cpu_per_op import networks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE / "results" / "per_op_s27"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--graphs", default=str(HERE / ".cache" / "per_op"))
    ap.add_argument("--hw", help="a calibrated local-cpu profile: adds the depthwise comparison")
    args = ap.parse_args()
    res = read_json(Path(args.data) / f"per_op_t{args.threads}.json", "per-op timings",
                    "collect them with `python benchmarks/cpu_per_op.py --collect --data DIR`")
    base = load_profile("local-cpu")
    profile = replace(base, mechanisms=tuple(m for m in base.mechanisms if m != "mlas_conv_tiles") + ("mlas_conv_tiles",))
    builders = networks(10)
    nodes = conv_nodes(res, builders, profile, Path(args.graphs))
    groups: dict = defaultdict(list)
    for n in nodes:
        if n["network"] in ("timm:resnet18", "timm:resnet50"):
            groups[f"{n['network'][5:]} k{n['filter']} w{n['width']}"].append(n)
    dw = depthwise(res, builders, load_profile(args.hw), Path(args.graphs)) if args.hw else None
    print(json.dumps({
        "data": _in_repo(args.data), "threads": args.threads, "hw": args.hw, "depthwise": dw,
        "resnets": {k: {"n": len(v), "gflops_median": float(np.median([n["flops"] / n["ms"] / 1e6 for n in v])),
                        "share_median": round(float(np.median([n["share"] for n in v])), 3)}
                    for k, v in sorted(groups.items())},
        "fit": {"flops": fit(nodes, False), "flops_over_share": fit(nodes, True)}}, indent=1))


if __name__ == "__main__":
    from autovit.latmodel.errors import AutoVitError

    try:
        main()
    except AutoVitError as e:  # a missing or broken input file, an unknown profile: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
