"""Calibration variants on one LUT (issue 12, this machine; nothing timed).

    python benchmarks/calib_variants.py LUT.json --out-dir DIR [--variants default,no-probe,...]

Writes one calibrated profile per variant, `DIR/VARIANT.toml`, fitted on the same LUT the way
`autovit-lat calibrate --hw local-cpu --lut LUT.json` fits it, with one thing changed:

- default: what `calibrate` does (the LUT's blocks with their op classes, its whole networks
  each counted as the XXS preset's 27 blocks, [cpu] ghz raised to its GEMM probe);
- no-probe: the clock the OS reports (no clock_override);
- no-stream: the profile's cache rates, not the LUT's streaming probes (no stream_override);
- no-softmax-rows: softmax rows priced at reduce_row_ns, as LayerNorm's (no softmax_row_ns);
- no-fork_join: the thread pool's cost per parallel kernel switched off (mechanism fork_join;
  written as fork_join_us = 0);
- no-subnormal_assists: no microcode assists for subnormal floats (mechanism subnormal_assists;
  written as subnormal_assist_cycles = 0; calib50 holds no masked softmax, so the fit is default's);
- no-ort_transpose: a transpose's single-axis fast path judged without size-1 axes, as for
  PyTorch (mechanism ort_transpose; written as the profile's whole mechanism list without it, so
  the file will not take up mechanisms added to local-cpu later);
- no-mlas_conv_tiles: every direct convolution at the GEMM tile's share of the peak (mechanism
  mlas_conv_tiles; written as no-ort_transpose is);
- no-ort_parallel_for: element-wise ops, BatchNormalization and copies on the threads of the
  `vector_block` rule instead of onnxruntime's own (mechanism ort_parallel_for; written so too);
- no-core_handoff: no tensor priced across cores' private caches (mechanism core_handoff; so too);
- fit-dwconv: the depthwise convolutions' class factor (`efficiency.dwconv`, which divides their
  time) fitted with the other parameters;
- blocks-only: no whole network (`calibrate --no-network`);
- reference-only: the drift monitor's reference network instead of the LUT's networks (what
  `calibrate` did before the LUT held networks);
- equal-total: the networks together counted as many points as the blocks (each: blocks /
  networks);
- networks-x4: each network counted 4 x 27 points.

Prints one JSON object: per variant, the profile written, its fitted parameters, fit error per
kind and each of the LUT's networks' predicted / measured. Re-price saved validation rows with
`python benchmarks/cpu_rescore.py --hw DIR/VARIANT.toml validate_*.json`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# Mechanisms a variant switches off, written as the profile's list without them (a switch, not a figure).
SWITCH_VARIANTS = tuple(f"no-{m}" for m in ("ort_transpose", "mlas_conv_tiles", "ort_parallel_for", "core_handoff",
                                              "nchwc_tensors"))
VARIANTS = ("default", "no-probe", "no-stream", "no-softmax-rows", "no-fork_join", "no-subnormal_assists",
            *SWITCH_VARIANTS, "fit-dwconv", "blocks-only", "reference-only", "equal-total", "networks-x4")


def networks_for(variant: str, lut, n_blocks: int) -> list:
    """The whole networks (fit.ReferenceNetwork) a variant fits beside the blocks."""
    from autovit.cli.lat import lut_networks, reference_network

    if variant == "blocks-only":
        return []
    if variant == "reference-only":
        ref = reference_network(lut)
        return [ref] if ref else []
    nets = lut_networks(lut)
    if variant == "equal-total":
        return [replace(n, weight=n_blocks / len(nets)) for n in nets]
    if variant == "networks-x4":
        return [replace(n, weight=4 * n.weight) for n in nets]
    return nets


def main() -> None:
    import autovit.nas  # noqa: F401 - registers the autovit: source and block kinds
    from autovit.latmodel.blocks import block_from_dict
    from autovit.latmodel.checks import dumps
    from autovit.latmodel.fit import ProfileCalibrator, network_pricer
    from autovit.latmodel.hardware import HardwareProfile, load_profile, profile_at_threads, write_calibrated_profile
    from autovit.cli.lat_device import lut_cross_core_gbps
    from autovit.latmodel.lut import load_lut

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lut")
    ap.add_argument("--hw", default="local-cpu")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    lut = load_lut(args.lut, load_profile(args.hw).name)
    entries = [e for e in lut.entries.values() if e["mode"] == "isolated"]
    blocks = [block_from_dict(e["block"]) for e in entries]
    measured = [float(e["median_ms"]) for e in entries]
    op_ms = [e.get("op_ms") for e in entries]
    threads = lut.environment.get("threads")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"lut": args.lut, "variants": {}}
    for variant in chosen:
        probe = None if variant == "no-probe" else lut.environment.get("sgemm_gflops")
        stream = None if variant == "no-stream" else lut.environment.get("stream_gbps")
        profile, fixed = profile_at_threads(args.hw, threads, probe, stream, lut_cross_core_gbps(lut))
        nets = networks_for(variant, lut, len(blocks))
        if variant == "no-softmax-rows":
            profile = replace(profile, softmax_row_ns=None)
        if variant in ("no-fork_join", "no-subnormal_assists", *SWITCH_VARIANTS):
            mechanism = variant[len("no-"):]
            profile = replace(profile, mechanisms=tuple(m for m in profile.mechanisms if m != mechanism))
        if variant == "no-subnormal_assists":  # not a fitted parameter: written beside the fixed keys
            fixed = {**fixed, "compute": {**fixed.get("compute", {}), "subnormal_assist_cycles": 0.0}}
        if variant in SWITCH_VARIANTS:  # a switch, not a figure: the written profile lists the others
            fixed = {**fixed, "mechanisms": list(profile.mechanisms)}
        # fit-dwconv: the depthwise class factor free beside the profile's parameters
        free = HardwareProfile.FREE_PARAMETERS + ("eff_dwconv",) if variant == "fit-dwconv" else None
        c = ProfileCalibrator(profile, free).fit(blocks, measured, nets, op_ms)
        if variant == "no-softmax-rows":  # written as the row cost it fell back on
            c.params["softmax_row_ns"] = c.params.get("reduce_row_ns", profile.reduce_row_ns)
        if variant == "no-fork_join":  # written as no cost, which prices as the mechanism off
            c.params["fork_join_us"] = 0.0
        path = write_calibrated_profile(args.hw, c.params, {"lut": str(Path(args.lut).resolve()), "threads": threads,
                                                            "sgemm_gflops": probe, "stream_gbps": stream,
                                                            "mechanisms": list(profile.mechanisms)},
                                        out_dir / f"{variant}.toml", fixed)
        fitted = replace(profile, **c.params)
        result["variants"][variant] = {
            "profile": str(path), "params": {k: round(v, 4) for k, v in c.params.items()}, "at_bound": c.at_bound,
            "rms_log_error": round(c.rms_log_error, 4), "mape_by_kind": {k: round(v, 1) for k, v in c.mape_by_kind.items()},
            "networks": {s: round(network_pricer(s)(fitted) / e["median_ms"], 3) for s, e in lut.networks.items()},
            "weights": sorted({n.weight for n in nets})}
    print(dumps(result, indent=1))


if __name__ == "__main__":
    from autovit.latmodel.errors import AutoVitError

    try:
        main()
    except AutoVitError as e:  # a missing or broken LUT: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
