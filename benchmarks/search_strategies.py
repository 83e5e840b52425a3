"""The paper's table 8 on this machine: random vs. evolution vs. coarse-to-fine on a trained
supernet, the same budgets and number of accuracy evaluations, several seeds (the coarse
stage's pricing speed is benchmarks/coarse_speed.py).

    python benchmarks/search_strategies.py --supernet runs/clutter-xxs/last.ckpt \
        [--hw local-cpu --budget 2ms --params :1.8M --evaluations 100 --seeds 0,1,2]

Fitness is inherited-weight top-1 on a fixed 500-image validation subset, BatchNorm
recalibrated, cached per architecture (shared by all runs: the same subnet is evaluated once).
Reported per strategy: best top-1 (mean and std over seeds), evaluations needed to reach
evolution's final best (per seed), wall time. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--hw", default="local-cpu")
    ap.add_argument("--budget", default="2ms")
    ap.add_argument("--params", default=":1.8M")
    ap.add_argument("--evaluations", type=int, default=100)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--parents", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--out", default="benchmarks/results/search_strategies.json")
    args = ap.parse_args()

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.evaluate import AccuracyEvaluator, supernet_from_checkpoint
    from autovit.nas.search import (Constraints, EvolutionSettings, Searcher, make_oracle,
                                    parse_latency, parse_param_window)

    net, cfg, _ = supernet_from_checkpoint(args.supernet)
    cons = Constraints(parse_param_window(args.params), {args.hw: parse_latency(args.budget)},
                       {args.hw: make_oracle("analytical", args.hw)})
    evaluator = AccuracyEvaluator(net, cfg, val_images=args.val_images)
    shared: dict[str, float] = {}

    def cached(arch):
        key = arch.key()
        if key not in shared:
            shared[key] = evaluator(arch)
        return shared[key]

    # how much of the space the budgets admit (the coarse stage's speed: benchmarks/coarse_speed.py)
    batch = [net.space.sample(i) for i in range(5_000)]
    legal = cons.legal(cons.price(batch))

    # Generations are not the limit: every strategy stops at exactly --evaluations new subnets
    # (parents carried into a generation are not evaluated again, so population x generations
    # would give evolution fewer evaluations than random).
    settings = EvolutionSettings(population=args.population, generations=args.evaluations, parents=args.parents)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for strategy in ("random", "evolution", "coarse_to_fine"):
            t0 = time.perf_counter()
            se = Searcher(net.space, cons, cached, seed=seed)
            if strategy == "random":
                res = se.random(args.evaluations)
            elif strategy == "evolution":
                res = se.evolution(settings, evaluations=args.evaluations)
            else:
                res = se.coarse_to_fine(settings, evaluations=args.evaluations)
            curve = []
            best = -1.0
            for h in res.history:
                best = max(best, h["top1"])
                curve.append(best)
            runs.append({"strategy": strategy, "seed": seed, "best_top1": res.best_top1, "evaluations": res.evaluations,
                         "curve": curve, "wall_s": time.perf_counter() - t0})
            print(f"seed {seed} {strategy}: {res.best_top1:.2f} after {res.evaluations}", file=sys.stderr, flush=True)
    summary = {}
    for strategy in ("random", "evolution", "coarse_to_fine"):
        mine = [r for r in runs if r["strategy"] == strategy]
        bests = [r["best_top1"] for r in mine]
        summary[strategy] = {"best_mean": statistics.mean(bests), "best_std": statistics.pstdev(bests),
                             "wall_s_mean": statistics.mean(r["wall_s"] for r in mine)}
    reach = []
    for r in (r for r in runs if r["strategy"] == "coarse_to_fine"):
        target = next(e["best_top1"] for e in runs if e["strategy"] == "evolution" and e["seed"] == r["seed"])
        hit = next((i + 1 for i, v in enumerate(r["curve"]) if v >= target), None)
        reach.append(hit)
    res = {"benchmark": "search_strategies", "supernet": args.supernet, "hw": args.hw, "budget": args.budget,
           "params": args.params, "evaluations": args.evaluations, "val_images": args.val_images,
           "legal_share": float(legal.mean()),
           "distinct_subnets_evaluated": len(shared), "summary": summary,
           "c2f_evaluations_to_reach_evolution_best": reach, "runs": runs}
    atomic_write_text(Path(args.out), json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}))


if __name__ == "__main__":
    main()
