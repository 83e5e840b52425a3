"""Why latency and not FLOPs: search this machine under a latency budget twice, with (a) the
calibrated analytical oracle and (b) the FLOPs proxy scaled to the same budget, then measure
the returned top-10 architectures of each with onnxruntime.

    python benchmarks/latency_vs_flops.py --supernet runs/clutter-xxs/last.ckpt \
        [--hw local-cpu@calibrated --budget auto --evaluations 100 --rounds 10 --seed 0]

Both searches are the real command (`autovit-nas search --strategy coarse-to-fine --json`),
with the same seed, budget and number of accuracy evaluations. `--budget auto` is the
`--percentile` (default 25th) of (a)'s latency over 2,000 random architectures of the
supernet's space, so the budget binds. The proxy's ms per FLOP is fitted over the space (make_oracle), so a FLOPs
budget means the same ms on average.

Measurement is validate's protocol: interleaved rounds (`--rounds`), a drift monitor timing a
reference model between bursts, and every value expressed at the calibration LUT's reference
speed, the speed the calibrated profile was fitted at. Noise per architecture is the
coefficient of variation of its rounds; "within noise" allows 2 of them above the budget.
The calibrated model's own verdict on each returned architecture is reported too.

Prints one JSON object (also benchmarks/results/latency_vs_flops.json).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_search(args, oracle: str, budget_ms: float, out: Path) -> dict:
    cmd = [sys.executable, "-m", "autovit.cli.nas", "search", "--supernet", args.supernet, "--hw", args.hw,
           "--latency-budget", f"{budget_ms:.6g}ms", "--latency-oracle", oracle, "--evaluations", str(args.evaluations),
           "--population", str(args.population), "--parents", str(args.parents), "--seed", str(args.seed),
           "--out", str(out), "--json"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"search with {oracle} failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"search ({oracle}) done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads((out / "search.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--hw", default="local-cpu@calibrated")
    ap.add_argument("--budget", default="auto", help="ms, or auto (a percentile of the space's latency)")
    ap.add_argument("--percentile", type=float, default=25, help="for --budget auto")
    ap.add_argument("--evaluations", type=int, default=100)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--parents", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "latency_vs_flops.json"))
    args = ap.parse_args()

    import random

    import numpy as np

    from autovit.latmodel import validate as v
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.measure import TimingPolicy, physical_cores
    from autovit.latmodel.profiler import drift_monitor
    from autovit.nas.arch import ArchConfig
    from autovit.nas.builder import build_model
    from autovit.nas.checkpoint import checkpoint_space, load_checkpoint
    from autovit.nas.search import make_oracle, parse_latency

    profile = load_profile(args.hw)
    space = checkpoint_space(load_checkpoint(args.supernet), None, args.supernet)
    analytical = make_oracle("analytical", args.hw)
    if args.budget == "auto":
        rng = random.Random(12345)
        budget = float(np.percentile(analytical.latency_ms([space.sample(rng) for _ in range(2000)]), args.percentile))
    else:
        budget = parse_latency(args.budget)

    with tempfile.TemporaryDirectory() as tmp:
        found = {o: run_search(args, o, budget, Path(tmp) / o) for o in ("analytical", "flops")}

    cands, tops = [], {}
    for oracle, res in found.items():
        rows = sorted(res["candidates"], key=lambda r: -r["top1"])[: args.top]
        tops[oracle] = rows
        for i, r in enumerate(rows):
            arch = ArchConfig.from_dict(r["arch"])
            side = arch.resolution
            cands.append(v.Candidate(f"{oracle}-{i}", oracle, (lambda a=arch: build_model(a)), (1, 3, side, side),
                                     arch=arch))
    calib = profile.calibration.get("lut")
    ref_ms = load_lut(calib, profile.name).reference.get("ref_ms") if calib else None
    threads = physical_cores()
    # validate's protocol with longer bursts: these networks take ~1 ms, where a 6-run burst's
    # median moved by 25 % from round to round (first run of this script).
    policy = TimingPolicy(warmup=10, min_repeats=50, max_repeats=400, ci_pct=1.0, max_seconds=1.0)
    t0 = time.time()
    failed = v.measure(cands, "onnxruntime", threads, args.rounds, policy, None,
                       drift_monitor("onnxruntime", threads, policy), ref_ms)
    if failed:
        sys.exit(f"could not measure: {failed}")
    print(f"measured {len(cands)} architectures x {args.rounds} rounds in {time.time() - t0:.0f} s", file=sys.stderr)

    flops_oracle = make_oracle("flops", args.hw, space)
    out = {"benchmark": "latency_vs_flops", "supernet": args.supernet, "hw": args.hw, "budget_ms": budget,
           "budget_percentile": args.percentile if args.budget == "auto" else None,
           "evaluations": args.evaluations, "seed": args.seed, "rounds": args.rounds, "reference_ms": ref_ms,
           "flops_ms_per_mflop": flops_oracle.factor * 1e6, "by_oracle": {}, "rows": []}
    for oracle, rows in tops.items():
        mine = [c for c in cands if c.group == oracle]
        meas = np.array([c.measured_ms for c in mine])
        cv = np.array([c.cv or 0.0 for c in mine])
        pred_lat = analytical.latency_ms([c.arch for c in mine])
        over = meas > budget
        over_noise = meas > budget * (1 + 2 * cv)
        predicted_over = pred_lat > budget
        out["by_oracle"][oracle] = {
            "best_top1": rows[0]["top1"], "top_mean_top1": float(np.mean([r["top1"] for r in rows])),
            "measured_ms_median": float(np.median(meas)), "measured_ms_max": float(meas.max()),
            "over_budget": int(over.sum()), "over_budget_beyond_noise": int(over_noise.sum()), "n": len(mine),
            "violation_rate": float(over_noise.mean()), "median_cv": float(np.median(cv)),
            "over_budget_by_calibrated_model": int(predicted_over.sum()),
            "analytical_ms_median": float(np.median(pred_lat)),
            "mape_analytical_vs_measured": float(np.mean(np.abs(pred_lat - meas) / meas) * 100)}
        for c, r, p in zip(mine, rows, pred_lat):
            out["rows"].append({"oracle": oracle, "top1": r["top1"], "params": r["params"], "flops": r["flops"],
                                "searched_ms": r["latency_ms"][args.hw], "analytical_ms": float(p),
                                "measured_ms": c.measured_ms, "raw_ms": c.raw_ms, "cv": c.cv})
    atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v_ for k, v_ in out.items() if k != "rows"}))


if __name__ == "__main__":
    main()
