"""Hardware profiles: load and check `hw_profiles/*.toml`.

Every number about a device lives in its TOML file with a source comment; this module only
knows the schema. A profile may start from another with `base = "NAME"` (tables are merged
key by key), so a concrete CPU can reuse the generic x86 one and change its core count.
"""
from __future__ import annotations

import math
import platform
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autovit.latmodel.checks import check_keys, did_you_mean, number
from autovit.latmodel.costs import CATEGORIES, KNOWN_OP_TYPES
from autovit.latmodel.errors import AutoVitError

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


@dataclass(frozen=True)
class FusionRule:
    """Ops that one backend runs as one kernel.

    `head` starts a kernel; up to `max_tail` following ops whose type is in `tail` join it while
    each consumes the previous one's output and that output has no other reader. `pattern` is
    an exact chain instead ("?" marks an optional step, "|" alternatives). `prologue` op types
    feeding the kernel with no other reader are absorbed at no cost (e.g. a transposed operand
    that a GEMM reads in place). `unary` op types may join the tail as a whole subgraph that is a
    function of the previous op's output alone (GELU's erf form, SiLU as x * sigmoid(x),
    HardSwish as x * hardsigmoid(x)), up to `max_unary` ops: hardware that applies an activation
    to a result as it leaves the multiply array (the Neural Engine's post-processing stage) runs
    any such function in the same kernel. Selectors are op types or "@category".
    """

    name: str
    head: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    max_tail: int = 0
    pattern: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    category: str | None = None
    unary: tuple[str, ...] = ()
    max_unary: int = 0
    scaled_operands: bool = False  # a pattern rule fires only where both operands of its first op come from a Mul/Div
    self_gated: bool = False  # a pattern rule fires only where its last op also reads its first op's input: x * f(x)


@dataclass(frozen=True)
class Fallback:
    """Where ops the main engine cannot run go (e.g. the A15 GPU for the Neural Engine)."""

    name: str
    unsupported_ops: tuple[str, ...]
    matrix_tflops: dict[str, float]
    vector_tflops: dict[str, float]
    units: int
    launch_us: float
    switch_us: float
    transfer_gbps: float


# ---- Neural Engine (kind = "npu") --------------------------------------------------------------
# The mechanisms latmodel/neural_engine.py prices, each a switch (the ablation in docs/BENCHMARKS.md
# turns them off one at a time): unary activations run in the multiply array's output stage
# (epilogue); activations stay in the engine's buffer when a task's working set fits (l2) or in the
# system-level cache (slc); a fixed cost per task (layer); a matmul of two activations runs one
# task per batch element, i.e. per head and patch (heads); dense 3x3 stride-1 convolutions use
# Winograd (winograd); 64-byte rows (align); which reshapes and transposes move data (layout);
# ops the engine cannot run go to the GPU (fallback);
# left off by the Apple profiles: depthwise convolutions on the planar path instead of the multiply
# array (depthwise) and linear layers / LayerNorms on (B, N, C) tokens through DRAM (tokens), two
# hypotheses the tables do not support (docs/BENCHMARKS.md); copies through rank-5+
# tensors leave the engine for the fallback (rank5: models in Core ML's NeuralNetwork format,
# neural_engine.COREML_FORMATS).
ANE_MECHANISMS = ("epilogue", "l2", "slc", "layer", "heads", "winograd", "align", "layout", "fallback", "depthwise",
                  "tokens", "rank5")

# The GPU and CPU roofline timer's mechanisms beyond launch + max(compute, memory), each a switch
# (`mechanisms = [...]` in a profile; the ablation in docs/BENCHMARKS.md turns them off one at a time):
# attention is one kernel only where the model called F.scaled_dot_product_attention (sdpa_call);
# a direct depthwise convolution loads an input and a weight element per tap through L1 (dw_taps);
# in fp16, torch.autocast runs the ops of its float32 list in fp32 between two casts (autocast);
# a CPU kernel split over several threads pays to start and join each of them (fork_join);
# a loop torch.compile generated for a CPU runs on one thread or on every core (inductor_threads);
# a convolution library that computes in blocked layouts reorders unpacked weights per call (weight_relayout);
# a direct depthwise kernel not unrolled for its size issues loop instructions per tap (dw_loop);
# the direct kernel decomposes every output's flat index with integer divisions (dw_index);
# fp16 depthwise layers that PyTorch's heuristic hands to cuDNN skip the direct kernel (cudnn_dw);
# the host's cost per eager call depends on the op's class (host_classes): a module that selects a
# backend per call (cuDNN convolution and BatchNorm, cuBLAS linear) costs the host 2-3x an element-wise op;
# ATen runs a small dense fp32 convolution at batch 1 in its own im2col + GEMM, not oneDNN (thnn_conv);
# a reduction torch.compile generates splits by its whole loop nest, reduced axes included (inductor_reductions);
# a CPU convolution blocks its output channels by one vector register, not by the GEMM tile (conv_channel_block);
# a oneDNN convolution and its weight reorder each start and join the whole thread team (onednn_team);
# an x86 vector instruction that reads or writes a subnormal float runs a microcode assist: a softmax
# whose scores carry a constant mask far below the rest, and the product that reads its probabilities,
# pay per assisted instruction (subnormal_assists); onnxruntime copies a transpose at bandwidth only
# when its permutation as written, size-1 axes included, moves one axis, and any other run by run
# (ort_transpose); MLAS's direct convolution computes a few output columns of a row for a few
# blocks of output channels at a time, and few channel blocks, short rows and the columns at the
# padding leave the FMA pipeline part empty (mlas_conv_tiles); onnxruntime splits its NCHW <-> NCHWc
# reorders over its threads (reorder_threads); onnxruntime sizes an element-wise op's thread team
# with Eigen's cost model and runs BatchNormalization and copies of a few hundred KiB on one
# thread (ort_parallel_for); a tensor written by other cores than the ones that read it crosses
# between their private caches (core_handoff).
ROOFLINE_MECHANISMS = ("sdpa_call", "dw_taps", "autocast", "fork_join", "inductor_threads", "weight_relayout",
                       "dw_loop", "dw_index", "cudnn_dw", "host_classes", "thnn_conv", "inductor_reductions",
                       "conv_channel_block", "onednn_team", "nchwc_broadcast", "subnormal_assists",
                       "ort_transpose", "mlas_conv_tiles", "reorder_threads", "ort_parallel_for", "core_handoff",
                       "gemm_bias_pass", "nchwc_tensors", "reorder_handoff")


@dataclass(frozen=True)
class NeuralEngine:
    mechanisms: tuple[str, ...]
    l2_mib: float  # a task's working set (input + output activations, bytes) that stays in the engine's buffer
    l2_gbps: float  # bandwidth of that buffer
    winograd_tile: int = 2  # output tile m of the Winograd F(m x m, 3x3) transform for dense 3x3 convolutions


def _neural_engine(d: dict, where: str) -> NeuralEngine | None:
    if "ane" not in d:
        return None
    if _val(d, "kind", where) != "npu":  # the table switches pricing rules: a GPU or CPU priced half as an engine
        raise AutoVitError(f"hardware profile {where}: an [ane] table describes a Neural Engine (kind = \"npu\"), "
                           f"but this profile is kind = {_val(d, 'kind', where)!r}; drop the table or the profile's kind")
    return NeuralEngine(mechanisms=tuple(_val(d, "ane.mechanisms", where)), l2_mib=float(_val(d, "ane.l2_mib", where)),
                        l2_gbps=float(_val(d, "ane.l2_gbps", where)), winograd_tile=_val(d, "ane.winograd_tile", where))


# Free parameters: what data sheets cannot give, and where each lives in a profile TOML
# (section, key). Calibration fits exactly these.
PARAMETER_FIELDS = {
    "eff_matrix": ("efficiency", "matrix"), "eff_gemm": ("efficiency", "gemm"), "eff_vector": ("efficiency", "vector"),
    "eff_memory": ("efficiency", "memory"), "launch_us": ("overhead", "launch_us"),
    "dispatch_us": ("overhead", "dispatch_us"), "view_dispatch_us": ("overhead", "view_dispatch_us"),
    "layout_penalty": ("efficiency", "layout_penalty"), "k_half": ("efficiency", "k_half"),
    "run_us": ("overhead", "run_us"), "layout_run_ns": ("efficiency", "layout_run_ns"),
    "reduce_row_ns": ("efficiency", "reduce_row_ns"), "softmax_row_ns": ("efficiency", "softmax_row_ns"),
    "fork_join_us": ("overhead", "fork_join_us"),
    "transcendental_flops": ("compute", "transcendental_flops"),
    "eff_attention": ("efficiency", "attention"), "eff_dwconv": ("efficiency", "dwconv"),
}
# Per-class factors: the share of its roofline one class of kernels reaches beside the engine-wide
# efficiency (attention: scores, softmax, their use, fused SDPA; dwconv: depthwise convolutions).
# 1 in every data-sheet profile (no document gives them); fitted only with a prior
# (ProfileCalibrator(..., prior=...)), since each overlaps the class-wide terms it refines.
CLASS_PARAMETERS = ("eff_attention", "eff_dwconv")


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    kind: str
    runtime: str
    dtypes: tuple[str, ...]
    default_dtype: str
    units: int
    matrix_tflops: dict[str, float]
    vector_tflops: dict[str, float]
    gemm_tile: tuple[int, int]
    tiles_per_unit: int
    vector_block: int
    matrix_align: dict[str, int]
    transcendental_flops: float
    dram_gbps: float
    cache_mib: float
    cache_gbps: float  # the private caches' rate where private_mib > 0, else the one cache level's (GB/s, all units)
    private_mib: float  # each core's private cache (MiB); 0: cache_mib is one level
    shared_gbps: float  # the rest of cache_mib beyond the private caches (GB/s, all units)
    last_axis_align_bytes: int
    launch_us: float
    dispatch_us: float
    view_dispatch_us: float
    async_dispatch: bool
    eff_matrix: float
    eff_gemm: float
    eff_vector: float
    eff_memory: float
    layout_penalty: float
    k_half: float
    run_us: float  # once per inference: the runtime's call overhead (ORT session.run: input/output binding)
    reduce_row_ns: float  # per row of a last-axis reduction (LayerNorm, Softmax)
    layout_run_ns: float  # per contiguous run of a strided copy (a transpose moving the last axis)
    weights_cached: bool  # weights stay in cache between inferences when the model fits (CPU, large L3)
    chain_reorder: bool  # convolutions run in a blocked layout with reorders at the ends of conv chains (ORT NCHWc)
    elided: tuple[str, ...]
    strided_readers: tuple[str, ...]
    nchw_conv_relayout: tuple[str, ...]
    relayout_categories: tuple[str, ...]
    fusion: tuple[FusionRule, ...]
    fallback: Fallback | None = None
    source: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    ane: NeuralEngine | None = None  # kind = "npu": how the Neural Engine prices its tasks
    # ORT's NCHWc rewrite takes only convolutions whose channels it can pad to whole blocks of the
    # fp32 vector width; the others run in NCHW through MLAS's im2col + GEMM, between reorders
    # (timing.nchwc_runs).
    nchwc_channels: bool = False
    # Channel counts the rewrite pads up to whole blocks are multiples of this (0: only whole blocks).
    nchwc_pad_multiple: int = 0
    gemm_thread_macs: float = 0.0  # multiply-adds per thread before MLAS splits a GEMM over one more (0: no limit)
    # A direct convolution kernel's register blocking and the core's FMA pipeline (mechanism mlas_conv_tiles):
    conv_filter_set: int = 0  # blocks of output channels (one vector each) a kernel call computes together
    conv_output_block: int = 0  # output columns of a row it computes together (then 3, 2, and single ones)
    fma_latency_cycles: float = 0.0  # cycles before an FMA's result can feed the next FMA of its accumulator
    fma_ports: int = 0  # vector FMAs a core issues per cycle ([cpu] fma_units where the profile has a [cpu] table)
    load_ports: int = 0  # vector loads a core issues per cycle
    # Mechanism ort_parallel_for: Eigen's TensorCostModel as onnxruntime's ThreadPool::TryParallelFor
    # asks it (cycles before a second thread pays off, cycles per further thread, cycles per byte
    # loaded or stored) and the cycles per element an op's functor declares (an op it lacks keeps
    # the vector_block rule).
    parallel_startup_cycles: float = 0.0
    parallel_thread_cycles: float = 0.0
    parallel_byte_cycles: float = 0.0
    op_cycles: dict[str, float] = field(default_factory=dict)
    # Mechanism core_handoff: GB/s at which one core reads what another core's private cache holds.
    cross_core_gbps: float = 0.0
    # Mechanism gemm_bias_pass: bytes per second of a matrix product's output that the runtime's
    # bias pass costs (onnxruntime's Gemm broadcasts C into the output on the calling thread, then
    # its SGEMM reads it back with beta = 1), at the profile's threads.
    gemm_bias_gbps: float = 0.0
    mechanisms: tuple[str, ...] = ()  # roofline mechanisms switched on (ROOFLINE_MECHANISMS)
    clock_ghz: float = 0.0  # boost clock of the units (GPU SMs): with l1_loads_per_clock, the L1 load rate
    l1_loads_per_clock: int = 0  # 32-bit loads one unit's L1 serves per clock (0: no L1 figure, no dw_taps)
    amp_fp32_ops: tuple[str, ...] = ()  # ONNX op types torch.autocast runs in fp32 (mechanism autocast)
    fork_join_us: float = 0.0  # per thread a CPU kernel wakes and joins (mechanism fork_join)
    min_chunk: int = 0  # elements per thread below which a compiled CPU loop stays on one thread (inductor_threads)
    thnn_max_input: int = 0  # input elements up to which ATen keeps a small batch-1 fp32 convolution off oneDNN (thnn_conv)
    int_ops_per_clock: int = 0  # 32-bit integer ops one unit (GPU SM) completes per clock (dw_loop)
    dw_unrolled_max: int = 0  # largest depthwise kernel size the direct kernel has unrolled tap loops for (dw_loop)
    dw_loop_int_ops: float = 0.0  # integer ops per tap of the direct depthwise kernel's run-time loop (dw_loop)
    dw_index_int_ops: float = 0.0  # integer ops per output of the direct depthwise kernel's index arithmetic (dw_index)
    # Mechanism subnormal_assists: ns one assisted vector instruction costs (the profile's cycles at
    # its clock), and the softmax's assists per subnormal probability / per probability its exp took
    # through the subnormal range to 0 (timing.subnormal_s).
    subnormal_assist_ns: float = 0.0
    softmax_subnormal_assists: float = 0.0
    softmax_underflow_assists: float = 0.0
    eff_attention: float = 1.0  # attention kernels' time is divided by it (CLASS_PARAMETERS; roofline timer)
    eff_dwconv: float = 1.0  # depthwise convolutions' time is divided by it (CLASS_PARAMETERS; roofline timer)
    # ns per row of a Softmax where the runtime's softmax is its own kernel with another per-row cost
    # than its LayerNorm (onnxruntime: MLAS's vectorised softmax over blocks of rows against a scalar
    # LayerNorm job per row); None: reduce_row_ns, and calibration leaves it out.
    softmax_row_ns: float | None = None
    # Share of the vector peak a depthwise convolution reaches in the runtime's blocked layout
    # (chain_reorder: MLAS's NCHWc depthwise FMA kernel); 0: it runs as the other vector ops do.
    eff_nchwc_dw: float = 0.0
    # Mechanism host_classes: host us per eager call, by op type or "@category", as measured on one
    # host; only their ratios to the entry `host_reference` are used, times `dispatch_us` (the level,
    # which calibration fits). Ops of no listed class cost the table's median ratio (timing.host_us).
    host_us: dict[str, float] = field(default_factory=dict)
    host_reference: str = ""

    def uses(self, mechanism: str) -> bool:
        """Whether the roofline mechanism `mechanism` (ROOFLINE_MECHANISMS) is switched on."""
        return mechanism in self.mechanisms

    def ane_uses(self, mechanism: str) -> bool:
        """Whether this profile's Neural Engine model has `mechanism` switched on (False off the ANE)."""
        return self.ane is not None and mechanism in self.ane.mechanisms

    def dtype_bytes(self, dtype: str) -> int:
        return DTYPE_BYTES[dtype]

    def check_dtype(self, dtype: str) -> str:
        if dtype not in DTYPE_BYTES:
            raise AutoVitError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPE_BYTES)}")
        if dtype not in self.dtypes:
            raise AutoVitError(
                f"hardware '{self.name}' does not compute in {dtype}; use --dtype {' or '.join(self.dtypes)}")
        return dtype

    FREE_PARAMETERS = tuple(k for k in PARAMETER_FIELDS if k not in CLASS_PARAMETERS)


# ---- schema -----------------------------------------------------------------------------------
REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One key a profile TOML may hold. `kind`: str, bool, int, number, strs (a list of strings),
    numbers / ints (a table of them, its keys limited to `choices` if given), tile ([M, N]),
    table / tables (one / an array of tables with their own `schema`). `lo`..`hi` bound a number,
    or the length of a string or list; `choices` are the strings allowed."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    lo_open: bool = False
    schema: dict[str, "Key"] | None = None


_DTYPES = tuple(DTYPE_BYTES)
_CATEGORIES = CATEGORIES
# Lower bounds keep every division of the timing model finite (a rate of 0 would be infinite time).
_TFLOPS = Key("numbers", 1e-6, 1e6, choices=_DTYPES)  # per dtype; the largest chips have ~4,000
_US = Key("number", 0, 1e6)  # an overhead in us: up to a second
_NS = Key("number", 0, 1e6, default=0.0)
_FRACTION = Key("number", 1e-4, 1)  # a share of peak
_OPS = Key("strs", 0, 10_000, default=())  # op types

FUSION_KEYS: dict[str, Key] = {
    "name": Key("str", 1, 200), "head": _OPS, "tail": _OPS, "max_tail": Key("int", 0, 1000, default=0),
    "pattern": _OPS, "prologue": _OPS, "category": Key("str", choices=_CATEGORIES, default=None),
    "unary": _OPS, "max_unary": Key("int", 0, 1000, default=0),
    "scaled_operands": Key("bool", default=False), "self_gated": Key("bool", default=False),
}
# What `autovit-lat calibrate` records about a fit (write_calibrated_profile).
CALIBRATION_KEYS: dict[str, Key] = {
    "lut": Key("str", 1, 4096, default=None), "date": Key("str", 0, 100, default=None),
    "networks": Key("str", 1, 4096, default=None),  # the measurement table of `calibrate --networks`
    "mode": Key("str", choices=("isolated", "ablation"), default=None), "n_points": Key("int", 0, 10**7, default=None),
    "rms_log_error": Key("number", 0, 1e3, default=None), "mape_by_kind": Key("numbers", 0, 1e9, default=None),
    "stderr": Key("numbers", 0, 1e12, default=None), "at_bound": Key("strs", 0, 100, default=None),
    "network": Key("str", 0, 4096, default=None),  # the whole network fitted with the blocks (fit.ReferenceNetwork)
    "threads": Key("int", 1, 4096, default=None),  # the LUT's runtime threads: the [cpu] cores the fit modelled
    "sgemm_gflops": Key("number", 0, 1e9, default=None),  # the LUT's GEMM probe: [cpu] ghz raised to it (clock_override)
    "stream_gbps": Key("numbers", 0, 1e9, default=None),  # the LUT's streaming probes: [memory] rates set to them (stream_override)
    "cross_core_gbps": Key("number", 0, 1e9, default=None),  # the LUT's handoff probe: [memory] cross_core_gbps set to it
    # the mechanisms the fit priced with: the file keeps them when its base profile gains one
    "mechanisms": Key("strs", 0, len(ROOFLINE_MECHANISMS), default=None, choices=ROOFLINE_MECHANISMS),
}
# Every key a profile may hold, its type, the range a real device can have, and its default
# (REQUIRED: no default). Adding a key to the profile format is one line here.
PROFILE_KEYS: dict[str, Key] = {
    "name": Key("str", 1, 200), "description": Key("str", 0, 2000, default=""), "base": Key("str", 1, 4096, default=None),
    "detect": Key("bool", default=False), "kind": Key("str", choices=("gpu", "cpu", "npu")),
    "runtime": Key("str", 1, 200), "dtypes": Key("strs", 1, len(_DTYPES), choices=_DTYPES),
    "default_dtype": Key("str", choices=_DTYPES, default=None),  # None: the first of `dtypes`
    "cpu.cores": Key("int", 1, 1024), "cpu.ghz": Key("number", 0.01, 10),
    "cpu.simd_bits": Key("int", 32, 2048), "cpu.fma_units": Key("int", 1, 16),
    "compute.units": Key("int", 1, 10**6), "compute.matrix_tflops": _TFLOPS, "compute.vector_tflops": _TFLOPS,
    "compute.gemm_tile": Key("tile", 1, 4096), "compute.tiles_per_unit": Key("int", 1, 1024),
    "compute.vector_block": Key("int", 1, 2**31), "compute.matrix_align": Key("ints", 1, 1024, default={}, choices=_DTYPES),
    "compute.transcendental_flops": Key("number", 0.01, 1e4, default=1.0),
    "compute.clock_ghz": Key("number", 0, 10, default=0.0), "compute.l1_loads_per_clock": Key("int", 0, 4096, default=0),
    "compute.min_chunk": Key("int", 0, 2**31, default=0), "compute.thnn_max_input": Key("int", 0, 2**40, default=0),
    "compute.int_ops_per_clock": Key("int", 0, 1 << 16, default=0), "compute.dw_unrolled_max": Key("int", 0, 1024, default=0),
    "compute.dw_loop_int_ops": Key("number", 0, 1000, default=0.0),
    "compute.dw_index_int_ops": Key("number", 0, 10000, default=0.0),
    "compute.subnormal_assist_cycles": Key("number", 0, 1e6, default=0.0),
    "compute.softmax_subnormal_assists": Key("number", 0, 1e4, default=0.0),
    "compute.softmax_underflow_assists": Key("number", 0, 1e4, default=0.0),
    "mechanisms": Key("strs", 0, len(ROOFLINE_MECHANISMS), default=(), choices=ROOFLINE_MECHANISMS),
    "amp.fp32_ops": _OPS,
    "memory.dram_gbps": Key("number", 1e-3, 1e5), "memory.cache_mib": Key("number", 0, 1e6),
    "memory.cache_gbps": Key("number", 1e-3, 1e6), "memory.last_axis_align_bytes": Key("int", 0, 4096, default=0),
    # Two levels of on-chip cache (timing._memory_s): each core's private one (MiB per core) streams at
    # cache_gbps, the rest of cache_mib at shared_gbps. 0: one level, all of cache_mib at cache_gbps.
    "memory.private_mib": Key("number", 0, 1e4, default=0.0), "memory.shared_gbps": Key("number", 1e-3, 1e6, default=None),
    "memory.weights_cached": Key("bool", default=False),
    "overhead.launch_us": _US, "overhead.dispatch_us": _US, "overhead.view_dispatch_us": Key("number", 0, 1e6, default=0.0),
    "overhead.run_us": Key("number", 0, 1e6, default=0.0), "overhead.async": Key("bool"),
    "overhead.fork_join_us": Key("number", 0, 1e6, default=0.0),
    # A host cost per call of at least 0.01 us: the entries are divided by the reference's, so a
    # denormal reference (5e-324) would turn every ratio into inf; no host issues a call in 10 ns.
    "overhead.host_us": Key("numbers", 0.01, 1e6, default={}), "overhead.host_reference": Key("str", 1, 200, default=None),
    "efficiency.matrix": _FRACTION, "efficiency.vector": _FRACTION, "efficiency.memory": _FRACTION,
    "efficiency.gemm": Key("number", 1e-4, 1, default=None),  # None: efficiency.matrix
    "efficiency.nchwc_dwconv": Key("number", 0, 1, default=0.0),  # 0: depthwise convolutions run at efficiency.vector
    "efficiency.layout_penalty": Key("number", 0.01, 1000, default=1.0),
    "efficiency.k_half": Key("number", 0, 1e6, default=0.0), "efficiency.layout_run_ns": _NS, "efficiency.reduce_row_ns": _NS,
    "efficiency.softmax_row_ns": Key("number", 0, 1e6, default=None),
    "efficiency.attention": Key("number", 0.01, 100, default=1.0), "efficiency.dwconv": Key("number", 0.01, 100, default=1.0),
    "layout.elided": _OPS, "layout.strided_readers": _OPS, "layout.chain_reorder": Key("bool", default=False),
    "layout.nchwc_channels": Key("bool", default=False), "layout.nchwc_pad_multiple": Key("int", 0, 1024, default=0),
    "compute.gemm_thread_macs": Key("number", 0, 1e15, default=0.0),
    "compute.conv_filter_set": Key("int", 0, 64, default=0), "compute.conv_output_block": Key("int", 0, 64, default=0),
    "compute.fma_latency_cycles": Key("number", 0, 100, default=0.0), "compute.fma_ports": Key("int", 0, 16, default=0),
    "compute.load_ports": Key("int", 0, 16, default=0),
    "compute.parallel_startup_cycles": Key("number", 0, 1e9, default=0.0),
    "compute.parallel_thread_cycles": Key("number", 0, 1e9, default=0.0),
    "compute.parallel_byte_cycles": Key("number", 0, 1e4, default=0.0),
    "compute.op_cycles": Key("numbers", 0, 1e6, default={}),
    "memory.cross_core_gbps": Key("number", 0, 1e6, default=0.0),
    "memory.gemm_bias_gbps": Key("number", 0, 1e6, default=0.0),
    "layout.nchw_conv_relayout": Key("strs", 0, len(_DTYPES), default=(), choices=_DTYPES),
    "layout.relayout_categories": Key("strs", 0, len(_CATEGORIES), default=("conv",), choices=_CATEGORIES),
    "fallback.name": Key("str", 1, 200), "fallback.unsupported_ops": Key("strs", 0, 10_000),
    "fallback.matrix_tflops": _TFLOPS, "fallback.vector_tflops": _TFLOPS, "fallback.units": Key("int", 1, 10**6),
    "fallback.launch_us": _US, "fallback.switch_us": _US, "fallback.transfer_gbps": Key("number", 1e-3, 1e5),
    "ane.mechanisms": Key("strs", 0, len(ANE_MECHANISMS), default=(), choices=ANE_MECHANISMS),
    "ane.l2_mib": Key("number", 1e-3, 1e4), "ane.l2_gbps": Key("number", 1e-3, 1e6),
    # Winograd tiles beyond F(6x6, 3x3) lose fp16 accuracy, so no engine uses them.
    "ane.winograd_tile": Key("int", 1, 6, default=2),
    "fusion": Key("tables", 0, 1000, default=(), schema=FUSION_KEYS),
    "calibration": Key("table", 1, 1, default={}, schema=CALIBRATION_KEYS),
}


def check_profile_dict(d: dict, where: str, schema: dict[str, Key] = PROFILE_KEYS) -> None:
    """Every key of `d` is known (dotted names are [section] keys) and holds a value of its type
    and range; missing keys are not checked here (a base profile may supply them)."""
    sections = {k.split(".")[0] for k in schema if "." in k}
    check_keys(d, sorted({k.split(".")[0] for k in schema}), where)
    for k, v in d.items():
        if k not in sections:
            _check_value(v, schema[k], where, k)
            continue
        if not isinstance(v, dict):
            raise AutoVitError(f"{where}: [{k}] must be a table of keys, got {v!r:.40}")
        sub = {path.split(".", 1)[1]: key for path, key in schema.items() if path.startswith(k + ".")}
        check_keys(v, sub, f"{where} [{k}]")
        for kk, vv in v.items():
            _check_value(vv, sub[kk], where, f"{k}.{kk}")


def _check_value(v: Any, key: Key, where: str, name: str) -> None:
    what = f"{where}: field '{name}'"
    kind = key.kind
    if kind in ("int", "number"):
        number(v, what, key.lo, key.hi, key.lo_open, integer=kind == "int")
    elif kind == "bool" and not isinstance(v, bool):
        raise AutoVitError(f"{what} must be true or false, got {v!r:.40}")
    elif kind == "str":
        _check_strs([v], key, what, single=True)
    elif kind == "strs":
        if not isinstance(v, list):
            raise AutoVitError(f"{what} must be a list of strings, got {v!r:.40}")
        _check_length(v, key, what, "entries")
        _check_strs(v, key, what)
    elif kind in ("numbers", "ints"):
        if not isinstance(v, dict):
            raise AutoVitError(f"{what} must be a table of names and numbers, like {{ fp32 = 1.0 }} or {{ Relu = 1 }}, got {v!r:.40}")
        if key.choices:
            check_keys(v, key.choices, what)
        for k, x in v.items():
            number(x, f"{where}: field '{name}.{k}'", key.lo, key.hi, key.lo_open, integer=kind == "ints")
    elif kind == "tile":
        if not isinstance(v, list) or len(v) != 2:
            raise AutoVitError(f"{what} must be [M, N], two positive integers, got {v!r:.40}")
        for x in v:
            number(x, what, key.lo, key.hi, integer=True)
    elif kind in ("table", "tables"):
        tables = v if kind == "tables" else [v]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise AutoVitError(f"{what} must be {'an array of tables' if kind == 'tables' else 'a table'}, got {v!r:.40}")
        _check_length(tables, key, what, "entries")
        for i, t in enumerate(tables):
            check_profile_dict(t, f"{where} [{name}]" if kind == "table" else f"{where} [[{name}]] #{i + 1}", key.schema)


def _check_length(v: Any, key: Key, what: str, unit: str) -> None:
    if (key.lo is not None and len(v) < key.lo) or (key.hi is not None and len(v) > key.hi):
        raise AutoVitError(f"{what} must have {key.lo:g} to {key.hi:g} {unit}, got {len(v)}")


def _check_strs(values: list, key: Key, what: str, single: bool = False) -> None:
    for x in values:
        if not isinstance(x, str):
            raise AutoVitError(f"{what} must be {'a string' if single else 'a list of strings'}, got {x!r:.40}")
        if single:
            _check_length(x, key, what, "characters")
        if key.choices and x not in key.choices:
            raise AutoVitError(f"{what}: {x!r:.40} is not one of {', '.join(key.choices)}{did_you_mean(x, key.choices)}")
        for part in x.lstrip("?").split("|"):
            if part.startswith("@") and part[1:] not in _CATEGORIES:
                raise AutoVitError(f"{what}: '{part}' names no op category{did_you_mean(part[1:], _CATEGORIES)}; "
                                   f"categories: {', '.join(_CATEGORIES)}")


def _val(d: dict, path: str, where: str, schema: dict[str, Key] = PROFILE_KEYS) -> Any:
    """The value at `path` (checked by check_profile_dict) or the schema's default."""
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            default = schema[path].default
            if default is REQUIRED:
                raise AutoVitError(f"hardware profile {where}: missing field '{path}'")
            return default
        cur = cur[part]
    return cur


def _fusion(d: dict, where: str) -> tuple[FusionRule, ...]:
    rules = []
    for i, r in enumerate(_val(d, "fusion", where)):
        w = f"{where} [[fusion]] #{i + 1}"
        rule = FusionRule(
            name=_val(r, "name", w, FUSION_KEYS), head=tuple(_val(r, "head", w, FUSION_KEYS)),
            tail=tuple(_val(r, "tail", w, FUSION_KEYS)), max_tail=_val(r, "max_tail", w, FUSION_KEYS),
            pattern=tuple(_val(r, "pattern", w, FUSION_KEYS)), prologue=tuple(_val(r, "prologue", w, FUSION_KEYS)),
            category=_val(r, "category", w, FUSION_KEYS),
            unary=tuple(_val(r, "unary", w, FUSION_KEYS)), max_unary=_val(r, "max_unary", w, FUSION_KEYS),
            scaled_operands=_val(r, "scaled_operands", w, FUSION_KEYS), self_gated=_val(r, "self_gated", w, FUSION_KEYS),
        )
        if not rule.head and not rule.pattern:
            raise AutoVitError(f"hardware profile {w}: a fusion rule needs 'head' or 'pattern'")
        rules.append(rule)
    return tuple(rules)


def flops_per_clock(cores: int, simd_bits: int, fma_units: int, dtype: str = "fp32") -> int:
    """Peak FLOPs per clock of `cores` cores: lanes (SIMD bits / element bits) x 2 (a fused
    multiply-add) x FMA units each."""
    return cores * max(simd_bits // (8 * DTYPE_BYTES[dtype]), 1) * 2 * fma_units


def _derive_cpu(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Fill a CPU's compute table from its [cpu] parameters (cores, clock, SIMD, FMA units).

    peak FLOP/s = cores x GHz x lanes x 2 (a fused multiply-add) x FMA units, lanes = SIMD bits /
    element bits. This is arithmetic, not a device fact: the facts stay in the TOML.
    """
    cpu = d.get("cpu")
    if cpu is None:
        return d
    cores, ghz = _val(d, "cpu.cores", where), float(_val(d, "cpu.ghz", where))
    simd, fma = _val(d, "cpu.simd_bits", where), _val(d, "cpu.fma_units", where)
    compute = dict(d.get("compute", {}))
    dtypes = d.get("dtypes", ["fp32"])
    peaks = {dt: ghz * flops_per_clock(cores, simd, fma, dt) / 1e3 for dt in dtypes}
    compute.setdefault("units", cores)
    compute.setdefault("fma_ports", fma)
    compute.setdefault("matrix_tflops", peaks)
    compute.setdefault("vector_tflops", peaks)
    # oneDNN blocks channels by the SIMD width (nChw16c on AVX-512, nChw8c on AVX2).
    compute.setdefault("matrix_align", {dt: max(simd // (8 * DTYPE_BYTES[dt]), 1) for dt in dtypes})
    return {**d, "compute": compute}


def _fallback(d: dict, where: str) -> Fallback | None:
    if "fallback" not in d:
        return None
    return Fallback(
        name=_val(d, "fallback.name", where), unsupported_ops=tuple(_val(d, "fallback.unsupported_ops", where)),
        matrix_tflops=_val(d, "fallback.matrix_tflops", where), vector_tflops=_val(d, "fallback.vector_tflops", where),
        units=_val(d, "fallback.units", where), launch_us=float(_val(d, "fallback.launch_us", where)),
        switch_us=float(_val(d, "fallback.switch_us", where)),
        transfer_gbps=float(_val(d, "fallback.transfer_gbps", where)),
    )


def _softmax_row_ns(num: dict[str, float], calibration: dict[str, Any]) -> float | None:
    """The profile's softmax row cost; None (rows at reduce_row_ns) for a profile calibrated
    before the term existed: its fit priced softmax rows at the reduce_row_ns it wrote, so the
    base profile's starting value must not replace them."""
    stderr = calibration.get("stderr") if isinstance(calibration, dict) else None
    if isinstance(stderr, dict) and "reduce_row_ns" in stderr and "softmax_row_ns" not in stderr:
        return None
    return num.get("efficiency.softmax_row_ns")


def _assist_ns(d: dict[str, Any], num: dict[str, float], where: str) -> float:
    """ns of one microcode assist: `compute.subnormal_assist_cycles` at the [cpu] clock (or
    `compute.clock_ghz` for a profile without one)."""
    cycles = num["compute.subnormal_assist_cycles"]
    if not cycles:
        return 0.0
    ghz = float((d.get("cpu") or {}).get("ghz") or num["compute.clock_ghz"])
    if ghz <= 0:
        raise AutoVitError(f"hardware profile {where}: 'compute.subnormal_assist_cycles' needs a clock to turn cycles "
                           "into time; set [cpu] ghz or compute.clock_ghz")
    return cycles / ghz


def _off_or_share(num: dict[str, float], path: str, where: str) -> float:
    """A share of a peak that may be switched off: exactly 0, or at least 1e-4 (a tinier one
    would price its kernels at days)."""
    v = num[path]
    if 0 < v < 1e-4:
        raise AutoVitError(f"hardware profile {where}: '{path}' is {v:g}; use 0 (off) or a share between 0.0001 and 1")
    return v


def profile_from_dict(d: dict[str, Any], where: str) -> HardwareProfile:
    """A checked profile: every value typed, finite and in range, so no NaN or infinity can
    reach a latency."""
    check_profile_dict(d, f"hardware profile {where}")
    d = _derive_cpu(d, where)
    check_profile_dict(d, f"hardware profile {where} (derived from [cpu])")
    dtypes = tuple(_val(d, "dtypes", where))
    matrix, vector = _val(d, "compute.matrix_tflops", where), _val(d, "compute.vector_tflops", where)
    for dt in dtypes:
        if dt not in matrix or dt not in vector:
            raise AutoVitError(f"hardware profile {where}: 'compute.matrix_tflops' and 'compute.vector_tflops' need a {dt} entry")
    default_dtype = _val(d, "default_dtype", where) or dtypes[0]
    if default_dtype not in dtypes:
        raise AutoVitError(f"hardware profile {where}: field 'default_dtype' {default_dtype!r} is not in 'dtypes'")
    f = {path: _val(d, path, where) for path in PROFILE_KEYS if "." in path and not path.startswith(("cpu.", "fallback.", "ane."))}
    num = {k: float(v) for k, v in f.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tile = f["compute.gemm_tile"]
    return HardwareProfile(
        name=_val(d, "name", where), description=_val(d, "description", where), kind=_val(d, "kind", where),
        runtime=_val(d, "runtime", where), dtypes=dtypes, default_dtype=default_dtype,
        units=f["compute.units"], matrix_tflops=matrix, vector_tflops=vector, gemm_tile=(tile[0], tile[1]),
        tiles_per_unit=f["compute.tiles_per_unit"], vector_block=f["compute.vector_block"],
        transcendental_flops=num["compute.transcendental_flops"], matrix_align=f["compute.matrix_align"],
        dram_gbps=num["memory.dram_gbps"], cache_mib=num["memory.cache_mib"], cache_gbps=num["memory.cache_gbps"],
        private_mib=num["memory.private_mib"], shared_gbps=num.get("memory.shared_gbps", num["memory.cache_gbps"]),
        last_axis_align_bytes=f["memory.last_axis_align_bytes"], launch_us=num["overhead.launch_us"],
        dispatch_us=num["overhead.dispatch_us"], view_dispatch_us=num["overhead.view_dispatch_us"],
        async_dispatch=f["overhead.async"], eff_matrix=num["efficiency.matrix"],
        eff_gemm=num.get("efficiency.gemm", num["efficiency.matrix"]), eff_vector=num["efficiency.vector"],
        eff_memory=num["efficiency.memory"], eff_nchwc_dw=_off_or_share(num, "efficiency.nchwc_dwconv", where), layout_penalty=num["efficiency.layout_penalty"],
        k_half=num["efficiency.k_half"], run_us=num["overhead.run_us"], layout_run_ns=num["efficiency.layout_run_ns"],
        reduce_row_ns=num["efficiency.reduce_row_ns"], weights_cached=f["memory.weights_cached"],
        chain_reorder=f["layout.chain_reorder"], elided=tuple(f["layout.elided"]),
        strided_readers=tuple(f["layout.strided_readers"]), nchw_conv_relayout=tuple(f["layout.nchw_conv_relayout"]),
        relayout_categories=tuple(f["layout.relayout_categories"]), fusion=_fusion(d, where),
        fallback=_fallback(d, where), source=where, calibration=dict(_val(d, "calibration", where)), ane=_neural_engine(d, where),
        nchwc_channels=f["layout.nchwc_channels"], nchwc_pad_multiple=f["layout.nchwc_pad_multiple"],
        gemm_thread_macs=num["compute.gemm_thread_macs"],
        conv_filter_set=f["compute.conv_filter_set"], conv_output_block=f["compute.conv_output_block"],
        fma_latency_cycles=num["compute.fma_latency_cycles"], fma_ports=f["compute.fma_ports"],
        load_ports=f["compute.load_ports"],
        parallel_startup_cycles=num["compute.parallel_startup_cycles"],
        parallel_thread_cycles=_mechanism_figure(num, "compute.parallel_thread_cycles", "ort_parallel_for", d, where, 1.0),
        parallel_byte_cycles=num["compute.parallel_byte_cycles"], op_cycles=_op_cycles(f, where),
        cross_core_gbps=_mechanism_figure(num, "memory.cross_core_gbps", ("core_handoff", "reorder_handoff"), d, where, 1e-3),
        gemm_bias_gbps=_mechanism_figure(num, "memory.gemm_bias_gbps", "gemm_bias_pass", d, where, 1e-3),
        mechanisms=tuple(_val(d, "mechanisms", where)), clock_ghz=num["compute.clock_ghz"],
        l1_loads_per_clock=f["compute.l1_loads_per_clock"], min_chunk=f["compute.min_chunk"],
        thnn_max_input=f["compute.thnn_max_input"],
        int_ops_per_clock=f["compute.int_ops_per_clock"], dw_unrolled_max=f["compute.dw_unrolled_max"],
        dw_loop_int_ops=num["compute.dw_loop_int_ops"], dw_index_int_ops=num["compute.dw_index_int_ops"],
        subnormal_assist_ns=_assist_ns(d, num, where),
        softmax_subnormal_assists=num["compute.softmax_subnormal_assists"],
        softmax_underflow_assists=num["compute.softmax_underflow_assists"],
        eff_attention=num["efficiency.attention"],
        eff_dwconv=num["efficiency.dwconv"],
        softmax_row_ns=_softmax_row_ns(num, _val(d, "calibration", where)),
        amp_fp32_ops=tuple(_val(d, "amp.fp32_ops", where)), fork_join_us=num["overhead.fork_join_us"],
        host_us=_host_table(f, _val(d, "mechanisms", where), where), host_reference=f["overhead.host_reference"] or "",
    )


def _op_cycles(f: dict[str, Any], where: str) -> dict[str, float]:
    """The checked [compute.op_cycles] table (mechanism ort_parallel_for): keys are op types."""
    table = dict(f["compute.op_cycles"])
    for key in table:
        _check_op_type_key(key, "compute.op_cycles", "op types (Relu, Sigmoid)", where)
    return {k: float(v) for k, v in table.items()}


def _mechanism_figure(num: dict[str, float], path: str, mechanisms: str | tuple[str, ...], d: dict[str, Any],
                      where: str, lo: float) -> float:
    """A figure a mechanism cannot run without: at least `lo` where the profile lists one of `mechanisms`."""
    for mechanism in (mechanisms,) if isinstance(mechanisms, str) else mechanisms:
        if mechanism in _val(d, "mechanisms", where) and not num[path] >= lo:
            raise AutoVitError(f"hardware profile {where}: mechanism '{mechanism}' needs '{path}' of at least {lo:g}, "
                               f"got {num[path]:g}")
    return num[path]


def _check_op_type_key(key: str, table: str, keys: str, where: str) -> None:
    """A table keyed by op type: a misspelt one ('Convv', 'add') would match no kernel and silently
    leave the figure it was meant to give unused; `keys` says what the table's keys are."""
    if key not in KNOWN_OP_TYPES:
        raise AutoVitError(f"hardware profile {where}: [{table}] key {key!r} is no ONNX op type the cost model "
                           f"prices{_op_type_hint(key)}; keys are {keys}")


def _op_type_hint(name: str) -> str:
    """did_you_mean over the known op types, the same name in other case first ('relu': 'Relu',
    not the equally close 'Selu')."""
    same = [t for t in KNOWN_OP_TYPES if t.lower() == name.lower()]
    return f" (did you mean '{same[0]}'?)" if same else did_you_mean(name, KNOWN_OP_TYPES)


def _host_table(f: dict[str, Any], mechanisms: list[str], where: str) -> dict[str, float]:
    """The checked [overhead.host_us] table (mechanism host_classes): keys are op types or
    "@category", and the entry `host_reference` names, whose cost `dispatch_us` stands for, is
    in it and above 0 (the other entries are read as multiples of it)."""
    table, ref = dict(f["overhead.host_us"]), f["overhead.host_reference"]
    for key in table:
        if key.startswith("@") and key[1:] not in _CATEGORIES:
            raise AutoVitError(f"hardware profile {where}: [overhead.host_us] key '{key}' names no op category"
                               f"{did_you_mean(key[1:], _CATEGORIES)}; categories: {', '.join(_CATEGORIES)}")
        if not key.startswith("@"):  # unlisted, a kernel would be priced at the table's median rate
            _check_op_type_key(key, "overhead.host_us", "op types (Add, BatchNormalization) or '@category'", where)
    if table and (ref is None or ref not in table or not table[ref] > 0):
        raise AutoVitError(f"hardware profile {where}: [overhead.host_us] needs 'overhead.host_reference' naming one of "
                           f"its entries with a cost above 0 (the class whose cost dispatch_us stands for), got {ref!r}")
    if ref is not None and not table:
        raise AutoVitError(f"hardware profile {where}: 'overhead.host_reference' = {ref!r} without an [overhead.host_us] table")
    if "host_classes" in mechanisms and not table:
        raise AutoVitError(f"hardware profile {where}: mechanism 'host_classes' needs an [overhead.host_us] table "
                           f"(host us per op type or @category) and 'overhead.host_reference'")
    return {k: float(v) for k, v in table.items()}


# ---- finding profiles -------------------------------------------------------------------------
def _builtin_dir():
    return resources.files("autovit.hw_profiles")


def builtin_names() -> list[str]:
    """Device profiles shipped with the package (files starting with "_" are shared bases)."""
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir()
                  if p.name.endswith(".toml") and not p.name.startswith("_"))


CALIBRATED_SUFFIX = "@calibrated"


def user_profile_dir() -> Path:
    """Where calibrated profiles are written: $AUTOVIT_HOME/profiles (default ~/.autovit)."""
    import os

    return Path(os.environ.get("AUTOVIT_HOME", Path.home() / ".autovit")) / "profiles"


def calibrated_names() -> list[str]:
    d = user_profile_dir()
    return sorted(p.name[:-5] for p in d.glob(f"*{CALIBRATED_SUFFIX}.toml")) if d.is_dir() else []


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# First line of every profile `autovit-lat calibrate` writes (it overwrites only such files).
CALIBRATION_HEADER = "# Written by `autovit-lat calibrate`: the fitted free parameters of the base profile."


def write_calibrated_profile(base: str, params: dict[str, float], calibration: dict[str, Any],
                             path: str | Path | None = None, fixed: dict[str, Any] | None = None) -> Path:
    """A profile that starts from `base` and overrides the fitted free parameters (atomic write).
    A fit with a non-finite value is refused: it would replace a working profile with one that
    cannot load."""
    from autovit.latmodel.io import atomic_write_text

    if base.endswith(CALIBRATED_SUFFIX):
        raise AutoVitError(f"'{base}' is already calibrated; calibrate its data-sheet profile "
                           f"'{base[:-len(CALIBRATED_SUFFIX)]}' instead")
    bad = [k for k, v in list(params.items()) + [("rms_log_error", calibration.get("rms_log_error", 0.0))]
           if not math.isfinite(v)]
    if bad:
        raise AutoVitError(f"the fit gave non-finite {', '.join(bad)}; nothing was written (check the LUT's entries)")
    name = f"{Path(base).stem.split('@')[0]}{CALIBRATED_SUFFIX}"
    # The written file lives elsewhere, and a base path is read relative to the file that names it.
    if _is_path(base):
        base = str(Path(base).resolve())
    # `fixed`: keys the fit was made under (e.g. [cpu] cores = the LUT's threads, or top-level
    # `mechanisms` for a variant with one switched off), not fitted.
    reserved = {"name", "base", "description", "calibration"} & set(fixed or {})
    if reserved:
        raise AutoVitError(f"a calibrated profile writes {', '.join(sorted(reserved))} itself; "
                           "it cannot be given as a fixed key")
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (fixed or {}).items() if isinstance(v, dict)}
    if any(v is None for v in (fixed or {}).values()):
        raise AutoVitError("a fixed key of a calibrated profile has no value (None)")
    top = [f"{k} = {_toml_value(v)}" for k, v in (fixed or {}).items() if not isinstance(v, dict)]
    for param, value in params.items():
        section, key = PARAMETER_FIELDS[param]
        sections.setdefault(section, {})[key] = value
    lines = [CALIBRATION_HEADER,
             f"name = {_toml_value(name)}", f"base = {_toml_value(base)}",
             f"description = {_toml_value('calibrated from ' + str(calibration.get('lut', '?')))}", *top, ""]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    lines.append("[calibration]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in _toml_safe(calibration).items()]
    out = Path(path) if path else user_profile_dir() / f"{name}.toml"
    text = "\n".join(lines) + "\n"
    # what is written must load: a bad fixed key fails here, before a working profile is replaced
    check_profile_dict(tomllib.loads(text), f"calibrated profile {out.name}")
    atomic_write_text(out, text)
    return out


def _toml_safe(d: dict[str, Any]) -> dict[str, Any]:
    """`d` without None and non-finite numbers (TOML has no null; a profile never holds NaN)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _toml_safe(v)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        out[k] = v
    return out


# Largest profile file read (ours are ~5 KB); base chains longer than this are refused.
MAX_PROFILE_BYTES = 2**20
MAX_BASE_DEPTH = 16


def _is_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or "\\" in ref


def _locate(ref: str, folder: Path | None, top: bool) -> tuple[Any, str]:
    """(a readable file, its name in messages) for profile `ref`: a built-in name, NAME@calibrated,
    or a .toml path. A base's path is relative to `folder`, the folder of the file naming it;
    only the profile given on the command line (`top`) is looked up in the working directory."""
    if ref.endswith(CALIBRATED_SUFFIX) and not _is_path(ref) and not (top and Path(ref).is_file()):
        p = user_profile_dir() / f"{ref}.toml"
        if not p.is_file():
            raise AutoVitError(f"no calibrated profile '{ref}' in {p.parent}; run "
                               f"`autovit-lat calibrate --hw {ref[:-len(CALIBRATED_SUFFIX)]} --lut LUT` first")
        return p, str(p)
    if _is_path(ref) or (top and Path(ref).is_file()):
        p = Path(ref) if folder is None or Path(ref).is_absolute() else folder / ref
        if not p.is_file():
            raise AutoVitError(f"hardware profile file not found: {p}")
        return p, str(p)
    found = _builtin_dir() / f"{ref}.toml"
    if not found.is_file():
        raise AutoVitError(f"unknown hardware '{ref}'{did_you_mean(ref, builtin_names())}: use one of "
                           f"{', '.join(builtin_names())} or a profile .toml path")
    return found, f"{ref}.toml"


def _parse(src: Any, where: str) -> dict[str, Any]:
    """Read one profile file: at most MAX_PROFILE_BYTES, UTF-8, TOML, keys known, values sane."""
    with src.open("rb") as f:
        data = f.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise AutoVitError(f"hardware profile {where}: more than 1 MiB, more than any profile; not a profile")
    try:
        d = tomllib.loads(data.decode("utf-8-sig"))  # -sig: editors that start UTF-8 with a byte-order mark
    except UnicodeDecodeError:
        raise AutoVitError(f"hardware profile {where}: not UTF-8 text, so not a profile TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise AutoVitError(f"hardware profile {where}: not valid TOML ({e})") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise AutoVitError(f"hardware profile {where}: values nested too deep for a profile") from None
    check_profile_dict(d, f"hardware profile {where}")
    return d


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _calibrated_before_fork_join(d: dict[str, Any]) -> bool:
    """A calibrated profile file whose fit had per-kernel costs but no fork_join_us, and which
    sets no fork_join_us itself: a local-cpu profile calibrated before the mechanism was
    switched on there. It keeps fork_join_us at 0 so that its estimates stay as its fit made them."""
    over, stderr = d.get("overhead"), _fitted_stderr(d)
    own = isinstance(over, dict) and "fork_join_us" in over
    return stderr is not None and "fork_join_us" not in stderr and not own


# Mechanisms switched on in local-cpu after calibrated files were written without a record of theirs.
_LATER_MECHANISMS = ("ort_parallel_for", "core_handoff", "nchwc_tensors")


def _fitted_stderr(d: dict[str, Any]) -> dict | None:
    """A calibrated profile file's standard errors (its fit's parameters), None for another file."""
    cal = d.get("calibration")
    stderr = cal.get("stderr") if isinstance(cal, dict) else None
    return stderr if isinstance(stderr, dict) and "dispatch_us" in stderr else None


def _fitted_mechanisms(d: dict[str, Any], inherited: list[str]) -> list[str]:
    """The mechanisms a calibrated profile file that does not list its own was fitted with: its
    [calibration] record's, or, for a file written before calibrate recorded them, the base's
    (`inherited`) less _LATER_MECHANISMS, whose costs its fit priced in its other terms."""
    recorded = d["calibration"].get("mechanisms")
    return list(recorded) if recorded is not None else [m for m in inherited if m not in _LATER_MECHANISMS]


def _resolved_dict(ref: str, folder: Path | None = None, chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The profile `ref` merged over its chain of bases; `chain` holds the files naming it."""
    src, where = _locate(ref, folder, top=not chain)
    ident = str(src.resolve()) if isinstance(src, Path) else f"builtin:{ref}"
    if ident in chain:
        raise AutoVitError(f"hardware profile {where}: its 'base' chain loops back to itself")
    if len(chain) >= MAX_BASE_DEPTH:
        raise AutoVitError(f"hardware profile {where}: more than {MAX_BASE_DEPTH} levels of 'base'")
    d = _parse(src, where)
    if _calibrated_before_fork_join(d):
        # Its fit priced what threads cost in its other terms: the base's starting value must not add to them.
        d = _merge(d, {"overhead": {"fork_join_us": 0.0}})
    if d.get("detect"):
        # Detected at the level that asks for it, so a profile based on this one (a calibrated
        # profile fitted at fewer threads, a user's copy) can still set [cpu] keys itself.
        d = _merge(d, detect_local_cpu())
    base = d.get("base")
    if base is None:
        return d, where
    parent, _ = _resolved_dict(base, src.parent if isinstance(src, Path) else None, chain + (ident,))
    merged = _merge(parent, {k: v for k, v in d.items() if k != "base"})
    if _fitted_stderr(d) is not None and "mechanisms" not in d:
        # A calibrated file keeps the mechanisms its fit priced with, whatever its base gained since.
        merged["mechanisms"] = _fitted_mechanisms(d, merged.get("mechanisms", []))
    return merged, where


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def _size_mib(text: str | None) -> float:
    """'1024K' / '32M' (sysfs cache sizes) -> MiB."""
    if not text:
        return 0.0
    unit = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1].upper(), 1 / 2**20)
    number = text[:-1] if text[-1].isalpha() else text
    return float(number) * unit


def os_caches() -> list[dict[str, str | None]]:
    """CPU 0's data and unified caches as Linux's sysfs lists them, each as the first lines of
    its `level`, `type`, `size` and `shared_cpu_list` files (None where one is missing); []
    elsewhere."""
    out = []
    for i in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{i}"
        level, kind = _read_first_line(f"{base}/level"), _read_first_line(f"{base}/type")
        if level is None:
            break
        if kind != "Instruction":
            out.append({"level": level, "type": kind, "size": _read_first_line(f"{base}/size"),
                        "shared_cpu_list": _read_first_line(f"{base}/shared_cpu_list")})
    return out


def _is_x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def detect_local_cpu() -> dict[str, Any]:
    """This machine's [cpu] table and cache size, read from the OS (Linux; else what os tells)."""
    from autovit.latmodel.measure import physical_cores

    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                elif line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
    except OSError:
        pass
    max_khz = _read_first_line("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    ghz = int(max_khz) / 1e6 if max_khz and max_khz.isdigit() else (mhz / 1e3 if mhz else 2.5)
    simd = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    cores = physical_cores()
    # Private caches count once per core, shared ones once.
    cache, private = 0.0, 0.0
    # A core's own cache lists the core's hardware threads (SMT siblings), not only CPU 0.
    siblings = _read_first_line("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list") or "0"
    for c in os_caches():
        if c["level"] == "1":
            continue
        shared = c["shared_cpu_list"] or "0"
        per_core = ("," not in shared and "-" not in shared) or shared == siblings
        cache += _size_mib(c["size"]) * (cores if per_core else 1)
        if per_core:
            private += _size_mib(c["size"])
    out: dict[str, Any] = {"cpu": {"cores": cores, "ghz": round(ghz, 3), "simd_bits": simd}}
    if not _is_x86(platform.machine()):
        # Microcode assists for subnormal floats are x86's; Arm cores handle them in hardware.
        out["compute"] = {"subnormal_assist_cycles": 0.0}
    if cache > 0:
        out["memory"] = {"cache_mib": round(cache, 2)}
        if 0 < private < cache:
            # Caches private to a core, and a shared level beyond them: two levels (timing._memory_s).
            out["memory"]["private_mib"] = round(private, 3)
    return out


def load_profile(name_or_path: str) -> HardwareProfile:
    """A built-in profile by name (see builtin_names()) or a TOML file by path."""
    return profile_at_threads(name_or_path, None)[0]


def profile_at_threads(name_or_path: str, threads: int | None, sgemm_gflops: float | None = None,
                       stream_gbps: dict[str, float] | None = None,
                       cross_core_gbps: float | None = None) -> tuple[HardwareProfile, dict[str, Any]]:
    """The profile run on `threads` threads, and the keys that changed to model it (to be written
    into a profile calibrated that way); see `threads_override`, `clock_override` for a
    measured GEMM rate (GFLOP/s) above the profile's peak, and `stream_override` for measured
    streaming rates of the two cache levels; `cross_core_gbps`, a measured rate of tensors
    crossing between cores (runner.handoff_gbps), becomes [memory] cross_core_gbps."""
    d, where = _resolved_dict(name_or_path)
    over = _merge(_merge(threads_override(d, threads), clock_override(d, threads, sgemm_gflops)),
                  stream_override(d, stream_gbps))
    if cross_core_gbps is not None and math.isfinite(cross_core_gbps) and cross_core_gbps > 0:
        over = _merge(over, {"memory": {"cross_core_gbps": round(float(cross_core_gbps), 1)}})
    return profile_from_dict(_merge(d, over), where), over


def stream_override(d: dict[str, Any], stream_gbps: dict[str, float] | None) -> dict[str, Any]:
    """[memory] cache_gbps and shared_gbps set to the rates this machine streamed an activation at
    from its cores' private caches and from beyond them (`stream_gbps` {"private", "shared"}: the
    fastest runner.stream_probe bursts of a LUT, GB/s at its threads), for a profile with two
    cache levels (memory.private_mib > 0); {} otherwise. No data sheet gives them for a VM, and on
    this project's Xeon VM the rate beyond the private caches was well below the rate within them,
    whatever the size of the shared cache the OS reports (docs/BENCHMARKS.md section 3.12)."""
    private = (d.get("memory") or {}).get("private_mib")
    if not stream_gbps or not private:
        return {}
    rates = {k: stream_gbps.get(k) for k in ("private", "shared")}
    if not all(isinstance(v, (int, float)) and v > 0 for v in rates.values()):
        return {}
    return {"memory": {"cache_gbps": round(float(rates["private"]), 1), "shared_gbps": round(float(rates["shared"]), 1)}}


def clock_override(d: dict[str, Any], threads: int | None, sgemm_gflops: float | None) -> dict[str, Any]:
    """[cpu] ghz raised to the clock at which the fp32 peak of `threads` cores (all of them
    without) equals `sgemm_gflops`, a matrix multiply measured on this machine at that many
    threads (the fastest runner.sgemm_probe burst of a LUT), when the peak the profile gives is
    below it; {} otherwise. A GEMM cannot beat the peak: the OS reported a lower clock than the
    cores ran at (a VM's nominal one), and efficiencies <= 1 would price every compute-bound op
    too slow."""
    cpu = d.get("cpu") or {}
    needed = ("cores", "ghz", "simd_bits", "fma_units")
    if not sgemm_gflops or not all(isinstance(cpu.get(k), (int, float)) for k in needed):
        return {}
    cores = min(threads or cpu["cores"], cpu["cores"])
    ghz = sgemm_gflops / flops_per_clock(cores, cpu["simd_bits"], cpu["fma_units"])
    return {"cpu": {"ghz": round(ghz, 3)}} if ghz > cpu["ghz"] else {}


def threads_override(d: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The [cpu] keys that make a CPU profile's dict `d` model `threads` threads: {} when it has
    no [cpu] table or already has no more cores than that.

    A CPU parallelises an op over the threads the runtime was given, not over the chip: a LUT
    measured with `--threads 1` on a 2-core machine was measured on one core, and a profile
    calibrated on it must keep one core's peak FLOP/s (docs/COST_MODEL.md)."""
    cores = (d.get("cpu") or {}).get("cores")
    if not threads or not isinstance(cores, int) or threads >= cores:
        return {}
    return {"cpu": {"cores": int(threads)}}
