"""Kernel timing on Apple's Neural Engine (profiles of kind "npu" with an [ane] table).

Core ML compiles a network into a sequence of Neural Engine tasks; the kernel former
(kernels.py) decides which ops make one task. A task streams its input and output activations
and its weights while the multiply array or the planar (elementwise) path computes:

    t_task    = layer + max(t_compute, t_memory)
    t_compute = FLOPs / (peak[engine] x efficiency[engine])
    t_memory  = max(activation bytes / on-chip bandwidth, bytes through DRAM / DRAM bandwidth)

Activations and weights move on separate DMA engines (the tile DMA and the 16-wide kernel DMA,
tinygrad's description): activations held on chip stream while the weights come from DRAM;
bytes that both need from DRAM share it.

Each mechanism below is a switch in the profile's `[ane] mechanisms` list (docs/BENCHMARKS.md
has the ablation, docs/COST_MODEL.md the sources):

- epilogue (kernels.py): an activation applied to a convolution's or matmul's result, any unary
  function of it (ReLU, GELU's erf form, x * sigmoid(x)), runs in the task's output stage: the
  engine loads the non-linearity with the weights and applies it as results leave the array.
- l2: a task whose working set (input + output activations, bytes after padding) fits the
  engine's buffer (`ane.l2_mib`) reads and writes it there (`ane.l2_gbps`); larger tensors
  stream through the system-level cache (mechanism slc: `memory.cache_mib` at
  `memory.cache_gbps`) or, beyond it, DRAM. Weights always stream from DRAM: the buffer holds a
  task's input and output, not its weights.
- layer: every task pays a fixed setup cost (`overhead.launch_us`).
- heads: the multiply array takes one operand of a matmul as its kernel, loaded like weights; a
  batched matmul of two activations (attention scores and their use, per head and patch) has a
  different kernel per batch element and runs as that many tasks, each paying the task cost.
- winograd: the compiler runs dense 3x3 stride-1 convolutions through a Winograd transform
  (ANE guide, ch. 4): F(m x m, 3x3) does (m + 2)^2 multiplies for an m x m output tile where
  direct convolution does 9 m^2 (`ane.winograd_tile` = m; 2: 16 instead of 36).
- align: the last axis of every buffer is padded to `memory.last_axis_align_bytes` (64).
- layout (kernels.py and here): a reshape or slice that keeps the last axis only re-addresses
  rows (free); one that changes it repacks every row (a copy at bandwidth); a transpose that
  puts another axis last moves single elements and pays `efficiency.layout_penalty` per byte.
- fallback: ops the engine cannot run go to the GPU (`[fallback]`), with a switch each way.
Three switches the Apple profiles leave off:
- depthwise: depthwise convolutions at the planar path's rate (`compute.vector_tflops`), as if
  the multiply array could not reduce over a single channel (a hypothesis the published tables
  rank better without, docs/BENCHMARKS.md);
- tokens: a linear layer or LayerNorm on (B, N, C) tokens (the channel axis last, the layout
  Apple's transformer guide calls the wrong one for the engine, principle 1; EfficientFormer's
  observation 3: LN-Linear slower than CONV-BN on the iPhone 12) streams its activations
  through DRAM, as if every such layer were re-laid out through memory. A hypothesis: no
  document says by how much, and the tables do not agree on it (docs/BENCHMARKS.md);
- rank5 (kernels.py): a copy through a rank-5+ tensor (the qkv split of timm's attention) runs
  on the fallback engine. It belongs to the Core ML format, not the chip: the Apple profiles
  price an ML Program (coremltools' default since 7.0; the engine takes tensors of rank <= 5,
  ANE guide ch. 4); the NeuralNetwork format (.mlmodel, the default before 7.0) expresses a
  rank-5 reshape or transpose with its "ND" layer types, which run off the engine
  (hollance/neural-engine, unsupported layers). Apple's own NeuralNetwork converter for
  MobileViT and ViT (apple/ml-cvnets, `cvnets-convert`) avoids them: it swaps the rank-5 qkv
  split for per-head slices of the last axis. `for_format` prices a model of either format
  (COREML_FORMATS).
"""
from __future__ import annotations

import math
from dataclasses import replace

from autovit.latmodel.hardware import ANE_MECHANISMS, HardwareProfile
from autovit.latmodel.kernels import Kernel
from autovit.latmodel.timing import KernelTime, kernel_time, padded_elems


# Core ML model formats -> the mechanisms a model of that format adds to an Apple profile (which
# describes an ML Program): the NeuralNetwork format runs rank-5 layers off the engine (see above).
COREML_FORMATS = {"mlprogram": (), "neuralnetwork": ("rank5",)}


def with_mechanisms(profile: HardwareProfile, mechanisms: tuple[str, ...]) -> HardwareProfile:
    """The same profile with exactly these Neural Engine mechanisms switched on."""
    unknown = [m for m in mechanisms if m not in ANE_MECHANISMS]
    if profile.ane is None or unknown:
        raise ValueError(f"{profile.name} has no Neural Engine mechanism {', '.join(map(repr, unknown)) or 'at all'}")
    return replace(profile, ane=replace(profile.ane, mechanisms=tuple(mechanisms)))


def without(profile: HardwareProfile, mechanism: str) -> HardwareProfile:
    """The same profile with one Neural Engine mechanism switched off (for the ablation)."""
    if profile.ane is None or mechanism not in ANE_MECHANISMS:
        raise ValueError(f"{profile.name} has no Neural Engine mechanism {mechanism!r}")
    return with_mechanisms(profile, tuple(m for m in profile.ane.mechanisms if m != mechanism))


def for_format(profile: HardwareProfile, fmt: str) -> HardwareProfile:
    """The profile that prices a model converted to Core ML format `fmt` ("mlprogram" or
    "neuralnetwork"): its mechanisms with those of the format (COREML_FORMATS) and no other
    format's, so a profile already set for one format can be moved to the other."""
    if fmt not in COREML_FORMATS:
        raise ValueError(f"unknown Core ML format {fmt!r}: use one of {', '.join(COREML_FORMATS)}")
    if profile.ane is None:
        raise ValueError(f"{profile.name} has no [ane] table: Core ML formats apply to the Neural Engine only")
    by_format = {m for ms in COREML_FORMATS.values() for m in ms}
    return with_mechanisms(profile, tuple(m for m in profile.ane.mechanisms if m not in by_format) + COREML_FORMATS[fmt])


def channels_last_tokens(k: Kernel) -> bool:
    """Whether a task is a linear layer or a LayerNorm on (B, N, C) tokens, the channel axis last
    (mechanism tokens)."""
    return (k.category in ("linear", "norm") and bool(k.act_shapes) and len(k.act_shapes[0]) == 3
            and k.op_types[0] in ("MatMul", "Gemm", "LayerNormalization"))


class NeuralEngineTimer:
    """Times kernels as Neural Engine tasks (see the module docstring); `time(k)` -> KernelTime."""

    def __init__(self, profile: HardwareProfile, dtype: str, scale: float):
        if profile.ane is None:
            raise ValueError(f"{profile.name} has no [ane] table")
        self.p, self.dtype, self.scale = profile, dtype, scale
        self.eb = profile.dtype_bytes(dtype)
        self.dram = profile.dram_gbps * 1e9 * profile.eff_memory
        self.on = set(profile.ane.mechanisms)

    def act_bytes(self, k: Kernel) -> float:
        """Activation bytes a task reads and writes, its rows padded when mechanism align is on."""
        elems = k.in_elems + k.out_elems
        align = self.p.last_axis_align_bytes if "align" in self.on else 0
        if align and k.act_shapes:
            plain = sum(math.prod(s) for s in k.act_shapes)
            if plain:
                elems *= sum(padded_elems(s, self.eb, align) for s in k.act_shapes) / plain
        return elems * self.scale * self.eb

    def act_bandwidth(self, nbytes: float) -> float:
        """Bytes/s for a task whose activations take `nbytes`: engine buffer, system cache or DRAM."""
        if "l2" in self.on and nbytes <= self.p.ane.l2_mib * 2**20:
            return self.p.ane.l2_gbps * 1e9
        if "slc" in self.on and nbytes <= self.p.cache_mib * 2**20:
            return self.p.cache_gbps * 1e9
        return self.dram

    def compute_s(self, k: Kernel) -> float:
        """Seconds of arithmetic: the multiply array for convolutions and matmuls, the planar path
        for everything else (and depthwise convolutions, mechanism depthwise)."""
        p = self.p
        flops = (k.flops + k.transcendentals * max(p.transcendental_flops - 1.0, 0.0)) * self.scale
        if flops <= 0:
            return 0.0
        on_array = k.klass == "matrix" or (k.category == "dwconv" and "depthwise" not in self.on)
        if on_array:
            eff = p.eff_gemm if k.category in ("linear", "attention") else p.eff_matrix
            if k.winograd_3x3 and "winograd" in self.on:
                m = p.ane.winograd_tile
                flops *= (m + 2) ** 2 / (9 * m * m)
            return flops / (p.matrix_tflops[self.dtype] * 1e12 * eff)
        return flops / (p.vector_tflops[self.dtype] * 1e12 * p.eff_vector)

    def tasks(self, k: Kernel) -> int:
        """Neural Engine tasks a kernel runs as: one, or one per batch element of a matmul of two
        activations (mechanism heads)."""
        if "heads" in self.on and k.category == "attention" and k.klass == "matrix" and k.gemm is not None:
            count = k.gemm[0] * (self.scale if k.batch_in == "count" else 1.0)
            return max(1, round(count))
        return 1

    def time(self, k: Kernel) -> KernelTime:
        p = self.p
        if k.unsupported and p.fallback is not None and "fallback" in self.on:
            return kernel_time(k, p, self.dtype, self.scale)  # priced on the fallback GPU
        if k.klass == "view":
            return KernelTime(k, 0.0, 0.0, 0.0, 0.0, 0.0, "overhead", 0.0, 0.0, p.name)
        act = self.act_bytes(k)
        w_bytes = k.w_elems * self.eb
        bw = self.dram if "tokens" in self.on and channels_last_tokens(k) else self.act_bandwidth(act)
        t_act = act / bw
        if k.klass == "layout" and k.moves_last_axis and "layout" in self.on:
            t_act *= p.layout_penalty
        # The two DMA engines overlap; through DRAM their bytes add up.
        t_memory = t_act + w_bytes / self.dram if bw == self.dram else max(t_act, w_bytes / self.dram)
        t_compute = 0.0 if k.klass == "layout" else self.compute_s(k)
        launch = p.launch_us * 1e-6 * self.tasks(k) if "layer" in self.on else 0.0
        t = launch + max(t_compute, t_memory)
        bound = "overhead" if max(t_compute, t_memory) < launch else ("compute" if t_compute >= t_memory else "memory")
        flops = k.flops * self.scale
        return KernelTime(k, t * 1e3, t * 1e3, t_compute * 1e3, t_memory * 1e3, launch * 1e3, bound, flops,
                          act + w_bytes, p.name)

