"""Coarse-stage speed of the search: candidates drawn from the space and priced (parameters and
latency through the oracle's batch API) per second, on the path coarse_to_fine takes
(Searcher._draw_legal with a pool of --candidates). Target: >= 10,000 per second.

    python benchmarks/coarse_speed.py [--hw local-cpu --oracle analytical --candidates 10000 --repeats 3]
    python benchmarks/coarse_speed.py --oracle measured --spaces xxs --candidates 20 --repeats 1 --warm 0

The oracle's per-block cache is warmed first (a search prices the same few hundred blocks
again and again); each space is timed --repeats times and the median is kept. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", default="local-cpu")
    ap.add_argument("--oracle", default="analytical")
    ap.add_argument("--spaces", default="xxs,xs,s")
    ap.add_argument("--candidates", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm", type=int, default=2000, help="candidates priced first to fill the oracle's caches "
                    "(0 for --oracle measured, whose cost per new candidate is what is timed)")
    args = ap.parse_args()

    from autovit.nas.latency import make_oracle
    from autovit.nas.search import Constraints, Searcher
    from autovit.nas.space import load_space

    out = {"benchmark": "coarse_speed", "hw": args.hw, "oracle": args.oracle, "candidates": args.candidates,
           "per_s": {}}
    for name in args.spaces.split(","):
        space = load_space(name)
        oracle = make_oracle(args.oracle, args.hw, space)
        cons = Constraints((0, 2**62), {args.hw: 1e9}, {args.hw: oracle})
        if args.warm:
            Searcher(space, cons, lambda a: 0.0, seed=1)._draw_legal(1, args.warm)
        rates = []
        for r in range(args.repeats):
            se = Searcher(space, cons, lambda a: 0.0, seed=100 + r)
            t0 = time.perf_counter()
            se._draw_legal(1, args.candidates)  # one pool: every candidate sampled and priced
            rates.append(args.candidates / (time.perf_counter() - t0))
        out["per_s"][name] = {"median": statistics.median(rates), "all": rates,
                              "s_per_candidate": 1 / statistics.median(rates)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
