"""The issue-3 pipeline on this machine, end to end, with the real commands:

    python benchmarks/local_cpu.py                 # ~20 min on 2 cores
    python benchmarks/local_cpu.py --models random:20 --zoo none   # a quick look

1. profiling cost: wall time of `profile --preset paper46` and `profile --space xxs` (isolated
   and ablation), each into a fresh LUT;
2. the calibration data: `profile --preset calib50` (50 blocks, the only data calibration and
   the FLOPs/params baselines see) and `calibrate`;
3. the LUT-sum predictor's table: `profile --space xxs|xs|s` into one LUT;
4. `validate` of random subnets and the timm zoo against the four predictors.

Prints one JSON object (also written to benchmarks/results/local_cpu.json); the validation
rows go to benchmarks/results/validate_local_cpu.json and the scatter plot to
docs/img/validate_local_cpu.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def lat(*args: str) -> tuple[float, dict]:
    """Run `autovit-lat ARGS --json`; returns (wall s, parsed stdout)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "autovit.cli.lat", *args, "--json"], capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"autovit-lat {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="random:100")
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--work", default=str(ROOT / "luts" / "bench"), help="folder for the LUTs (recreated)")
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out: dict = {"profiling_cost_s": {}}
    for name, extra in (("paper46", ["--preset", "paper46"]), ("space_xxs_isolated", ["--space", "xxs"]),
                        ("space_xxs_ablation", ["--space", "xxs", "--mode", "ablation"])):
        wall, res = lat("profile", "--hw", "local-cpu", *extra, "--out", str(work / f"cost_{name}.json"))
        out["profiling_cost_s"][name] = {"wall_s": round(wall, 1), "blocks": res["blocks"], "rounds": 3}
        print(f"{name}: {res['blocks']} blocks in {wall:.1f} s", file=sys.stderr)

    calib = work / "calib50.json"
    wall, _ = lat("profile", "--hw", "local-cpu", "--preset", "calib50", "--rounds", "10", "--out", str(calib))
    out["profiling_cost_s"]["calib50"] = {"wall_s": round(wall, 1), "blocks": 50, "rounds": 10}
    _, cal = lat("calibrate", "--hw", "local-cpu", "--lut", str(calib))
    out["calibration"] = {k: cal[k] for k in ("params", "stderr", "at_bound", "n_points", "rms_log_error", "mape_by_kind")}

    space_lut = work / "space.json"
    for sp in ("xxs", "xs", "s"):
        lat("profile", "--hw", "local-cpu", "--space", sp, "--out", str(space_lut))

    results = HERE / "results"
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    wall, val = lat("validate", "--hw", "local-cpu@calibrated", "--backend", "onnxruntime", "--models", args.models,
                    "--space", "xxs,xs,s", "--zoo", args.zoo, "--lut", str(space_lut), "--rounds", str(args.rounds),
                    "--plot", str(ROOT / "docs" / "img" / "validate_local_cpu.png"),
                    "--out", str(results / "validate_local_cpu.json"))
    out["validate"] = {k: val[k] for k in ("n_models", "noise_floor_cv", "by_set", "failed", "lut_coverage",
                                           "baseline_factors", "environment")}
    out["validate"]["wall_s"] = round(wall, 1)
    from autovit.latmodel.io import atomic_write_text

    atomic_write_text(results / "local_cpu.json", json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
