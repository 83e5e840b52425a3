"""Cost of weight entanglement: a training step of the supernet with a subnet active against
the same subnet built statically (target: median ratio <= 1.2 on CPU).

    python benchmarks/supernet_overhead.py [--n 20] [--space xxs] [--resolution 40] [--batch 64]

Both take one AdamW step on the same batch (forward, backward, optimizer). Supernet and static
steps alternate, so that the VM's speed swings hit both alike; each figure is a median of
--reps timed steps after two untimed ones. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path


def step_time(model, x, y, reps: int) -> list[float]:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--space", default="xxs")
    ap.add_argument("--resolution", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/supernet_overhead.json")
    args = ap.parse_args()

    import torch

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.builder import build_model
    from autovit.nas.space import load_space
    from autovit.nas.supernet import Supernet

    torch.manual_seed(args.seed)
    space = replace(load_space(args.space), num_classes=10, resolutions=(args.resolution,))
    net = Supernet(space).train()
    rng = random.Random(args.seed)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    y = torch.randint(0, 10, (args.batch,))
    rows = []
    for i in range(args.n):
        arch = net.sample_active_subnet(rng)
        static = build_model(arch).train()
        sup_t, sta_t = [], []
        for _ in range(2):  # alternate twice: supernet, static, supernet, static
            sup_t += step_time(net, x, y, args.reps)
            sta_t += step_time(static, x, y, args.reps)
        rows.append({"supernet_ms": 1e3 * statistics.median(sup_t), "static_ms": 1e3 * statistics.median(sta_t)})
        rows[-1]["ratio"] = rows[-1]["supernet_ms"] / rows[-1]["static_ms"]
        print(f"{i + 1}/{args.n}: ratio {rows[-1]['ratio']:.3f}", flush=True, file=sys.stderr)
    ratios = [r["ratio"] for r in rows]
    res = {
        "benchmark": "supernet_overhead", "space": args.space, "resolution": args.resolution, "batch": args.batch,
        "subnets": args.n, "threads": torch.get_num_threads(),
        "median_ratio": statistics.median(ratios), "max_ratio": max(ratios), "min_ratio": min(ratios),
        "target": "median ratio <= 1.2", "met": statistics.median(ratios) <= 1.2, "per_subnet": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "per_subnet"}))


if __name__ == "__main__":
    main()
