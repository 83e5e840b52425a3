"""One supernet over XXS+XS+S against the XXS supernet at the same budget (paper section 5.2):
accuracy of XXS-sized subnets with inherited weights.

    python benchmarks/multisize.py [--epochs 15] [--data mnist5k-clutter] [--n 10]
    OMP_NUM_THREADS=1 python benchmarks/multisize.py --data mnist5k-pairs --epochs 40 --workdir runs/multisize-pairs \
        --out benchmarks/results/multisize_pairs.json

Trains two supernets with the same recipe, data, seed and number of steps: one on the XXS
space, one on benchmarks/spaces/multi.toml (every stage offers the union of the three spaces'
widths and heads; XXS's fixed settings, so every XXS subnet is a member). Then evaluates the
same XXS subnets (smallest, largest and n-2 uniform samples) in both, BatchNorm recalibrated.
Finished runs in --workdir are reused (--train-only NAME trains one supernet and stops, so the two
can train in parallel processes). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

MULTI = str(Path(__file__).resolve().parent / "spaces" / "multi.toml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--data", default="mnist5k-clutter")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/multisize")
    ap.add_argument("--out", default="benchmarks/results/multisize.json")
    ap.add_argument("--train-only", choices=("xxs", "multi"),
                    help="train (or finish) this one supernet and stop: two processes can train both at once, "
                         "then a call without it reuses them")
    args = ap.parse_args()

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.checkpoint import load_checkpoint
    from autovit.nas.evaluate import evaluate, supernet_from_checkpoint
    from autovit.nas.params import count_params
    from autovit.nas.space import load_space
    from autovit.nas.train import TrainConfig, train

    t0 = time.perf_counter()
    runs, train_s = {}, {}
    for name, space in (("xxs", "xxs"), ("multi", MULTI)):
        if args.train_only not in (None, name):
            continue
        out = Path(args.workdir) / name
        last = out / "last.ckpt"
        done = last.exists() and load_checkpoint(last)["epoch"] >= args.epochs
        if not done:
            cfg = TrainConfig(space=space, data=args.data, epochs=args.epochs, eval_every=args.epochs,
                              eval_random=0, seed=args.seed)
            # no checkpoint yet: whatever a killed first epoch left (config.json) is replaced
            train(cfg, out, resume=last if last.exists() else None, progress=False, force=not last.exists(),
                  log=lambda m: print(m, file=sys.stderr, flush=True))
        if args.train_only:
            return
        runs[name] = supernet_from_checkpoint(last)
        train_s[name] = runs[name][2]["history"][-1].get("elapsed_s")
    xxs_space = runs["xxs"][0].space
    rng = random.Random(args.seed + 1)
    archs = [xxs_space.smallest(), xxs_space.largest()] + [xxs_space.sample(rng) for _ in range(args.n - 2)]
    rows = []
    for arch in archs:
        row = {"params": count_params(arch)}
        for name, (net, cfg, _) in runs.items():
            row[f"{name}_top1"] = evaluate(net, arch, cfg)["top1"]
        rows.append(row)
        print(f"{row['params'] / 1e6:.2f} M  xxs {row['xxs_top1']:.2f}  multi {row['multi_top1']:.2f}",
              file=sys.stderr, flush=True)
    diffs = [r["xxs_top1"] - r["multi_top1"] for r in rows]
    res = {
        "benchmark": "multisize_vs_single", "data": args.data, "epochs": args.epochs, "subnets": len(rows),
        "multi_space_count": load_space(MULTI).count(), "xxs_space_count": load_space("xxs").count(),
        "supernet_params": {n: sum(p.numel() for p in r[0].parameters()) for n, r in runs.items()},
        "mean_top1": {n: statistics.mean(r[f"{n}_top1"] for r in rows) for n in runs},
        "mean_gain_of_xxs_supernet": statistics.mean(diffs), "training_wall_s": train_s,
        "own_largest_top1": {n: r[2]["history"][-1].get("top1_max") for n, r in runs.items()},
        "subnets_better_in_xxs_supernet": sum(d > 0 for d in diffs),
        "wall_s": time.perf_counter() - t0, "subnet_results": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "subnet_results"}))


if __name__ == "__main__":
    main()
