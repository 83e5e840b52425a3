"""Inputs of the docs/PHONE.md walk-through that a phone would give and this machine cannot.

    python benchmarks/phone.py subset --set apple-iformer-a15 --k 30 --out out/phone/iformer30.csv
    python benchmarks/phone.py standin-times out/phone/blocks/manifest.json --hw iphone13 --out out/phone/times.csv

subset: K rows of a published Apple table as a measurement CSV, the same K rows that
`external.py --kshot K --calibrate-on SET --seed S` calibrates on (the table's rows after the
exclusion rule, seeded order), so `calibrate --networks` on them can be compared with it.
standin-times: a SYNTHETIC times CSV for a block manifest: each block priced by the
uncalibrated profile. It exercises `lut import`; it is not a measurement and carries no
information about any phone.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def subset(set_name: str, k: int, seed: int, out: Path, data: str | None, cache: Path) -> None:
    from apple import apple_rows, excluded_rows
    from external import apple_models, find_data

    from autovit.latmodel.io import atomic_write_text

    data_dir = find_data(data)
    excluded = excluded_rows(apple_rows(data_dir))
    rows = apple_rows(data_dir, [set_name])
    _, skip = apple_models(rows, cache, 1)
    kept = [r for r in rows[set_name] if r.graph_key not in skip and r.label not in excluded]
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "latency_ms", "resolution", "timm_name", "source"])
    for i in sorted(order[:k]):
        r = kept[i]
        w.writerow([r.model, f"{r.latency_ms:g}", r.resolution, r.timm_name, f"{set_name} ({k} of {len(kept)} rows, seed {seed})"])
    atomic_write_text(out, buf.getvalue())
    print(json.dumps({"set": set_name, "k": k, "seed": seed, "of": len(kept), "out": str(out)}))


def standin_times(manifest: Path, hw: str, out: Path) -> None:
    from autovit.latmodel.fit import block_model
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.lut_import import read_manifest
    import autovit.nas  # noqa: F401 - registers AutoViT's block kinds, the manifest's

    profile = load_profile(hw)
    _, entries = read_manifest(manifest)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "latency_ms", "std_ms", "note"])
    for e in entries:
        ms = block_model(e["spec"]).estimate(profile).latency_ms
        w.writerow([e["file"], f"{ms:.5g}", "", f"SYNTHETIC: priced by {profile.name}, not measured"])
    atomic_write_text(out, buf.getvalue())
    print(json.dumps({"manifest": str(manifest), "hw": profile.name, "blocks": len(entries), "out": str(out),
                      "synthetic": True}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset", help="K seeded rows of an Apple table as a measurement CSV")
    s.add_argument("--set", default="apple-iformer-a15")
    s.add_argument("--k", type=int, default=30)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", help="shared/external-latency folder (found automatically)")
    s.add_argument("--cache", default=str(HERE / ".cache"))
    s.add_argument("--out", required=True)
    t = sub.add_parser("standin-times", help="a SYNTHETIC times CSV for a block manifest")
    t.add_argument("manifest")
    t.add_argument("--hw", default="iphone13")
    t.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "subset":
        subset(args.set, args.k, args.seed, Path(args.out), args.data, Path(args.cache))
    else:
        standin_times(Path(args.manifest), args.hw, Path(args.out))


if __name__ == "__main__":
    main()
