"""Stand-alone training runs shared by the benchmarks (task_separation.py, ranking.py,
recipe_probe.py): one subnet trained from scratch with one recipe and data, cached by (data,
recipe values, architecture, seed, epochs) under a work folder, so a benchmark that is
interrupted, or another benchmark that needs the same run, reuses it. A run may be trained in
parts (the first epochs of its schedule, then the rest: recipe_probe.py's probes become the
first epochs of the full runs); its wall and CPU times are the sums over its parts. Not a
command: imported by the scripts next to it.

The stand-alone recipe (STANDALONE_RECIPE, one for every subnet and benchmark) holds the
values of the supernet's `small` recipe that the probes of docs/BENCHMARKS.md section 5.6 vary;
none of the variants probed so far trains the larger subnets better, so they are still
`small`'s. `add_recipe_flags` lets a benchmark override each value.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path

# lr, batch and warm-up of the stand-alone recipe (docs/BENCHMARKS.md section 5.6); the rest is `small`'s.
STANDALONE_RECIPE = {"lr": 2e-3, "batch_size": 64, "warmup_epochs": 1.0}


def yes(value) -> bool:
    """true/false, yes/no, on/off, 1/0 (or a bool) -> bool."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


RECIPE_FLAGS = {"lr": float, "batch_size": int, "warmup_epochs": float, "weight_decay": float, "smoothing": float,
                "zero_init_residual": yes, "resolution": int}


def add_recipe_flags(ap, defaults: dict | None = None) -> None:
    """--lr, --batch-size, --warmup-epochs, --weight-decay, --smoothing (defaults: `defaults`,
    else STANDALONE_RECIPE, else the recipe's own value)."""
    defaults = STANDALONE_RECIPE if defaults is None else defaults
    for name, kind in RECIPE_FLAGS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=kind, default=defaults.get(name),
                        help=f"stand-alone recipe (default {defaults.get(name, 'the recipe preset')})")


def recipe_config(cfg, args_or_dict):
    """`cfg` with the recipe values given (argparse namespace or dict; None keeps cfg's)."""
    given = dict(args_or_dict if isinstance(args_or_dict, dict) else vars(args_or_dict))
    side = given.pop("resolution", None)  # the one training side (TrainConfig.resolutions)
    cfg = replace(cfg, resolutions=(side,)) if side is not None else cfg
    return replace(cfg, **{k: given[k] for k in RECIPE_FLAGS if given.get(k) is not None})


def spread_archs(space, n: int, seed: int) -> list:
    """n architectures spread over the space's parameter range: 400 uniform samples sorted by
    parameter count plus the smallest and largest, taken at evenly spaced quantiles."""
    from autovit.nas.params import count_params

    rng = random.Random(seed)
    pool = sorted((space.sample(rng) for _ in range(400)), key=count_params)
    pool = [space.smallest()] + pool + [space.largest()]
    return [pool[round(i * (len(pool) - 1) / (n - 1))] for i in range(n)]


def recipe_values(cfg) -> dict:
    """The training values that define a run besides data, architecture, seed and epochs."""
    res = cfg.resolved()
    keys = list(res.recipe_values) + ["steps_per_epoch", "sampling", "kd", "resolutions", "bn_batches", "val_images"]
    # named only when on: the runs made before it existed keep their folders
    keys += ["zero_init_residual"] if res.zero_init_residual else []
    # one type per field, so that warm-up 1 and 1.0 name the same run
    return {k: RECIPE_FLAGS[k](getattr(res, k)) if k in RECIPE_FLAGS else getattr(res, k) for k in keys}


def run_folder(workdir: Path, cfg, arch, seed: int, epochs: int) -> Path:
    """The folder of one stand-alone run: named by its parameter count and a digest of what
    defines it (recipe values included), so different benchmarks asking for the same run find
    the same folder."""
    from autovit.nas.params import count_params

    what = json.dumps({"data": cfg.data, "recipe": recipe_values(cfg), "arch": arch.key(), "seed": seed,
                       "epochs": epochs}, sort_keys=True, default=list)
    digest = hashlib.sha1(what.encode()).hexdigest()[:10]
    return Path(workdir) / f"{count_params(arch) / 1e6:.3f}M-s{seed}-e{epochs}-{digest}"


def _parts(out: Path) -> list[dict]:
    path = out / "parts.json"
    return json.loads(path.read_text()) if path.exists() else []


def standalone(cfg, arch, seed: int, epochs: int, workdir: Path, stop_after: int | None = None) -> dict:
    """Train `arch` alone (cfg's recipe and data, `seed`, an `epochs`-epoch schedule), or only
    up to epoch `stop_after` of it. Returns the final validation top-1 (%, None when stopped
    early), the wall and process CPU time summed over the run's parts (s), the epochs done, the
    folder, and whether a finished run was reused."""
    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.checkpoint import load_checkpoint
    from autovit.nas.train import train

    out = run_folder(workdir, cfg, arch, seed, epochs)
    last, timing = out / "last.ckpt", out / "timing.json"
    if timing.exists():
        return {**json.loads(timing.read_text()), "folder": str(out), "reused": True}
    done_before = load_checkpoint(last)["epoch"] if last.exists() else 0
    target = epochs if stop_after is None else min(stop_after, epochs)
    if done_before < target:
        run = replace(cfg, epochs=epochs, seed=seed, arch=json.loads(arch.to_json()), eval_every=epochs,
                      eval_random=0)
        resumed = last.exists()
        before, t0, c0 = _parts(out), time.perf_counter(), time.process_time()
        reached = [done_before]

        def epoch_done(_line: str) -> None:
            # the ledger is rewritten after every epoch, so a run killed mid-part keeps the time
            # of the epochs its checkpoint holds
            reached[0] += 1
            part = {"from_epoch": done_before, "to_epoch": reached[0], "wall_s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - c0}
            atomic_write_text(out / "parts.json", json.dumps(before + [part]) + "\n")

        # no checkpoint yet: whatever a killed first epoch left (config.json) is replaced
        train(run, out, resume=last if resumed else None, progress=False, log=epoch_done, force=not resumed,
              stop_after_epochs=target - done_before)
    parts = _parts(out)
    ck = load_checkpoint(last)
    total = {"wall_s": sum(p["wall_s"] for p in parts), "cpu_s": sum(p["cpu_s"] for p in parts),
             "parts": len(parts), "epochs": ck["epoch"],
             # below the epochs only if a process died between a checkpoint and its ledger line
             "timed_epochs": sum(p["to_epoch"] - p["from_epoch"] for p in parts)}
    if ck["epoch"] < epochs:
        return {**total, "top1": None, "folder": str(out), "reused": False}
    done = {**total, "top1": ck["history"][-1]["top1_arch"]}
    atomic_write_text(timing, json.dumps(done) + "\n")
    return {**done, "folder": str(out), "reused": False}
