"""How well can anything rank HELP's OFA-MobileNetV3 batch-1 latencies? The data's own ceiling.

    python benchmarks/ofa_noise_ceiling.py [--col v100_1] [--n 400]

At batch 1 the ops an OFA subnet runs, and so its host cost, depend on its depths `d` only:
every block has its 1x1 expansion (expand ratios are 3, 4 or 6), and squeeze-excite and the
activation are fixed per stage; kernel size, expand ratio and resolution change the kernels'
device time only. Subnets with the same `d` therefore run the same op sequence, and on a
host-bound machine their spread is what no structural predictor can explain. This prints, over
all 5,000 rows of `--col`:
  - the spread within groups of equal `d` (pooled std, ms) beside the spread of the column;
  - within groups of at least 20 rows, the median Kendall tau of latency against resolution,
    mean expand ratio and mean kernel size (the device-time settings: near 0 if host-bound);
  - on external.py's rows (the same seeded --n sample), the tau of the per-`d` mean (in-sample:
    each row's own group, itself included) and of the leave-one-out per-`d` mean;
  - a simulated ceiling: the tau of an exact per-`d` predictor against itself plus noise drawn
    from the within-group residuals (mean and 5-95 % range over 200 draws, seed 0).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from external import find_data, ofa_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--col", default="v100_1", help="latency column of the HELP file (v100_1, titan_rtx_1, v100_32, ...)")
    ap.add_argument("--n", type=int, default=400, help="rows of external.py's seeded sample (its --ofa-n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="shared/external-latency folder (found automatically)")
    args = ap.parse_args()
    if args.n < 0:
        sys.exit("--n must be 0 (all 5,000 rows) or more")
    from scipy import stats

    data = find_data(args.data)
    rows = ofa_rows(data, 0, args.seed)
    if args.col not in rows[0] or args.col in ("idx", "resolution", "ks", "e", "d"):
        sys.exit(f"unknown latency column {args.col!r}: use one of {', '.join(k for k in rows[0] if '_' in k)}")
    sample = ofa_rows(data, args.n, args.seed)
    lat = {r["idx"]: float(r[args.col]) for r in rows}
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        groups[r["d"]].append(r)
    mean = {d: float(np.mean([lat[r["idx"]] for r in rs])) for d, rs in groups.items()}
    resid = np.array([lat[r["idx"]] - mean[r["d"]] for rs in groups.values() if len(rs) > 1 for r in rs])

    def mean_of(r, key):
        return float(np.mean([int(x) for x in r[key].split()]))

    within = {}
    for name, f in (("resolution", lambda r: int(r["resolution"])), ("mean_e", lambda r: mean_of(r, "e")),
                    ("mean_ks", lambda r: mean_of(r, "ks"))):
        taus = [stats.kendalltau([f(r) for r in rs], [lat[r["idx"]] for r in rs]).statistic
                for rs in groups.values() if len(rs) >= 20]
        within[name] = round(float(np.median(taus)), 3)
    meas = np.array([lat[r["idx"]] for r in sample])
    in_sample = np.array([mean[r["d"]] for r in sample])
    loo = np.array([(mean[r["d"]] * len(groups[r["d"]]) - lat[r["idx"]]) / max(len(groups[r["d"]]) - 1, 1)
                    if len(groups[r["d"]]) > 1 else np.nan for r in sample])
    ok = ~np.isnan(loo)
    rng = np.random.default_rng(0)
    sims = [stats.kendalltau(in_sample, in_sample + rng.choice(resid, len(in_sample))).statistic for _ in range(200)]
    print(json.dumps({
        "col": args.col, "rows": len(rows), "groups_of_equal_d": len(groups),
        "std_ms": round(float(np.std(list(lat.values()))), 3), "within_d_std_ms": round(float(resid.std()), 3),
        "median_ms": round(float(np.median(list(lat.values()))), 3),
        "within_d_median_tau": within, "groups_ge_20": sum(len(rs) >= 20 for rs in groups.values()),
        "sample_n": len(sample),
        "tau_per_d_mean_in_sample": round(float(stats.kendalltau(in_sample, meas).statistic), 4),
        "tau_per_d_mean_leave_one_out": round(float(stats.kendalltau(loo[ok], meas[ok]).statistic), 4),
        "simulated_ceiling_tau": {"mean": round(float(np.mean(sims)), 4),
                                  "p5": round(float(np.percentile(sims, 5)), 4), "p95": round(float(np.percentile(sims, 95)), 4)},
    }))


if __name__ == "__main__":
    main()
