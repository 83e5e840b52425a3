"""Re-price saved `validate --out` rows with another profile (issue 12, this machine; nothing timed).

    python benchmarks/cpu_rescore.py --hw PROFILE VALIDATE.json [VALIDATE2.json ...] [--graphs DIR] [--rows]
    python benchmarks/cpu_rescore.py --pool RESCORED.json [...]     # pooled_timm of saved --rows outputs
    python benchmarks/cpu_rescore.py --summary RESCORED.json [...]  # means over runs, per variant (file name)

For the ablation of a cost-model mechanism or a measurement statistic on the same measurements:
calibrate a variant profile on the same LUT (`autovit-lat calibrate --hw VARIANT.toml --lut LUT
--out VARIANT@cal.toml`), then re-price the rows here. Every network is rebuilt (seeded random
subnets, timm by name) and its weight-less export cached under --graphs. Prints one JSON object:
per file and set, within 10 % / Kendall tau / median predicted/measured of the ONNX-graph
predictor against two statistics of the saved rounds: `measured_ms` as saved (the fast state,
scaled once per run) and `per_round_scaled` (each round scaled by the reference burst before it,
the median over rounds: validate's statistic before issue 12's third pass); where validate
priced a set block by block, `block_sum_as_saved`: its saved block-sum predictions against
`measured_ms`, as saved (not re-priced), `block_sum`: the block sum re-priced with --hw as the
search's oracle composes it (validate's analytical_blocks predictor since §3.16: each block inside
its network), and `block_sum_isolated`: the paper's sum of blocks each priced alone (validate's
before §3.16), both against `measured_ms`; `pooled_timm`: over the timm models
of all the files together, the median abs log error of the ONNX-graph predictor and its share
within 10 %.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def per_round_scaled(row: dict, ref_ms: float | None) -> float:
    """validate's statistic before issue 12's third pass: the median of the scaled rounds, or the
    lowest round without a reference burst for each."""
    from benchmarks.fast_state import scaled

    r, f = row["round_ms"], row["reference_ms"]
    return statistics.median(scaled(r, f, ref_ms)) if (ref_ms and len(f) == len(r)) else min(r)


def main() -> None:
    from autovit.latmodel.checks import dumps
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.measure import at_reference
    from benchmarks.cpu_whole_network import candidates, cached_graph, ratio_metrics
    from autovit.latmodel.oracle import AnalyticalOracle
    from autovit.nas.blocks import DECOMPOSITION
    from autovit.nas.latency import IN_NETWORK
    from benchmarks.fast_state import run_speed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", help="profile name or TOML path (required but with --pool)")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--graphs", default=str(HERE / ".cache" / "local_cpu_graphs"))
    ap.add_argument("--restat", action="store_true",
                    help="recompute measured_ms from the saved rounds with this code's statistic "
                         "(measure.at_reference; the run's speed from its distinct reference bursts)")
    ap.add_argument("--rows", action="store_true", help="also list every network's prediction and measurement")
    ap.add_argument("--pool", action="store_true",
                    help="FILES are outputs of this script with --rows (of any version): print only their pooled_timm")
    ap.add_argument("--summary", action="store_true",
                    help="FILES are outputs of this script (RUN/VARIANT.json): per variant, the means over its runs")
    args = ap.parse_args()
    if args.summary:
        from autovit.latmodel.errors import AutoVitError

        try:
            print(dumps(summary(args.files), indent=1))
        except AutoVitError as e:  # a missing or broken output file: one line
            raise SystemExit(f"error: {e}") from None
        return
    if args.pool:
        print(dumps({f: pooled_timm(r for s in json.loads(Path(f).read_text())["files"].values() for r in s["rows"])
                     for f in args.files}, indent=1))
        return
    if not args.hw:
        ap.error("--hw is required (but with --pool)")
    profile = load_profile(args.hw)
    block_oracles = {"block_sum": AnalyticalOracle(profile, **DECOMPOSITION, **IN_NETWORK),
                     "block_sum_isolated": AnalyticalOracle(profile, **DECOMPOSITION)}
    graphs = Path(args.graphs)
    graphs.mkdir(parents=True, exist_ok=True)
    out: dict = {"hw": args.hw, "files": {}}
    every: list = []
    for f in args.files:
        d = json.loads(Path(f).read_text())
        rows = [r for r in d["rows"] if r.get("measured_ms")]
        if args.restat:
            run_ms = run_speed(x for r in rows for x in r["reference_ms"]) if d.get("reference_ms") else None
            rows = [dict(r, measured_ms=at_reference(r["round_ms"], run_ms, d.get("reference_ms"))) for r in rows]
        sets: dict = {}
        listed = []
        for r, c in candidates(rows):
            pred = LatencyModel(cached_graph(graphs, c.name, c.build, c.shape)).estimate(profile).latency_ms
            listed.append({"model": r["model"], "group": r["group"], "predicted_ms": pred, "measured_ms": r["measured_ms"]})
            for stat, meas in (("measured_ms", r["measured_ms"]), ("per_round_scaled", per_round_scaled(r, d["reference_ms"]))):
                pr, me = sets.setdefault(r["group"], {}).setdefault(stat, ([], []))
                pr.append(pred)
                me.append(meas)
            for stat, oracle in block_oracles.items() if c.blocks else ():
                pr, me = sets[r["group"]].setdefault(stat, ([], []))
                pr.append(oracle.blocks_ms(c.blocks))
                me.append(r["measured_ms"])
        out["files"][f] = {g: {s: ratio_metrics(pr, me) for s, (pr, me) in st.items()} for g, st in sets.items()}
        # validate's own block-sum predictions, as it saved them (not re-priced with --hw)
        for g in sets:
            saved = [(r["pred_analytical_blocks_ms"], r["measured_ms"]) for r in rows
                     if r["group"] == g and r.get("pred_analytical_blocks_ms")]
            if saved:
                out["files"][f][g]["block_sum_as_saved"] = ratio_metrics(*map(list, zip(*saved)))
        if args.rows:
            out["files"][f]["rows"] = listed
        every += listed
    out["pooled_timm"] = pooled_timm(every)
    print(dumps(out, indent=1))


# (label, the validate output's file stem, set, statistic) of summary's columns
SUMMARY_COLUMNS = (("random", "validate_main", "random", "measured_ms"), ("block_sum", "validate_main", "random", "block_sum"),
                   ("zoo", "validate_main", "zoo", "measured_ms"), ("20_more", "validate_extra", "zoo", "measured_ms"),
                   ("7_sealed", "validate_sealed", "zoo", "measured_ms"))


def summary(files: list[str]) -> dict:
    """Per variant (an output's file name, RUN/VARIANT.json): over its runs, the mean share within
    10 % (and the zoo's mean tau and how many runs reach 80 %) per set of SUMMARY_COLUMNS, and the
    mean of the timm models' pooled median abs log error and share within 10 %."""
    from autovit.latmodel.checks import read_json
    from autovit.latmodel.errors import AutoVitError

    fix = "pass outputs of this script (RUN/VARIANT.json)"
    acc: dict = {}
    for f in files:
        d = read_json(f, "rescored file", fix)
        if not (isinstance(d, dict) and isinstance(d.get("files"), dict) and isinstance(d.get("pooled_timm"), dict)
                and "median_abs_log_error" in d["pooled_timm"]):
            raise AutoVitError(f"{f}: no 'files' and 'pooled_timm' of a rescore; {fix}")
        a = acc.setdefault(Path(f).stem, {"runs": 0, "zoo_runs_at_80": 0, "zoo_tau": [], "timm_error": [], "timm_within_10": [],
                                          **{c[0]: [] for c in SUMMARY_COLUMNS}})
        a["runs"] += 1
        for label, stem, group, stat in SUMMARY_COLUMNS:
            m = next((sets[group][stat] for name, sets in d["files"].items()
                      if Path(name).name.startswith(stem) and stat in sets.get(group, {})), None)
            if m is not None:
                a[label].append(m["within_10"])
                if label == "zoo":
                    a["zoo_tau"].append(m["kendall_tau"])
                    a["zoo_runs_at_80"] += m["within_10"] >= 80
        a["timm_error"].append(d["pooled_timm"]["median_abs_log_error"])
        a["timm_within_10"].append(d["pooled_timm"]["within_10"])
    return {v: {k: (round(statistics.mean(x), 4) if x else None) if isinstance(x, list) else x for k, x in a.items()}
            for v, a in acc.items()}


def pooled_timm(rows) -> dict:
    """Over every row that is not a random subnet (the timm models of all the files together): the
    median of |log(predicted / measured)| and the share within 10 % (%)."""
    errs = [math.log(r["predicted_ms"] / r["measured_ms"]) for r in rows if r["group"] != "random"]
    if not errs:
        return {"n": 0}
    return {"n": len(errs), "median_abs_log_error": statistics.median(abs(e) for e in errs),
            "within_10": 100 * sum(abs(math.exp(e) - 1) <= 0.1 for e in errs) / len(errs)}


if __name__ == "__main__":
    main()
