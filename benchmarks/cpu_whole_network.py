"""Whole networks on this machine (issue 12), offline: re-price saved measurements.

    python benchmarks/cpu_whole_network.py                       # defaults: /work/cache/local_cpu
    python benchmarks/cpu_whole_network.py --data DIR --graphs DIR --variants blocks,blocks+network

Reads the calibration LUT (`DIR/luts/calib50.json`) and the validation rows of a `validate` run
(`DIR/validate_main.json`: 100 random subnets + the default zoo; `DIR/validate_extra.json`: more
timm families), rebuilds every network (deterministic: the seeded random subnets and timm models)
and caches its weight-less ONNX export under `--graphs`. Then:

- drift: which model of the machine's slow spells explains the rounds of every measured item
  (the 50 blocks and the networks) best, judged by the spread of the rounds each correction
  leaves (no prediction involved): none (raw), the drift monitor's ratio (every item slows as
  the reference does), a cost per dispatched op, or the item's memory-bound share of time;
- for each variant of the model (`VARIANTS`: the calibration, the statistic the LUT's entries
  and the rows are expressed in, the cost-model mechanisms switched on or off), it refits the
  calibration on the 50 blocks (`ProfileCalibrator`) and re-prices the exported graphs
  (`analytical`) and the block sums (`analytical_blocks`) against the measured ms already saved.

Nothing is timed. Prints one JSON object: within-10 %, Kendall tau and the median
predicted/measured ratio per set and predictor, per variant and statistic, and the fitted
parameters.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import dataclass
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
    from autovit.latmodel.network_graphs import GRAPH_CACHE_VERSION
    from autovit.nas.export import export_onnx_bytes

    p = _graph_path(graphs, name)
    # the parsed graph (reading a large ONNX file takes seconds), rebuilt from the export when the
    # graph format changes
    built = p.with_suffix(f".graph-v{GRAPH_CACHE_VERSION}.pkl")
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


def op_count(model, profile) -> int:
    """Kernels the runtime dispatches for a graph (views excluded): what a per-op cost multiplies."""
    return sum(k.klass != "view" for k in model.kernels(profile))


def memory_share(model, profile) -> float:
    """Share of a graph's predicted time spent in memory-bound kernels (their memory time)."""
    est = model.estimate(profile)
    return sum(t.memory_ms for t in est.kernels if t.bound == "memory") / est.latency_ms


@dataclass
class Item:
    """One measured thing: its rounds (raw ms), the drift monitor's burst before each, and what the
    data-sheet model says of it (dispatched ops, memory-bound share of its time)."""

    group: str
    rounds: list[float]
    refs: list[float]
    ops: int
    memory_share: float
    row: dict
    arch: object = None
    model: object = None


@dataclass(frozen=True)
class Reference:
    """The drift monitor's reference network: its speed in the LUT and what the model says of it."""

    ms: float
    ops: int
    memory_share: float


def corrected_rounds(it: Item, how: str, ref: Reference) -> np.ndarray:
    """The item's rounds at the reference speed under one drift model: raw (none), ratio (the
    monitor's: sensitivity 1), per_op (the reference's excess per dispatched op times the item's
    ops) or memory (sensitivity = the item's memory-bound share over the reference's)."""
    rd, rf = np.array(it.rounds), np.array(it.refs)
    if how == "raw":
        return rd
    if how == "per_op":
        return np.maximum(rd - it.ops * (rf - ref.ms) / ref.ops, 0.1 * rd)
    sensitivity = 1.0 if how == "ratio" else it.memory_share / ref.memory_share
    return rd / np.maximum(1.0 + sensitivity * (rf / ref.ms - 1.0), 0.1)


def quiet_ms(it: Item, ref: Reference, how: str = "ratio", tol: float = 1.25) -> float:
    """The median, over the rounds whose reference burst ran within `tol` of the reference speed
    (all rounds if none did), of the round at the reference speed (drift model `how`): the drift
    correction used only where the machine was nearly quiet, so that its model matters least."""
    rd, rf = corrected_rounds(it, how, ref), np.array(it.refs)
    q = rf <= ref.ms * tol
    return float(np.median(rd[q] if q.any() else rd))


# How an item's rounds become one number: the monitor's ratio (what `validate` and `profile`
# compute), the quiet rounds only, the lowest raw round.
STATISTICS = {
    "measured_ms": lambda it, ref: float(np.median(corrected_rounds(it, "ratio", ref))),
    "quiet_rounds_ms": quiet_ms,
    "raw_min_ms": lambda it, ref: float(min(it.rounds)),
}
DRIFT_MODELS = ("raw", "ratio", "per_op", "memory")


def _slope_check(its: list[Item], ref: Reference) -> dict:
    """Slope of rounds on reference bursts (least squares, items whose bursts spread >= 1.4x)
    against what each drift model predicts for it: median and inter-quartile range of
    log(slope / predicted) over items."""
    logs: dict[str, list[float]] = {m: [] for m in DRIFT_MODELS[1:]}
    for it in its:
        rf, rd = np.array(it.refs), np.array(it.rounds)
        if rf.max() < 1.4 * rf.min():
            continue
        slope = float(np.polyfit(rf, rd, 1)[0])
        level = float(np.median(corrected_rounds(it, "raw", ref)[rf <= np.median(rf)]))
        predicted = {"ratio": level / ref.ms, "per_op": it.ops / ref.ops,
                     "memory": level / ref.ms * it.memory_share / ref.memory_share}
        for m, p in predicted.items():
            if slope > 0 and p > 0:
                logs[m].append(float(np.log(slope / p)))
    out = {}
    for m, v in logs.items():
        if v:
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            out[m] = {"median": float(np.exp(med)), "iqr_log": float(q3 - q1), "n": len(v)}
    return out


def drift_report(items: list[Item], ref: Reference) -> dict:
    """Per set: the noise floor (median over items of the coefficient of variation of its rounds)
    each drift model leaves, and the slope check (_slope_check)."""
    out: dict[str, dict] = {}
    for g in sorted({it.group for it in items}):
        its = [it for it in items if it.group == g and len(it.rounds) >= 3]
        rep: dict = {"n": len(its)}
        for how in DRIFT_MODELS:
            cvs = [float(np.std(x, ddof=1) / np.mean(x)) for x in (corrected_rounds(it, how, ref) for it in its)]
            rep[f"noise_floor_cv_{how}"] = float(np.median(cvs))
        rep["slope_over_predicted"] = _slope_check(its, ref)
        out[g] = rep
    return out


def lut_items(lut, profile) -> list[tuple[object, Item]]:
    """(block, Item) for every isolated entry of the LUT, described by its block's graph."""
    from autovit.latmodel.blocks import block_from_dict
    from autovit.latmodel.fit import block_model

    out = []
    for e in lut.entries.values():
        if e.get("mode") != "isolated":
            continue
        b = block_from_dict(e["block"])
        m = block_model(b)
        out.append((b, Item("lut", list(e["round_medians"]), list(e["round_reference_ms"]), op_count(m, profile),
                            memory_share(m, profile), row=e)))
    return out


# The variants compared (the ablation). network: the LUT's reference network in the fit, as one
# point (1.0) or as many points as it has blocks ("blocks", `calibrate`'s default), or not (None);
# statistic: how the LUT's entries and the rows are expressed at the reference speed (STATISTICS);
# off: profile flags of mechanisms switched off.
VARIANTS = {
    "blocks": {"network": None, "statistic": "measured_ms", "off": ("nchwc_channels",)},
    "blocks+network": {"network": "blocks", "statistic": "measured_ms", "off": ("nchwc_channels",)},
    "blocks+network+nchwc": {"network": "blocks", "statistic": "measured_ms", "off": ()},
}


def fit_variant(base, lut, lut_its, spec: dict, ref: Reference):
    """(profile, Calibration) of `base` less the variant's switched-off mechanisms, fitted to the
    LUT's isolated blocks (+ its reference network), the entries expressed with its statistic."""
    from dataclasses import replace

    from autovit.cli.lat import reference_network
    from autovit.latmodel.fit import ProfileCalibrator

    weight = spec["network"]
    net = reference_network(lut) if weight is not None else None
    if net is not None and weight != "blocks":
        net = replace(net, weight=float(weight))
    stat = spec["statistic"]
    ms = [float(it.row["median_ms"]) if stat == "measured_ms" else STATISTICS[stat](it, ref) for _, it in lut_its]
    cal = ProfileCalibrator(replace(base, **{flag: False for flag in spec["off"]}))
    c = cal.fit([b for b, _ in lut_its], ms, net)
    return cal.fitted_profile(), c


def price_sets(profile, items: list[Item], statistic: str, ref: Reference) -> dict[str, dict]:
    """Metrics per set (random, zoo, extra) and predictor (analytical, analytical_blocks: the blocks
    each priced alone, validate's block sum before docs/BENCHMARKS.md §3.16, which the figures of
    §3.6-§3.11 made with this script report), and the predicted/measured ratio of every timm model
    (`ratios`)."""
    from autovit.latmodel.oracle import AnalyticalOracle
    from autovit.nas.blocks import DECOMPOSITION

    blocks = AnalyticalOracle(profile, **DECOMPOSITION)
    per: dict[tuple[str, str], tuple[list, list]] = {}
    ratios: dict[str, float] = {}
    for it in items:
        preds = {"analytical": it.model.estimate(profile).latency_ms}
        if it.arch is not None:
            preds["analytical_blocks"] = float(blocks.latency_ms([it.arch])[0])
        measured = STATISTICS[statistic](it, ref)
        for p, v in preds.items():
            pr, me = per.setdefault((it.group, p), ([], []))
            pr.append(v)
            me.append(measured)
        if it.group != "random":
            ratios[it.row["model"]] = round(preds["analytical"] / measured, 3)
    out: dict[str, dict] = {}
    for (g, p), (pr, me) in sorted(per.items()):
        out.setdefault(g, {})[p] = ratio_metrics(pr, me)
    return out | {"ratios": ratios}


def nchw_census(profile, items: list[Item]) -> dict[str, dict]:
    """Per timm model (and over all random subnets): convolutions the NCHWc channel rule leaves in
    NCHW and their share of the predicted ms."""
    from autovit.latmodel.timing import nchw_conv

    out: dict[str, dict] = {}
    for it in items:
        est = it.model.estimate(profile)
        left = [t for t in est.kernels if nchw_conv(t.kernel, profile, est.dtype, 1.0) is not None]
        key = "random" if it.group == "random" else it.row["model"]
        c = out.setdefault(key, {"nchw_convs": 0, "nchw_ms": 0.0, "ms": 0.0})
        c["nchw_convs"] += len(left)
        c["nchw_ms"] += sum(t.ms for t in left)
        c["ms"] += est.latency_ms
    return {k: v | {"nchw_share": round(v["nchw_ms"] / v["ms"], 3)} for k, v in out.items()}


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


def load_items(data: Path, graphs: Path, profile) -> tuple[list[Item], dict[str, list[dict]]]:
    """Every saved validation row as an Item, its network rebuilt (graph cached under `graphs`)."""
    from autovit.latmodel.estimate import LatencyModel

    sets = {"main": rows_of(data / "validate_main.json")}
    if (data / "validate_extra.json").exists():
        sets["extra"] = [dict(r, group="extra") for r in rows_of(data / "validate_extra.json")]
    items = []
    for name, rows in sets.items():
        for i, (r, c) in enumerate(candidates(rows)):
            m = LatencyModel(cached_graph(graphs, c.name, c.build, c.shape))
            items.append(Item(r["group"], list(r["round_ms"]), list(r["reference_ms"]), op_count(m, profile),
                              memory_share(m, profile), row=r, arch=c.arch, model=m))
            print(f"{name} {i + 1}/{len(rows)} {c.name}", file=sys.stderr)
    return items, sets


def variant_report(name: str, base, lut, lut_its, items: list[Item], ref: Reference) -> dict:
    spec = VARIANTS[name]
    prof, cal = fit_variant(base, lut, lut_its, spec, ref)
    stats = dict.fromkeys([spec["statistic"], *STATISTICS])
    return spec | {"params": cal.params, "at_bound": cal.at_bound, "rms_log_error": cal.rms_log_error,
                   "mape_by_kind": cal.mape_by_kind,
                   **({"nchw": nchw_census(prof, items)} if prof.nchwc_channels else {}),
                   "by_statistic": {s: price_sets(prof, items, s, ref) for s in stats}}


def main() -> None:
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.sources import graph_for

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--graphs", default=None, help="ONNX cache (default DATA/graphs)")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated names of VARIANTS to fit ('' for none)")
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in names):
        raise SystemExit(f"--variants: choose from {', '.join(VARIANTS)}")
    data = Path(args.data)
    graphs = Path(args.graphs) if args.graphs else data / "graphs"
    graphs.mkdir(parents=True, exist_ok=True)
    base = load_profile("local-cpu")
    items, sets = load_items(data, graphs, base)
    if args.export_only:
        return
    lut = load_lut(data / "luts" / "calib50.json", "local-cpu")
    ref_model = LatencyModel(graph_for(str(lut.reference["model"])))
    ref = Reference(float(lut.reference["ref_ms"]), op_count(ref_model, base), memory_share(ref_model, base))
    lut_its = lut_items(lut, base)
    out: dict = {"data": str(data), "reference": lut.reference | {"ops": ref.ops, "memory_share": ref.memory_share},
                 "network_vs_block_sums": block_sums(sets["main"], data / "luts"),
                 "drift": drift_report(items + [it for _, it in lut_its], ref), "variants": {}}
    print("drift done", file=sys.stderr)
    for name in names:
        out["variants"][name] = variant_report(name, base, lut, lut_its, items, ref)
        print(f"fitted {name}", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
