"""Ranking fidelity: do inherited-weight accuracies rank subnets as training them alone does?
(target: Kendall tau >= 0.6 over >= 10 subnets).

    python benchmarks/ranking.py --supernet runs/clutter-xxs/last.ckpt [--n 10] [--epochs 12]

The n subnets are spread over the space: 400 uniform samples sorted by parameter count, the
n at evenly spaced quantiles (smallest and largest included). Each is evaluated with inherited
weights (BatchNorm recalibrated, whole validation set) and trained from scratch with the
supernet's recipe and data for --epochs (the same budget for all). Stand-alone runs live in
--workdir and are reused when finished, so an interrupted benchmark resumes. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path


def spread_archs(space, n: int, seed: int):
    from autovit.nas.params import count_params

    rng = random.Random(seed)
    pool = sorted((space.sample(rng) for _ in range(400)), key=count_params)
    pool = [space.smallest()] + pool + [space.largest()]
    return [pool[round(i * (len(pool) - 1) / (n - 1))] for i in range(n)]


def standalone_top1(cfg, arch, epochs: int, out: Path) -> float:
    """Final validation top-1 (%) of `arch` trained alone; reuses a finished run in `out`."""
    from autovit.nas.checkpoint import load_checkpoint
    from autovit.nas.train import train

    last = out / "last.ckpt"
    if last.exists():
        ck = load_checkpoint(last)
        if ck["epoch"] >= epochs:
            return ck["history"][-1]["top1_arch"]
    run = replace(cfg, epochs=epochs, arch=json.loads(arch.to_json()), eval_every=epochs, eval_random=0)
    # no checkpoint yet: whatever a killed first epoch left (config.json) is replaced
    res = train(run, out, resume=last if last.exists() else None, progress=False, log=lambda m: None,
                force=not last.exists())
    return res["history"][-1]["top1_arch"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=12, help="Stand-alone training budget per subnet.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/ranking")
    ap.add_argument("--out", default="benchmarks/results/ranking.json")
    args = ap.parse_args()

    import time

    from scipy.stats import kendalltau, spearmanr

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.evaluate import evaluate, supernet_from_checkpoint
    from autovit.nas.params import count_params

    net, cfg, ck = supernet_from_checkpoint(args.supernet)
    archs = spread_archs(net.space, args.n, args.seed)
    rows = []
    t0 = time.perf_counter()
    for i, arch in enumerate(archs):
        inherited = evaluate(net, arch, cfg)["top1"]
        alone = standalone_top1(cfg, arch, args.epochs, Path(args.workdir) / f"subnet{i:02d}")
        rows.append({"params": count_params(arch), "inherited_top1": inherited, "standalone_top1": alone,
                     "arch": json.loads(arch.to_json())})
        print(f"{i + 1}/{len(archs)}: {count_params(arch) / 1e6:.2f} M  inherited {inherited:.2f}  "
              f"alone {alone:.2f}", file=sys.stderr, flush=True)
    inh = [r["inherited_top1"] for r in rows]
    alone = [r["standalone_top1"] for r in rows]
    tau = kendalltau(inh, alone).statistic
    res = {
        "benchmark": "ranking_fidelity", "supernet": args.supernet, "supernet_epochs": ck["epoch"],
        "data": cfg.data, "subnets": len(rows), "standalone_epochs": args.epochs,
        "kendall_tau": tau, "spearman_rho": spearmanr(inh, alone).statistic,
        "kendall_tau_params_vs_standalone": kendalltau([r["params"] for r in rows], alone).statistic,
        "inherited_spread": max(inh) - min(inh), "standalone_spread": max(alone) - min(alone),
        "target": "kendall tau >= 0.6", "met": bool(tau >= 0.6), "wall_s": time.perf_counter() - t0,
        "subnet_results": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "subnet_results"}))


if __name__ == "__main__":
    main()
