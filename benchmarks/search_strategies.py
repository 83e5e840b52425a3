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
wall and process CPU time; --plot draws the best-so-far curves with a band from the worst to
the best seed. The JSON (--out) is rewritten after every run, so an interrupted benchmark keeps
the runs it finished. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
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
    ap.add_argument("--replot", action="store_true",
                    help="search nothing: draw --plot from the runs already in --out (an interrupted benchmark's)")
    return ap.parse_args()


def one_run(new_searcher, strategy: str, settings, evaluations: int, seed: int) -> dict:
    """One search of `strategy` (on the Searcher `new_searcher()` makes, its making timed too):
    its best top-1, best-so-far curve, wall and process CPU time (s)."""
    import numpy as np

    t0, c0 = time.perf_counter(), time.process_time()
    searcher = new_searcher()
    if strategy == "random":
        res = searcher.random(evaluations)
    elif strategy == "evolution":
        res = searcher.evolution(settings, evaluations=evaluations)
    else:
        res = searcher.coarse_to_fine(settings, evaluations=evaluations)
    curve = list(np.maximum.accumulate([h["top1"] for h in res.history]))
    print(f"seed {seed} {strategy}: {res.best_top1:.2f} after {res.evaluations}", file=sys.stderr, flush=True)
    return {"strategy": strategy, "seed": seed, "best_top1": res.best_top1, "evaluations": res.evaluations,
            "curve": [float(v) for v in curve], "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}


def main() -> None:
    args = parse_args()
    if args.replot:
        runs = json.loads(Path(args.out).read_text())["runs"]
        plot(runs, args.plot or str(Path(args.out).with_suffix(".png")))
        return

    import numpy as np
    import torch

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

    binding = binding_shares(latency <= budget_ms, (params >= window[0]) & (params <= window[1]))

    # Generations are not the limit: every strategy stops at exactly --evaluations new subnets
    # (parents carried into a generation are not evaluated again, so population x generations
    # would give evolution fewer evaluations than random).
    settings = EvolutionSettings(population=args.population, generations=args.evaluations, parents=args.parents)
    head = {"benchmark": "search_strategies", "supernet": args.supernet, "hw": args.hw, "budget": args.budget,
            "budget_ms": budget_ms, "params": args.params, "param_window": list(cons.param_window),
            "evaluations": args.evaluations, "val_images": args.val_images, "threads": torch.get_num_threads(),
            **binding}
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for strategy in STRATEGIES:
            runs.append(one_run(lambda: Searcher(net.space, cons, cached, seed=seed), strategy, settings, args.evaluations,
                                seed))
            out = {**head, "distinct_subnets_evaluated": len(shared), **summarise(runs, args.evaluations), "runs": runs}
            atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    if args.plot:
        plot(runs, args.plot)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))


STRATEGIES = ("random", "evolution", "coarse_to_fine")


def plot(runs: list[dict], path: str) -> None:
    """Best-so-far curves per strategy with a band over seeds (PNG)."""
    from autovit.latmodel.plots import best_so_far_png

    curves = {s: [r["curve"] for r in runs if r["strategy"] == s] for s in STRATEGIES}
    best_so_far_png({s: c for s, c in curves.items() if c}, path)  # an interrupted run may lack a strategy


def binding_shares(lat_ok, par_ok) -> dict:
    """Shares of the sample each budget rejects, alone and together (boolean arrays: within
    the latency budget, within the parameter window); both bind when each rejects some
    candidates that the other admits."""
    out = {"legal_share": float((lat_ok & par_ok).mean()),
           "rejected_by_latency": float((~lat_ok).mean()), "rejected_by_params": float((~par_ok).mean()),
           "rejected_by_latency_only": float((~lat_ok & par_ok).mean()),
           "rejected_by_params_only": float((lat_ok & ~par_ok).mean())}
    out["both_bind"] = out["rejected_by_latency_only"] > 0 and out["rejected_by_params_only"] > 0
    return out


def summarise(runs: list[dict], evaluations: int) -> dict:
    """Best top-1 per strategy (mean, std over seeds), coarse-to-fine's evaluations to reach
    evolution's final best per seed, and the targets, over the runs so far."""
    summary = {}
    for strategy in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == strategy]
        if mine:
            bests = [r["best_top1"] for r in mine]
            summary[strategy] = {"best_mean": statistics.mean(bests), "best_std": statistics.pstdev(bests),
                                 "wall_s_mean": statistics.mean(r["wall_s"] for r in mine),
                                 "cpu_s_mean": statistics.mean(r["cpu_s"] for r in mine)}
    reach = []
    for r in (r for r in runs if r["strategy"] == "coarse_to_fine"):
        target = next(e["best_top1"] for e in runs if e["strategy"] == "evolution" and e["seed"] == r["seed"])
        reach.append(next((i + 1 for i, v in enumerate(r["curve"]) if v >= target), None))
    half = evaluations // 2
    within_half = sum(h is not None and h <= half for h in reach)
    targets = {f"c2f reaches evolution's best within {half} evaluations in >= 4 of 5 seeds":
               within_half >= 4 if len(reach) >= 5 else None}
    if "coarse_to_fine" in summary:
        targets["c2f beats random in mean best"] = (summary["coarse_to_fine"]["best_mean"]
                                                    > summary["random"]["best_mean"])
    return {"summary": summary, "c2f_evaluations_to_reach_evolution_best": reach, "targets": targets,
            "seeds_c2f_within_half": within_half}

def percentile_or(text: str, values, parse) -> float:
    """'pNN': the NN-th percentile of `values`; anything else: parse(text)."""
    import numpy as np

    text = text.strip()
    if text.lower().startswith("p"):
        return float(np.percentile(values, float(text[1:])))
    return float(parse(text))


if __name__ == "__main__":
    main()
