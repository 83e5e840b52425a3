"""How fast this machine streams data from each cache level (issue 12: whole networks on this machine).

    python benchmarks/cache_levels.py [--sizes-mib 0.25,0.5,1,2,4,8,16,64] [--repeats 30]

One thread copies an fp32 buffer of each size into another (numpy.copyto) and the fastest of
`--repeats` copies gives the rate, counted as bytes read + bytes written (GB/s). Where the two
buffers outgrow a core's private cache the rate falls to the shared level's, where they outgrow
that, to DRAM's. Also prints the cache sizes the OS reports for CPU 0 (what `local-cpu` reads).
Timing: run it on a quiet machine, alone. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def copy_gbps(mib: float, repeats: int) -> float:
    """Read + write GB/s of the fastest of `repeats` copies of `mib` MiB (fp32), one thread."""
    n = max(int(mib * 2**20 / 4), 1)
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    for _ in range(3):
        np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mib", default="0.25,0.5,1,2,4,8,16,64",
                    help="comma-separated buffer sizes in MiB (each of the two buffers)")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    try:
        sizes = [float(s) for s in args.sizes_mib.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"error: --sizes-mib '{args.sizes_mib[:60]}': use comma-separated numbers of MiB, e.g. 0.5,4,64")
    if not sizes or any(not (1e-3 <= s <= 4096) for s in sizes):
        sys.exit("error: --sizes-mib: each size must be between 0.001 and 4096 MiB")
    if not 1 <= args.repeats <= 10_000:
        sys.exit("error: --repeats must be between 1 and 10000")
    from autovit.latmodel.hardware import os_caches

    rows = [{"mib": s, "copy_gbps": round(copy_gbps(s, args.repeats), 2)} for s in sizes]
    caches = [{"level": int(c["level"]) if c["level"].isdigit() else c["level"], "type": c["type"],
               "size": c["size"], "shared_with_cpus": c["shared_cpu_list"]} for c in os_caches()]
    print(json.dumps({"threads": 1, "caches": caches, "copies": rows}, indent=1))


if __name__ == "__main__":
    main()
