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
    if not p.exists():
        atomic_write_bytes(p, export_onnx_bytes(build(), shape, with_weights=False, fold_batchnorm=False))
    return build_graph(onnx.load(str(p)), source=name)


def rows_of(path: Path) -> list[dict]:
    from autovit.latmodel.checks import read_json

    return [r for r in read_json(path, "validation results")["rows"] if r.get("measured_ms")]


def candidates(rows: list[dict], seed: int = 0, spaces=("xxs", "xs", "s")):
    """(row, Candidate) for each saved row: random subnets rebuilt from the seed, timm by name."""
    from autovit.latmodel.validate import random_candidates, zoo_candidates

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


def fit_profile(base, lut_path: Path, fixed: dict[str, float] | None = None):
    """`base` calibrated on the LUT's isolated blocks as `autovit-lat calibrate` does, with the
    parameters in `fixed` held at the given values (not fitted). Returns (profile, Calibration)."""
    from dataclasses import replace

    from autovit.latmodel.fit import ProfileCalibrator
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.modules import BlockSpec

    fixed = fixed or {}
    prof = replace(base, **fixed)
    entries = [e for e in load_lut(lut_path, base.name).entries.values() if e.get("mode") == "isolated"]
    names = tuple(n for n in type(base).FREE_PARAMETERS if n not in fixed)
    cal = ProfileCalibrator(prof, parameters=names)
    c = cal.fit([BlockSpec.from_dict(e["block"]) for e in entries], [float(e["median_ms"]) for e in entries])
    return cal.fitted_profile(), c


def price_sets(profile, items: list[tuple[dict, object, object]]) -> dict[str, dict]:
    """Metrics per set (random, zoo, extra) and predictor (analytical, analytical_blocks)."""
    from autovit.latmodel.oracle import AnalyticalOracle

    blocks = AnalyticalOracle(profile)
    per: dict[tuple[str, str], tuple[list, list]] = {}
    for r, c, model in items:
        preds = {"analytical": model.estimate(profile).latency_ms}
        if c.arch is not None:
            preds["analytical_blocks"] = float(blocks.latency_ms([c.arch])[0])
        for p, v in preds.items():
            pr, me = per.setdefault((r["group"], p), ([], []))
            pr.append(v)
            me.append(r["measured_ms"])
    out: dict[str, dict] = {}
    for (g, p), (pr, me) in sorted(per.items()):
        out.setdefault(g, {})[p] = ratio_metrics(pr, me)
    return out


def main() -> None:
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
    for name, rows in sets.items():
        for i, (r, c) in enumerate(candidates(rows)):
            cached_graph(graphs, c.name, c.build, c.shape)
            print(f"{name} {i + 1}/{len(rows)} {c.name}", file=sys.stderr)
    if args.export_only:
        return


if __name__ == "__main__":
    main()
