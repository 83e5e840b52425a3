"""A latency oracle for another model family through the public API alone: OFA-MobileNetV3.

The plug, end to end, without a line of AutoViT's NAS code:
1. register an OFA block kind (stem, inverted residual, tail) with `register_block_kind`;
2. profile the distinct blocks of the subnets on this CPU (onnxruntime) into a LUT, with the
   largest subnet as the drift monitor's reference (`profile_blocks`, resumable);
3. calibrate the `local-cpu` profile on that LUT (`ProfileCalibrator`);
4. price N random subnets with oracles over `decompose(subnet) -> blocks` (the LUT sum, and the
   analytical model with the calibrated and the data-sheet profile);
5. measure M of them, spread over the priced range, with onnxruntime (`validate.measure`, the
   loop `validate` uses) and print Kendall tau, MAPE and the share within 10 % as JSON.

The networks come from benchmarks/ofa_mbv3.py (the layout of OFA's `ofa_mbv3_d234_e346_k357_w1.2`).
It is a timing benchmark: run it on a quiet machine. Full run (docs/BENCHMARKS.md §9):

    python examples/ofa_mbv3_oracle.py --out out/ofa

Smoke test (a dozen tiny blocks, 3 subnets, a few repeats):

    python examples/ofa_mbv3_oracle.py --out /tmp/ofa --resolution 64 --kernels 3 --expands 3 --depths 2,3 \\
        --subnets 3 --measure 3 --rounds 1 --max-repeats 8
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ofa_mbv3.py: the OFA networks

from autovit.latmodel import validate  # noqa: E402
from autovit.latmodel.blocks import register_block_kind  # noqa: E402
from autovit.latmodel.checks import check_keys, number  # noqa: E402
from autovit.latmodel.errors import AutoVitError  # noqa: E402
from benchmarks.ofa_mbv3 import (  # noqa: E402
    ACTS, BASE_WIDTHS, SE, SLOTS_PER_STAGE, STRIDES, WIDTH_MULT, MBBlock, OFAMobileNetV3, make_divisible)

WIDTHS = [make_divisible(w * WIDTH_MULT) for w in BASE_WIDTHS]
KINDS = ("ofa_stem", "ofa_mb", "ofa_tail")
REFERENCE = "ofa-mbv3-largest"  # the drift monitor's reference: the largest subnet of the choices


@dataclass(frozen=True)
class OFABlock:
    """One block of an OFA-MobileNetV3 subnet at the feature-map side `hw` (px) where it runs."""

    kind: str
    hw: int
    cin: int
    cout: int
    kernel: int = 3
    stride: int = 1
    expand: int = 1
    act: str = "relu"
    se: bool = False

    @property
    def key(self) -> str:
        return self.kind + ":" + ",".join(f"{k}={v}" for k, v in asdict(self).items() if k != "kind")

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.cin, self.hw, self.hw)

    def build(self) -> nn.Module:
        if self.kind == "ofa_mb":
            return MBBlock(self.cin, self.cout, self.kernel, self.stride, self.expand, self.act, self.se, "ofa").eval()
        # Stem and tail are taken from a network, so they are exactly what it runs.
        net = OFAMobileNetV3([3] * 20, [3] * 20, [2] * 5)
        if self.kind == "ofa_stem":
            return net.stem.eval()
        net.stem, net.blocks = nn.Identity(), nn.Identity()  # what is left of forward() is the tail
        return net.eval()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "block") -> "OFABlock":
        if not isinstance(d, dict):
            raise AutoVitError(f"{where}: an OFA block is a JSON object, got {d!r:.40}")
        check_keys(d, [f.name for f in fields(cls)], where)
        if d.get("kind") not in KINDS or d.get("act", "relu") not in ("relu", "h_swish"):
            raise AutoVitError(f"{where}: kind must be one of {', '.join(KINDS)} and act relu or h_swish")
        if not isinstance(d.get("se", False), bool):
            raise AutoVitError(f"{where}: se must be true or false")
        ints = {k: int(number(d[k], f"{where}: field '{k}'", 1, 4096, integer=True))
                for k in ("hw", "cin", "cout", "kernel", "stride", "expand") if k in d}
        if not {"hw", "cin", "cout"} <= set(ints):
            raise AutoVitError(f"{where}: an OFA block needs hw, cin and cout")
        return cls(d["kind"], **ints, act=d.get("act", "relu"), se=d.get("se", False))


for _kind in KINDS:
    register_block_kind(_kind, OFABlock)

Subnet = tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # resolution, ks (20), e (20), d (5)


@lru_cache(maxsize=None)
def decompose(subnet: Subnet) -> tuple[OFABlock, ...]:
    """The blocks a subnet runs, in order (the oracles' `decompose`)."""
    res, ks, e, d = subnet
    side = -(-res // 2)
    out = [OFABlock("ofa_stem", res, 3, WIDTHS[0], 3, 2, act="h_swish"),
           OFABlock("ofa_mb", side, WIDTHS[0], WIDTHS[1])]
    cin = WIDTHS[1]
    for s in range(5):
        for j in range(d[s]):
            slot, stride = s * SLOTS_PER_STAGE + j, STRIDES[s] if j == 0 else 1
            out.append(OFABlock("ofa_mb", side, cin, WIDTHS[2 + s], ks[slot], stride, e[slot], ACTS[s], SE[s]))
            side, cin = -(-side // stride), WIDTHS[2 + s]
    out.append(OFABlock("ofa_tail", side, cin, WIDTHS[8]))
    return tuple(out)


def sample_subnets(n: int, res: int, kernels: list[int], expands: list[int], depths: list[int],
                   seed: int) -> list[Subnet]:
    """n distinct subnets drawn uniformly (unused slots set to the first choice, so that two
    draws differing only there are one subnet)."""
    rng, out = random.Random(seed), {}
    for _ in range(n * 100):
        d = tuple(rng.choice(depths) for _ in range(5))
        used = [s * SLOTS_PER_STAGE + j for s in range(5) for j in range(d[s])]
        ks = tuple(rng.choice(kernels) if i in used else kernels[0] for i in range(20))
        e = tuple(rng.choice(expands) if i in used else expands[0] for i in range(20))
        out.setdefault((res, ks, e, d), None)
        if len(out) == n:
            break
    return list(out)


def network(subnet: Subnet) -> nn.Module:
    _, ks, e, d = subnet
    return OFAMobileNetV3(list(ks), list(e), list(d)).eval()


def profile(blocks: list[OFABlock], lut_path: Path, reference: Subnet, args) -> Any:
    """Measure every block into the LUT at `lut_path` (resumed when it exists)."""
    from rich.progress import Progress

    from autovit.latmodel.lut import Lut, load_lut
    from autovit.latmodel.measure import TimingPolicy, environment
    from autovit.latmodel.profiler import profile_blocks
    from autovit.latmodel.runner import drift_monitor

    policy = TimingPolicy(max_repeats=args.max_repeats, rounds=args.rounds)
    lut = load_lut(lut_path, "local-cpu") if lut_path.exists() else \
        Lut("local-cpu", "onnxruntime", environment("onnxruntime", args.threads), policy.__dict__)
    monitor = drift_monitor(network(reference), (1, 3, reference[0], reference[0]), "onnxruntime", args.threads,
                            policy, name=REFERENCE)
    with Progress(transient=True) as bar:
        task = bar.add_task("profile", total=len(blocks) * args.rounds)
        _, failures = profile_blocks(blocks, lut, lut_path, "onnxruntime", args.threads, "isolated", policy,
                                     lambda *_: bar.advance(task), monitor)
    if failures:
        raise AutoVitError(f"{len(failures)} blocks failed, first: {failures[0]}")
    return lut


def measure(subnets: list[Subnet], lut, reference: Subnet, args) -> list[validate.Candidate]:
    """Each subnet measured here (validate's loop), expressed at the LUT's reference speed: the
    drift monitor times the same reference model as `profile`."""
    from rich.progress import Progress

    from autovit.latmodel.measure import TimingPolicy
    from autovit.latmodel.runner import drift_monitor

    policy = TimingPolicy(warmup=2, min_repeats=6, max_repeats=max(args.max_repeats // 10, 6), max_seconds=1.5)
    cands = [validate.Candidate(f"ofa#{i}", "ofa", (lambda s=s: network(s)), (1, 3, s[0], s[0]))
             for i, s in enumerate(subnets)]
    monitor = drift_monitor(network(reference), (1, 3, reference[0], reference[0]), "onnxruntime", args.threads,
                            policy, name=REFERENCE)
    with Progress(transient=True) as bar:
        task = bar.add_task("measure", total=len(cands) * args.rounds)
        failed = validate.measure(cands, "onnxruntime", args.threads, args.rounds, policy,
                                  lambda *_: bar.advance(task), monitor, lut.reference.get("ref_ms"))
    if failed:
        raise AutoVitError(f"{len(failed)} subnets failed, first: {failed[0]}")
    return cands


def spread(values: list[float], m: int) -> list[int]:
    """Indices of m values evenly spaced over their sorted range (rank agreement needs range)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return sorted({order[round(i * (len(order) - 1) / max(m - 1, 1))] for i in range(m)})


def run(args) -> dict[str, Any]:
    from autovit.latmodel.fit import ProfileCalibrator
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.measure import physical_cores
    from autovit.latmodel.oracle import AnalyticalOracle, LutOracle

    t0 = time.time()
    args.threads = args.threads or physical_cores()
    subnets = sample_subnets(args.subnets, args.resolution, args.kernels, args.expands, args.depths, args.seed)
    blocks = sorted({b for s in subnets for b in decompose(s)}, key=lambda b: b.key)
    largest = (args.resolution, (max(args.kernels),) * 20, (max(args.expands),) * 20, (max(args.depths),) * 5)
    args.out.mkdir(parents=True, exist_ok=True)
    lut = profile(blocks, args.out / "ofa_lut.json", largest, args)
    entries = [lut.entries[f"isolated|{b.key}"] for b in blocks]
    datasheet = load_profile("local-cpu")
    calibrator = ProfileCalibrator(datasheet)
    cal = calibrator.fit(blocks, [e["median_ms"] for e in entries])
    oracles = {"lut_sum": LutOracle(lut, calibrator.fitted_profile(), decompose),
               "analytical_calibrated": AnalyticalOracle(calibrator.fitted_profile(), decompose),
               "analytical_datasheet": AnalyticalOracle(datasheet, decompose)}
    t1 = time.perf_counter()
    priced = {k: o.latency_ms(subnets) for k, o in oracles.items()}
    price_s = time.perf_counter() - t1
    picked = spread(list(priced["lut_sum"]), args.measure)
    cands = measure([subnets[i] for i in picked], lut, largest, args)
    measured = [c.measured_ms for c in cands]
    out = {"example": "ofa_mbv3_oracle", "resolution": args.resolution, "threads": args.threads,
           "blocks": len(blocks), "subnets_priced": len(subnets), "price_s": round(price_s, 3),
           "subnets_measured": len(picked), "calibration": {"n_points": cal.n_points, "rms_log_error": cal.rms_log_error},
           "lut_coverage": oracles["lut_sum"].coverage}
    for k, ms in priced.items():
        m = validate.metrics([float(ms[i]) for i in picked], measured)
        out[k] = {n: m.get(n, math.nan) for n in ("kendall_tau", "mape", "within_10", "spearman")}
    out["measured_ms"] = {"min": min(measured), "max": max(measured)}
    out["noise_floor_cv"] = float(np.median([c.cv for c in cands if c.cv is not None] or [math.nan]))
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the LUT (resumed when it exists)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--kernels", type=_ints, default=[3, 5, 7])
    ap.add_argument("--expands", type=_ints, default=[3, 4, 6])
    ap.add_argument("--depths", type=_ints, default=[2, 3, 4])
    ap.add_argument("--subnets", type=int, default=1000, help="subnets priced by the oracles")
    ap.add_argument("--measure", type=int, default=24, help="subnets measured with onnxruntime (>= 3)")
    ap.add_argument("--rounds", type=int, default=3, help="bursts per block and per subnet")
    ap.add_argument("--max-repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        print(json.dumps(run(args)))
    except AutoVitError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
