"""Does host_classes rank the HELP OFA subnets by its level or by its ratios?

    python benchmarks/host_level.py [--levels 10,20,20.5,30] [--n 400] [--seed 0]

Mechanism host_classes charges each eager call `dispatch_us` times its class's ratio to the
reference class (Add). That changes two things at once: the ratios between the classes (a
convolution or a BatchNorm costs 2-3x an element-wise op) and the average op's host cost (most
of an OFA subnet's kernels are convolutions and BatchNorms, so the average rises above
`dispatch_us`). A flat host cost equal to that average separates the two.

On the OFA rows that benchmarks/external.py scores (the same seeded sample, the same graphs from
its cache; v100 profile, fp32), this prints one JSON line with the host cost per kernel the
classes give at `dispatch_us` = 10 (the mean over every subnet's kernels, views excluded), then
one line per batch (1, 32, 64) with the Kendall tau of the estimates against HELP's latencies:
`classes@L` with host_classes at `dispatch_us` = L, `flat@L` with host_classes off (every op L),
and `flat@M(=classes@L mean)` with host_classes off at M = L x the mean / `dispatch_us`, the flat
cost with classes@L's average host cost per kernel, for each L of --levels.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from external import OFA_SETS, find_data, ofa_models, ofa_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="10,20,20.5,30", help="comma-separated dispatch_us levels, us")
    ap.add_argument("--n", type=int, default=400, help="OFA rows (external.py --ofa-n)")
    ap.add_argument("--seed", type=int, default=0, help="row sample seed (external.py --seed)")
    ap.add_argument("--data", help="shared/external-latency folder (found automatically)")
    ap.add_argument("--cache", default=str(HERE / ".cache"))
    args = ap.parse_args()
    try:
        levels = [float(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--levels must be comma-separated numbers, got {args.levels!r}")
    if not levels or any(not 0 < x <= 1e6 for x in levels):
        sys.exit(f"--levels must be numbers in (0, 1e6] us, got {args.levels!r}")
    if args.n < 0:
        sys.exit("--n must be 0 (all rows) or more")

    from scipy import stats

    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.timing import host_us

    rows = ofa_rows(find_data(args.data), args.n, args.seed)
    models = ofa_models(rows, Path(args.cache), 1, "ofa")
    rows = [r for r in rows if r["idx"] in models]
    v100 = load_profile("v100")
    if not v100.uses("host_classes"):
        sys.exit("the v100 profile does not use host_classes")
    flat = replace(v100, mechanisms=tuple(m for m in v100.mechanisms if m != "host_classes"))

    costs = [host_us(k.op_types, k.category, v100) for r in rows
             for k in models[r["idx"]][1].kernels(v100) if k.klass != "view"]
    mean = sum(costs) / len(costs)
    print(json.dumps({"rows": len(rows), "kernels": len(costs), "dispatch_us": v100.dispatch_us,
                      "mean_host_us_per_kernel_with_classes": round(mean, 2)}), flush=True)

    # The average host cost scales with the level, so flat@L*mean/dispatch_us is classes@L with
    # the ratios removed and the average kept: the pair that separates ratios from level.
    variants = {}
    for x in levels:
        matched = x * mean / v100.dispatch_us
        variants[f"classes@{x:g}"] = replace(v100, dispatch_us=x)
        variants[f"flat@{matched:.4g}(=classes@{x:g} mean)"] = replace(flat, dispatch_us=matched)
        variants[f"flat@{x:g}"] = replace(flat, dispatch_us=x)
    for batch in sorted(set(OFA_SETS.values())):
        meas = [float(r[f"v100_{batch}"]) for r in rows]
        out = {"batch": batch}
        for label, p in variants.items():
            est = [models[r["idx"]][1].estimate(p, batch, "fp32").latency_ms for r in rows]
            out[label] = round(float(stats.kendalltau(est, meas).statistic), 4)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
