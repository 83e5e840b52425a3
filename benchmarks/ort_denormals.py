"""How much of a network's time on this CPU goes to subnormal floats (issue 12; timing: run alone).

    python benchmarks/ort_denormals.py [--models swin_tiny_patch4_window7_224,...] [--runs 20]

x86 cores handle a subnormal (denormal) float operand or result in a microcode assist, tens to
hundreds of cycles, unless the thread flushes them to zero (FTZ/DAZ). onnxruntime leaves them
on by default; its session option `session.set_denormal_as_zero` flushes them. A softmax whose
scores carry an additive mask of about -100 (timm's shifted-window Swin: `masked_fill(-100.0)`)
turns the masked entries into subnormals (exp(-100) = 3.7e-44 < 1.2e-38, the smallest normal
fp32), and the matrix product that reads the probabilities pays for them too. Prints one JSON
object: per timm model, the median ms of `--runs` runs (onnxruntime, 2 threads, its default
optimizations) without and with the flush, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT = "swin_tiny_patch4_window7_224,xcit_nano_12_p16_224,deit_tiny_patch16_224,mobilevit_xs,resnet18"


def median_ms(onnx_bytes: bytes, shape, threads: int, runs: int, flush: bool) -> float:
    from autovit.latmodel.ort_profile import median_run_ms, session

    sess = session(onnx_bytes, threads, config={"session.set_denormal_as_zero": "1" if flush else "0"})
    return median_run_ms(sess, shape, runs)


def main() -> None:
    import autovit.nas  # noqa: F401 - registers the autovit: source
    from autovit.latmodel.convert import export_onnx_bytes
    from autovit.latmodel.validate import zoo_candidates

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out: dict = {"threads": args.threads, "runs": args.runs, "models": {}}
    for c in zoo_candidates([m for m in args.models.split(",") if m]):
        onnx_bytes = export_onnx_bytes(c.build().eval(), c.shape)
        # alternate the two settings, twice, and keep each one's faster median: a drifting machine
        # must not read as an effect
        ms = {False: [], True: []}
        for flush in (False, True, False, True):
            ms[flush].append(median_ms(onnx_bytes, c.shape, args.threads, args.runs, flush))
        plain, flushed = min(ms[False]), min(ms[True])
        out["models"][c.name] = {"ms": round(plain, 3), "ms_flush_subnormals": round(flushed, 3),
                                 "ratio": round(plain / flushed, 3)}
        print(f"{c.name}: {out['models'][c.name]}", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
