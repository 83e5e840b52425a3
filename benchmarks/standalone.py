"""Stand-alone training runs shared by the benchmarks (task_separation.py, ranking.py): one
subnet trained from scratch with a supernet's recipe and data, cached by (data, architecture,
seed, epochs) under a work folder, so a benchmark that is interrupted, or another benchmark
that needs the same run, reuses it. Not a command: imported by the scripts next to it.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path


def spread_archs(space, n: int, seed: int) -> list:
    """n architectures spread over the space's parameter range: 400 uniform samples sorted by
    parameter count plus the smallest and largest, taken at evenly spaced quantiles."""
    from autovit.nas.params import count_params

    rng = random.Random(seed)
    pool = sorted((space.sample(rng) for _ in range(400)), key=count_params)
    pool = [space.smallest()] + pool + [space.largest()]
    return [pool[round(i * (len(pool) - 1) / (n - 1))] for i in range(n)]


def run_folder(workdir: Path, cfg, arch, seed: int, epochs: int) -> Path:
    """The folder of one stand-alone run: named by its parameter count and a digest of what
    defines it, so different benchmarks asking for the same run find the same folder."""
    from autovit.nas.params import count_params

    what = json.dumps({"data": cfg.data, "recipe": cfg.recipe, "arch": arch.key(), "seed": seed, "epochs": epochs},
                      sort_keys=True)
    digest = hashlib.sha1(what.encode()).hexdigest()[:10]
    return Path(workdir) / f"{count_params(arch) / 1e6:.3f}M-s{seed}-e{epochs}-{digest}"


def standalone(cfg, arch, seed: int, epochs: int, workdir: Path) -> dict:
    """Train `arch` alone (cfg's recipe and data, `seed`, `epochs`); returns its final
    validation top-1 (%), wall and process CPU time (s) and whether a finished run was reused."""
    from autovit.latmodel.io import atomic_write_text
    from autovit.nas.checkpoint import load_checkpoint
    from autovit.nas.train import train

    out = run_folder(workdir, cfg, arch, seed, epochs)
    last, timing = out / "last.ckpt", out / "timing.json"
    if timing.exists():
        return {**json.loads(timing.read_text()), "reused": True}
    run = replace(cfg, epochs=epochs, seed=seed, arch=json.loads(arch.to_json()), eval_every=epochs, eval_random=0)
    resumed = last.exists()  # then the times cover the resumed part only
    t0, c0 = time.perf_counter(), time.process_time()
    # no checkpoint yet: whatever a killed first epoch left (config.json) is replaced
    res = train(run, out, resume=last if resumed else None, progress=False, log=lambda m: None, force=not resumed)
    done = {"top1": res["history"][-1]["top1_arch"], "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "resumed": resumed, "epochs": load_checkpoint(last)["epoch"]}
    atomic_write_text(timing, json.dumps(done) + "\n")
    return {**done, "reused": False}
