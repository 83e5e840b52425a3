"""Whole networks on this machine (issue 12), offline: re-price saved measurements.

    python benchmarks/cpu_whole_network.py                       # defaults: /work/cache/local_cpu
    python benchmarks/cpu_whole_network.py --data DIR --graphs DIR

Reads the calibration LUT (`DIR/luts/calib50.json`) and the validation rows of a `validate` run
(`DIR/validate_main.json`: 100 random subnets + the default zoo; `DIR/validate_extra.json`: more
timm families), rebuilds every network (deterministic: the seeded random subnets and timm models)
and caches its weight-less ONNX export under `--graphs`. Then, for each variant of the model
(`VARIANTS`), it refits the calibration on the 50 blocks (`ProfileCalibrator`) and re-prices the
exported graphs (`analytical`) and the block sums (`analytical_blocks`) against the measured ms
already saved. Nothing is timed. Prints one JSON object: within-10 %, Kendall tau and the median
predicted/measured ratio per set and predictor, per variant, and the fitted parameters.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path("/work/cache/local_cpu")


def _graph_path(graphs: Path, name: str) -> Path:
    return graphs / (name.replace(":", "_").replace("#", "_") + ".onnx")


def cached_graph(graphs: Path, name: str, build, shape):
    """The op graph of a network, from its cached weight-less ONNX export (written once)."""
    import onnx

    from autovit.latmodel.graph import build_graph
    from autovit.latmodel.io import atomic_write_bytes
    from autovit.nas.export import export_onnx_bytes

    p = _graph_path(graphs, name)
    built = p.with_suffix(".graph.pkl")  # the parsed graph: reading a large ONNX file takes seconds
    if built.exists():
        return pickle.loads(built.read_bytes())
    if not p.exists():
        atomic_write_bytes(p, export_onnx_bytes(build(), shape, with_weights=False, fold_batchnorm=False))
    g = build_graph(onnx.load(str(p)), source=name)
    atomic_write_bytes(built, pickle.dumps(g))
    return g


def rows_of(path: Path) -> list[dict]:
    from autovit.latmodel.checks import read_json

    return [r for r in read_json(path, "validation results")["rows"] if r.get("measured_ms")]


def candidates(rows: list[dict], seed: int = 0, spaces=("xxs", "xs", "s")):
    """(row, Candidate) for each saved row: random subnets rebuilt from the seed, timm by name."""
    from autovit.latmodel.validate import zoo_candidates
    from autovit.nas.latency import random_candidates

    n_random = sum(r["group"] == "random" for r in rows)
    rand = {c.name: c for c in random_candidates(n_random, list(spaces), seed)}
    out = []
    for r in rows:
        c = rand.get(r["model"]) if r["group"] == "random" else zoo_candidates([r["model"][5:]])[0]
        if c is None:
            raise SystemExit(f"{r['model']}: not rebuilt by random_candidates")
        if c.arch is not None and r.get("arch") and json.loads(json.dumps(c.arch.to_dict())) != r["arch"]:
            raise SystemExit(f"{r['model']}: the rebuilt architecture differs from the saved row")
        out.append((r, c))
    return out


def ratio_metrics(pred: list[float], meas: list[float]) -> dict[str, float]:
    """within_10 (%), kendall_tau and the median predicted/measured ratio of one predictor."""
    from autovit.latmodel.validate import metrics

    m = metrics(pred, meas)
    return {"within_10": m["within_10"], "kendall_tau": m["kendall_tau"],
            "median_ratio": float(np.median(np.array(pred) / np.array(meas))), "n": len(pred)}


# Calibrations compared (the ablation): blocks alone (main), the LUT's reference network added
# as one point, and as many points as it has blocks (the default of `autovit-lat calibrate`).
VARIANTS = {"blocks": None, "blocks+network_w1": 1.0, "blocks+network": "blocks"}


def fit_variant(base, lut, weight):
    """(profile, Calibration) of `base` fitted to the LUT's isolated blocks (+ its reference network)."""
    from dataclasses import replace as dc_replace

    from autovit.cli.lat import reference_network
    from autovit.latmodel.blocks import block_from_dict
    from autovit.latmodel.fit import ProfileCalibrator

    entries = [e for e in lut.entries.values() if e.get("mode") == "isolated"]
    net = reference_network(lut) if weight is not None else None
    if net is not None and weight != "blocks":
        net = dc_replace(net, weight=float(weight))
    cal = ProfileCalibrator(base)
    c = cal.fit([block_from_dict(e["block"]) for e in entries], [float(e["median_ms"]) for e in entries], net)
    return cal.fitted_profile(), c


def quiet_ms(row: dict, ref_ms: float, tol: float = 1.25) -> float:
    """The median, over the rounds whose reference burst ran within `tol` of the reference speed,
    of the round at the reference speed: the drift correction used only where the machine was quiet."""
    rd, rf = np.array(row["round_ms"]), np.array(row["reference_ms"])
    q = rf <= ref_ms * tol
    return float(np.median(rd[q] * ref_ms / rf[q])) if q.any() else float(row["measured_ms"])


STATISTICS = {"measured_ms": lambda r, ref: r["measured_ms"], "raw_min_ms": lambda r, ref: r["raw_ms"],
              "quiet_rounds_ms": quiet_ms}


def price_sets(profile, items, statistic: str = "measured_ms", ref_ms: float = 0.0) -> dict[str, dict]:
    """Metrics per set (random, zoo, extra) and predictor (analytical, analytical_blocks)."""
    from autovit.latmodel.oracle import AnalyticalOracle
    from autovit.nas.blocks import DECOMPOSITION

    blocks = AnalyticalOracle(profile, **DECOMPOSITION)
    per: dict[tuple[str, str], tuple[list, list]] = {}
    for r, arch, model in items:
        preds = {"analytical": model.estimate(profile).latency_ms}
        if arch is not None:
            preds["analytical_blocks"] = float(blocks.latency_ms([arch])[0])
        for p, v in preds.items():
            pr, me = per.setdefault((r["group"], p), ([], []))
            pr.append(v)
            me.append(STATISTICS[statistic](r, ref_ms))
    out: dict[str, dict] = {}
    for (g, p), (pr, me) in sorted(per.items()):
        out.setdefault(g, {})[p] = ratio_metrics(pr, me)
    return out


def block_sums(rows: list[dict], luts: Path) -> dict[str, float]:
    """Measured network over the sums of its measured blocks (isolated; ablation where the LUT
    has every block), median over the random subnets the ablation LUT covers."""
    from dataclasses import astuple

    from autovit.nas.arch import arch_block_fields, arch_from_dict
    from autovit.nas.blocks import BlockSpec

    def table(name):
        return {astuple(BlockSpec.from_dict(e["block"])): e["median_ms"]
                for e in json.loads((luts / name).read_text())["entries"].values()}

    iso, abl = table("space.json"), table("cost_space_xxs_ablation.json")
    ratios: dict[str, list[float]] = {"isolated": [], "ablation": []}
    for r in rows:
        fs = arch_block_fields(arch_from_dict(r["arch"])) if r.get("arch") else []
        if fs and all(f in abl for f in fs):
            ratios["isolated"].append(r["measured_ms"] / sum(iso[f] for f in fs))
            ratios["ablation"].append(r["measured_ms"] / sum(abl[f] for f in fs))
    return {f"measured_over_{k}_sum": float(np.median(v)) for k, v in ratios.items() if v} | {
        "n": len(ratios["ablation"])}


def main() -> None:
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.lut import load_lut

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--graphs", default=None, help="ONNX cache (default DATA/graphs)")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    data = Path(args.data)
    graphs = Path(args.graphs) if args.graphs else data / "graphs"
    graphs.mkdir(parents=True, exist_ok=True)
    sets = {"main": rows_of(data / "validate_main.json")}
    if (data / "validate_extra.json").exists():
        sets["extra"] = [dict(r, group="extra") for r in rows_of(data / "validate_extra.json")]
    items = []
    for name, rows in sets.items():
        for i, (r, c) in enumerate(candidates(rows)):
            items.append((r, c.arch, LatencyModel(cached_graph(graphs, c.name, c.build, c.shape))))
            print(f"{name} {i + 1}/{len(rows)} {c.name}", file=sys.stderr)
    if args.export_only:
        return
    lut = load_lut(data / "luts" / "calib50.json", "local-cpu")
    ref_ms = float(lut.reference["ref_ms"])
    base = load_profile("local-cpu")
    out: dict = {"data": str(data), "reference": lut.reference, "variants": {},
                 "network_vs_block_sums": block_sums(sets["main"], data / "luts")}
    for name, weight in VARIANTS.items():
        prof, cal = fit_variant(base, lut, weight)
        out["variants"][name] = {"params": cal.params, "at_bound": cal.at_bound, "rms_log_error": cal.rms_log_error,
                                 "mape_by_kind": cal.mape_by_kind,
                                 "by_statistic": {s: price_sets(prof, items, s, ref_ms) for s in STATISTICS}}
        print(f"fitted {name}", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
