"""Predict latencies that others measured (../shared/external-latency) with data-sheet profiles.

    python benchmarks/external.py                 # every set, 300 timm rows per set, 400 OFA subnets
    python benchmarks/external.py --sets rtx3090 --n 50

Prints one JSON object per set on stdout (set, n, skipped, kendall_tau, spearman, median_ape,
scale, within_10, within_25, baselines). No profile is fitted to any set: the only thing
estimated from the data is the one global scale factor behind median_ape and within_*.

Sampling: the timm rows of all four timm sets are put in one seeded random order and each set
takes its first --n rows in that order, so the sets share models and each ONNX export is done
once (graphs are cached under benchmarks/.cache/graphs).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# The export, graph cache and job runner, the figures and the whole-network fit are the library's,
# shared with `autovit-lat validate --measurements` / `calibrate --networks`.
from autovit.latmodel.measurements import timm_graph_key  # noqa: E402
from autovit.latmodel.netcal import calibrated_evaluate  # noqa: E402
from autovit.latmodel.network_graphs import (REPARAM_METHODS, build_models, coreml_profile, export_timm,  # noqa: E402
                                             failed_exports, graph_path, record_failures, run_exports, unresolved_share)
from apple import (APPLE_SETS, HELDOUT_SETS, TABLES, apple_rows, coreml_format, disagreements, excluded_rows,  # noqa: E402
                   residual_png)

TIMM_SETS = {
    "rtx3090": ("timm/benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv", "rtx3090", "fp16"),
    "rtx4090": ("timm/benchmark-infer-amp-nchw-pt291-cu128-4090.csv", "rtx4090", "fp16"),
    "cpu-i9-10940x": ("timm/benchmark-infer-fp32-nchw-pt240-cpu-i9_10940x-dynamo.csv", "cpu-i9-10940x", "fp32"),
    "cpu-i7-12700h": ("timm/benchmark-infer-fp32-nchw-pt240-cpu-i7_12700h-dynamo.csv", "cpu-i7-12700h", "fp32"),
}
OFA_SETS = {"v100-ofa-b1": 1, "v100-ofa-b32": 32, "v100-ofa-b64": 64}
# Sets timed with timm's `benchmark.py --reparam` (training-time branches fused first): in the RTX 4090
# file, re-parameterisable models (MobileOne, RepVGG, RepGhost) run 2.5-6x faster than in the RTX 3090
# file, other models 1.3-1.5x (docs/BENCHMARKS.md §1); their graphs are exported re-parameterised.
REPARAM_SETS = {"rtx4090"}
# Larger models exceed protobuf's 2 GB ONNX limit or the time box of a 2-core export.
MAX_PARAMS_M = 200.0


def find_data(explicit: str | None) -> Path:
    for cand in ([Path(explicit)] if explicit else []) + [ROOT / "shared/external-latency",
                                                          ROOT.parent / "shared/external-latency"]:
        if cand.is_dir():
            return cand
    sys.exit("external-latency data not found: pass --data PATH (the shared/external-latency folder)")


def _reparameterizable(model: str) -> bool:
    """Whether timm's module for `model` defines a re-parameterisation (a `reparameterize`, `fuse` or
    `switch_to_deploy` method: what timm.utils.reparameterize_model calls)."""
    import inspect
    import re

    from timm.models import model_entrypoint

    try:
        module = sys.modules[model_entrypoint(model).__module__]
    except (RuntimeError, KeyError):  # not in the installed timm: the export reports it
        return False
    return re.search(rf"def ({'|'.join(REPARAM_METHODS)})\(", inspect.getsource(module)) is not None


def timm_key(model: str, size, reparam: bool) -> str:
    """Graph-cache key of a timm row; a re-parameterised export (the Apple tables' key) where the set
    was timed re-parameterised and the model can be."""
    return timm_graph_key(model, size) if reparam and _reparameterizable(model) else f"timm__{model}__{size}"


def _export_ofa(idx: int, res: int, ks: str, e: str, d: str, out: str) -> str:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from ofa_mbv3 import OFAMobileNetV3, parse_row

    from autovit.latmodel.io import atomic_write_bytes
    from autovit.latmodel.sources import module_graph

    model = OFAMobileNetV3(*parse_row(ks, e, d), ops="torch")
    g = module_graph(model, (1, 3, res, res), source=f"ofa:{idx}")
    atomic_write_bytes(Path(out), pickle.dumps(g))
    return "ok"


def timm_rows(data: Path) -> dict[str, list[dict]]:
    out = {}
    for name, (rel, _, _) in TIMM_SETS.items():
        with open(data / rel) as f:
            out[name] = list(csv.DictReader(f))
    return out


def predict(graph_file: Path, hw: str, batch: int, dtype: str, profiles: dict):
    from autovit.latmodel.estimate import LatencyModel

    g = pickle.loads(graph_file.read_bytes())
    model = LatencyModel(g)
    return model.estimate(profiles[hw], batch, dtype), g, model


def evaluate(name: str, pred: list[float], meas: list[float], flops: list[float], acts: list[float],
             skipped: dict[str, int], hw: str, extra: dict | None = None, params: list[float] | None = None) -> dict:
    """Rank and error metrics of our predictions and of the baselines on one set; `params`
    adds the parameter-proportional baseline."""
    from autovit.latmodel.measurements import table_metrics

    return {"set": name, "hw": hw, "n": len(pred), "skipped": skipped,
            **table_metrics(pred, meas, flops, acts, params), **(extra or {})}


def kshot_evaluate(name: str, profile, dtype: str, nets: list[tuple], meas: list[float], flops: list[float],
                   k: int, seed: int, fit: dict | None = None) -> dict:
    """Calibrate `profile` on k seeded rows of a set, evaluate on the others; the FLOPs- and
    parameter-proportional baselines are fitted on the same k rows. Errors are not rescaled:
    the calibration has to get the milliseconds right. `fit`: keyword arguments of
    calibrated_evaluate (--prior, --class-factors)."""
    order = list(range(len(nets)))
    random.Random(seed).shuffle(order)
    train, test = order[:k], order[k:]
    pick = lambda idx: ([nets[i] for i in idx], [meas[i] for i in idx], [flops[i] for i in idx])  # noqa: E731
    from autovit.latmodel.errors import AutoVitError

    head = {"set": name, "hw": profile.name, "k": k, "n_test": len(test), "seed": seed}
    try:
        return {**head, **calibrated_evaluate(profile, dtype, pick(train), pick(test), **(fit or {}))}
    except AutoVitError as e:  # fewer rows than free parameters: the fit is refused, the set reported
        return {**head, "refused": str(e)}


def kshot_list(text: str) -> list[int]:
    """--kshot: K, or several (10,30): each set is loaded once and calibrated at each K."""
    try:
        ks = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kshot takes row counts like 30 or 10,30, got {text!r}") from None
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--kshot row counts must be >= 1, got {text!r}")
    return ks


def kshot_runs(args, name: str, profile, dtype: str, nets: list[tuple], meas: list[float], flops: list[float]) -> list[dict]:
    """kshot_evaluate at each --kshot K, each result printed as it comes."""
    out = []
    for k in args.kshot:
        out.append(kshot_evaluate(name, profile, dtype, nets, meas, flops, k, args.seed, fit_options(args)))
        print(json.dumps(out[-1]), flush=True)
    return out


def fit_options(args) -> dict:
    """calibrated_evaluate's keyword arguments from --prior and --class-factors."""
    if args.class_factors and not args.prior:
        sys.exit("--class-factors needs --prior SIGMA: a class factor overlaps the class-wide terms it refines, "
                 "so only a prior pins it where the rows do not")
    return {"prior": args.prior or None, "class_factors": args.class_factors}


def kshot_table(results: list[dict]) -> str:
    """The docs/BENCHMARKS.md table of --kshot runs."""
    head = ("| set | K | n test | Kendall tau (calibrated / data sheet / FLOPs / params) "
            "| median APE % (calibrated / data sheet / FLOPs / params) | within 10 % (cal.) | params at bound |\n"
            "|---|---|---|---|---|---|---|\n")
    rows = []
    for r in results:
        if "refused" in r:
            rows.append(f"| {r['set']} | {r['k']} | {r['n_test']} | refused: {r['refused'].split(' (')[0]} | | | |")
            continue
        u, f, p = r["uncalibrated"], r["baselines"]["flops"], r["baselines"]["params"]
        how = ([f"calibrated on {r['calibrated_on']}"] if "calibrated_on" in r else []) + \
            ([f"prior {r['prior']:g}"] if "prior" in r else []) + (["class factors"] if r.get("class_factors") else [])
        label = r["set"] + (f" ({', '.join(how)})" if how else "")
        rows.append(f"| {label} | {r['k']} | {r['n_test']} | {r['kendall_tau']:.3f} / {u['kendall_tau']:.3f} / "
                    f"{f['kendall_tau']:.3f} / {p['kendall_tau']:.3f} | {r['median_ape']:.1f} / {u['median_ape']:.1f} / "
                    f"{f['median_ape']:.1f} / {p['median_ape']:.1f} | {r['within_10']:.1f} | "
                    f"{', '.join(r['at_bound']) or '-'} |")
    return head + "\n".join(rows) + "\n"


def markdown_table(results: list[dict]) -> str:
    """The docs/BENCHMARKS.md table: ours vs the two baselines, per set."""
    head = ("| set | n | skipped | Kendall tau (ours / FLOPs / FLOPs+act fit) | Spearman (ours) "
            "| median APE % (ours / FLOPs / fit) | within 10 % | within 25 % | scale |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in results:
        f, l = r["baselines"]["flops_proportional"], r["baselines"]["lstsq_flops_activations"]
        skipped = ", ".join(f"{v} {k}" for k, v in r["skipped"].items()) or "0"
        rows.append(
            f"| {r['set']} | {r['n']} | {skipped} | {r['kendall_tau']:.3f} / {f['kendall_tau']:.3f} / "
            f"{l['kendall_tau']:.3f} | {r['spearman']:.3f} | {r['median_ape']:.1f} / {f['median_ape']:.1f} / "
            f"{l['median_ape']:.1f} | {r['within_10']:.1f} | {r['within_25']:.1f} | {r['scale']:.3g} |")
    return head + "\n".join(rows) + "\n"


def _as_tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def apple_models(rows: dict, cache: Path, jobs: int) -> tuple[dict, dict[str, str]]:
    """LatencyModel per graph key of the Apple rows (exported re-parameterised, cached), and the
    reason for each key that could not be priced."""
    return build_models([r for rs in rows.values() for r in rs], cache, jobs, "export Apple-table models")


def apple_priced(rows: list, models: dict, skip: dict[str, str], excluded: dict[str, str], profile) -> tuple[list, dict]:
    """(row, estimate) for every priced row of one table, and the skipped count per reason."""
    priced, sk = [], {}
    for r in rows:
        if r.graph_key in skip:
            sk[skip[r.graph_key]] = sk.get(skip[r.graph_key], 0) + 1
            continue
        priced.append((r, models[r.graph_key].estimate(profile, 1, "fp16"), r.label in excluded))
    return priced, sk


def apple_result(name: str, priced: list, sk: dict, excluded: dict[str, str], models: dict, profile,
                 plots: Path | None) -> dict:
    """One Apple table scored like the GPU/CPU sets (+ parameters baseline, per-row figures, the
    excluded rows and tau with them kept, a residual PNG)."""
    from scipy import stats

    from autovit.latmodel.costs import CATEGORIES

    kept = [(r, e) for r, e, ex in priced if not ex]
    pred = [e.latency_ms for _, e in kept]
    meas = [r.latency_ms for r, _ in kept]
    flops = [e.flops for _, e in kept]
    acts = [float(sum(c.out_elems for c in models[r.graph_key].costs.values())) for r, _ in kept]
    params = [float(e.params) for _, e in kept]
    res = evaluate(name, pred, meas, flops, acts, sk, profile.name,
                   {"dtype": "fp16", "source": " + ".join(_as_tuple(TABLES[name][0])), "chip": TABLES[name][2]}, params)
    res["excluded"] = {r.label: excluded[r.label] for r, _, ex in priced if ex}
    if res["excluded"]:
        allp = [(e.latency_ms, r.latency_ms) for r, e, _ in priced]
        res["kendall_tau_all_rows"] = round(float(stats.kendalltau(*zip(*allp)).statistic), 4)
    res["rows"] = [{"model": r.timm_name, "res": r.resolution, "ms": r.latency_ms, "pred_ms": round(e.latency_ms, 4),
                    "gflops": round(e.flops / 1e9, 3), "excluded": ex, "graph": r.form} for r, e, ex in priced]
    res["coreml_format"] = coreml_format(name)
    if plots is not None and len(kept) >= 7:  # a residual plot of the 3-4-row doc tables says nothing
        shares = [{c: e.breakdown.get(c, 0.0) / e.latency_ms for c in CATEGORIES} for _, e in kept]
        residual_png(f"{name} on {profile.name}", pred, meas, shares, flops, plots / f"residuals_{name}.png")
    return res


def table_profile(profile, set_name: str):
    """`profile` for the Core ML format of a table's exports (apple.COREML_FORMAT); a profile
    without a Neural Engine (--apple-hw a GPU) is taken as it is."""
    return coreml_profile(profile, coreml_format(set_name))


def run_apple(args, data: Path, cache: Path, wanted: list[str]) -> list[dict]:
    """Score each wanted Apple table on its chip's profile (or --apple-hw); print JSON per table."""
    from autovit.latmodel.hardware import load_profile

    rows = apple_rows(data)  # the rule and the cross-table check run on the shared tables only
    excluded = excluded_rows(rows)
    report = {"set": "apple-disagreements", **disagreements(rows), "excluded": excluded}
    print(json.dumps(report), flush=True)
    calibrate_on = getattr(args, "calibrate_on", None)
    sel = apple_rows(data, list(dict.fromkeys(wanted + ([calibrate_on] if calibrate_on else []))))
    models, skip = apple_models(sel, cache, args.jobs)
    profiles = {s: table_profile(load_profile(args.apple_hw or TABLES[s][1]), s) for s in sel}
    if args.ablation or args.sensitivity:
        return run_apple_ablation({s: sel[s] for s in wanted}, profiles, models, skip, excluded,
                                  _scaled_variants if args.sensitivity else None)
    if args.loto:
        return run_apple_loto({s: sel[s] for s in wanted}, profiles, models, skip, excluded)
    if args.provenance:
        if any(p.ane is None for p in profiles.values()):
            sys.exit("--provenance compares Core ML formats: price the Apple tables on Neural Engine profiles")
        return run_apple_provenance({s: sel[s] for s in wanted}, profiles, models, skip, excluded, cache, args.jobs)
    if args.kshot:
        tables = {s: sel[s] for s in wanted if s != calibrate_on} | ({calibrate_on: sel[calibrate_on]} if calibrate_on else {})
        return [r for k in args.kshot
                for r in run_apple_kshot(tables, profiles, models, skip, excluded, k, args.seed, calibrate_on, fit_options(args))]
    plots = Path(args.plots) if args.plots else None
    results = [report]
    for s in wanted:
        profile = profiles[s]
        priced, sk = apple_priced(sel[s], models, skip, excluded, profile)
        res = apple_result(s, priced, sk, excluded, models, profile, plots)
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


class _InFormat:
    """A table's model priced in the table's Core ML format on whatever profile it is given: a
    calibration fitted on one table's rows is tested on another's, of another format."""

    def __init__(self, model, fmt: str):
        self.model, self.fmt, self.graph = model, fmt, model.graph

    def estimate(self, profile, batch, dtype):
        from autovit.latmodel.neural_engine import for_format

        return self.model.estimate(for_format(profile, self.fmt), batch, dtype)


def apple_nets(rows: list, models: dict, skip: dict, excluded: dict, fmt: str | None = None) -> tuple[list, list, list]:
    """(nets [(LatencyModel, batch 1, params)], measured ms, FLOPs) of a table's kept rows; with
    `fmt`, each model is priced in that Core ML format whatever profile prices it."""
    kept = [r for r in rows if r.graph_key not in skip and r.label not in excluded]
    lms = [models[r.graph_key] if fmt is None else _InFormat(models[r.graph_key], fmt) for r in kept]
    nets = [(lm, 1, float(lm.graph.params)) for lm in lms]
    flops = [sum(c.flops for c in models[r.graph_key].costs.values()) for r in kept]
    return nets, [r.latency_ms for r in kept], flops


def _variants(profile) -> dict:
    """The profile with each Neural Engine mechanism switched off in turn ("-name"), and each
    mechanism it leaves off switched on ("+name")."""
    from dataclasses import replace

    from autovit.latmodel.hardware import ANE_MECHANISMS
    from autovit.latmodel.neural_engine import without

    out = {"all": profile}
    for m in ANE_MECHANISMS:
        if m in profile.ane.mechanisms:
            out[f"-{m}"] = without(profile, m)
        else:
            out[f"+{m}"] = replace(profile, ane=replace(profile.ane, mechanisms=profile.ane.mechanisms + (m,)))
    return out


# Figures of the Apple profiles that no document gives (assumptions) or that calibration fits.
_ASSUMED = {"launch_us": ("launch_us",), "l2_mib": ("ane", "l2_mib"), "l2_gbps": ("ane", "l2_gbps"),
            "cache_gbps": ("cache_gbps",), "eff_memory": ("eff_memory",), "eff_vector": ("eff_vector",),
            "layout_penalty": ("layout_penalty",), "switch_us": ("fallback", "switch_us")}


def _scaled_variants(profile) -> dict:
    """The profile with each assumed figure halved ("name/2") and doubled ("name*2")."""
    from dataclasses import replace

    out = {"all": profile}
    for name, path in _ASSUMED.items():
        for label, f in (("/2", 0.5), ("*2", 2.0)):
            if len(path) == 2:  # a figure of a sub-table: [ane], [fallback]
                part = getattr(profile, path[0])
                out[name + label] = replace(profile, **{path[0]: replace(part, **{path[1]: getattr(part, path[1]) * f})})
            else:
                v = getattr(profile, path[0]) * f
                out[name + label] = replace(profile, **{path[0]: min(v, 1.0) if name.startswith("eff") else v})
    return out


def run_apple_ablation(tables: dict, profiles: dict, models: dict, skip: dict, excluded: dict,
                       variants=None) -> list[dict]:
    """Kendall tau of every table with each mechanism switched off in turn (+ the FLOPs tau);
    `variants` (profile -> {label: profile}) replaces the mechanism switches, e.g. _scaled_variants."""
    from scipy import stats

    results = []
    for s, rows in tables.items():
        nets, meas, flops = apple_nets(rows, models, skip, excluded)
        tau = {name: round(float(stats.kendalltau([lm.estimate(p, 1, "fp16").latency_ms for lm, _, _ in nets],
                                                  meas).statistic), 4)
               for name, p in (variants or _variants)(profiles[s]).items()}
        res = {"set": s, "hw": profiles[s].name, "n": len(nets), "ablation_tau": tau,
               "flops_tau": round(float(stats.kendalltau(flops, meas).statistic), 4)}
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def run_apple_kshot(tables: dict, profiles: dict, models: dict, skip: dict, excluded: dict, k: int, seed: int,
                    calibrate_on: str | None, fit: dict | None = None) -> list[dict]:
    """--kshot K: calibrate on K seeded rows of each table and test on its other rows; with
    --calibrate-on SET, calibrate on K seeded rows of SET and test on every other table of its chip."""
    results = []
    if calibrate_on is None:
        todo = [(s, s) for s in tables]
    else:
        todo = [(calibrate_on, s) for s in tables if s != calibrate_on and TABLES[s][2] == TABLES[calibrate_on][2]]
    for cal, s in todo:
        nets, meas, flops = apple_nets(tables[cal], models, skip, excluded, coreml_format(cal))
        if len(nets) < k + (3 if cal == s else 0):
            print(f"{cal}: {len(nets)} rows, too few for K = {k}; skipped", file=sys.stderr)
            continue
        if cal == s:
            res = kshot_evaluate(s, profiles[s], "fp16", nets, meas, flops, k, seed, fit)
        else:
            order = list(range(len(nets)))
            random.Random(seed).shuffle(order)
            train = tuple([x[i] for i in order[:k]] for x in (nets, meas, flops))
            test = apple_nets(tables[s], models, skip, excluded, coreml_format(s))
            res = {"set": s, "hw": profiles[s].name, "k": k, "n_test": len(test[0]), "seed": seed, "calibrated_on": cal,
                   **calibrated_evaluate(profiles[cal], "fp16", train, test, **(fit or {}))}
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def run_apple_provenance(tables: dict, profiles: dict, models: dict, skip: dict, excluded: dict, cache: Path,
                         jobs: int) -> list[dict]:
    """Kendall tau of each table priced as measured (its Core ML format, Apple's conversion where
    Apple's converter made the graph: apple.py), then with either rule off: every table an ML
    Program, every row timm's graph; "neither" is how the first Neural Engine model priced them."""
    from dataclasses import replace

    from scipy import stats

    from autovit.latmodel.neural_engine import for_format

    as_timm = {s: [replace(r, form="timm") for r in rs] for s, rs in tables.items()}
    timm_models, timm_skip = apple_models(as_timm, cache, jobs)
    models, skip = {**models, **timm_models}, {**skip, **timm_skip}
    results = []
    for s, rows in tables.items():
        mlprogram = for_format(profiles[s], "mlprogram")
        variants = {"as measured": (rows, profiles[s]), "ML Program everywhere": (rows, mlprogram),
                    "timm graphs everywhere": (as_timm[s], profiles[s]), "neither": (as_timm[s], mlprogram)}
        tau = {}
        for label, (rs, p) in variants.items():
            nets, meas, flops = apple_nets(rs, models, skip, excluded)
            tau[label] = round(float(stats.kendalltau([lm.estimate(p, 1, "fp16").latency_ms for lm, _, _ in nets],
                                                      meas).statistic), 4)
        res = {"set": s, "hw": profiles[s].name, "n": len(nets), "ablation_tau": tau,
               "flops_tau": round(float(stats.kendalltau(flops, meas).statistic), 4)}
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def run_apple_loto(tables: dict, profiles: dict, models: dict, skip: dict, excluded: dict) -> list[dict]:
    """Leave one table out: calibrate on every row of the other tables of a chip, test on the one left out."""
    results = []
    for s in tables:
        others = [o for o in tables if o != s and TABLES[o][2] == TABLES[s][2]]
        if not others or len(tables[s]) < 7:
            continue
        parts = [apple_nets(tables[o], models, skip, excluded, coreml_format(o)) for o in others]
        train = tuple(sum((list(p[i]) for p in parts), []) for i in range(3))
        test = apple_nets(tables[s], models, skip, excluded, coreml_format(s))
        if len(train[0]) < 10:  # fewer rows than the profile's free parameters cannot calibrate it
            print(f"{s}: the other {TABLES[s][2]} tables have {len(train[0])} rows; skipped", file=sys.stderr)
            continue
        res = {"set": s, "hw": profiles[s].name, "k": len(train[0]), "n_test": len(test[0]), "seed": 0,
               "calibrated_on": "+".join(others), **calibrated_evaluate(profiles[s], "fp16", train, test)}
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def ablation_table(results: list[dict]) -> str:
    """The docs/BENCHMARKS.md ablation table: tau per table, all mechanisms on and each switched off."""
    names = list(dict.fromkeys(m for r in results for m in r["ablation_tau"]))  # a mechanism on in some tables only: both columns
    head = "| set | n | FLOPs | " + " | ".join(names) + " |\n|---|---|---|" + "---|" * len(names) + "\n"
    cell = lambda r, m: f"{r['ablation_tau'][m]:.3f}" if m in r["ablation_tau"] else "-"  # noqa: E731
    rows = [f"| {r['set']} | {r['n']} | {r['flops_tau']:.3f} | " + " | ".join(cell(r, m) for m in names) + " |"
            for r in results]
    return head + "\n".join(rows) + "\n"


def apple_table(results: list[dict]) -> str:
    """The docs/BENCHMARKS.md table of the Apple sets (the disagreement report is left out)."""
    head = ("| set | chip | profile | n | Kendall tau (ours / FLOPs / params / FLOPs+act fit) | tau, excluded rows kept "
            "| median APE % after one scale (ours / FLOPs / params / fit) | scale |\n|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in results:
        if "baselines" not in r:
            continue
        b = [r["baselines"][k] for k in ("flops_proportional", "params_proportional", "lstsq_flops_activations")]
        tau = " / ".join(f"{x['kendall_tau']:.3f}" for x in [r, *b])
        ape = " / ".join(f"{x['median_ape']:.1f}" for x in [r, *b])
        kept = f"{r['kendall_tau_all_rows']:.3f}" if "kendall_tau_all_rows" in r else "-"
        rows.append(f"| {r['set']} | {r['chip']} | {r['hw']} | {r['n']} | {tau} | {kept} | {ape} | {r['scale']:.3g} |")
    return head + "\n".join(rows) + "\n"


def roofline_ablation(name: str, profile, dtype: str, nets: list[tuple], meas: list[float], flops: list[float],
                      extra: dict | None = None) -> dict:
    """Kendall tau of one GPU/CPU set with every roofline mechanism of its profile on ("all"),
    each switched off in turn ("-name"), all off ("none"), and the assumed figures halved and
    doubled, and the FLOPs tau; `extra` maps more labels to other graphs of the same rows, priced
    with every mechanism on."""
    from dataclasses import replace

    from scipy import stats

    def tau(p, ns) -> float:
        return round(float(stats.kendalltau([lm.estimate(p, b, dtype).latency_ms for lm, b, _ in ns], meas).statistic), 4)

    variants = {"all": profile}
    for m in profile.mechanisms:
        variants[f"-{m}"] = replace(profile, mechanisms=tuple(x for x in profile.mechanisms if x != m))
    if len(profile.mechanisms) > 1:
        variants["none"] = replace(profile, mechanisms=())
    # The assumed figures: the host's cost per op, the per-thread start of fork_join, the integer
    # ops per tap of dw_loop and per output of dw_index.
    assumed = {"dispatch_us": True, "fork_join_us": profile.uses("fork_join"), "dw_loop_int_ops": profile.uses("dw_loop"),
               "dw_index_int_ops": profile.uses("dw_index")}
    for figure in [f for f, used in assumed.items() if used]:
        for label, f in (("/2", 0.5), ("*2", 2.0)):
            variants[figure + label] = replace(profile, **{figure: getattr(profile, figure) * f})
    out = {label: tau(p, nets) for label, p in variants.items()}
    out.update({label: tau(profile, ns) for label, ns in (extra or {}).items()})
    return {"set": name, "hw": profile.name, "n": len(nets), "ablation_tau": out,
            "flops_tau": round(float(stats.kendalltau(flops, meas).statistic), 4)}


def ofa_models(ofa: list[dict], cache: Path, jobs: int, ops: str) -> dict:
    """(graph, LatencyModel) per OFA row index: the subnet exported with torch's fused modules
    (cached; exported where missing) and, for ops="ofa", rewritten to the ops of OFA's own code
    (ofa_mbv3.ofa_code_graph, which gives the graph an export of that form gives)."""
    from ofa_mbv3 import ofa_code_graph

    from autovit.latmodel.estimate import LatencyModel

    path = lambda r: graph_path(cache, f"ofa__{r['idx']}")  # noqa: E731
    todo = [(_export_ofa, f"ofa__{r['idx']}", int(r["idx"]), int(r["resolution"]), r["ks"], r["e"], r["d"], str(path(r)))
            for r in ofa if not path(r).exists()]
    run_exports(todo, jobs, "export OFA subnets")
    models = {}
    for r in ofa:
        if path(r).exists():
            g = pickle.loads(path(r).read_bytes())
            g = ofa_code_graph(g) if ops == "ofa" else g
            models[r["idx"]] = (g, LatencyModel(g))
    return models


def ofa_rows(data: Path, n: int, seed: int) -> list[dict]:
    """The HELP OFA rows: `n` seeded subnets of the 5,000 (0: all)."""
    with open(data / "help-ofa/ofa_mbv3_latency_ms.csv") as f:
        ofa = list(csv.DictReader(f))
    return random.Random(seed).sample(ofa, min(n, len(ofa))) if n else ofa


def run_ofa(args, data: Path, cache: Path, wanted: list[str]) -> list[dict]:
    """Score the HELP V100 sets (the same OFA subnets at batch 1, 32, 64); print JSON per set."""
    from scipy import stats

    from autovit.latmodel.hardware import load_profile

    ofa = ofa_rows(data, args.ofa_n, args.seed)
    models = ofa_models(ofa, cache, args.jobs, args.ofa_ops)
    others = ofa_models(ofa, cache, args.jobs, "torch") if args.ablation and args.ofa_ops == "ofa" else {}
    rows = [r for r in ofa if r["idx"] in models]
    v100 = load_profile("v100")
    results = []
    for s in wanted:
        b = OFA_SETS[s]
        nets = [(models[r["idx"]][1], b, float(models[r["idx"]][0].params)) for r in rows]
        meas = [float(r[f"v100_{b}"]) for r in rows]
        ests = [lm.estimate(v100, b, "fp32") for lm, _, _ in nets]
        flops = [e.flops for e in ests]
        if args.kshot:
            results += kshot_runs(args, s, v100, "fp32", nets, meas, flops)
            continue
        if args.ablation:
            extra = {"-ofa_ops": [(others[r["idx"]][1], b, 0.0) for r in rows]} if others else None
            res = roofline_ablation(s, v100, "fp32", nets, meas, flops, extra)
        else:
            acts = [sum(c.out_elems for c in lm.costs.values()) * b for lm, _, _ in nets]
            skipped = {"export failed": len(ofa) - len(rows)} if len(rows) < len(ofa) else {}
            res = evaluate(s, [e.latency_ms for e in ests], meas, flops, acts, skipped, "v100",
                           {"dtype": "fp32", "batch": b, "ops": args.ofa_ops, "source": "help-ofa/ofa_mbv3_latency_ms.csv"})
            # The reference point: the number of blocks alone ranks batch-1 latency well.
            blocks = [sum(int(x) for x in r["d"].split()) for r in rows]
            res["baselines"]["num_blocks_kendall_tau"] = round(float(stats.kendalltau(blocks, meas).statistic), 4)
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def wanted_sets(text: str) -> list[str]:
    """--sets: comma-separated names, 'apple' and 'heldout' standing for their tables."""
    aliases = {"apple": list(APPLE_SETS), "heldout": list(HELDOUT_SETS)}
    wanted = [x for s in text.split(",") if s.strip() for x in aliases.get(s.strip(), [s.strip()])]
    unknown = [s for s in wanted if s not in TIMM_SETS and s not in OFA_SETS and s not in TABLES]
    if unknown:
        sys.exit(f"unknown set {', '.join(unknown)}: use apple, heldout or any of {', '.join([*TIMM_SETS, *OFA_SETS, *TABLES])}")
    return wanted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="shared/external-latency folder (found automatically)")
    ap.add_argument("--sets", default=",".join(list(TIMM_SETS) + list(OFA_SETS)),
                    help="comma-separated set names; 'apple' = every published Apple table (" + ", ".join(APPLE_SETS)
                    + "), 'heldout' = the held-out README tables (" + ", ".join(HELDOUT_SETS) + ")")
    ap.add_argument("--n", type=int, default=300, help="timm rows per set (0 = all)")
    ap.add_argument("--ofa-n", type=int, default=400, help="OFA subnets (0 = all 5,000)")
    ap.add_argument("--ofa-ops", choices=("ofa", "torch"), default="ofa",
                    help="OFA subnets with the element-wise ops of OFA's code (h_swish as 4 ops; default) or torch's fused modules")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", metavar="SETS",
                    help="comma-separated timm sets whose rows make the seeded row order (default: the timm sets of "
                         "--sets): price some sets on the row order of more, without exporting the others' rows")
    ap.add_argument("--cached-only", action="store_true",
                    help="timm sets: price only rows whose graphs are already in the cache (the others are counted "
                         "as skipped and replaced by the next rows), export nothing")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--cache", default=str(HERE / ".cache"))
    ap.add_argument("--out", default=str(HERE / "results" / "external.jsonl"))
    ap.add_argument("--kshot", type=kshot_list, default=[], metavar="K",
                    help="calibrate the profile's free parameters on K rows per set (seeded), evaluate on the rest; "
                         "several K (10,30): each set is loaded once")
    ap.add_argument("--prior", type=float, default=0.0, metavar="SIGMA",
                    help="with --kshot: a prior on each free parameter, log-normal around the profile's value with "
                         "width SIGMA (0.69: a factor of 2); 0 (default): the data alone")
    ap.add_argument("--class-factors", action="store_true",
                    help="with --kshot and --prior: fit the per-class efficiencies of attention and depthwise kernels too")
    ap.add_argument("--apple-hw", metavar="PROFILE", help="price every Apple table on this profile (default: its chip's)")
    ap.add_argument("--plots", metavar="DIR", help="write a residual PNG per Apple table here")
    ap.add_argument("--ablation", action="store_true",
                    help="Apple tables: Kendall tau with each Neural Engine mechanism switched off in turn; GPU/CPU sets: each roofline mechanism")
    ap.add_argument("--sensitivity", action="store_true",
                    help="Apple tables: Kendall tau with each assumed profile figure halved and doubled")
    ap.add_argument("--loto", action="store_true",
                    help="Apple tables: calibrate on every other table of the chip, test on the one left out")
    ap.add_argument("--provenance", action="store_true",
                    help="Apple tables: Kendall tau as measured and with the Core ML format or Apple's-conversion "
                         "rule switched off")
    ap.add_argument("--calibrate-on", metavar="SET",
                    help="with --kshot K: calibrate on K rows of this Apple table, test on the other tables of its chip")
    ap.add_argument("--table", metavar="JSONL", help="print the Markdown table of a results file and exit")
    args = ap.parse_args()
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line]
        if rows and "ablation_tau" in rows[0]:
            print(ablation_table(rows))
        elif rows and rows[0]["set"] == "apple-disagreements":
            print(apple_table(rows))
        else:
            print(kshot_table(rows) if rows and "k" in rows[0] else markdown_table(rows))
        return
    if args.calibrate_on and (not args.kshot or args.calibrate_on not in TABLES):
        sys.exit("--calibrate-on needs --kshot K and one of the Apple tables: " + ", ".join(TABLES))
    if not (math.isfinite(args.prior) and args.prior >= 0) or ((args.prior or args.class_factors) and not args.kshot):
        sys.exit("--prior SIGMA needs --kshot K and a width >= 0 (log units; 0.69 is a factor of 2)")
    fit_options(args)  # refuses --class-factors without --prior before any work
    if args.kshot and args.out == str(HERE / "results" / "external.jsonl"):
        args.out = str(HERE / "results" / "external_kshot.jsonl")
    if args.ablation and args.out == str(HERE / "results" / "external.jsonl"):
        args.out = str(HERE / "results" / "external_ablation.jsonl")

    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.io import atomic_write_text

    data = find_data(args.data)
    cache = Path(args.cache)
    graph_path(cache, "x").parent.mkdir(parents=True, exist_ok=True)
    wanted = wanted_sets(args.sets)
    results = []
    t0 = time.time()

    timm_wanted = [s for s in wanted if s in TIMM_SETS]
    if timm_wanted:
        rows = timm_rows(data)
        order = [x for x in args.order.split(",") if x] if args.order else timm_wanted
        if not set(timm_wanted) <= set(order) or not set(order) <= set(TIMM_SETS):
            sys.exit(f"--order needs timm sets ({', '.join(TIMM_SETS)}) including every timm set of --sets")
        keys = sorted({(r["model"], int(r["infer_img_size"])) for s in order for r in rows[s]})
        random.Random(args.seed).shuffle(keys)
        rank = {k: i for i, k in enumerate(keys)}
        chosen: dict[str, list[dict]] = {}
        skipped: dict[str, dict[str, int]] = {}
        for s in timm_wanted:
            rs = sorted(rows[s], key=lambda r: rank[(r["model"], int(r["infer_img_size"]))])
            sk: dict[str, int] = {}
            keep = []
            for r in rs:
                # Exports can fail; take a margin of candidates and keep the first --n that work.
                if args.n and len(keep) >= int(args.n * 1.2):
                    break
                if float(r["param_count"] or 0) > MAX_PARAMS_M:
                    sk[f"over {MAX_PARAMS_M:g} M params"] = sk.get(f"over {MAX_PARAMS_M:g} M params", 0) + 1
                    continue
                keep.append(r)
            chosen[s], skipped[s] = keep, sk
        todo = {}
        for s in timm_wanted:
            for r in chosen[s]:
                key = timm_key(r["model"], r["infer_img_size"], False)
                if not graph_path(cache, key).exists():
                    todo[key] = (export_timm, key, r["model"], int(r["infer_img_size"]), str(graph_path(cache, key)))
        status = failed_exports(cache, todo)
        # --cached-only: rows whose graphs are not cached yet are counted and passed over, not exported
        # (and not recorded as failures)
        uncached = {k for k in todo if k not in status} if args.cached_only else set()
        status.update({k: "skip: not exported yet (--cached-only)" for k in uncached})
        status.update(run_exports([job for k, job in todo.items() if k not in status], args.jobs, "export timm models"))
        record_failures(cache, {k: v for k, v in status.items() if k not in uncached})
        # The re-parameterised graphs of the rows a plain export could price (the same rows in every set).
        todo = {}
        for s in timm_wanted:
            for r in chosen[s] if s in REPARAM_SETS else []:
                key = timm_key(r["model"], r["infer_img_size"], True)
                plain = graph_path(cache, timm_key(r["model"], r["infer_img_size"], False))
                if key.startswith("timm-rep__") and plain.exists() and not graph_path(cache, key).exists():
                    todo[key] = (export_timm, key, r["model"], int(r["infer_img_size"]), str(graph_path(cache, key)), True)
        run_exports([] if args.cached_only else list(todo.values()), args.jobs, "export re-parameterised timm models")
        profiles = {TIMM_SETS[s][1]: load_profile(TIMM_SETS[s][1]) for s in timm_wanted}
        for s in timm_wanted:
            _, hw, dtype = TIMM_SETS[s]
            pred, meas, flops, acts = [], [], [], []
            nets: list[tuple] = []  # (LatencyModel, batch, params) per kept row, for --kshot
            sk = dict(skipped[s])
            for r in chosen[s]:
                if args.n and len(pred) >= args.n:
                    break
                key = timm_key(r["model"], r["infer_img_size"], False)
                gp = graph_path(cache, key)
                rep = graph_path(cache, timm_key(r["model"], r["infer_img_size"], s in REPARAM_SETS))
                if gp.exists() and rep != gp:
                    if not rep.exists():  # counted, and priced as exported (a note, not a skip)
                        sk["priced without re-parameterisation"] = sk.get("priced without re-parameterisation", 0) + 1
                    gp = rep if rep.exists() else gp
                if not gp.exists():
                    reason = status.get(key, "skip: export failed").removeprefix("skip: ")
                    reason = "not in installed timm" if reason.startswith("unknown timm model") else reason
                    sk[reason] = sk.get(reason, 0) + 1
                    continue
                batch = int(r["infer_batch_size"])
                est, g, lm = predict(gp, hw, batch, dtype, profiles)
                if unresolved_share(g) > 0.1:
                    sk["shapes not inferable"] = sk.get("shapes not inferable", 0) + 1
                    continue
                nets.append((lm, batch, float(r["param_count"] or 0) * 1e6))
                pred.append(est.latency_ms)
                meas.append(float(r["infer_step_time"]))
                flops.append(float(r["infer_gmacs"]) * batch)
                acts.append(float(r["infer_macts"]) * batch)
            if args.kshot:
                results += kshot_runs(args, s, profiles[hw], dtype, nets, meas, flops)
                continue
            if args.ablation:
                res = roofline_ablation(s, profiles[hw], dtype, nets, meas, flops)
            else:
                res = evaluate(s, pred, meas, flops, acts, sk, hw, {"dtype": dtype, "source": TIMM_SETS[s][0]})
            results.append(res)
            print(json.dumps(res), flush=True)

    apple_wanted = [s for s in wanted if s in TABLES]
    if apple_wanted:
        results += run_apple(args, data, cache, apple_wanted)

    ofa_wanted = [s for s in wanted if s in OFA_SETS]
    if ofa_wanted:
        results += run_ofa(args, data, cache, ofa_wanted)

    atomic_write_text(Path(args.out), "".join(json.dumps(r) + "\n" for r in results))
    print(f"wrote {args.out} in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
