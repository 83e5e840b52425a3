"""Blocks alone against whole networks on this machine (nothing timed; issue 12, §3.16).

    python benchmarks/block_sums.py --hw PROFILE --validation VALIDATE.json [--lut LUT.json]

Over the random subnets of a saved `validate --out` file, each measured as a whole network:
- `model_alone`: the analytical model's blocks, each priced alone (AnalyticalOracle "blocks",
  the paper's construction), summed;
- `model_in_network`: the same blocks priced inside their network ("network", the search's);
- `model_alone_over_in_network`: the first over the second per subnet (min, median, max);
- with --lut, over the subnets whose blocks are all in it: `lut_alone`, the measured entries
  summed (the paper's LUT sum); `lut_moved_into_network`, that sum plus the model's (inside the
  network - alone), the correction the LUT oracle does not make; and
  `model_alone_over_lut_median`, the model's blocks alone against those measured blocks alone.
Each against `measured_ms`: within 10 % (%), Kendall tau, the median ratio. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    from autovit.latmodel.checks import dumps, read_json
    from autovit.latmodel.errors import AutoVitError
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.oracle import AnalyticalOracle, LutOracle
    from autovit.nas.arch import ArchConfig
    from autovit.nas.blocks import DECOMPOSITION
    from autovit.nas.latency import IN_NETWORK
    from benchmarks.cpu_whole_network import ratio_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", required=True, help="profile name or TOML path")
    ap.add_argument("--validation", required=True, help="a `validate --out` file with random subnets")
    ap.add_argument("--lut", help="a LUT of isolated blocks measured on this machine")
    args = ap.parse_args()

    profile = load_profile(args.hw)
    saved = read_json(args.validation, "validation file", "pass the --out file of `autovit-lat validate`")
    rows = saved.get("rows") if isinstance(saved, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AutoVitError(f"{args.validation}: no list of rows; pass the --out file of `autovit-lat validate`")
    rows = [r for r in rows if r.get("group") == "random" and r.get("measured_ms") and r.get("arch")]
    items = [DECOMPOSITION["decompose"](ArchConfig.from_dict(r["arch"])) for r in rows]
    measured = [r["measured_ms"] for r in rows]
    alone = AnalyticalOracle(profile, **DECOMPOSITION)
    inside = AnalyticalOracle(profile, **DECOMPOSITION, **IN_NETWORK)
    a_ms, n_ms = [alone.blocks_ms(i) for i in items], [inside.blocks_ms(i) for i in items]
    over = [a / n for a, n in zip(a_ms, n_ms)]
    out: dict = {"hw": args.hw, "validation": args.validation,
                 "model_alone": ratio_metrics(a_ms, measured), "model_in_network": ratio_metrics(n_ms, measured),
                 "model_alone_over_in_network": {"min": min(over), "median": statistics.median(over), "max": max(over)}}
    if args.lut:
        lut = LutOracle(load_lut(args.lut, profile.name), profile, **DECOMPOSITION)
        sums = [lut.lut_sum(i) for i in items]
        covered = [(x, a, n, m) for x, a, n, m in zip(sums, a_ms, n_ms, measured) if x is not None]
        if covered:
            s, a, n, m = map(list, zip(*covered))
            out.update({"lut": args.lut, "lut_alone": ratio_metrics(s, m),
                        "lut_moved_into_network": ratio_metrics([x + y - z for x, y, z in zip(s, n, a)], m),
                        "model_in_network_on_those": ratio_metrics(n, m),
                        "model_alone_over_lut_median": statistics.median(x / y for x, y in zip(a, s))})
        else:
            out.update({"lut": args.lut, "lut_alone": None})
    print(dumps(out, indent=1))


if __name__ == "__main__":
    from autovit.latmodel.errors import AutoVitError

    try:
        main()
    except AutoVitError as e:  # a missing or broken input file, an unknown profile: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
