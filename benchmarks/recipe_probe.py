"""Short probes of stand-alone recipes: why do larger subnets train worse alone, and which one
recipe (the same for every subnet) lets capacity show within the budget? Each probe trains a
subnet for the first --probe-epochs epochs of an --epochs-epoch schedule, then reports its
per-epoch training loss and its top-1 on the first --val-images validation canvases
(BatchNorm recalibrated, as the full runs are evaluated).

    OMP_NUM_THREADS=1 python benchmarks/recipe_probe.py --epochs 12 --probe-epochs 4 \
        --variant small: --variant lr1e-3-b32:lr=1e-3,batch_size=32 [--subnets smallest,largest --seeds 0,1]

A variant is NAME:FIELD=VALUE,... over the recipe fields of benchmarks/standalone.py (lr,
batch_size, warmup_epochs, weight_decay, smoothing, zero_init_residual, resolution: the input
side the subnets train and are evaluated at); "NAME:" alone is the `small` recipe.
"smallest", "median" and "largest" are task_separation.py's subnets; NAME@N is that subnet with
N transformer stages (its last ones dropped, or the space's smallest stages added). Probe runs live in
--workdir as the first epochs of the full runs: task_separation.py with the same recipe,
epochs and workdir continues them instead of starting again. Results are written after every
probe (--out), so an interrupted probe loses only the run in progress. Prints JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from standalone import RECIPE_FLAGS, recipe_config, spread_archs, standalone


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:lr=1e-3,batch_size=32' -> (NAME, {'lr': 0.001, 'batch_size': 32})."""
    name, _, body = text.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in RECIPE_FLAGS:
            sys.exit(f"--variant {text}: unknown field '{key}'; use {', '.join(RECIPE_FLAGS)}")
        values[key] = RECIPE_FLAGS[key](value)
    return name, values


def probe_arch(archs: dict, space, spec: str):
    """'largest' or 'largest@3' (the largest with 3 transformer stages; stages added beyond its
    own are the space's smallest choices), checked against the space."""
    from dataclasses import replace

    from autovit.nas.arch import TransformerLayer, TransformerStage

    name, _, stages = spec.partition("@")
    arch = archs[name]
    if stages:
        n = int(stages)
        extra = tuple(TransformerStage(width=min(st.widths), stride=st.stride, layers=tuple(
            TransformerLayer(min(st.heads), min(st.mlp_ratios)) for _ in range(min(st.depths))))
            for st in space.transformer[len(arch.transformer):n])
        arch = replace(arch, transformer=(arch.transformer + extra)[:n])
    problems = space.problems(arch)
    if problems:
        sys.exit(f"--subnets {spec}: {problems[0]}")
    return arch


def losses(folder: str) -> list[float]:
    """Training loss per epoch from a run's metrics.csv."""
    with open(Path(folder) / "metrics.csv", newline="") as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


def probe_top1(folder: str, arch, val_images: int) -> dict:
    """Top-1 (%) of the run's checkpoint on the first `val_images` validation canvases, and the
    evaluation's own wall and CPU time (s)."""
    from autovit.nas.evaluate import AccuracyEvaluator, supernet_from_checkpoint

    t0, c0 = time.perf_counter(), time.process_time()
    net, cfg, _ = supernet_from_checkpoint(Path(folder) / "last.ckpt")
    top1 = AccuracyEvaluator(net, cfg, val_images=val_images)(arch)
    return {"top1": top1, "eval_wall_s": time.perf_counter() - t0, "eval_cpu_s": time.process_time() - c0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist5k-pairs")
    ap.add_argument("--space", default="xxs")
    ap.add_argument("--epochs", type=int, default=12, help="length of the schedule probed")
    ap.add_argument("--probe-epochs", type=int, default=4)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--subnets", default="smallest,largest")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--workdir", default="runs/standalone")
    ap.add_argument("--out", default="benchmarks/results/recipe_probe.json")
    args = ap.parse_args()

    import torch

    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.data import open_data
    from autovit.nas.params import count_params
    from autovit.nas.train import TrainConfig, supernet_space

    base = TrainConfig(space=args.space, data=args.data, recipe="small")
    space = supernet_space(base, open_data(args.data))
    res = {"benchmark": "recipe_probe", "data": args.data, "space": space.name, "epochs": args.epochs,
           "probe_epochs": args.probe_epochs, "val_images": args.val_images, "threads": torch.get_num_threads(),
           "probes": []}
    variants = [parse_variant(v) for v in args.variant]
    for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: one seed of every variant comes first
        for name, values in variants:
            cfg = recipe_config(base, values)
            space = supernet_space(cfg, open_data(args.data))  # a variant may set the resolution
            archs = dict(zip(("smallest", "median", "largest"), spread_archs(space, 3, seed=0)))
            for subnet in args.subnets.split(","):
                arch = probe_arch(archs, space, subnet)
                r = standalone(cfg, arch, seed, args.epochs, Path(args.workdir), stop_after=args.probe_epochs)
                row = {"variant": name, "recipe": values, "subnet": subnet, "params": count_params(arch), "seed": seed,
                       **{k: r[k] for k in ("wall_s", "cpu_s", "epochs", "folder")},
                       "train_loss": losses(r["folder"])[:args.probe_epochs],
                       **probe_top1(r["folder"], arch, args.val_images)}
                res["probes"].append(row)
                atomic_write_text(Path(args.out), json.dumps(res, indent=1) + "\n")
                print(f"{name} {subnet} seed {seed}: top-1 {row['top1']:.2f} after {args.probe_epochs} epochs, "
                      f"loss {' '.join(f'{v:.2f}' for v in row['train_loss'])}  {r['wall_s']:.0f} s wall  "
                      f"{r['cpu_s']:.0f} s CPU", file=sys.stderr, flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
