"""The paper's table 8 on this machine: random vs. evolution vs. coarse-to-fine on a trained
supernet, the same budgets and number of accuracy evaluations, several seeds (the coarse
stage's pricing speed is benchmarks/coarse_speed.py).

    python benchmarks/search_strategies.py --supernet runs/clutter-xxs/last.ckpt \
        [--hw local-cpu --budget 2ms --params :1.8M --evaluations 100 --seeds 0,1,2]
    python benchmarks/search_strategies.py --supernet runs/pairs-xxs/last.ckpt --hw iphone13 \
        --budget p40 --params :p60 --seeds 0,1,2,3,4 --val-images 2000 --plot benchmarks/results/search_strategies.png

A budget `pNN` is that percentile of the space over 5,000 uniform samples (latency on --hw
with the analytical oracle, or parameters), so it binds by construction; the JSON reports how
much of the space each budget rejects alone and how much the other admits of that ("both
bind" when each rejects candidates the other would keep). Fitness is inherited-weight top-1 on
a fixed --val-images validation subset, BatchNorm recalibrated, cached per architecture
(shared by all runs: the same subnet is evaluated once). Reported per strategy: best top-1
(mean and std over seeds), evaluations needed to reach evolution's final best (per seed),
wall time; --plot draws the best-so-far curves with a band from the worst to the best seed.
Prints JSON.
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
    ap.add_argument("--plot", default=None, help="PNG of the best-so-far curves")
    args = ap.parse_args()

    import numpy as np

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.evaluate import AccuracyEvaluator, supernet_from_checkpoint
    from autovit.nas.params import count_params
    from autovit.nas.latency import make_oracle
    from autovit.nas.search import Constraints, EvolutionSettings, Searcher, parse_latency, parse_params

    net, cfg, _ = supernet_from_checkpoint(args.supernet)
    oracle = make_oracle("analytical", args.hw)
    sample = [net.space.sample(i) for i in range(5_000)]
    latency = oracle.latency_ms(sample)
    params = np.array([count_params(a) for a in sample])
    budget_ms = percentile_or(args.budget, latency, parse_latency)
    lo_text, _, hi_text = args.params.partition(":")
    window = (percentile_or(lo_text, params, parse_params) if lo_text else 0,
              percentile_or(hi_text, params, parse_params) if hi_text else 2**62)
    cons = Constraints(tuple(int(w) for w in window), {args.hw: budget_ms}, {args.hw: oracle})
    evaluator = AccuracyEvaluator(net, cfg, val_images=args.val_images)
    shared: dict[str, float] = {}

    def cached(arch):
        key = arch.key()
        if key not in shared:
            shared[key] = evaluator(arch)
        return shared[key]

    lat_ok = latency <= budget_ms
    par_ok = (params >= cons.param_window[0]) & (params <= cons.param_window[1])
    binding = {"legal_share": float((lat_ok & par_ok).mean()),
               "rejected_by_latency": float((~lat_ok).mean()), "rejected_by_params": float((~par_ok).mean()),
               "rejected_by_latency_only": float((~lat_ok & par_ok).mean()),
               "rejected_by_params_only": float((lat_ok & ~par_ok).mean())}
    binding["both_bind"] = binding["rejected_by_latency_only"] > 0 and binding["rejected_by_params_only"] > 0

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
    half = args.evaluations // 2
    seeds_within_half = sum(h is not None and h <= half for h in reach)
    res = {"benchmark": "search_strategies", "supernet": args.supernet, "hw": args.hw, "budget": args.budget,
           "budget_ms": budget_ms, "params": args.params, "param_window": list(cons.param_window),
           "evaluations": args.evaluations, "val_images": args.val_images, **binding,
           "distinct_subnets_evaluated": len(shared), "summary": summary,
           "c2f_evaluations_to_reach_evolution_best": reach,
           "targets": {f"c2f reaches evolution's best within {half} evaluations in >= 4 of 5 seeds":
                       seeds_within_half >= 4 if len(reach) >= 5 else None,
                       "c2f beats random in mean best": summary["coarse_to_fine"]["best_mean"]
                       > summary["random"]["best_mean"]},
           "seeds_c2f_within_half": seeds_within_half, "runs": runs}
    atomic_write_text(Path(args.out), json.dumps(res, indent=1) + "\n")
    if args.plot:
        from autovit.latmodel.plots import best_so_far_png

        best_so_far_png({s: [r["curve"] for r in runs if r["strategy"] == s]
                         for s in ("random", "evolution", "coarse_to_fine")}, args.plot)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}))


def percentile_or(text: str, values, parse) -> float:
    """'pNN': the NN-th percentile of `values`; anything else: parse(text)."""
    import numpy as np

    text = text.strip()
    if text.lower().startswith("p"):
        return float(np.percentile(values, float(text[1:])))
    return float(parse(text))


if __name__ == "__main__":
    main()
