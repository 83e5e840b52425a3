"""Ranking fidelity: do inherited-weight accuracies rank subnets as training them alone does,
and better than counting parameters or FLOPs? (targets: Kendall tau >= 0.6 over >= 12 subnets,
and above the parameter count's tau).

    OMP_NUM_THREADS=1 python benchmarks/ranking.py --supernet runs/pairs-xxs/last.ckpt \
        [--n 12 --epochs 12 --seeds 0,1 --workdir runs/standalone]

The n subnets are spread over the space: 400 uniform samples sorted by parameter count, the
n at evenly spaced quantiles (smallest and largest included). Each is evaluated with inherited
weights (BatchNorm recalibrated, whole validation set) and trained from scratch with the
supernet's recipe and data for --epochs, once per seed (the same budget for all); its
stand-alone accuracy is the mean over seeds. Stand-alone runs are cached in --workdir
(benchmarks/standalone.py; task_separation.py's runs of the same subnets are reused), so an
interrupted benchmark resumes. Kendall tau and Spearman rho of the stand-alone accuracy
against: inherited accuracy, parameter count, FLOPs (batch 1). Prints JSON (also --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from standalone import spread_archs, standalone


def rank_stats(predictor: list[float], truth: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    return {"kendall_tau": float(kendalltau(predictor, truth).statistic),
            "spearman_rho": float(spearmanr(predictor, truth).statistic)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=12, help="Stand-alone training budget per subnet.")
    ap.add_argument("--seeds", default="0,1", help="Stand-alone runs per subnet (their mean is its accuracy).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the subnet sample.")
    ap.add_argument("--workdir", default="runs/standalone")
    ap.add_argument("--out", default="benchmarks/results/ranking.json")
    args = ap.parse_args()

    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.oracle import BlockCounts
    from autovit.nas.blocks import DECOMPOSITION
    from autovit.nas.evaluate import evaluate, supernet_from_checkpoint
    from autovit.nas.params import count_params

    net, cfg, ck = supernet_from_checkpoint(args.supernet)
    archs = spread_archs(net.space, args.n, args.seed)
    seeds = [int(s) for s in args.seeds.split(",")]
    flops = BlockCounts(**DECOMPOSITION).flops(archs)
    rows = []
    t0 = time.perf_counter()
    for i, arch in enumerate(archs):
        inherited = evaluate(net, arch, cfg)["top1"]
        alone = [standalone(cfg, arch, s, args.epochs, Path(args.workdir)) for s in seeds]
        rows.append({"params": count_params(arch), "flops": float(flops[i]), "inherited_top1": inherited,
                     "standalone_top1": statistics.mean(r["top1"] for r in alone),
                     "standalone_runs": alone, "arch": json.loads(arch.to_json())})
        per_seed = ", ".join(f"{r['top1']:.2f}" for r in alone)
        print(f"{i + 1}/{len(archs)}: {count_params(arch) / 1e6:.2f} M  inherited {inherited:.2f}  "
              f"alone {rows[-1]['standalone_top1']:.2f} ({per_seed})", file=sys.stderr, flush=True)
    alone = [r["standalone_top1"] for r in rows]
    inh = [r["inherited_top1"] for r in rows]
    stats = {"inherited": rank_stats(inh, alone), "params": rank_stats([r["params"] for r in rows], alone),
             "flops": rank_stats([r["flops"] for r in rows], alone)}
    tau = stats["inherited"]["kendall_tau"]
    res = {
        "benchmark": "ranking_fidelity", "supernet": args.supernet, "supernet_epochs": ck["epoch"],
        "data": cfg.data, "subnets": len(rows), "standalone_epochs": args.epochs, "standalone_seeds": seeds,
        "vs_standalone": stats,
        "inherited_spread": max(inh) - min(inh), "standalone_spread": max(alone) - min(alone),
        "targets": {"kendall tau >= 0.6": tau >= 0.6,
                    "tau above the parameter count's": tau > stats["params"]["kendall_tau"]},
        "wall_s": time.perf_counter() - t0, "subnet_results": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "subnet_results"}))


if __name__ == "__main__":
    main()
