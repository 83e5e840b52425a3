"""Where the latency model is wrong on the external sets, by family and by mechanism.

    python benchmarks/residuals.py            # after benchmarks/external.py (uses its graph cache)
    python benchmarks/residuals.py --apple benchmarks/results/external_apple.jsonl

Prints one JSON object per set: the residual r = log(scale x predicted / measured) averaged per
model family (families with >= 3 models, most under- and over-predicted first), and the
correlation of r with the share of predicted time in each op category; for the OFA sets, the
correlation of r with resolution, mean kernel size, mean expand ratio and number of blocks.
Positive r: predicted too slow.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from external import OFA_SETS, REPARAM_SETS, TIMM_SETS, find_data, ofa_models, ofa_rows, timm_key, timm_rows  # noqa: E402

from autovit.latmodel.network_graphs import graph_path, unresolved_share  # noqa: E402


def _residuals(pred: list[float], meas: list[float]) -> np.ndarray:
    from autovit.latmodel.metrics import global_scale

    p, m = np.array(pred), np.array(meas)
    return np.log(p * global_scale(p, m) / m)


def _corr(x, r) -> float:
    return round(float(np.corrcoef(np.asarray(x, float), r)[0, 1]), 3)


def _category_corr(shares: list[dict[str, float]], r: np.ndarray) -> dict[str, float]:
    cats = sorted({c for s in shares for c, v in s.items() if v > 0})
    return {c: _corr([s.get(c, 0.0) for s in shares], r) for c in cats}


def apple_rows_report(path: Path, top: int = 6) -> None:
    """Per Apple table: the rows most out of rank (discordant pairs each takes part in, its
    residual r, and the table's tau without it: how much one row moves the figure)."""
    from scipy import stats

    for line in path.read_text().splitlines():
        res = json.loads(line)
        if "rows" not in res:
            continue
        rows = [r for r in res["rows"] if not r["excluded"]]
        p, m = np.array([r["pred_ms"] for r in rows]), np.array([r["ms"] for r in rows])
        resid = _residuals(list(p), list(m))
        disc = [int(sum((p[i] - p[j]) * (m[i] - m[j]) < 0 for j in range(len(rows)) if j != i)) for i in range(len(rows))]
        worst = sorted(range(len(rows)), key=lambda i: -disc[i])[:top]
        out = []
        for i in worst:
            keep = [j for j in range(len(rows)) if j != i]
            tau_wo = float(stats.kendalltau(p[keep], m[keep]).statistic)
            out.append({"model": rows[i]["model"], "res": rows[i]["res"], "ms": rows[i]["ms"], "r": round(float(resid[i]), 3),
                        "discordant_pairs": disc[i], "tau_without": round(tau_wo, 3)})
        print(json.dumps({"set": res["set"], "n": len(rows), "kendall_tau": res["kendall_tau"],
                          "pairs": len(rows) * (len(rows) - 1) // 2, "discordant_pairs": sum(disc) // 2,
                          "most_discordant": out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apple", metavar="JSONL", help="rows out of rank per Apple table of a benchmarks/external.py results file")
    ap.add_argument("--data")
    ap.add_argument("--cache", default=str(HERE / ".cache"))
    ap.add_argument("--ofa-n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.apple:
        apple_rows_report(Path(args.apple))
        return

    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile

    data, cache = find_data(args.data), Path(args.cache)
    rows = timm_rows(data)
    for name, (_, hw, dtype) in TIMM_SETS.items():
        profile = load_profile(hw)
        pred, meas, fams, shares = [], [], [], []
        for r in rows[name]:
            gp = graph_path(cache, timm_key(r["model"], r["infer_img_size"], name in REPARAM_SETS))
            if not gp.exists():
                continue
            g = pickle.loads(gp.read_bytes())
            if unresolved_share(g) > 0.1:
                continue
            est = LatencyModel(g).estimate(profile, int(r["infer_batch_size"]), dtype)
            pred.append(est.latency_ms)
            meas.append(float(r["infer_step_time"]))
            fams.append(re.split(r"[_\d]", r["model"])[0])
            shares.append({c: v / est.latency_ms for c, v in est.breakdown.items()})
        res = _residuals(pred, meas)
        by_fam = defaultdict(list)
        for f, x in zip(fams, res):
            by_fam[f].append(x)
        fam = sorted((round(float(np.mean(v)), 3), f, len(v)) for f, v in by_fam.items() if len(v) >= 3)
        print(json.dumps({"set": name, "n": len(res), "family_mean_log_residual": {
            "under": [{"family": f, "n": n, "r": m} for m, f, n in fam[:6]],
            "over": [{"family": f, "n": n, "r": m} for m, f, n in fam[::-1][:6]]},
            "corr_with_category_share": _category_corr(shares, res)}))

    ofa = ofa_rows(data, args.ofa_n, args.seed)
    built = ofa_models(ofa, cache, 1, "ofa")
    models = [(r, built[r["idx"]][1]) for r in ofa if r["idx"] in built]
    v100 = load_profile("v100")
    feats = {
        "resolution": [int(r["resolution"]) for r, _ in models],
        "mean_kernel": [np.mean([int(k) for k in r["ks"].split()]) for r, _ in models],
        "mean_expand": [np.mean([int(k) for k in r["e"].split()]) for r, _ in models],
        "blocks": [sum(int(x) for x in r["d"].split()) for r, _ in models],
    }
    for name, b in OFA_SETS.items():
        res = _residuals([m.estimate(v100, b, "fp32").latency_ms for _, m in models],
                         [float(r[f"v100_{b}"]) for r, _ in models])
        print(json.dumps({"set": name, "n": len(res), "corr_with_setting": {k: _corr(v, res) for k, v in feats.items()}}))


if __name__ == "__main__":
    main()
