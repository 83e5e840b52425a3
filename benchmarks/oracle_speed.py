"""How many AutoViT architectures per second the search's latency oracles price.

    python benchmarks/oracle_speed.py [--n 10000] [--hw local-cpu] [--lut luts/bench/space.json]

Prints one JSON object: estimates per second for the analytical oracle as the search builds it
(each block inside its network; cold: every block priced for the first time; warm: the cached
block costs a long search runs on), the same warm for the blocks summed alone (the paper's
construction, `analytical_blocks_alone`), and, with --lut, for the LUT oracle. Architectures are
uniform samples of the XXS space (seeded).
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--hw", default="local-cpu")
    ap.add_argument("--space", default="xxs")
    ap.add_argument("--lut", default=None)
    args = ap.parse_args()

    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.oracle import AnalyticalOracle, LutOracle
    from autovit.nas.blocks import DECOMPOSITION
    from autovit.nas.latency import IN_NETWORK
    from autovit.nas.space import load_space

    space = load_space(args.space)
    archs = [space.sample(i) for i in range(args.n)]
    profile = load_profile(args.hw)
    out = {"n": args.n, "space": args.space, "hw": profile.name}
    oracle = AnalyticalOracle(profile, **DECOMPOSITION, **IN_NETWORK)
    t0 = time.perf_counter()
    oracle.latency_ms(archs)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    oracle.latency_ms(archs)
    warm = time.perf_counter() - t0
    out["analytical"] = {"cold_per_s": round(args.n / cold), "warm_per_s": round(args.n / warm),
                         "cold_s": round(cold, 2), "warm_s": round(warm, 3), "distinct_blocks": len(oracle._block_ms)}
    alone = AnalyticalOracle(profile, **DECOMPOSITION)
    alone.latency_ms(archs)
    t0 = time.perf_counter()
    alone.latency_ms(archs)
    out["analytical_blocks_alone"] = {"warm_per_s": round(args.n / (time.perf_counter() - t0))}
    if args.lut:
        lo = LutOracle(load_lut(args.lut, profile.name), profile, **DECOMPOSITION, **IN_NETWORK)
        lo.latency_ms(archs[:100])  # fill the fallback's cache as a search's first generation would
        t0 = time.perf_counter()
        lo.latency_ms(archs)
        dt = time.perf_counter() - t0
        out["lut"] = {"per_s": round(args.n / dt), "coverage": lo.coverage}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
