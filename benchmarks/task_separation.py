"""Does a built-in task separate subnets? The smallest, median and largest subnets of a space
trained alone with the same recipe and budget, several seeds each (issue 14; target: largest
minus smallest >= 5 points, seed standard deviation <= 1 point, each run <= 10 minutes).

    OMP_NUM_THREADS=1 python benchmarks/task_separation.py [--data mnist5k-pairs --space xxs \
        --epochs 20 --seeds 0,1,2 --workdir runs/standalone] [--lr ... --batch-size ... --warmup-epochs ...] \
        [--subnets smallest,largest]

"Median" is the subnet at the middle of 400 uniform samples sorted by parameter count; --subnets
trains a subset of the three (the smallest and largest decide the sign of the gap, so a long
budget can try them first, and the median later without retraining them). Each run
trains one subnet from scratch (autovit-nas train --arch) and reports its final top-1 on the
whole validation set, its wall time and its process CPU time; finished runs in --workdir are
reused (benchmarks/standalone.py), so an interrupted benchmark resumes, and two processes
given different --seeds share the work. The recipe is the stand-alone one of
benchmarks/standalone.py (the flags override it). Prints JSON (also --out, rewritten after
every run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from standalone import add_recipe_flags, recipe_config, recipe_values, spread_archs, standalone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist5k-pairs")
    ap.add_argument("--space", default="xxs")
    ap.add_argument("--epochs", type=int, default=20,
                    help="budget per run (20: under 600 s of CPU for the largest XXS subnet)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipe", default="small")
    ap.add_argument("--subnets", default=",".join(SUBNETS), help="which of smallest, median, largest to train")
    ap.add_argument("--workdir", default="runs/standalone")
    ap.add_argument("--out", default="benchmarks/results/task_separation.json")
    add_recipe_flags(ap)
    args = ap.parse_args()
    chosen = chosen_subnets(args.subnets)

    import torch

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.data import open_data
    from autovit.nas.params import count_params
    from autovit.nas.train import TrainConfig, supernet_space

    cfg = recipe_config(TrainConfig(space=args.space, data=args.data, recipe=args.recipe), args)
    space = supernet_space(cfg, open_data(args.data))
    archs = {k: a for k, a in zip(SUBNETS, spread_archs(space, 3, seed=0)) if k in chosen}
    seeds = [int(s) for s in args.seeds.split(",")]
    head = {"benchmark": "task_separation", "data": args.data, "space": space.name, "epochs": args.epochs,
            "recipe": args.recipe, "recipe_values": recipe_values(cfg), "seeds": seeds,
            "threads": torch.get_num_threads(), "val_images": len(open_data(args.data).val)}
    t0 = time.perf_counter()
    runs = []
    for seed in seeds:  # seed-major: every finished seed gives all three subnets
        for name, arch in archs.items():
            r = standalone(cfg, arch, seed, args.epochs, Path(args.workdir))
            runs.append({"subnet": name, "seed": seed, "params": count_params(arch), **r})
            print(f"{name} seed {seed}: top-1 {r['top1']:.2f}  {r['wall_s']:.0f} s wall  {r['cpu_s']:.0f} s CPU"
                  + ("  (reused)" if r["reused"] else ""), file=sys.stderr, flush=True)
            res = {**head, **summarise(archs, runs), "runs": runs, "wall_s": time.perf_counter() - t0}
            atomic_write_text(Path(args.out), json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("runs", "summary")}
                     | {"top1": {k: (round(s["top1_mean"], 2), round(s["top1_std"], 2))
                                 for k, s in res["summary"].items()}}))


SUBNETS = ("smallest", "median", "largest")


def chosen_subnets(text: str) -> list[str]:
    """--subnets 'smallest,largest' -> its names, each one of SUBNETS (exit 2 naming the bad one)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SUBNETS]
    if bad or not names:
        what = f"unknown subnet '{bad[0]}'" if bad else "no subnet named"
        print(f"--subnets {text}: {what}; give a comma-separated list of {', '.join(SUBNETS)}", file=sys.stderr)
        sys.exit(2)
    return names


def summarise(archs: dict, runs: list[dict]) -> dict:
    """Mean and seed standard deviation per subnet, the gap and the targets, over the runs so
    far ("complete" once every subnet has as many runs as the first)."""
    from autovit.nas.params import count_params

    summary = {}
    for name, arch in archs.items():
        mine = [r for r in runs if r["subnet"] == name]
        if not mine:
            continue
        top1 = [r["top1"] for r in mine]
        summary[name] = {"params": count_params(arch), "runs": len(mine), "top1_mean": statistics.mean(top1),
                         "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                         "wall_s_max": max(r["wall_s"] for r in mine), "cpu_s_max": max(r["cpu_s"] for r in mine),
                         "arch": json.loads(arch.to_json())}
    out = {"complete": len(summary) == len(archs) and len({s["runs"] for s in summary.values()}) == 1,
           "summary": summary, "slowest_run_wall_s": max(r["wall_s"] for r in runs),
           "slowest_run_cpu_s": max(r["cpu_s"] for r in runs)}
    if "largest" in summary and "smallest" in summary:
        gap = summary["largest"]["top1_mean"] - summary["smallest"]["top1_mean"]
        worst_std = max(s["top1_std"] for s in summary.values())
        out.update(largest_minus_smallest=gap, max_seed_std=worst_std, targets={
            "separation >= 5 points": gap >= 5,
            # undecided until every subnet has two seeds (one seed's std is 0 by definition)
            "seed std <= 1 point": worst_std <= 1 if min(s["runs"] for s in summary.values()) > 1 else None,
            # one thread's CPU time bounds a quiet run's wall time on two threads
            "each run <= 600 s (CPU time, one thread)": out["slowest_run_cpu_s"] <= 600})
    return out

if __name__ == "__main__":
    main()
