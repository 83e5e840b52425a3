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
(shared by all runs: the same subnet is evaluated once) and kept on disk (--cache-dir, one file
per supernet checkpoint and subset size), so a benchmark killed in the middle of a run, run again,
re-evaluates nothing it had finished. Reported per strategy: best top-1
(mean and std over seeds), evaluations needed to reach evolution's final best (per seed),
wall and process CPU time; --plot draws the best-so-far curves with a band from the worst to
the best seed. The JSON (--out) is rewritten after every run, so an interrupted benchmark keeps
the runs it finished. Prints JSON.

    python benchmarks/search_strategies.py --merge A.json,B.json --out C.json --plot C.png

--merge searches nothing: it joins the runs of several results files of the same settings (say
seed 0 and seeds 1-4, run apart) into --out, with the summary and targets over all of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


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
    if args.merge or args.replot:
        offline(args)
        return

    import torch

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.evaluate import AccuracyEvaluator, supernet_from_checkpoint
    from autovit.nas.search import EvolutionSettings, Searcher

    net, cfg, _ = supernet_from_checkpoint(args.supernet)
    cons, budget_ms, binding = constraints(args, net.space)
    evaluator = AccuracyEvaluator(net, cfg, val_images=args.val_images)
    cache = AccuracyCache(Path(args.cache_dir), Path(args.supernet), args.val_images)
    used: set[str] = set()

    def cached(arch):
        used.add(arch.key())
        return cache.get(arch, evaluator)

    # Generations are not the limit: every strategy stops at exactly --evaluations new subnets
    # (parents carried into a generation are not evaluated again, so population x generations
    # would give evolution fewer evaluations than random).
    settings = EvolutionSettings(population=args.population, generations=args.evaluations, parents=args.parents)
    head = {"benchmark": "search_strategies", "supernet": args.supernet, "hw": args.hw, "budget": args.budget,
            "budget_ms": budget_ms, "params": args.params, "param_window": list(cons.param_window),
            "evaluations": args.evaluations, "val_images": args.val_images, "threads": torch.get_num_threads(),
            "cache": str(cache.path), "cached_at_start": len(cache.top1), **binding}
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for strategy in STRATEGIES:
            runs.append(one_run(lambda: Searcher(net.space, cons, cached, seed=seed), strategy, settings, args.evaluations,
                                seed))
            out = {**head, "distinct_subnets_evaluated": len(used), **summarise(runs, args.evaluations), "runs": runs}
            atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    if args.plot:
        plot(runs, args.plot)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", help="the supernet checkpoint searched (required unless --merge or --replot)")
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
    ap.add_argument("--merge", default=None,
                    help="search nothing: join the runs of these comma-separated results files into --out")
    ap.add_argument("--cache-dir", default="benchmarks/.cache/search_strategies",
                    help="where inherited accuracies are kept between runs of this benchmark")
    args = ap.parse_args()
    if not (args.supernet or args.merge or args.replot):
        ap.error("--supernet is required (unless --merge or --replot)")
    return args


def offline(args: argparse.Namespace) -> None:
    """--merge (write --out from several results files) or --replot (draw --out's runs)."""
    if args.merge:
        out = merge(args.merge.split(","), Path(args.out))
        if args.plot:
            plot(out["runs"], args.plot)
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
        return
    runs = json.loads(Path(args.out).read_text())["runs"]
    plot(runs, args.plot or str(Path(args.out).with_suffix(".png")))


def constraints(args: argparse.Namespace, space):
    """The search's Constraints from --hw, --budget and --params (a `pNN` budget is that
    percentile over 5,000 uniform samples of `space`, priced by the analytical oracle), the
    latency budget (ms) and how much of the sample each budget rejects (binding_shares)."""
    import numpy as np

    from autovit.nas.params import count_params
    from autovit.nas.latency import make_oracle
    from autovit.nas.search import Constraints, parse_latency, parse_params

    oracle = make_oracle("analytical", args.hw)
    sample = [space.sample(i) for i in range(5_000)]
    latency = oracle.latency_ms(sample)
    params = np.array([count_params(a) for a in sample])
    budget_ms = percentile_or(args.budget, latency, parse_latency)
    lo_text, _, hi_text = args.params.partition(":")
    window = (percentile_or(lo_text, params, parse_params) if lo_text else 0,
              percentile_or(hi_text, params, parse_params) if hi_text else 2**62)
    cons = Constraints(tuple(int(w) for w in window), {args.hw: budget_ms}, {args.hw: oracle})
    return cons, budget_ms, binding_shares(latency <= budget_ms, (params >= window[0]) & (params <= window[1]))


STRATEGIES = ("random", "evolution", "coarse_to_fine")
# settings that must agree for runs of several results files to be summarised together
SAME_SETTINGS = ("supernet", "hw", "budget_ms", "param_window", "evaluations", "val_images")


class AccuracyCache:
    """Inherited top-1 (%) per architecture of one supernet checkpoint on one validation subset,
    kept in a JSON file named by the checkpoint's content and the subset size, rewritten
    (atomically) after every new evaluation, so a killed benchmark loses at most the one in
    progress."""

    def __init__(self, folder: Path, supernet: Path, val_images: int):
        import hashlib

        from autovit.latmodel.checks import read_json

        self.identity = {"supernet_sha1": hashlib.sha1(supernet.read_bytes()).hexdigest(), "val_images": val_images}
        name = hashlib.sha1(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.path = folder / f"{name}.json"
        self.top1: dict[str, float] = {}
        if self.path.exists():
            saved = read_json(self.path, "accuracy cache", f"delete {self.path} to start it again")
            if saved.get("identity") == self.identity:
                self.top1 = saved["top1"]

    def get(self, arch, evaluate) -> float:
        import hashlib

        from autovit.latmodel.io import atomic_write_text

        key = hashlib.sha1(arch.key().encode()).hexdigest()
        if key not in self.top1:
            self.top1[key] = evaluate(arch)
            atomic_write_text(self.path, json.dumps({"identity": self.identity, "top1": self.top1}) + "\n")
        return self.top1[key]


def merge(files: list[str], out: Path) -> dict:
    """The runs of several results files of the same settings, in one results file (`out`,
    written) with the summary over the seeds every strategy finished (the others are left out
    and named); a (strategy, seed) run twice is an error."""
    from autovit.latmodel.checks import read_json
    from autovit.latmodel.io import atomic_write_text

    parts = [read_json(f, "search_strategies results file") for f in files]
    for f, p in zip(files[1:], parts[1:]):
        differ = [k for k in SAME_SETTINGS if p.get(k) != parts[0].get(k)]
        if differ:
            sys.exit(f"--merge: {f} differs from {files[0]} in {', '.join(differ)}; merge runs of the same settings")
    runs = sorted((r for p in parts for r in p["runs"]), key=lambda r: (r["seed"], STRATEGIES.index(r["strategy"])))
    seen = [(r["strategy"], r["seed"]) for r in runs]
    twice = sorted({s for s in seen if seen.count(s) > 1})
    if twice:
        sys.exit(f"--merge: {twice[0][0]} seed {twice[0][1]} is in more than one file; merge disjoint seeds")
    # a seed some strategy has not finished (an interrupted file's last) would compare the
    # strategies over different seeds
    partial = sorted({r["seed"] for r in runs if any((s, r["seed"]) not in seen for s in STRATEGIES)})
    runs = [r for r in runs if r["seed"] not in partial]
    head = {k: v for k, v in parts[0].items() if k not in ("runs", "summary", "targets", "distinct_subnets_evaluated",
                                                           "c2f_evaluations_to_reach_evolution_best",
                                                           "seeds_c2f_within_half", "cache", "cached_at_start")}
    res = {**head, "merged_from": files, "seeds": sorted({r["seed"] for r in runs}), "incomplete_seeds_left_out": partial,
           **summarise(runs, head["evaluations"]), "runs": runs}
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    return res


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
        target = next((e["best_top1"] for e in runs if e["strategy"] == "evolution" and e["seed"] == r["seed"]), None)
        reach.append(None if target is None else next((i + 1 for i, v in enumerate(r["curve"]) if v >= target), None))
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
    from autovit.latmodel.errors import AutoVitError

    try:
        main()
    except AutoVitError as e:  # a missing checkpoint or profile: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
