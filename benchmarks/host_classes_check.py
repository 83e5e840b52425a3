"""Does the host cost per op class (mechanism host_classes) move the timm GPU sets' estimates?

    python benchmarks/host_classes_check.py [--n 12]

The RTX 3090 / RTX 4090 timm files time batches of 1024 (AMP). There the device is the
bottleneck: the CUDA host issues launches ahead of it (timing.network_time, end_i =
max(end_{i-1}, issue_i) + t_i), so a host cost changes the total only where the device waits
for a launch. Once the first kernel has started, the device waits only if the host falls
behind it, which a kernel of a batch of 1024 leaves no room for; then the mechanism adds the
first kernel's extra host cost (microseconds on a latency of milliseconds) and nothing else.

This prices the --n fastest rows of the RTX 3090 file (the networks with the shortest kernels,
where the host would bind first) on `rtx3090` and `rtx4090` at the file's batch, fp16, with
and without host_classes, and prints one JSON object per row and profile: both latencies, their
difference, and the first kernel's extra host cost (the difference when the host never stalls
the device after it). Graphs are exported into benchmarks/.cache (external.py's cache).
"""
from __future__ import annotations

import argparse
import csv
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from external import MAX_PARAMS_M, TIMM_SETS, find_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="fastest rows of the RTX 3090 file to price")
    ap.add_argument("--data", help="shared/external-latency folder (found automatically)")
    ap.add_argument("--cache", default=str(HERE / ".cache"))
    args = ap.parse_args()
    if args.n < 1:
        sys.exit("--n must be at least 1")

    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.network_graphs import export_timm, graph_path, run_exports
    from autovit.latmodel.timing import host_us

    with open(find_data(args.data) / TIMM_SETS["rtx3090"][0]) as f:
        rows = [r for r in csv.DictReader(f) if float(r["param_count"] or 0) <= MAX_PARAMS_M]
    rows.sort(key=lambda r: float(r["infer_step_time"]))
    cache = Path(args.cache)
    graph_path(cache, "x").parent.mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        if len(out) >= args.n:
            break
        key = f"timm__{r['model']}__{r['infer_img_size']}"
        gp = graph_path(cache, key)
        if not gp.exists() and not gp.with_suffix(".skip").exists():
            run_exports([(export_timm, key, r["model"], int(r["infer_img_size"]), str(gp))], 1, f"export {r['model']}")
        if not gp.exists():
            continue
        out.append((r, LatencyModel(pickle.loads(gp.read_bytes()))))
    for name in ("rtx3090", "rtx4090"):
        on = load_profile(name)
        off = replace(on, mechanisms=tuple(m for m in on.mechanisms if m != "host_classes"))
        for r, lm in out:
            batch = int(r["infer_batch_size"])
            a, b = lm.estimate(on, batch, "fp16").latency_ms, lm.estimate(off, batch, "fp16").latency_ms
            first = next(k for k in lm.kernels(on) if k.klass != "view")
            extra = (host_us(first.op_types, first.category, on) - on.dispatch_us) * 1e-3
            print(json.dumps({"hw": name, "model": r["model"], "batch": batch, "measured_ms_rtx3090": float(r["infer_step_time"]),
                              "ms": round(a, 6), "ms_without": round(b, 6), "diff_us": round((a - b) * 1e3, 3),
                              "first_kernel": "+".join(first.op_types), "first_kernel_extra_us": round(extra * 1e3, 3),
                              "relative": round(a / b - 1, 8)}), flush=True)


if __name__ == "__main__":
    main()
