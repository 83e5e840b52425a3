"""How fast is one estimate once the graph is loaded? Target (issue 2): a 1,000-op graph < 100 ms.

    python benchmarks/estimate_speed.py [--repeats 20]

Prints one JSON object: ops in the graph, and per profile the median wall time (ms) of a cold
estimate (price every op, form kernels, time them) and of a warm one (kernels reused, another
batch size), over --repeats runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--profiles", default="v100,iphone13,cpu-x86")
    ap.add_argument("--model", default="timm:swinv2_cr_small_224", help="any autovit-lat model source (default: 1,439 ops)")
    args = ap.parse_args()

    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.sources import graph_for

    graph = graph_for(args.model)  # loading (export + shape inference) is not what is timed
    out = {"graph": args.model, "ops": len(graph), "repeats": args.repeats, "profiles": {}}
    for name in args.profiles.split(","):
        profile = load_profile(name)
        cold, warm = [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            model = LatencyModel(graph)
            model.estimate(profile, 1)
            t1 = time.perf_counter()
            model.estimate(profile, 8 + i)
            t2 = time.perf_counter()
            cold.append((t1 - t0) * 1e3)
            warm.append((t2 - t1) * 1e3)
        out["profiles"][name] = {"cold_ms_median": round(statistics.median(cold), 2),
                                 "warm_ms_median": round(statistics.median(warm), 2),
                                 "kernels": len(model.kernels(profile))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
