"""Do block-level calibrations carry over to whole networks? Measure the AutoViT presets here
with ONNX Runtime and print the latency model's estimates next to them.

    python benchmarks/calibration_transfer.py --hw local-cpu --hw local-cpu@calibrated

Prints one JSON object per preset: the measured median (ms, ONNX Runtime, batch 1, threads =
physical cores) and the estimate (ms) for every --hw.
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hw", action="append", default=None, help="profile to estimate with (repeatable)")
    ap.add_argument("--presets", default="xxs,xs,s")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.measure import TimingPolicy, physical_cores, time_callable
    from autovit.nas.builder import build_model
    from autovit.nas.export import export_onnx_bytes
    from autovit.nas.latency import arch_graph
    from autovit.nas.presets import load_preset

    profiles = [load_profile(h) for h in (args.hw or ["local-cpu"])]
    threads = physical_cores()
    for name in args.presets.split(","):
        arch = load_preset(name)
        shape = (1, 3, arch.resolution, arch.resolution)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(export_onnx_bytes(build_model(arch), shape), opts,
                                    providers=["CPUExecutionProvider"])
        feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        measured = time_callable(lambda: sess.run(None, feed), TimingPolicy(max_seconds=10))
        model = LatencyModel(arch_graph(arch, f"autovit:{name}"))
        print(json.dumps({"model": f"autovit:{name}", "threads": threads, "measured_ms": round(measured.median_ms, 3),
                          "estimated_ms": {p.name: round(model.estimate(p).latency_ms, 3) for p in profiles}}),
              flush=True)


if __name__ == "__main__":
    main()
