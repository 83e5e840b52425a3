"""Ranking fidelity: do inherited-weight accuracies rank subnets as training them alone does,
and better than counting parameters or FLOPs? (targets: Kendall tau >= 0.6 over >= 12 subnets,
and above the parameter count's tau).

    OMP_NUM_THREADS=1 python benchmarks/ranking.py --supernet runs/pairs-xxs/last.ckpt \
        [--n 12 --epochs 20 --seeds 0,1 --workdir runs/standalone] [--lr ... --batch-size ...]

The n subnets are spread over the space: 400 uniform samples sorted by parameter count, the
n at evenly spaced quantiles (smallest and largest included). Each is evaluated with inherited
weights (BatchNorm recalibrated, whole validation set) and trained from scratch on the
supernet's data with the stand-alone recipe of benchmarks/standalone.py (task_separation.py's;
the flags override it) for --epochs, once per seed (the same budget for all); its stand-alone
accuracy is the mean over seeds. Subnets are taken in an order that spreads them over the
range (smallest, largest, then the middle of the widest gap), and the results so far are
written after each one, so a partial run still ranks subnets across the range. Stand-alone
runs are cached in --workdir (benchmarks/standalone.py; task_separation.py's runs of the same
subnets are reused), so an interrupted benchmark resumes. Kendall tau and Spearman rho of the stand-alone accuracy
against: inherited accuracy, parameter count, FLOPs (batch 1). Prints JSON (also --out); --plot draws
stand-alone top-1 against inherited top-1 and against parameters (PNG), --replot from --out alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from standalone import add_recipe_flags, recipe_config, recipe_values, run_folder, spread_archs, standalone


def rank_stats(predictor: list[float], truth: list[float]) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    return {"kendall_tau": float(kendalltau(predictor, truth).statistic),
            "spearman_rho": float(spearmanr(predictor, truth).statistic)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", help="the supernet checkpoint (required unless --replot)")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=20,
                    help="Stand-alone training budget per subnet (task_separation.py's).")
    ap.add_argument("--seeds", default="0,1", help="Stand-alone runs per subnet (their mean is its accuracy).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the subnet sample.")
    ap.add_argument("--workdir", default="runs/standalone")
    ap.add_argument("--out", default="benchmarks/results/ranking.json")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: rank the subnets whose stand-alone runs are all finished in --workdir")
    ap.add_argument("--plot", default=None,
                    help="PNG: stand-alone top-1 against inherited top-1 and against parameter count")
    ap.add_argument("--replot", action="store_true", help="train nothing: draw --plot from the results in --out")
    add_recipe_flags(ap)
    args = ap.parse_args()
    if args.replot:
        if not args.plot:
            ap.error("--replot draws --plot: name the PNG with --plot")
        try:
            rows = json.loads(Path(args.out).read_text())["subnet_results"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sys.exit(f"error: {args.out} is not a ranking.py result ({exc}); name one with --out")
        plot(rows, args.plot)
        return
    if not args.supernet:
        ap.error("--supernet is required (unless --replot)")

    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.oracle import BlockCounts
    from autovit.nas.blocks import DECOMPOSITION
    from autovit.nas.evaluate import supernet_from_checkpoint
    from autovit.nas.params import count_params

    net, cfg, ck = supernet_from_checkpoint(args.supernet)
    alone_cfg = recipe_config(cfg, args)
    archs = spread_archs(net.space, args.n, args.seed)
    seeds = [int(s) for s in args.seeds.split(",")]
    flops = BlockCounts(**DECOMPOSITION).flops(archs)
    head = {"benchmark": "ranking_fidelity", "supernet": args.supernet, "supernet_epochs": ck["epoch"],
            "data": cfg.data, "standalone_epochs": args.epochs, "standalone_seeds": seeds,
            "standalone_recipe": recipe_values(alone_cfg)}
    rows: list[dict] = []
    res = {**head, "subnets": 0}
    digest = hashlib.sha1(Path(args.supernet).read_bytes()).hexdigest()[:12]
    t0 = time.perf_counter()
    for n, i in enumerate(spread_order(len(archs))):
        arch = archs[i]
        if args.finished_only and not all((run_folder(args.workdir, alone_cfg, arch, s, args.epochs) / "timing.json")
                                          .exists() for s in seeds):
            continue
        inherited = inherited_top1(net, arch, cfg, Path(args.workdir) / f"inherited-{digest}.json")
        alone = [standalone(alone_cfg, arch, s, args.epochs, Path(args.workdir)) for s in seeds]
        rows.append({"params": count_params(arch), "flops": float(flops[i]), "inherited_top1": inherited,
                     "standalone_top1": statistics.mean(r["top1"] for r in alone),
                     "standalone_runs": alone, "arch": json.loads(arch.to_json())})
        per_seed = ", ".join(f"{r['top1']:.2f}" for r in alone)
        print(f"{n + 1}/{len(archs)}: {count_params(arch) / 1e6:.2f} M  inherited {inherited:.2f}  "
              f"alone {rows[-1]['standalone_top1']:.2f} ({per_seed})", file=sys.stderr, flush=True)
        res = {**head, **ranking_summary(rows), "complete": len(rows) == len(archs),
               "wall_s": time.perf_counter() - t0, "subnet_results": sorted(rows, key=lambda r: r["params"])}
        atomic_write_text(Path(args.out), json.dumps(res, indent=2) + "\n")
    if args.plot and rows:
        plot(rows, args.plot)
    print(json.dumps({k: v for k, v in res.items() if k != "subnet_results"}))


def spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix spreads over the range: both ends, then each time
    the middle of the widest gap left."""
    order = [0, n - 1][:n]
    while len(order) < n:
        done = sorted(order)
        lo, hi = max(zip(done, done[1:]), key=lambda p: p[1] - p[0])
        order.append((lo + hi) // 2)
    return order


def ranking_summary(rows: list[dict]) -> dict:
    """Kendall tau and Spearman rho of the stand-alone accuracy against inherited accuracy,
    parameter count and FLOPs, and the targets (from 3 subnets on)."""
    alone = [r["standalone_top1"] for r in rows]
    inh = [r["inherited_top1"] for r in rows]
    out = {"subnets": len(rows), "inherited_spread": max(inh) - min(inh), "standalone_spread": max(alone) - min(alone)}
    if len(rows) < 3:
        return out
    stats = {"inherited": rank_stats(inh, alone), "params": rank_stats([r["params"] for r in rows], alone),
             "flops": rank_stats([r["flops"] for r in rows], alone)}
    tau = stats["inherited"]["kendall_tau"]
    return {**out, "vs_standalone": stats, **seed_noise(rows),
            "targets": {"kendall tau >= 0.6": tau >= 0.6,
                        "tau above the parameter count's": tau > stats["params"]["kendall_tau"]}}


def seed_noise(rows: list[dict]) -> dict:
    """How far the stand-alone ranking agrees with itself: the pooled seed standard deviation
    (points: the root mean of each subnet's sample variance over its seeds) and, with two
    seeds or more, Kendall tau between the first two seeds' accuracies over the subnets (no
    predictor can be expected to rank the seeds' mean much better than one seed ranks another)."""
    runs = [[s["top1"] for s in r["standalone_runs"]] for r in rows]
    if min(len(t) for t in runs) < 2:
        return {}
    return {"seed_std_pooled": statistics.mean(statistics.variance(t) for t in runs) ** 0.5,
            "seed_agreement_kendall_tau": rank_stats([t[0] for t in runs], [t[1] for t in runs])["kendall_tau"]}


def plot(rows: list[dict], path: str) -> None:
    """Two panels (PNG): each subnet's stand-alone top-1 (%, mean over seeds, bar from the
    lowest to the highest seed) against its inherited top-1 (%), and against its parameter
    count (M), with each panel's Kendall tau in its title."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autovit.latmodel.io import atomic_write_bytes

    alone = [r["standalone_top1"] for r in rows]
    runs = [[s["top1"] for s in r["standalone_runs"]] for r in rows]
    spread = [[a - min(t) for a, t in zip(alone, runs)], [max(t) - a for a, t in zip(alone, runs)]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "inherited_top1", "inherited top-1 (%), supernet weights"),
                           (axes[1], "params", "parameters (M)")):
        x = [r[key] / (1e6 if key == "params" else 1) for r in rows]
        ax.errorbar(x, alone, yerr=spread, fmt="o", capsize=3)
        tau = rank_stats(x, alone)["kendall_tau"] if len(rows) >= 3 else float("nan")
        ax.set(xlabel=label, title=f"Kendall tau {tau:.3f} ({len(rows)} subnets)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("stand-alone top-1 (%), mean of seeds")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def inherited_top1(net, arch, cfg, cache: Path) -> float:
    """Inherited top-1 (%) on the whole validation set, BatchNorm recalibrated; cached in
    `cache` (a JSON file named by the checkpoint's digest) by architecture, so that several
    processes ranking the same supernet evaluate each subnet once."""
    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.evaluate import evaluate

    def known() -> dict:
        return json.loads(cache.read_text()) if cache.exists() else {}

    key = arch.key()
    if key not in known():
        top1 = evaluate(net, arch, cfg)["top1"]
        atomic_write_text(cache, json.dumps({**known(), key: top1}) + "\n")  # re-read: another process may have added
    return known()[key]

if __name__ == "__main__":
    from autovit.latmodel.errors import AutoVitError

    try:
        main()
    except AutoVitError as e:  # a missing checkpoint or profile: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
