"""Which statistic of a measurement's rounds reproduces (issue 12, this machine)? No prediction involved.

    python benchmarks/fast_state.py A.json B.json     # two LUTs, or two `validate --out` files

Reads the raw rounds each file keeps (a LUT entry's `round_medians`, a validation row's
`round_ms`, with the drift monitor's reference bursts beside them) for the items both files
measured, computes each statistic from each file and prints one JSON object: per statistic, how
far the two runs' values lie apart (median and 90th percentile of |log ratio|, share within 5 %
and 10 %, mean log ratio). A statistic worth predicting is one two measurements agree on.

Statistics: the median of the rounds; the fastest round; the fast state (measure.fast_state_ms:
the median of the rounds within 25 % of the fastest); each round scaled by the reference burst
before it (`ref_ms / reference`, the drift correction before issue 12's third pass), then its
median or its fast state; the fast state scaled once per run (the reference's fast state in the
file: what `validate` now reports).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

from autovit.latmodel.measure import fast_state_ms


def items(path: Path) -> dict[str, tuple[list[float], list[float], float]]:
    """name -> (raw rounds ms, reference bursts ms, the file's reference speed ms, 0 without one),
    for the items whose rounds are all > 0 (an ablation entry's differences need not be)."""
    from autovit.latmodel.checks import read_json

    d = read_json(path, "measurements")
    if "entries" in d:
        ref = float((d.get("reference") or {}).get("ref_ms") or 0.0)
        raw = {k: (e.get("round_medians", []), e.get("round_reference_ms", [])) for k, e in d["entries"].items()}
    else:
        ref = float(d.get("reference_ms") or 0.0)
        raw = {r["model"]: (r["round_ms"], r.get("reference_ms", [])) for r in d["rows"]}
    return {k: (r, f, ref) for k, (r, f) in raw.items() if r and all(x > 0 for x in r)}


def scaled(rounds: list[float], refs: list[float], ref: float) -> list[float]:
    """Each round scaled by the reference burst before it (the drift correction before issue 12's
    third pass); the rounds as they are without a burst for each or a reference speed."""
    return [r * ref / c for r, c in zip(rounds, refs)] if (ref and len(refs) == len(rounds)) else list(rounds)


def run_speed(bursts) -> float | None:
    """The run's speed (ms): the fast state of its distinct reference bursts (rows and entries
    repeat the burst before them, so each counts once); None without any."""
    distinct = sorted(set(bursts))
    return fast_state_ms(distinct) if distinct else None


STATISTICS = {
    "median": lambda r, f, ref, run: statistics.median(r),
    "fastest": lambda r, f, ref, run: min(r),
    "fast_state": lambda r, f, ref, run: fast_state_ms(r),
    "per_round_scaled_median": lambda r, f, ref, run: statistics.median(scaled(r, f, ref)),
    "per_round_scaled_fast_state": lambda r, f, ref, run: fast_state_ms(scaled(r, f, ref)),
    "fast_state_run_scaled": lambda r, f, ref, run: fast_state_ms(r) / run,
}


def compare(a: Path, b: Path) -> dict:
    A, B = items(a), items(b)
    runs = {p: run_speed(x for _, f, _ in it.values() for x in f) or 1.0 for p, it in ((a, A), (b, B))}
    keys = sorted(set(A) & set(B))
    out: dict = {"a": str(a), "b": str(b), "items": len(keys), "run_reference_ms": [runs[a], runs[b]], "statistics": {}}
    for name, fn in STATISTICS.items():
        lr = np.array([np.log(fn(*A[k], runs[a]) / fn(*B[k], runs[b])) for k in keys])
        out["statistics"][name] = {"median_abs_log": float(np.median(np.abs(lr))),
                                   "p90_abs_log": float(np.percentile(np.abs(lr), 90)),
                                   "within_5": float(np.mean(np.abs(lr) < np.log(1.05))),
                                   "within_10": float(np.mean(np.abs(lr) < np.log(1.10))),
                                   "mean_log": float(lr.mean())}
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    from autovit.latmodel.checks import dumps

    print(dumps(compare(Path(sys.argv[1]), Path(sys.argv[2]))))
