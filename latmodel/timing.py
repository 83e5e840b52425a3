"""Time one kernel on one device, then a whole network.

GPUs and CPUs use the roofline below (RooflineTimer); the Neural Engine prices its tasks with
its own timer (neural_engine.NeuralEngineTimer), chosen by `timer_for`.

Per kernel (all times in seconds inside, ms outside):

    t_compute = FLOPs / (peak[engine, dtype] * efficiency[engine] * utilization)
    t_memory  = activation bytes from cache / cache bandwidth
              + (activation bytes not in cache + weight bytes) / (DRAM bandwidth * memory efficiency)
              (both divided by the share of units the kernel can keep busy)
    t_device  = launch + max(t_compute, t_memory)

The max is the stated choice: a kernel overlaps its loads with its arithmetic (a roofline);
tests/test_timing.py pins it. Utilization is wave quantization: the kernel's work tiles spread
over `units x tiles_per_unit` slots in whole waves, and a tile padded past the tensor's edge
(or past the tensor-core channel multiple) is wasted work.

A network is its kernels in order (batch-1 inference is sequential). On a synchronous host
(CPU, Neural Engine) the times add up, each with the per-op dispatch cost. On an asynchronous
host (CUDA) the host queues launches ahead of the device: the device starts kernel i when it
has finished kernel i-1 and the host has issued it, so the total is
end_i = max(end_{i-1}, issue_i) + t_device_i with issue_i = issue_{i-1} + dispatch,
which is the sum of device times when they are long and the sum of dispatch costs when short.
The dispatch cost is `dispatch_us` per op, or with mechanism host_classes the op class's multiple
of it (host_us): a convolution costs the host more than an add.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

from autovit.latmodel.costs import SOFTMAX as SOFTMAX_OPS
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.kernels import Kernel


@dataclass
class KernelTime:
    kernel: Kernel
    ms: float  # contribution to the network's latency
    device_ms: float  # launch + max(compute, memory)
    compute_ms: float
    memory_ms: float
    overhead_ms: float  # launch + dispatch (+ engine switch)
    bound: str  # compute | memory | overhead
    flops: float
    bytes: float
    engine: str
    launches: int = 1  # kernels the op runs as (an autocast fp32 op: cast in, op, cast out), each dispatched
    threads: int = 1  # CPU threads it runs on (kernel_threads), where a mechanism asks (fork_join, core_handoff)
    reorders: int = 0  # NCHW <-> blocked reorders priced on it (chain_reorder), and their ms
    reorder_ms: float = 0.0


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m if m > 1 else x


def gemm_tiles(gemm: tuple[int, int, int, int], profile: HardwareProfile, tile: tuple[int, int] | None = None) -> int:
    """Output tiles of a GEMM (count, M, N, K): its units of parallel work; `tile`: the kernel's
    own output tile where it is not the profile's (kernel_tile)."""
    count, m, n, _ = gemm
    tm, tn = tile or profile.gemm_tile
    return count * math.ceil(m / tm) * math.ceil(n / tn)


def kernel_tile(k: Kernel, profile: HardwareProfile, dtype: str, scale: float = 1.0) -> tuple[int, int]:
    """The output tile kernel `k` is computed in: the profile's GEMM tile, except for a CPU
    convolution under the mechanism conv_channel_block, whose output channels oneDNN's direct
    convolution kernels block by one vector register (`jcp.oc_block = simd_w`: 16 fp32 channels
    with AVX-512, 8 with AVX2; the profile's matrix_align), so a group of 16 output channels
    (RegNet's grouped 3x3s) fills its blocks instead of half a 32-wide tile. ATen's own
    convolutions (thnn_conv: im2col + a BLAS GEMM) keep the GEMM tile; `scale`: the batch scale."""
    if (profile.uses("conv_channel_block") and k.category == "conv" and profile.matrix_align.get(dtype, 0) > 1
            and not thnn_conv(k, profile, dtype, scale)):
        return (profile.gemm_tile[0], profile.matrix_align[dtype])
    return profile.gemm_tile


# Shortest reduction slice a split-K GEMM hands to one unit (cuBLAS/CUTLASS split-K heuristics).
_SPLIT_K_MIN = 256


def split_k(gemm: tuple[int, int, int, int], profile: HardwareProfile, tile: tuple[int, int] | None = None) -> int:
    """How many ways the reduction is split when there are too few output tiles to fill the units."""
    tiles = gemm_tiles(gemm, profile, tile)
    if tiles >= profile.units:
        return 1
    return max(1, min(profile.units // tiles, math.ceil(gemm[3] / _SPLIT_K_MIN)))


def matrix_utilization(gemm: tuple[int, int, int, int], profile: HardwareProfile, dtype: str,
                       tile: tuple[int, int] | None = None, k_padded: int = 0) -> float:
    """Share of the matrix engine's peak a GEMM of shape (count, M, N, K) can use (0..1].

    Tiles (split along K when they are too few) run in whole waves over the units; a tile
    hanging over the tensor's edge, or channels short of the engine's multiple, is wasted.
    `k_padded`: the reduction the kernel really runs where its layout pads it (0: K rounded up to
    the engine's multiple).
    """
    count, m, n, k = gemm
    tm, tn = tile or profile.gemm_tile
    align = profile.matrix_align.get(dtype, 1)
    splits = split_k(gemm, profile, tile)
    waves = math.ceil(gemm_tiles(gemm, profile, tile) * splits / profile.units)
    util = count * m * n * splits / (waves * profile.units * tm * tn)
    # Channels that miss the engine's multiple are padded (tensor cores need N, K % 8 == 0 in fp16).
    util *= (n / _ceil_to(n, align)) * (k / (k_padded or _ceil_to(k, align)))
    # Short reductions cannot fill the pipeline: half speed at K = k_half.
    if profile.k_half > 0:
        util *= k / (k + profile.k_half)
    return min(max(util, 1e-6), 1.0)


def runs_blocked(k: Kernel, profile: HardwareProfile, nchw: NchwConv | None) -> bool:
    """Whether `k` is a convolution ONNX Runtime runs in its blocked layout (chain_reorder): one
    its NCHWc rule does not leave in NCHW (`nchw`: nchw_conv's answer for it)."""
    return profile.chain_reorder and k.category in ("conv", "dwconv") and k.conv is not None and nchw is None


def mlas_conv_share(k: Kernel, profile: HardwareProfile) -> float:
    """Share of the FMA peak MLAS's direct convolution in the blocked layout keeps (mechanism
    mlas_conv_tiles; 1 without the profile's figures). Its AVX-512 kernel (SconvKernelAvx512F.S,
    ProcessFilterCountN; snchwc.cpp) computes, for up to `conv_filter_set` blocks of output
    channels of one group at once, a row's columns in runs of `conv_output_block`, then one run of
    3 and one of 2, and the column left over and those whose window crosses the padding one at a
    time (the figures and the 3-2 tail are the AVX-512 kernel's; its FMA3 kernel works in runs of
    3 and single columns). Per input channel and filter tap a run of o columns for f channel
    blocks issues o x f FMAs (one per accumulator), o broadcast loads and f filter loads; it takes the longest of
    o x f / fma_ports, (o + f) / load_ports and the FMA latency (each accumulator's next FMA waits
    for its last), against o x f / fma_ports at the peak."""
    if not (k.conv_cols and k.conv and profile.conv_filter_set and profile.conv_output_block
            and profile.fma_ports and profile.load_ports):
        return 1.0
    _, cols, edge = k.conv_cols
    width = max(nchwc_block(profile, "fp32"), 1)
    # MLAS convolves group by group (snchwc.cpp: the work block's output channels over the groups)
    blocks = math.ceil(k.conv[2] // max(k.conv[3], 1) / width)
    # kernel calls per channel-block count, and runs per column count: counted, not listed (a
    # pointwise convolution's row is all its pixels)
    fs, ob = profile.conv_filter_set, profile.conv_output_block
    sets = Counter({fs: blocks // fs})
    sets[blocks % fs] += 1
    rest = max(cols - edge, 0)
    runs = Counter({ob: rest // ob})
    rest %= ob
    for o in (3, 2):
        if rest >= o and o < ob:
            runs[o] += 1
            rest -= o
    runs[1] += rest + min(edge, cols)
    peak = actual = 0.0
    for f, calls in sets.items():
        for o, n in runs.items():
            if f and calls and n:
                peak += calls * n * o * f / profile.fma_ports
                actual += calls * n * max(o * f / profile.fma_ports, (o + f) / profile.load_ports,
                                          profile.fma_latency_cycles)
    return peak / actual if actual > 0 else 1.0


def blocked_rows_share(k: Kernel, profile: HardwareProfile, scale: float) -> float:
    """Share of the units a depthwise convolution in the blocked layout keeps busy: MLAS splits
    its output rows of every block of channels evenly over all the pool's threads, however small
    the map (snchwc.cpp, MlasConvDepthwiseFloatThreaded), not in element blocks as the other
    vector kernels; a map of square output is assumed."""
    n, _, cout, _, _, pixels = k.conv  # type: ignore[misc]
    items = max(1, round(n * scale)) * math.ceil(cout / max(nchwc_block(profile, "fp32"), 1)) * max(1, math.isqrt(pixels))
    waves = math.ceil(items / profile.units)
    return items / (waves * profile.units)


def vector_utilization(work: float, profile: HardwareProfile) -> float:
    """Share of units busy for `work` independent elements split in blocks of vector_block."""
    blocks = max(1, math.ceil(work / profile.vector_block))
    slots = profile.units * profile.tiles_per_unit
    waves = math.ceil(blocks / slots)
    return blocks / (waves * slots)


def padded_elems(shape: tuple[int, ...], elem_bytes: int, align_bytes: int) -> int:
    """Elements a tensor occupies when its last axis is padded to `align_bytes` (e.g. ANE: 64)."""
    if not shape:
        return 1
    last = shape[-1] * elem_bytes
    padded_last = _ceil_to(last, align_bytes) // elem_bytes
    return int(math.prod(shape[:-1]) * padded_last)


def _scaled_gemm(k: Kernel, scale: float) -> tuple[int, int, int, int]:
    count, m, n, kk = k.gemm  # type: ignore[misc]
    if k.batch_in == "count":
        return (max(1, round(count * scale)), m, n, kk)
    return (count, max(1, round(m * scale)), n, kk)


def nchwc_block(profile: HardwareProfile, dtype: str) -> int:
    """Channels per block of ONNX Runtime's NCHWc layout: MLAS's NchwcBlockSize is the fp32 vector
    width (16 floats with AVX-512F, 8 with AVX2; mlas/lib/platform.cpp), and only fp32 convolutions
    are rewritten (0: none is)."""
    return profile.matrix_align.get("fp32", 1) if dtype == "fp32" else 0


def nchwc_runs(conv: tuple[int, ...], block: int, pad_multiple: int = 0) -> bool:
    """Whether ONNX Runtime's NCHWc rewrite takes a convolution (batch, input channels, output
    channels, groups, ...) at `block` channels per block (nchwc_transformer.cc, TransformConv).
    A depthwise one needs its channels padded to whole blocks, a dense one its input channels,
    unless it reads fewer than one block (then it reads NCHW as it is: the image); the rewrite
    pads channel counts that are multiples of `pad_multiple` (0: only whole blocks). A grouped
    one needs whole blocks per group. Output channels are padded."""
    if block <= 1:
        return False
    _, cin, cout, group = conv[:4]

    def pads(c: int) -> bool:
        return c % block == 0 or (pad_multiple > 0 and c % pad_multiple == 0)

    if group > 1:
        cin_g, cout_g = cin // group, cout // group
        if cin_g == 1 and cout == group:  # depthwise
            return pads(cout)
        return cin_g % block == 0 and cout_g % block == 0
    return cin < block or pads(cin)


def nchwc_reorders_input(conv: tuple[int, ...], block: int) -> bool:
    """Whether a convolution the NCHWc rewrite takes reads its input in blocks (a ReorderInput in
    front where its producer is NCHW): all but a dense one reading fewer than a block of channels,
    which reads NCHW as it is (the image); a depthwise one of 8 channels is padded into a block."""
    _, cin, _, group = conv[:4]
    return group > 1 or cin >= block


def nchwc_padding(k: Kernel, profile: HardwareProfile, dtype: str) -> tuple[float, float]:
    """(input, output) channel factors of a convolution the NCHWc rewrite takes: it computes and
    stores whole blocks, so 20 channels cost 32 at 16 per block (a dense one reading fewer than a
    block reads them as they are). (1, 1) for any other kernel or profile."""
    if not (profile.chain_reorder and profile.nchwc_channels and k.conv and k.category in ("conv", "dwconv")):
        return 1.0, 1.0
    block = nchwc_block(profile, dtype)
    if not nchwc_runs(k.conv, block, profile.nchwc_pad_multiple):
        return 1.0, 1.0
    _, cin, cout, group = k.conv[:4]
    out = _ceil_to(cout, block) / cout
    depthwise = group > 1 and cin // group == 1 and cout == group
    return (out if depthwise else (_ceil_to(cin, block) / cin if cin >= block else 1.0)), out


@dataclass(frozen=True)
class NchwConv:
    """How MLAS runs a convolution the NCHWc rewrite left in NCHW (mlas/lib/convolve.cpp): per
    image and group a GEMM of filters x output pixels x (channels x kernel), its input expanded
    by im2col first unless the kernel is 1x1, on the threads its complexity rule gives (the GEMM
    itself is priced as the blocked convolution's, from the kernel's own shape)."""

    threads: int
    im2col_elems: int  # expanded input, written then read by the GEMM


def nchw_conv(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> NchwConv | None:
    """The NCHW execution of kernel `k` where the profile's NCHWc rule leaves its convolution out
    of the blocked layout; None where it runs blocked (or the profile has no such rule)."""
    if not (profile.chain_reorder and profile.nchwc_channels and k.conv):
        return None
    if nchwc_runs(k.conv, nchwc_block(profile, dtype), profile.nchwc_pad_multiple):
        return None
    n, cin, cout, group, kernel, pixels = k.conv  # type: ignore[misc]
    n = max(1, round(n * scale))
    reduce = cin // group * kernel
    if kernel == 1 and group > 1:
        threads = n * group  # a pointwise grouped GEMM: the groups are spread over the threads
    elif profile.gemm_thread_macs > 0:
        # MLAS adds a thread per `gemm_thread_macs` multiply-adds of one group's GEMM; the groups
        # run one after another, so a depthwise convolution of a small map runs on one thread.
        threads = 1 + int(cout // group * pixels * reduce // profile.gemm_thread_macs)
    else:
        threads = profile.units
    return NchwConv(max(1, min(threads, profile.units)), 0 if kernel == 1 else 2 * n * group * reduce * pixels)


def dw_tap_s(k: Kernel, profile: HardwareProfile, scale: float, units_share: float, dtype: str = "fp32") -> float:
    """Seconds a depthwise convolution spends on its taps (s): loading its operands through L1
    and, in PyTorch's direct kernel, the integer work around them.

    One thread per output walks the kh x kw taps and loads an input and a weight element per
    multiply-add (PyTorch's DepthwiseConv2d.cu, the kernel eager PyTorch runs for fp32 and for the
    fp16 shapes cuDNN's depthwise heuristic declines), so the kernel is bound by L1 load throughput,
    not by its FMAs or its DRAM bytes: its time grows with k^2 x outputs. Where cuDNN takes the
    layer (mechanism cudnn_dw) that L1 roof is the price; the direct kernel's integer work is
    priced by dw_loop and dw_index.
    """
    loads = k.flops * scale  # 2 FLOPs and 2 loads per multiply-add
    clocks = profile.units * max(units_share, 1e-3) * profile.clock_ghz * 1e9
    t = loads / (clocks * profile.l1_loads_per_clock)
    if not profile.int_ops_per_clock or cudnn_depthwise(k, profile, dtype, scale):
        return t
    int_ops = 0.0
    if profile.uses("dw_index"):
        # Every output decomposes its flat index into (n, c, h, w): three integer divisions and
        # their multiply-subtracts, plus its offsets (`dw_index_int_ops`); every tap, unrolled or
        # looped, computes its address and checks its bounds or loop (`dw_loop_int_ops`).
        int_ops = k.out_elems * scale * profile.dw_index_int_ops + loads / 2 * profile.dw_loop_int_ops
    elif profile.uses("dw_loop") and dw_kernel_size(k) > profile.dw_unrolled_max:
        # The kernel is compiled with its tap loops unrolled only for small sizes (template kSize
        # 1 and 3: `dw_unrolled_max`); larger ones run a loop with run-time bounds whose index
        # update, bound checks, addresses and loop control are integer ops, every tap
        # (`dw_loop_int_ops`), on the SM's 32-bit integer pipes (`int_ops_per_clock`).
        int_ops = loads / 2 * profile.dw_loop_int_ops
    return max(t, int_ops / (clocks * profile.int_ops_per_clock))


def cudnn_depthwise(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> bool:
    """Whether PyTorch runs depthwise convolution `k` in cuDNN rather than its direct kernel
    (mechanism cudnn_dw): only fp16, with at least 32 channels, a square 1x1/3x3/5x5 filter and
    an input at least 7 wide; every such layer at stride 1; at stride 2 at batch 1 (3x3, 5x5,
    or 1x1 up to 28 wide), else with >= 512 channels or >= 256 channels and >= 28 wide
    (`check_cudnn_depthwise_workload_with_filter` in ATen's Convolution.cpp, cuDNN >= 8.2)."""
    if not (profile.uses("cudnn_dw") and dtype == "fp16" and k.conv and k.act_shapes and len(k.act_shapes[0]) == 4):
        return False
    n, cin, _, _, taps, pixels = k.conv
    side = math.isqrt(taps)
    _, _, h, w = k.act_shapes[0]
    if cin < 32 or side * side != taps or side not in (1, 3, 5) or w < 7:
        return False
    stride = round(math.sqrt(h * w / max(pixels, 1)))
    if stride == 1:
        return True
    if stride != 2:
        return False
    batch = n * scale
    if batch == 1:
        return side in (3, 5) or w <= 28
    if side == 1:
        return batch <= 16 and cin >= 128 and w <= 7
    return cin >= 512 or (cin >= 256 and w >= 28)


def dw_kernel_size(k: Kernel) -> int:
    """Side of a square depthwise kernel from its FLOPs (2 per tap and output, + a bias add)."""
    taps = int(k.flops // (2 * max(k.out_elems, 1)))
    return math.isqrt(max(taps, 1))


def compiled_loop(k: Kernel, profile: HardwareProfile) -> bool:
    """Whether `k` is a loop torch.compile generates (mechanism inductor_threads): element-wise
    ops, reductions, norms and copies; convolutions and GEMMs call oneDNN/MKL, which split work
    their own way."""
    return (profile.uses("inductor_threads") and profile.min_chunk > 0 and k.klass in ("vector", "layout")
            and k.category not in ("conv", "dwconv", "linear"))


# Ops Inductor generates as a reduction loop nest (outer loops over the outputs, inner loops over
# the reduced axes).
_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceSumSquare", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


def compiled_loop_elems(k: Kernel, profile: HardwareProfile) -> int:
    """Iterations of the loop nest torch.compile generates for `k`: its outputs for a pointwise
    loop; for a reduction, the outer loops times the reduced ones, i.e. the elements it reads
    (a squeeze-excitation mean over a 256 x 88 x 88 map is a 1.98 M-iteration nest with 256
    outputs). Without the mechanism inductor_reductions a reduction counts its parallel work as
    ATen's eager split does (`work_elems`)."""
    if profile.uses("inductor_reductions") and any(t in _REDUCTIONS for t in k.op_types):
        return max(k.work_elems, k.in_elems)
    return k.work_elems


def compiled_threads(k: Kernel, profile: HardwareProfile, scale: float) -> int:
    """Threads a compiled CPU loop runs on: every core once each gets at least `min_chunk`
    iterations of its loop nest (torch._inductor.config.cpp.min_chunk_size; Inductor parallelises
    a loop over all its threads or not at all), else one. `decide_parallel_depth` (codegen/cpp.py)
    counts the whole nest (`size_hint()`, the product of the call ranges, reduced axes included)
    and splits the outer loops, so a reduction with few outputs over a large input still runs on
    every core, or on as many as it has outputs."""
    if compiled_loop_elems(k, profile) * scale < profile.units * profile.min_chunk:
        return 1
    if profile.uses("inductor_reductions") and any(t in _REDUCTIONS for t in k.op_types):
        return min(profile.units, max(1, round(k.out_elems * scale)))  # the outer loops are the outputs
    return profile.units


# onnxruntime's LayerNorm kernels hand every row to the pool (layer_norm_impl.cc: TryBatchParallelFor
# over norm_count), whatever the row's cost.
_ORT_ROW_PARALLEL = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization")


def ort_threads(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> int | None:
    """Threads onnxruntime runs kernel `k` on where its own rule decides (mechanism
    ort_parallel_for), None where another rule does. An op of the profile's `op_cycles` table (the
    element-wise kernels that call ThreadPool::TryParallelFor with their functor's cost per element:
    element_wise_ranged_transform.h, element_wise_ops.h) stays on the calling thread where Eigen's
    TensorCostModel::numThreads grants one thread, (elements x cost - startup) / per-thread cycles
    + 0.9 < 2, the cost being the bytes loaded and stored at `parallel_byte_cycles` each plus the
    op's cycles, and otherwise runs on every thread of the pool (ThreadPool::ParallelFor splits
    the loop in blocks over all of them). BatchNormalization (batch_norm.h: an Eigen loop per
    (sample, channel), no thread pool) and a copy (a layout kernel: Transpose, Split, Concat, ...)
    run on the calling thread (measured up to 196,608 floats: benchmarks/ort_core_handoff.py); a
    LayerNorm of more than one row on every thread."""
    if not profile.uses("ort_parallel_for") or k.klass == "view":
        return None
    if any(t in _ORT_ROW_PARALLEL for t in k.op_types):
        return profile.units if k.rows * scale > 1 else 1
    if len(k.op_types) != 1:
        return None
    op = k.op_types[0]
    if op == "BatchNormalization" or k.klass == "layout":
        return 1
    if op not in profile.op_cycles:
        return None
    eb = profile.dtype_bytes(dtype)
    cost = k.out_elems * scale * (2 * eb * profile.parallel_byte_cycles + profile.op_cycles[op])
    threads = (cost - profile.parallel_startup_cycles) / profile.parallel_thread_cycles + 0.9
    return 1 if threads < 2 else profile.units


def kernel_threads(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> int:
    """Threads a CPU kernel runs on: onnxruntime's own rule where it has one (ort_threads); a
    compiled loop's chunks; a convolution in ONNX Runtime's blocked layout on every thread of the
    pool whatever its size (MLAS splits its output rows over all of them: snchwc.cpp,
    MlasNchwcConv, `tids = GetMaximumThreadCount()`), one the layout left out on the threads its
    NCHW GEMM takes (nchw_conv); a GEMM one thread per output tile; another kernel one per block
    of `vector_block` elements (ATen's grain size); at most the cores."""
    ort = ort_threads(k, profile, dtype, scale)
    if ort is not None:
        return ort
    nchw = nchw_conv(k, profile, dtype, scale)
    if compiled_loop(k, profile):
        blocks = compiled_threads(k, profile, scale)
    elif nchw is not None:
        blocks = nchw.threads
    elif runs_blocked(k, profile, nchw):
        blocks = profile.units
    elif k.klass == "matrix" and k.gemm is not None:
        gemm = _scaled_gemm(k, scale)
        tile = kernel_tile(k, profile, dtype, scale)
        blocks = gemm_tiles(gemm, profile, tile) * split_k(gemm, profile, tile)
    else:
        blocks = math.ceil(k.work_elems * scale / profile.vector_block)
    return min(profile.units, max(blocks, 1))


def fork_join_s(k: Kernel, profile: HardwareProfile, dtype: str, scale: float, threads: int | None = None) -> float:
    """Seconds a CPU kernel spends starting and joining its threads (s): `fork_join_us` per thread
    it wakes (its `threads`: kernel_threads, computed here where not given), so a small op on one
    thread pays nothing while a large one pays for every core: small kernels do not speed up with
    cores. A oneDNN convolution pays the whole team once per region it opens (onednn_regions)."""
    if threads is None:
        threads = kernel_threads(k, profile, dtype, scale)
    regions = onednn_regions(k, profile, dtype, scale)
    if regions:
        return profile.fork_join_us * 1e-6 * profile.units * regions
    return profile.fork_join_us * 1e-6 * threads if threads > 1 else 0.0


def onednn_regions(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> int:
    """Parallel regions a oneDNN convolution opens, each over the whole thread team (mechanism
    onednn_team); 0 where the kernel is not one. With the OpenMP runtime oneDNN's parallel() and
    parallel_nd() start every thread whatever the work, unless it is a single item
    (adjust_num_threads in src/common/dnnl_thread.hpp). torch.compile lays a CPU model's
    activations out channels-last (Inductor's GraphLowering.decide_layout_opt), which oneDNN's
    convolution reads and writes as they are (_mkldnn_convolution returns its NHWC result, no
    mkldnn_to_dense); the plain OIhw weights are reordered to oneDNN's blocked layout on every
    call, a primitive of its own. So a convolution opens two regions, however small."""
    if not (profile.uses("onednn_team") and profile.units > 1 and dtype in profile.nchw_conv_relayout
            and k.category in profile.relayout_categories and k.conv is not None):
        return 0
    if thnn_conv(k, profile, dtype, scale):
        return 0
    return 2


def thnn_conv(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> bool:
    """Whether ATen runs convolution `k` in its own slow_conv2d (im2col + a BLAS GEMM, plain NCHW)
    rather than oneDNN (mechanism thnn_conv). ConvParams::use_mkldnn (ATen Convolution.cpp) hands
    an fp32 convolution on a multi-threaded CPU to oneDNN only if it is grouped, or its filter is
    larger than 3 on both sides, or the batch is above 1, or its input has more than 20480
    elements (`compute.thnn_max_input`; "for some case, native is faster"): at batch 1 the dense
    1x1 and 3x3 convolutions of small maps (late stages, squeeze-excitation 1x1 maps) take the
    native path, with no blocked layout and so no reorders."""
    if not (profile.uses("thnn_conv") and profile.thnn_max_input > 0 and dtype == "fp32" and k.category == "conv"
            and k.conv is not None and k.filter_shape and profile.units > 1):
        return False
    n, _, _, group = k.conv[:4]
    return (group == 1 and not all(side > 3 for side in k.filter_shape) and n * scale <= 1
            and k.conv_in_elems * scale <= profile.thnn_max_input)


def im2col_s(k: Kernel, profile: HardwareProfile, dtype: str, scale: float) -> float:
    """Seconds slow_conv2d spends on its im2col copy (s): it writes the input expanded to
    (channels x filter) x output pixels, which the GEMM reads, unless the filter is 1x1 at unit
    stride without padding. The copy runs on one thread: slow_conv2d loops over the batch in
    at::parallel_for, and a batch of 1 runs that body inline under ParallelGuard, so the copy's
    own parallel_for nested in it stays serial (ATen Parallel-inl.h); one core gets 1/units of
    the cache bandwidth."""
    if k.im2col_free or k.conv is None:
        return 0.0
    n, cin, _, _, taps, pixels = k.conv  # a native convolution is never grouped (thnn_conv)
    cols = n * scale * cin * taps * pixels
    return 2 * cols * profile.dtype_bytes(dtype) / (profile.cache_gbps * 1e9 / profile.units)


def weight_relayout(k: Kernel, profile: HardwareProfile, dtype: str, scale: float = 1.0) -> bool:
    """Whether the convolution library reorders `k`'s weights on every call (mechanism
    weight_relayout): oneDNN computes in blocked weight layouts (OIhw16i16o), and a framework
    that does not pre-pack them (eager, torch.compile without freezing) hands it plain OIhw
    weights each time, which it reads, writes blocked and reads again: three passes."""
    return (profile.uses("weight_relayout") and dtype in profile.nchw_conv_relayout
            and k.category in profile.relayout_categories and not thnn_conv(k, profile, dtype, scale))


def autocast_fp32(k: Kernel, profile: HardwareProfile, dtype: str) -> bool:
    """Whether torch.autocast runs vector kernel `k` in fp32 when the model runs in fp16: ops on
    autocast's float32 list (layer_norm, group_norm, softmax, norm, sum, exp, ...; the profile's
    `amp.fp32_ops`) cast their fp16 inputs up and return fp32 (PyTorch AMP docs, "CUDA Ops that can
    autocast to float32"). A fused attention kernel (SDPA, on autocast's fp16 list) is not one."""
    return (dtype == "fp16" and k.klass == "vector" and profile.uses("autocast") and "fp32" in profile.vector_tflops
            and any(t in profile.amp_fp32_ops for t in k.op_types))


def class_efficiency(k: Kernel, profile: HardwareProfile) -> float:
    """The share of its roofline kernel `k`'s class reaches beside the engine-wide efficiencies
    (hardware.CLASS_PARAMETERS: attention, depthwise; 1 elsewhere and in every data-sheet profile).
    A calibration with a prior fits them, so that a few measured networks can move one class's
    cost (one family's written-out attention, another's depthwise) without moving every GEMM
    or every vector kernel with it."""
    if k.category == "attention":
        return profile.eff_attention
    if k.category == "dwconv":
        return profile.eff_dwconv
    return 1.0


def host_us(op_types: list[str], category: str, profile: HardwareProfile) -> float:
    """Host microseconds one eager call of a kernel of `op_types` and `category` costs (mechanism
    host_classes): `dispatch_us` times its class's entry of [overhead.host_us] over the reference
    entry's. A kernel of one op is looked up by its op type, then by "@category"; a fused kernel
    (one ATen call for several ONNX ops: a linear layer and its bias, GELU) by its category, which
    its fusion rule names. The mechanism off (or no table): `dispatch_us`.

    A class not in the table (LayerNorm, softmax, attention, GELU, copies: not probed) costs the
    median of the table's ratios: its host work is unmeasured, so it is charged neither as the
    cheapest measured class (an element-wise op, which would favour networks made of unprobed
    ops, such as transformers) nor as the dearest (a backend-selecting module).

    Why classes: PyTorch's dispatcher costs the same for every op, but a module that selects a
    backend per call (cuDNN for convolutions and BatchNorm, cuBLAS for a linear layer) does more
    host work first, 2-3x an element-wise op's (docs/COST_MODEL.md, "host_classes"). The absolute
    microseconds are the measuring host's; the ratios are the dispatcher's structure, so only they
    are used, and `dispatch_us` stays the level that calibration fits."""
    table = profile.host_us
    if not table or not profile.uses("host_classes"):
        return profile.dispatch_us
    key = op_types[0] if len(op_types) == 1 and op_types[0] in table else "@" + category
    if key not in table:
        return profile.dispatch_us * statistics.median(table.values()) / table[profile.host_reference]
    return profile.dispatch_us * table[key] / table[profile.host_reference]


def kernel_host_ms(k: Kernel, launches: int, profile: HardwareProfile) -> float:
    """Host ms to issue kernel `k` and the casts autocast puts around it (`launches` - 1, each an
    element-wise Cast)."""
    return (host_us(k.op_types, k.category, profile)
            + (launches - 1) * host_us(["Cast"], "elementwise", profile)) * 1e-3


def kernel_time(k: Kernel, profile: HardwareProfile, dtype: str, scale: float,
                weight_hit: float = 0.0) -> KernelTime:
    """Time of kernel `k` with activations scaled by `scale` (= batch / graph batch); the share
    `weight_hit` of its weights is read from cache instead of DRAM."""
    eb = profile.dtype_bytes(dtype)
    fb = profile.fallback if k.unsupported else None
    engine = fb.name if fb else profile.name
    if k.klass == "view":
        # A view: only the host pays, to record new strides.
        ms = profile.view_dispatch_us * 1e-3
        return KernelTime(k, ms, 0.0, 0.0, 0.0, ms, "overhead", 0.0, 0.0, engine)

    nchw = nchw_conv(k, profile, dtype, scale)
    casts = autocast_fp32(k, profile, dtype)
    thnn = thnn_conv(k, profile, dtype, scale)
    # A convolution in the blocked layout reads, writes and computes whole blocks of channels
    # (a dense one: its reduction runs over the padded input channels).
    pad_in, pad_out = nchwc_padding(k, profile, dtype)
    pad_act = ((k.in_elems * pad_in + k.out_elems * pad_out) / (k.in_elems + k.out_elems)
               if k.in_elems + k.out_elems else 1.0)
    act_bytes = (_activation_elems(k, profile, dtype, eb, casts, thnn) * scale * eb * pad_act
                 + (nchw.im2col_elems * eb if nchw else 0))
    w_bytes = k.w_elems * eb * (3 if weight_relayout(k, profile, dtype, scale) else 1)
    # A transcendental (exp, tanh, erf) costs `transcendental_flops` arithmetic slots, not one.
    flops = (k.flops + k.transcendentals * max(profile.transcendental_flops - 1.0, 0.0)) * scale
    if k.category == "dwconv":
        flops *= pad_out
    t_compute, units_share = _compute_s(k, profile, "fp32" if casts else dtype, fb, flops, scale, nchw,
                                        pad_out if k.category == "dwconv" else 1.0, pad_in)
    t_memory = _memory_s(k, profile, act_bytes, w_bytes, weight_hit, units_share, scale)
    cls_eff = class_efficiency(k, profile)
    t_compute, t_memory = t_compute / cls_eff, t_memory / cls_eff
    if profile.uses("subnormal_assists") and dtype == "fp32":
        # a measured cost per assist, not a share of a peak: no class efficiency scales it
        t_compute += subnormal_s(k, profile, scale) / max(profile.units * units_share, 1.0)

    launch = (fb.launch_us if fb else profile.launch_us) * 1e-6 * (1 + 2 * casts)
    threads = 1
    if profile.uses("fork_join") or profile.uses("core_handoff"):
        threads = kernel_threads(k, profile, "fp32" if casts else dtype, scale)
    if profile.uses("fork_join"):
        launch += fork_join_s(k, profile, "fp32" if casts else dtype, scale, threads)
    if thnn:
        launch += im2col_s(k, profile, dtype, scale)  # serial, before the GEMM: not overlapped
    if k.bias_elems and profile.uses("gemm_bias_pass") and profile.gemm_bias_gbps > 0:
        # onnxruntime's Gemm fills its output with the bias before the product (gemm_helper.h,
        # GemmBroadcastBias), and the product reads it back: serial, not overlapped, so (like
        # im2col_s) it is charged with the launch
        launch += k.bias_elems * scale * eb / (profile.gemm_bias_gbps * 1e9)
    t_device = launch + max(t_compute, t_memory)
    overhead = launch + host_us(k.op_types, k.category, profile) * 1e-6
    if max(t_compute, t_memory) < overhead:
        bound = "overhead"
    else:
        bound = "compute" if t_compute >= t_memory else "memory"
    return KernelTime(k, t_device * 1e3, t_device * 1e3, t_compute * 1e3, t_memory * 1e3, overhead * 1e3,
                      bound, flops, act_bytes + w_bytes, engine, 1 + 2 * casts, threads)


def _activation_elems(k: Kernel, profile: HardwareProfile, dtype: str, eb: int, casts: bool = False,
                      native: bool = False) -> float:
    """Activation elements a kernel reads and writes (graph batch), with the padding of the
    profile's last-axis alignment, the relayouts of its convolution library and, for an op
    autocast runs in fp32 (`casts`), its casts in and out counted in elements of `dtype`; a
    convolution ATen runs natively (`native`: thnn_conv) stays in NCHW, without relayouts."""
    act_elems = k.in_elems + k.out_elems
    if profile.last_axis_align_bytes and k.act_shapes:
        padded = sum(padded_elems(s, eb, profile.last_axis_align_bytes) for s in k.act_shapes)
        plain = sum(math.prod(s) for s in k.act_shapes)
        if plain:
            act_elems = act_elems * padded / plain
    if dtype in profile.nchw_conv_relayout and k.category in profile.relayout_categories and not native:
        # The convolution library works in another layout (NHWC for tensor cores, oneDNN's
        # channel-blocked nChw16c on CPUs): an NCHW input and output are re-laid out, i.e.
        # read and written once more each.
        act_elems *= 3
    if casts:
        # torch.autocast runs this op in fp32: its fp16 input is cast to fp32 (2 + 4 bytes per
        # element), the op reads and writes fp32 (4 + 4), and the next fp16 op casts the result
        # back (4 + 2): five times the bytes of the op in fp16.
        act_elems *= 5
    return act_elems


def _compute_s(k: Kernel, profile: HardwareProfile, dtype: str, fb, flops: float, scale: float,
               nchw: NchwConv | None = None, work_pad: float = 1.0, k_pad: float = 1.0) -> tuple[float, float]:
    """(compute time in s, share of the compute units the kernel occupies); `dtype` is the one
    the kernel computes in (fp32 for an op autocast keeps in fp32); `nchw`: the MLAS NCHW
    execution of a convolution the blocked layout left out (nchw_conv), if any; `work_pad`: the
    share of padded channels a vector kernel works on too, `k_pad` the padded share of a
    convolution's reduction (its input channels: nchwc_padding)."""
    if k.klass == "matrix" and k.gemm is not None:
        gemm = _scaled_gemm(k, scale)
        tile = kernel_tile(k, profile, dtype, scale)
        util = matrix_utilization(gemm, profile, dtype, tile, round(gemm[3] * k_pad) if k_pad > 1 else 0)
        if profile.uses("mlas_conv_tiles") and k.category == "conv" and runs_blocked(k, profile, nchw):
            util *= mlas_conv_share(k, profile)
        # BLAS GEMMs (linear layers, attention) and implicit-GEMM convolutions reach different
        # shares of the tensor-core peak: two efficiencies.
        eff = profile.eff_gemm if k.category in ("linear", "attention") else profile.eff_matrix
        peak = (fb.matrix_tflops if fb else profile.matrix_tflops)[dtype] * 1e12 * eff
        units_share = min(1.0, gemm_tiles(gemm, profile, tile) * split_k(gemm, profile, tile) / profile.units)
    else:
        ort = ort_threads(k, profile, dtype, scale)
        if ort is not None:  # the order of kernel_threads
            units_share = ort / profile.units
        elif compiled_loop(k, profile):
            units_share = compiled_threads(k, profile, scale) / profile.units
        elif k.category == "dwconv" and runs_blocked(k, profile, nchw):
            units_share = blocked_rows_share(k, profile, scale)
        else:
            units_share = vector_utilization(k.work_elems * scale * work_pad, profile)
        util = units_share
        # A depthwise convolution in the blocked layout runs the runtime's own FMA kernel; one the
        # blocked layout left out runs as a GEMM per channel (nchw), at the vector share.
        dedicated = k.category == "dwconv" and profile.eff_nchwc_dw > 0 and runs_blocked(k, profile, nchw)
        eff = profile.eff_nchwc_dw if dedicated else profile.eff_vector
        peak = (fb.vector_tflops if fb else profile.vector_tflops)[dtype] * 1e12 * eff
    if nchw is not None and nchw.threads < profile.units:
        # MLAS leaves the other cores idle (a depthwise convolution of a small map: one thread).
        cap = nchw.threads / profile.units
        util, units_share = util * min(1.0, cap / units_share), min(units_share, cap)
    t_compute = flops / (peak * util) if flops > 0 else 0.0
    if k.category == "dwconv" and profile.uses("dw_taps") and profile.l1_loads_per_clock and profile.clock_ghz:
        t_compute = max(t_compute, dw_tap_s(k, profile, scale, units_share, dtype))
    # A row of a last-axis reduction ends in a horizontal sum and a scalar tail (mean, rsqrt or
    # 1/sum) that vector width cannot hide: short rows (48-channel tokens) cost per row.
    t_compute += k.rows * scale * row_ns(k, profile) * 1e-9 / max(profile.units * units_share, 1.0)
    return t_compute, units_share


def subnormal_s(k: Kernel, profile: HardwareProfile, scale: float) -> float:
    """Seconds of one thread's microcode assists for subnormal fp32 (mechanism subnormal_assists):
    a masked softmax pays `softmax_subnormal_assists` per subnormal probability and
    `softmax_underflow_assists` per probability its exp took through the subnormal range to 0
    (averages over the kernel's vector instructions); the product reading the probabilities pays
    one per multiply-add vector: the GEMM broadcasts each element of its left matrix over the
    right one's columns a vector at a time (MLAS's and oneDNN/MKL's SGEMM kernels alike)."""
    lanes = max(profile.matrix_align.get("fp32", 1), 1)
    assists = k.exp_subnormal * profile.softmax_subnormal_assists + k.exp_zero * profile.softmax_underflow_assists
    assists += sum(elements * math.ceil(columns / lanes) for elements, columns in k.subnormal_reads)
    return assists * scale * profile.subnormal_assist_ns * 1e-9


def row_ns(k: Kernel, profile: HardwareProfile) -> float:
    """ns per row of a kernel's last-axis reduction: a softmax's own figure where the profile has
    one (`softmax_row_ns`), else `reduce_row_ns`."""
    if profile.softmax_row_ns is not None and any(t in SOFTMAX_OPS for t in k.op_types):
        return profile.softmax_row_ns
    return profile.reduce_row_ns


def _memory_s(k: Kernel, profile: HardwareProfile, act_bytes: float, w_bytes: float, weight_hit: float,
              units_share: float, scale: float) -> float:
    """Memory time in s: activations from cache as far as they fit, weights from DRAM."""
    # Activations were just written by the previous kernel: they come from cache as far as the
    # kernel's working set fits in it. Weights are read cold from DRAM once per inference unless
    # the profile says they stay cached (`weight_hit`, set per network).
    cache = profile.cache_mib * 2**20
    hit = min(1.0, cache / act_bytes) if act_bytes > 0 else 1.0
    dram_s = (act_bytes * (1 - hit) + w_bytes * (1 - weight_hit)) / (profile.dram_gbps * 1e9 * profile.eff_memory)
    # The private caches of the cores the kernel runs on.
    private = min(profile.private_mib * 2**20 * max(profile.units * units_share, 1.0), cache)
    if private > 0:
        # A working set beyond the cores' private caches streams from the shared level, which
        # the cores reach more slowly (docs/COST_MODEL.md, "Two cache levels"); cached weights
        # stay there too, since the activations claim the private caches.
        in_private = min(act_bytes * hit, private)
        t_memory = (in_private / (profile.cache_gbps * 1e9)
                    + (act_bytes * hit - in_private + w_bytes * weight_hit) / (profile.shared_gbps * 1e9) + dram_s)
    else:
        t_memory = (act_bytes * hit + w_bytes * weight_hit) / (profile.cache_gbps * 1e9) + dram_s
    t_memory /= max(units_share, 1e-3)
    if k.klass == "layout":
        t_memory *= profile.layout_penalty
        # A strided copy pays per contiguous run (address arithmetic, a short load and store);
        # runtimes run these loops on one thread, so the runs do not split over the units.
        runs = k.raw_runs if profile.uses("ort_transpose") else k.runs
        t_memory += runs * scale * profile.layout_run_ns * 1e-9
    return t_memory


# Ops that ONNX Runtime's NCHWc transformer runs in the blocked layout (so no reorder around them).
_BLOCKED_OK = ("conv", "dwconv", "activation", "elementwise")
# Channels per block of the NCHWc layout on AVX2/AVX-512 (MLAS: MlasNchwcGetBlockSize = 8 or 16);
# a convolution whose input channels are not a multiple of 8 reads NCHW directly (the stem).
_NCHWC_MIN_BLOCK = 8


def _reorder_ms(elems: float, profile: HardwareProfile, dtype: str) -> float:
    """One reorder between NCHW and the blocked layout: a copy priced as a layout kernel, plus its dispatch (ms)."""
    b = 2 * elems * profile.dtype_bytes(dtype)
    copy_s = b / (profile.cache_gbps * 1e9) * profile.layout_penalty
    if profile.uses("reorder_threads"):
        # onnxruntime splits a reorder over its pool's threads (benchmarks/nchwc_reorder_cost.py:
        # 1.7-2.4x faster on 2 threads than on 1 for maps of 28 x 28 and more)
        copy_s /= max(profile.units, 1)
    if profile.uses("reorder_handoff") and profile.units > 1 and profile.cross_core_gbps > 0:
        # it splits its work by blocks of channels, the kernels around it by rows: each thread
        # reads and writes the other cores' share of both tensors across (core_handoff's rate)
        copy_s += b * (1 - 1 / profile.units) / (profile.cross_core_gbps * 1e9)
    return (copy_s + profile.dispatch_us * 1e-6) * 1e3


def _add_reorder(t: KernelTime, elems: float, profile: HardwareProfile, dtype: str, dispatch: bool = True) -> None:
    extra = _reorder_ms(elems, profile, dtype)
    t.device_ms += extra
    t.ms += extra
    t.reorders += 1
    t.reorder_ms += extra
    if dispatch:
        t.overhead_ms += profile.dispatch_us * 1e-3


def _add_chain_reorders(times: list[KernelTime], profile: HardwareProfile, dtype: str, scale: float,
                        edges: tuple[bool, bool] = (False, False)) -> None:
    """Add the reorders a blocked-layout runtime inserts where a conv chain starts (NCHW -> blocked)
    and where a consumer that needs NCHW reads a chain's output (blocked -> NCHW), including the
    graph's output. Kernels are in execution order; a chain is followed along that order.
    `edges`: the graph's input arrives blocked / its output may stay blocked (a block inside a
    network, between two convolutions). With the profile's NCHWc channel rule a convolution the
    rewrite does not take (nchwc_runs) is such a consumer, and only a convolution that reads at
    least one block of channels starts a chain with a reorder."""
    block = nchwc_block(profile, dtype) if profile.nchwc_channels else 0
    pad = profile.nchwc_pad_multiple
    blocked = edges[0]
    last = None
    chain_channels = 0  # unknown for a chain that arrives blocked: priced unpadded
    for t in times:
        k = t.kernel
        if k.klass == "view":
            continue
        conv = k.category in ("conv", "dwconv")
        left_out = conv and block > 0 and k.conv is not None and not nchwc_runs(k.conv, block, pad)
        if conv and not left_out:
            cin = k.act_shapes[0][1] if k.act_shapes and len(k.act_shapes[0]) == 4 else 0
            if block and k.conv is not None:
                reads_blocks = nchwc_reorders_input(k.conv, block)
            else:
                reads_blocks = cin >= block if block else cin % _NCHWC_MIN_BLOCK == 0 and cin > 0
            if not blocked and reads_blocks:
                _add_reorder(t, k.in_elems * scale * _reorder_padding(cin, block), profile, dtype)
            blocked = True
            # the chain's tensor: this convolution's output channels, kept by the element-wise ops after it
            chain_channels = k.conv[2] if k.conv is not None else 0
        elif blocked and (left_out or k.category not in _BLOCKED_OK
                          or (profile.uses("nchwc_broadcast") and nchwc_unblocked_binary(k))):
            # A broadcast product reorders its small operand (the gate); the large one is the tensor a
            # squeeze-excitation's global mean read, which left the blocked layout there (or, where the
            # runtime keeps that pool blocked, here instead: one reorder either way).
            elems = min(math.prod(s) for s in k.act_shapes[:-1]) if broadcast_product(k) else k.in_elems
            _add_reorder(t, elems * scale * _reorder_padding(chain_channels, block), profile, dtype)
            blocked = False
        last = t
    if blocked and last is not None and not edges[1]:
        _add_reorder(last, last.kernel.out_elems * scale * _reorder_padding(chain_channels, block), profile, dtype,
                     dispatch=False)


# What onnxruntime's NCHWc rewrite (nchwc_transformer.cc, NchwcTransformerImpl::Transform) runs in the
# blocked layout besides convolutions: these pools whatever the layout of their input (TransformPool,
# reordering an NCHW input), and, only where every activation input already is blocked, global pools,
# the element-wise ops of TransformBinary and TransformActivation, BatchNormalization (as a 1x1
# depthwise convolution) and a channel Concat of whole blocks.
_NCHWC_POOLS = ("MaxPool", "AveragePool")
_NCHWC_GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool")
_NCHWC_FOLLOWERS = ("activation", "elementwise")


def nchwc_blocked_kernel(k: Kernel, profile: HardwareProfile, block: int, blocked_inputs: bool) -> bool:
    """Whether onnxruntime runs kernel `k` in its blocked layout (mechanism nchwc_tensors), given
    whether it has activation inputs and all of them exist blocked (`blocked_inputs`): a
    convolution its channel rule takes; a MaxPool or AveragePool over whole blocks of channels
    (without the optional indices output); and where the inputs are blocked, a global pool, an
    activation, an element-wise op of activations alone (a constant operand is no blocked
    tensor) but a broadcast product, Div or Sub (nchwc_unblocked_binary), a BatchNormalization,
    or a Concat of whole blocks along the channels."""
    if k.klass == "view" or not k.act_shapes or len(k.act_shapes[0]) != 4:
        return False
    if k.category in ("conv", "dwconv"):
        return k.conv is not None and nchwc_runs(k.conv, block, profile.nchwc_pad_multiple)
    channels = k.act_shapes[0][1]
    if len(k.op_types) == 1 and k.op_types[0] in _NCHWC_POOLS:
        return channels % block == 0 and len(k.outputs) == 1
    if not blocked_inputs:
        return False
    if len(k.op_types) == 1 and k.op_types[0] in _NCHWC_GLOBAL_POOLS + ("BatchNormalization",):
        return True
    if len(k.op_types) == 1 and k.op_types[0] == "Concat":
        *ins, out = k.act_shapes
        return (all(len(x) == 4 and x[1] % block == 0 and x[2:] == out[2:] for x in ins) and len(out) == 4
                and sum(x[1] for x in ins) == out[1])
    if k.category == "elementwise" and k.w_elems:
        return False
    return k.category in _NCHWC_FOLLOWERS and not nchwc_unblocked_binary(k)


def _producers_first(times: list[KernelTime]) -> list[KernelTime]:
    """`times` with every kernel after the kernels that write its inputs (a fused kernel stands at
    its first op, which can come before the producer of a later op's input: a convolution whose
    epilogue adds another branch's result), otherwise in their order."""
    produced = {o for t in times for o in t.kernel.outputs}
    written: set[str] = set()
    waiting: dict[str, list[KernelTime]] = {}
    out: list[KernelTime] = []
    for first in times:
        ready = [first]  # a worklist, not recursion: a long deferred chain stays flat
        while ready:
            t = ready.pop()
            missing = next((n for n, _ in t.kernel.inputs if n in produced and n not in written), None)
            if missing is not None:
                waiting.setdefault(missing, []).append(t)
                continue
            out.append(t)
            for o in t.kernel.outputs:
                written.add(o)
                ready.extend(reversed(waiting.pop(o, [])))
    done = {id(t) for t in out}
    return out + [t for t in times if id(t) not in done]  # a cycle (none in a DAG): as they were


# Views onnxruntime removes before its NCHWc rewrite: the tensor keeps its layout through them.
_NCHWC_PASS_VIEWS = ("Identity", "Dropout")


def _add_tensor_reorders(times: list[KernelTime], profile: HardwareProfile, dtype: str, scale: float,
                         edges: tuple[bool, bool] = (False, False)) -> None:
    """Mechanism nchwc_tensors: onnxruntime's NCHWc rewrite follows each tensor, not a chain
    (nchwc_transformer.cc). A kernel it runs blocked (nchwc_blocked_kernel) reads its activation
    inputs blocked: a convolution or pool reorders an input that only exists in NCHW once
    (ReorderInput, shared by later convolutions and pools: `reorder_inputs_`; a dense
    convolution of fewer input channels than a block reads NCHW instead), while the other blocked
    kernels need inputs a blocked kernel wrote (`nchwc_args_`); a convolution whose fused Add
    reads an NCHW tensor runs the Add in NCHW (its output reordered out). A kernel it runs in NCHW
    reads every input in NCHW: one that only exists blocked is reordered out once (ReorderOutput,
    Finalize), and so is a blocked graph output, on the kernel that wrote it. `edges`: the
    graph's input arrives blocked / its output may stay blocked (a block inside a network)."""
    block = nchwc_block(profile, dtype)
    if block <= 1:
        return
    produced = {o: t for t in times for o in t.kernel.outputs}
    blocked: dict[str, int] = {}  # tensor -> channels: tensors a blocked kernel wrote
    reordered: set[str] = set()  # NCHW tensors a ReorderInput has made blocked copies of
    nchw: set[str] = set()  # tensors that exist in NCHW

    def reorder(t: KernelTime, elems: float, channels: int, **kw) -> None:
        _add_reorder(t, elems * scale * _reorder_padding(channels, block), profile, dtype, **kw)

    for t in _producers_first(times):
        k = t.kernel
        for name, _ in k.inputs:
            if name not in produced and name not in blocked and name not in nchw:
                shape = k.act_shapes[0] if k.act_shapes else ()
                if edges[0]:
                    blocked[name] = k.conv[1] if k.conv is not None else shape[1] if len(shape) == 4 else 0
                else:
                    nchw.add(name)
        if k.klass == "view" and k.op_types[0] in _NCHWC_PASS_VIEWS and k.inputs:
            src = k.inputs[0][0]
            for o in k.outputs:
                if src in blocked:
                    blocked[o] = blocked[src]
                if src in nchw:
                    nchw.add(o)
            continue
        if nchwc_blocked_kernel(k, profile, block, bool(k.inputs) and all(n in blocked for n, _ in k.inputs)):
            image = k.conv is not None and not nchwc_reorders_input(k.conv, block)
            channels = k.conv[1] if k.conv is not None else k.act_shapes[0][1]
            data, *rest = k.inputs if k.conv is not None else (None, *k.inputs)
            if data is not None:  # a convolution's own input
                name, elems = data
                if image and name not in nchw:  # it reads NCHW: a blocked input is reordered out
                    reorder(t, elems, blocked.get(name, 0))
                    nchw.add(name)
                elif not image and name not in blocked and name not in reordered:
                    reorder(t, elems, channels)
                    reordered.add(name)
            out_channels = (k.conv[2] if k.conv is not None
                            else sum(x[1] for x in k.act_shapes[:-1]) if k.op_types == ["Concat"] else channels)
            if k.conv is not None:
                # a fused Add's other operand: another tensor, or the convolution's own input again
                residual = rest or ([data] if "Add" in k.op_types[1:] else [])
                unblocked = [(n, e) for n, e in residual if n not in blocked]
                if unblocked:  # the Add reads NCHW: the convolution's result is reordered out before it
                    reorder(t, unblocked[0][1], out_channels)
                    nchw.update(k.outputs)
                    continue
            for name, elems in rest:  # a pool's NCHW input; the other kernels were chosen with blocked ones
                if name not in blocked and name not in reordered:
                    reorder(t, elems, channels)
                    reordered.add(name)
            for o in k.outputs:
                blocked[o] = out_channels
        else:
            for name, elems in k.inputs:
                if name not in nchw:
                    reorder(t, elems, blocked.get(name, 0))
                    nchw.add(name)
            nchw.update(k.outputs)
    if not edges[1]:
        consumed = {name for t in times for name, _ in t.kernel.inputs}
        for o in sorted(set(produced) - consumed):
            if o in blocked and o not in nchw:
                w = produced[o]
                reorder(w, w.kernel.out_elems / max(len(w.kernel.outputs), 1), blocked[o], dispatch=False)


def _add_core_handoffs(times: list[KernelTime], profile: HardwareProfile, dtype: str, scale: float) -> None:
    """Mechanism core_handoff: a kernel on one thread reading a tensor kernels on several threads
    wrote, or several threads reading what one wrote, finds the other cores' share of it in their
    private caches and pulls it across at `cross_core_gbps` (benchmarks/ort_core_handoff.py: a
    chain alternating a 2-thread and a 1-thread op). Kernels are in execution order; a graph
    input was written by the calling thread, a view hands its input's placement on, and a tensor
    larger than its writers' private caches is left to the shared level's rate (_memory_s). Two
    kernels that both run on several threads are taken to split a tensor alike, and a tensor
    that crossed once is in every reader's cache after it (0 in `held`: no further crossing)."""
    eb = profile.dtype_bytes(dtype)
    rate = profile.cross_core_gbps * 1e9
    private = profile.private_mib * 2**20
    held: dict[str, int] = {}  # tensor -> threads of the kernel that wrote it (0: every core has it)
    for t in times:
        k = t.kernel
        if k.klass == "view":
            threads = held.get(k.inputs[0][0], 1) if k.inputs else 1
        else:
            threads = t.threads
            crossed = 0.0
            for name, elems in k.inputs:
                writers = held.get(name, 1)
                size = elems * scale * eb
                if writers and (writers > 1) != (threads > 1) and (private <= 0 or size <= private * writers):
                    crossed += size * (1 - 1 / max(writers, threads))
                    held[name] = 0
            if crossed:
                extra = crossed / rate * 1e3
                t.device_ms += extra
                t.ms += extra
        for o in k.outputs:
            held[o] = threads


def broadcast_product(k: Kernel) -> bool:
    """A product of two activations of different shapes (a squeeze-excitation's (N, C, H, W) x
    (N, C, 1, 1) gate)."""
    if k.category != "elementwise" or k.op_types != ["Mul"]:
        return False
    inputs = k.act_shapes[:-1]
    return len(inputs) >= 2 and len({tuple(s) for s in inputs}) > 1


def nchwc_unblocked_binary(k: Kernel) -> bool:
    """An element-wise op ORT's NCHWc rewrite does not keep blocked: its binary-op path takes
    Add, Sum and Mul, and keeps a Mul blocked only when its inputs share a shape (it reshapes to
    the blocked shape for Add/Sum alone), so a broadcast product and any Div or Sub read NCHW
    (nchwc_transformer.cc, TransformBinary: Mul "does not currently vectorize well for the case
    of broadcasting a NCHWc sized channel block")."""
    if k.category != "elementwise" or len(k.op_types) != 1:
        return False
    return k.op_types[0] in ("Div", "Sub") or broadcast_product(k)


def _reorder_padding(channels: int, block: int) -> float:
    """A reorder reads or writes the NCHW side as it is and the blocked side padded to whole
    blocks: its elements over the unpadded count (1 without the NCHWc channel rule)."""
    if block <= 1 or channels <= 0:
        return 1.0
    return (1.0 + _ceil_to(channels, block) / channels) / 2


class RooflineTimer:
    """GPU and CPU kernels: launch + max(compute, memory), wave-quantized (kernel_time)."""

    def __init__(self, profile: HardwareProfile, dtype: str, scale: float, weight_hit: float = 0.0):
        self.profile, self.dtype, self.scale, self.weight_hit = profile, dtype, scale, weight_hit

    def time(self, k: Kernel) -> KernelTime:
        return kernel_time(k, self.profile, self.dtype, self.scale, self.weight_hit)


def timer_for(profile: HardwareProfile, dtype: str, scale: float, weight_hit: float = 0.0):
    """The kernel timer of a device kind: the Neural Engine's own task model where the profile
    has an [ane] table, the roofline timer elsewhere."""
    if profile.ane is not None:
        from autovit.latmodel.neural_engine import NeuralEngineTimer  # it builds on this module

        return NeuralEngineTimer(profile, dtype, scale)
    return RooflineTimer(profile, dtype, scale, weight_hit)


def network_time(kernels: list[Kernel], profile: HardwareProfile, dtype: str, scale: float,
                 edges: tuple[bool, bool] = (False, False), per_run: bool = True) -> tuple[float, list[KernelTime]]:
    """Latency (ms) of the kernels run in order, and each kernel's share of it.

    For a part of a network (a block priced on its own, then summed): `edges` says whether its
    input arrives in the runtime's blocked layout and whether its output may stay in it, and
    per_run=False leaves out the once-per-inference call overhead."""
    weight_hit = 0.0
    if profile.weights_cached:
        # Repeated inference of a model whose weights fit in the last-level cache finds them there.
        w_total = sum(k.w_elems for k in kernels) * profile.dtype_bytes(dtype)
        weight_hit = min(1.0, profile.cache_mib * 2**20 / w_total) if w_total else 1.0
    timer = timer_for(profile, dtype, scale, weight_hit)
    times = [timer.time(k) for k in kernels]
    if profile.chain_reorder and profile.uses("nchwc_tensors"):
        _add_tensor_reorders(times, profile, dtype, scale, edges)
    elif profile.chain_reorder:
        _add_chain_reorders(times, profile, dtype, scale, edges)
    if profile.uses("core_handoff"):
        _add_core_handoffs(times, profile, dtype, scale)
    fb = profile.fallback
    prev_engine = profile.name
    if profile.async_dispatch:
        issue = end = 0.0
        for t in times:
            if t.kernel.klass == "view":
                issue += t.ms
                t.ms = 0.0
                continue
            issue += kernel_host_ms(t.kernel, t.launches, profile)
            new_end = max(end, issue) + t.device_ms
            t.ms = new_end - end
            end = new_end
        return end, times
    total = profile.run_us * 1e-3 if per_run else 0.0
    for t in times:
        if t.kernel.klass != "view":
            t.ms = t.device_ms + kernel_host_ms(t.kernel, t.launches, profile)
            if fb is not None and t.engine != prev_engine:
                # Switching engines costs a synchronisation and moving the inputs across.
                t.ms += fb.switch_us * 1e-3 + t.bytes / (fb.transfer_gbps * 1e9) * 1e3
                t.overhead_ms += fb.switch_us * 1e-3
                prev_engine = t.engine
        total += t.ms
    return total, times
