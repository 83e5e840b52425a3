"""Which depthwise kernel does PyTorch run on a CUDA GPU, and does it cost what the model says?

    python benchmarks/gpu_depthwise_probe.py measure OUT.json [--batch 64]      # on a CUDA machine
    python benchmarks/gpu_depthwise_probe.py predict OUT.json [--profile h100 --dram-gbps 4800 --cache-mib 60]
    python benchmarks/gpu_depthwise_probe.py host OUT.json                          # on a CUDA machine

`measure` (needs a CUDA GPU and PyTorch only) times eager PyTorch's depthwise convolution, fp32
and fp16, stride 1 and 2, 3x3 / 5x5 / 7x7, on OFA-MobileNetV3-like layers (channels, side), with
CUDA events over 5 x 50 back-to-back calls after 10 warm-ups (the median of the 5 means; long
kernels, so the host's launch cost is hidden), and records the CUDA kernels one call ran
(`conv_depthwise2d_forward_kernel<k>` / `_generic`: ATen's direct kernel; `cudnn`/`conv2d_c1_k1`:
cuDNN). Rows: [dtype, stride, channels, side, k, ms, kernels].

`predict` prices the same layers with the roofline model on `--profile` (the part's memory
overridden where the profile describes a sibling: an H200 is an H100's GH100 with 4.8 TB/s
HBM3e and, as PyTorch reports it, 60 MB of L2) with every mechanism, without `dw_index`, and
without `dw_index` and `cudnn_dw`, and prints one JSON object: per row measured and predicted
ms, and the median ratio predicted / measured per group (fp32 direct kernel, fp16 cuDNN,
fp16 direct kernel) and of 5x5 and 7x7 to 3x3.

`host` times eager PyTorch's host cost per call at batch 1 for the ops of a MobileNetV3 block
(convolutions, BatchNorm, activations, element-wise ops, means, a linear layer, a view): the
cost per op a host-bound batch-1 run pays.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

LAYERS = ((144, 56), (240, 28), (480, 14), (960, 7))  # expanded widths of OFA-MobileNetV3's stages at 224 px
KERNELS = (3, 5, 7)


def time_layer(c: int, side: int, k: int, stride: int, dtype, batch: int) -> tuple[float, list[str]]:
    """Median over 5 repeats of the mean of 50 back-to-back calls (ms), and the CUDA kernels one call ran."""
    import torch

    conv = torch.nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False).cuda().eval().to(dtype)
    x = torch.randn(batch, c, side, side, device="cuda", dtype=dtype)
    runs = []
    with torch.no_grad():
        for _ in range(10):
            conv(x)
        torch.cuda.synchronize()
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                conv(x)
            end.record()
            torch.cuda.synchronize()
            runs.append(start.elapsed_time(end) / 50)
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                conv(x)
                torch.cuda.synchronize()
            names = sorted({e.name[:150] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
        except Exception as e:  # the names check which kernel ran; the time is the measurement
            names = [repr(e)[:60]]
    return round(statistics.median(runs), 5), names


def measure(out: Path, batch: int) -> None:
    import torch

    rows = [[str(dt)[6:], stride, c, side, k, *time_layer(c, side, k, stride, dt, batch)]
            for dt in (torch.float32, torch.float16) for stride in (1, 2) for c, side in LAYERS for k in KERNELS]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "batch": batch, "rows": rows}
    out.write_text(json.dumps(res) + "\n")
    print(json.dumps(res))


def layer_graph(c: int, side: int, k: int, stride: int):
    """The layer as an ONNX graph for the latency model (weights shaped, not read)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from autovit.latmodel.graph import build_graph

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.zeros((c, 1, k, k), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4, group=c,
                            strides=[stride, stride])
    model = helper.make_model(helper.make_graph([node], "dw", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return build_graph(model)


def predict(path: Path, profile: str, dram_gbps: float, cache_mib: float) -> dict:
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile

    m = json.loads(path.read_text())
    base = load_profile(profile)
    base = replace(base, dram_gbps=dram_gbps or base.dram_gbps, cache_mib=cache_mib or base.cache_mib)
    strip = lambda *names: replace(base, mechanisms=tuple(x for x in base.mechanisms if x not in names))  # noqa: E731
    profiles = {"model": base, "-dw_index": strip("dw_index"), "-dw_index-cudnn_dw": strip("dw_index", "cudnn_dw")}
    rows = []
    for dtype, stride, c, side, k, ms, kernels in m["rows"]:
        lm = LatencyModel(layer_graph(c, side, k, stride))
        dt = {"float32": "fp32", "float16": "fp16"}[dtype]
        pred = {label: lm.estimate(p, m["batch"], dt).kernels[0].device_ms for label, p in profiles.items()}
        group = f"{dtype} {'cudnn' if any('cudnn' in n or 'conv2d_c1' in n for n in kernels) else 'direct'}"
        rows.append({"dtype": dtype, "stride": stride, "c": c, "side": side, "k": k, "kernel": group, "ms": ms,
                     "pred_ms": {label: round(v, 5) for label, v in pred.items()}})
    med = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
    by_group = {g: {label: med([r["pred_ms"][label] / r["ms"] for r in rows if r["kernel"] == g]) for label in profiles}
                for g in sorted({r["kernel"] for r in rows})}
    key = {(r["dtype"], r["stride"], r["c"], r["side"], r["k"]): r for r in rows}
    ratio = {}
    for label in ["measured", *profiles]:
        val = (lambda r: r["ms"]) if label == "measured" else (lambda r, lb=label: r["pred_ms"][lb])
        ratio[label] = {f"{k}x{k}/3x3": med([val(key[("float32", 1, c, s, k)]) / val(key[("float32", 1, c, s, 3)])
                                              for c, s in LAYERS]) for k in KERNELS[1:]}
    return {"measured": str(path), "device": m["device"], "torch": m["torch"], "batch": m["batch"], "profile": profile,
            "predicted_over_measured": by_group, "fp32_stride1_ratio_to_3x3": ratio, "rows": rows}


def host_cost(out: Path) -> None:
    """Host microseconds per eager call at batch 1 (median of 5 x 2,000 back-to-back calls after
    200 warm-ups, tensors small enough that the GPU keeps up): the cost per op a batch-1 run pays."""
    import time

    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = False
    d = "cuda"
    x, y, t = torch.randn(1, 96, 28, 28, device=d), torch.randn(1, 96, 28, 28, device=d), torch.randn(1, 576, device=d)
    img = torch.randn(1, 3, 224, 224, device=d)
    conv = lambda *a, **kw: torch.nn.Conv2d(*a, bias=False, **kw).to(d).eval()  # noqa: E731
    c1, dw3, dw7, c3 = conv(96, 96, 1), conv(96, 96, 3, padding=1, groups=96), conv(96, 96, 7, padding=3, groups=96), \
        conv(3, 16, 3, stride=2, padding=1)
    bn, fc = torch.nn.BatchNorm2d(96).to(d).eval(), torch.nn.Linear(576, 1000).to(d).eval()
    ops = {"conv1x1": lambda: c1(x), "dw3x3": lambda: dw3(x), "dw7x7": lambda: dw7(x), "stem3x3": lambda: c3(img),
           "batchnorm": lambda: bn(x), "relu": lambda: F.relu(x), "relu6": lambda: F.relu6(x),
           "hardswish": lambda: F.hardswish(x), "sigmoid": lambda: torch.sigmoid(x), "add": lambda: x + y,
           "mul": lambda: x * y, "add_scalar": lambda: x + 3, "div_scalar": lambda: x / 6, "mean3": lambda: x.mean(3),
           "mean23": lambda: x.mean((2, 3), keepdim=True), "linear": lambda: fc(t), "view": lambda: x.view(1, -1)}
    us = {}
    with torch.no_grad():
        for name, f in ops.items():
            for _ in range(200):
                f()
            torch.cuda.synchronize()
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(2000):
                    f()
                torch.cuda.synchronize()
                runs.append((time.perf_counter() - t0) / 2000 * 1e6)
            us[name] = round(sorted(runs)[2], 2)
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "us_per_call_batch1": us}
    out.write_text(json.dumps(res) + "\n")
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("measure", "predict", "host"))
    ap.add_argument("json", help="measure, host: where to write the timings; predict: the timings to price")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", default="h100")
    ap.add_argument("--dram-gbps", type=float, default=0.0, help="the part's DRAM bandwidth (0: the profile's)")
    ap.add_argument("--cache-mib", type=float, default=0.0, help="the part's L2 (0: the profile's)")
    args = ap.parse_args()
    if args.what == "host":
        host_cost(Path(args.json))
    elif args.what == "measure":
        measure(Path(args.json), args.batch)
    else:
        print(json.dumps(predict(Path(args.json), args.profile, args.dram_gbps, args.cache_mib)))


if __name__ == "__main__":
    main()
