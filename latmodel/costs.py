"""Price each ONNX op: FLOPs, activation and weight elements, GEMM shape, parallel work.

Everything here is counted at the graph's own batch size and in elements, not bytes: the
requested batch and dtype are applied at estimate time (timing.py), so one graph serves every
batch size and precision. Activation quantities scale linearly with the batch (every sample is
independent); weights do not.

FLOPs count a multiply-add as 2 FLOPs (timm's "GMACs" are half of ours).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.graph import OpGraph, OpNode, TensorInfo

CATEGORIES = ("conv", "dwconv", "attention", "linear", "norm", "activation", "elementwise",
              "layout", "pooling", "other")

ACTIVATIONS = {
    "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2, "Sigmoid": 4, "HardSigmoid": 3,
    "HardSwish": 4, "Tanh": 6, "Erf": 8, "Gelu": 10, "Elu": 4, "Selu": 5, "Softplus": 6,
    "Mish": 10, "Softsign": 3, "ThresholdedRelu": 1, "Celu": 4,
}
ELEMENTWISE = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Pow": 4, "Sqrt": 4, "Reciprocal": 2, "Neg": 1,
    "Abs": 1, "Exp": 4, "Log": 4, "Where": 1, "Equal": 1, "Less": 1, "Greater": 1,
    "LessOrEqual": 1, "GreaterOrEqual": 1, "Not": 1, "And": 1, "Or": 1, "Xor": 1, "Max": 1,
    "Min": 1, "Mean": 1, "Sum": 1, "Cast": 0, "Floor": 1, "Ceil": 1, "Round": 1, "Sin": 4,
    "Cos": 4, "Mod": 2, "Sign": 1, "IsNaN": 1, "IsInf": 1, "BitShift": 1,
}
NORMS = {"LayerNormalization": 8, "BatchNormalization": 2, "InstanceNormalization": 8,
         "GroupNormalization": 8, "LpNormalization": 4, "MeanVarianceNormalization": 8,
         "SimplifiedLayerNormalization": 6, "RMSNormalization": 6}
SOFTMAX = {"Softmax": 5, "LogSoftmax": 6}
# Ops that evaluate a transcendental function (exp, tanh, erf, log) per output element: their
# price per call is the profile's `transcendental_flops`, not one FLOP.
TRANSCENDENTAL = {"Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Gelu", "Elu", "Selu",
                  "Softplus", "Mish", "Celu", "Pow", "Sin", "Cos"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin"}
# Ops that only change how a tensor is indexed; a backend may elide or copy (profile decides).
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
LAYOUT = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
          "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements",
          "Compress", "ReverseSequence", "Trilu", "CenterCropPad"}
# Gates per recurrent cell: every step is gates x (input + hidden) x hidden multiply-adds.
RECURRENT = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Ops that run subgraphs: the op itself is priced as a copy of its outputs; graph.py warns that
# the work inside the subgraphs is not priced.
CONTROL_FLOW = {"If", "Loop", "Scan"}
OTHER_COMPUTE = {"Resize": 8, "Upsample": 8, "GridSample": 12, "CumSum": 1, "TopK": 4,
                 "NonZero": 1, "Einsum": 0, "Range": 1, "ConstantOfShape": 0}
# Every op type op_cost prices by its own rule (others are priced as an unknown copy): what a
# profile may name where it gives a figure per op type (hardware.py, [overhead.host_us]).
KNOWN_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul",
                            *ACTIVATIONS, *ELEMENTWISE, *NORMS, *SOFTMAX, *POOLS, *REDUCES, *VIEWS, *LAYOUT,
                            *RECURRENT, *CONTROL_FLOW, *OTHER_COMPUTE})


@dataclass
class OpCost:
    """The work of one op at the graph's batch size (elements, FLOPs; no device involved)."""

    name: str
    op_type: str
    category: str
    klass: str  # matrix | vector | layout | view
    flops: float
    in_elems: int  # activation elements read
    out_elems: int  # activation elements written
    w_elems: int  # weight elements read (not scaled by batch)
    work_elems: int  # independent output elements (parallel work for vector ops)
    gemm: tuple[int, int, int, int] | None = None  # (count, M, N, K)
    batch_in: str = "m"  # where the batch multiplies a GEMM: "m" (folded into rows) or "count"
    known: bool = True
    act_shapes: list[tuple[int, ...]] = field(default_factory=list)  # activations touched (for layout padding)
    transcendentals: int = 0  # exp/tanh/erf/log evaluations
    runs: int = 0  # contiguous runs a strided copy moves (a transpose of the last axis: one per element)
    rows: int = 0  # rows a last-axis reduction walks (LayerNorm, Softmax): each ends in a horizontal reduction
    moves_last_axis: bool = False  # a transpose whose output's last axis is another input axis (a transposing copy)
    winograd_3x3: bool = False  # a dense 3x3, stride-1, undilated 2-D convolution (Winograd-eligible)
    # A 2-D convolution as (batch, input channels, output channels, groups, kernel elements, output
    # pixels): a runtime decides its algorithm (and data layout) from these (timing.nchwc_runs).
    conv: tuple[int, int, int, int, int, int] | None = None
    # What ATen's choice of a CPU convolution backend reads (ConvParams::use_mkldnn; timing.thnn_conv):
    # the filter's spatial shape, the input's elements, and whether slow_conv2d could skip its
    # im2col copy (a 1x1 filter, unit strides, no padding).
    filter_shape: tuple[int, ...] = ()
    conv_in_elems: int = 0
    im2col_free: bool = False
    # How a direct convolution walks its output (timing.mlas_conv_share): (output rows, output
    # columns per row, columns per row whose window crosses the padding); a pointwise convolution
    # (1x1, unit strides, unpadded) as one row of all its pixels per image.
    conv_cols: tuple[int, ...] = ()
    # A last-axis Softmax whose scores carry a constant mask (graph.exp_bands): its probabilities
    # that are subnormal floats, and that round to 0 on the way through exp's subnormal range
    # (graph batch).
    exp_subnormal: int = 0
    exp_zero: int = 0
    # A transpose's runs where only a permutation moving one axis as written, size-1 axes included,
    # is copied at bandwidth: onnxruntime's Transpose (transpose.cc: IsTransposeMovingSingleAxis
    # on the permutation it is given) runs any other by its generic loop, run by run (mechanism
    # ort_transpose). Equal to `runs` unless a size-1 axis moves too.
    raw_runs: int = 0
    # A MatMul whose left operand is such a softmax's output: (its subnormal elements at the graph's
    # batch, the columns of the product each is multiplied over).
    subnormal_reads: tuple[tuple[int, int], ...] = ()


def _producer(g: OpGraph, op: OpNode, tensor: str) -> OpNode | None:
    for pred, _, data in g.graph.in_edges(op.name, data=True):
        if data.get("tensor") == tensor:
            return g.op(pred)
    return None


# Steps walked back from a softmax to the mask added to its scores (Swin: Add, Reshape).
_MASK_STEPS = 8


def softmax_exp_bands(g: OpGraph, op: OpNode) -> tuple[int, int]:
    """(subnormal, zero) probabilities of a Softmax over the last axis (OpCost.exp_subnormal,
    exp_zero): the bands of the constant added to its scores, found by walking back through views
    and Adds that keep the row length, over the op's elements."""
    t = g.tensors
    x = t.get(op.inputs[0]) if op.inputs else None
    if x is None or not x.shape or len(x.shape) < 2 or x.elem_type != TensorProto.FLOAT:
        return (0, 0)
    # Without the attribute the default depends on the opset (-1 from 13, before it 1 over the input
    # flattened to 2-D): only a 2-D input reads the same under both.
    if "axis" not in op.attrs and len(x.shape) != 2:
        return (0, 0)
    axis = int(op.attrs.get("axis", -1))
    if axis not in (-1, len(x.shape) - 1):
        return (0, 0)
    row = x.shape[-1]
    node, name = op, op.inputs[0]
    for _ in range(_MASK_STEPS):
        p = _producer(g, node, name)
        if p is None or (p.op_type not in VIEWS and p.op_type != "Add"):
            return (0, 0)
        for c in (t[i] for i in p.inputs if i in t):
            if any(c.exp_bands) and c.shape and c.shape[-1] == row:
                return (round(c.exp_bands[0] * x.numel), round(c.exp_bands[1] * x.numel))
        nxt = [i for i in p.inputs[:1 if p.op_type in VIEWS else 2]
               if i in t and t[i].kind in ("activation", "input") and t[i].shape and t[i].shape[-1] == row]
        if not nxt:
            return (0, 0)
        node, name = p, nxt[0]
    return (0, 0)


def _subnormal_reads(g: OpGraph, op: OpNode) -> int:
    """Subnormal elements of a MatMul's left operand: the output of a masked softmax (through views)."""
    node, name = op, op.inputs[0]
    for _ in range(_MASK_STEPS):
        p = _producer(g, node, name)
        if p is None:
            return 0
        if p.op_type == "Softmax":
            return softmax_exp_bands(g, p)[0]
        if p.op_type not in VIEWS:
            return 0
        node, name = p, p.inputs[0]
    return 0


def _shape(t: TensorInfo | None) -> tuple[int, ...] | None:
    return t.shape if t is not None else None


def _transpose_runs(shape: tuple[int, ...] | None, perm, raw: bool = False) -> int:
    """Contiguous runs a transpose copies: elements / the longest input suffix that stays the
    output's suffix in order. A copy's cost per run is what makes a permute of short inner axes
    (MobileViT's unfold moves 2-element runs) many times slower than its bytes. `raw`: whether
    one axis moved is judged on the permutation as written, size-1 axes included, as
    onnxruntime's Transpose judges it (OpCost.raw_runs)."""
    if not shape:
        return 0
    rank = len(shape)
    perm = list(perm) if perm is not None else list(range(rank))[::-1]
    # Size-1 axes do not break a run.
    kept = [a for a in perm if shape[a] != 1]
    moved = perm if raw else kept
    for i in range(len(moved)):
        rest = moved[:i] + moved[i + 1:]
        if rest == sorted(rest):
            # One axis moved (a batched 2-D transpose, e.g. K^T in attention): runtimes copy it
            # in cache-blocked tiles (ORT/MLAS MlasTranspose), at bandwidth, not run by run.
            return 0
    run = 1
    if raw:
        # onnxruntime's generic loop copies the trailing axes that stay in place, size-1 ones
        # included: a size-1 axis that moves ends the block (DoUntypedTranspose)
        for i in reversed(range(rank)):
            if perm[i] != i:
                break
            run *= shape[i]
    else:
        expect = max((a for a in range(rank) if shape[a] != 1), default=-1)
        for a in reversed(kept):
            if a != expect:
                break
            run *= shape[a]
            expect = max((b for b in range(a) if shape[b] != 1), default=-1)
    n = math.prod(shape)
    return n // run if run < n else 0


def _moves_last_axis(shape: tuple[int, ...] | None, perm) -> bool:
    """Whether a transpose puts another axis last (size-1 axes ignored): the copy then transposes
    rows instead of moving whole rows."""
    if not shape:
        return False
    rank = len(shape)
    perm = list(perm) if perm is not None else list(range(rank))[::-1]
    kept = [a for a in perm if shape[a] != 1]
    last_in = max((a for a in range(rank) if shape[a] != 1), default=-1)
    return bool(kept) and kept[-1] != last_in


def op_cost(g: OpGraph, op: OpNode) -> OpCost:
    """Price one op of `g`. Unknown ops are priced as a memory-bound copy with known=False."""
    t = g.tensors
    acts = [t[i] for i in op.inputs if i in t and t[i].kind in ("activation", "input")]
    weights = [t[i] for i in op.inputs if i in t and t[i].kind == "weight"]
    outs = [t[o] for o in op.outputs if o in t]
    in_elems = sum(a.numel for a in acts)
    out_elems = sum(o.numel for o in outs)
    if out_elems == 0 and outs and outs[0].shape is None:
        out_elems = max((a.numel for a in acts), default=0)  # unknown shape: assume same size as input
    w_elems = sum(w.numel for w in weights)
    shapes = [s for s in (_shape(a) for a in acts + outs) if s]
    ot = op.op_type
    if ot == "Gather" and len(op.inputs) > 1 and t.get(op.inputs[1]) is not None \
            and t[op.inputs[1]].kind == "static" and t[op.inputs[1]].numel <= 1:
        # x[i] with a constant i exports as Gather but is a slice: converters and runtimes
        # treat it as one (Core ML slice_by_index, a view in PyTorch), so it is priced as one.
        ot = "Slice"

    def mk(category: str, klass: str, flops: float, work: int | None = None, **kw) -> OpCost:
        return OpCost(op.name, ot, category, klass, float(flops), in_elems, out_elems, w_elems,
                      work if work is not None else max(out_elems, 1), act_shapes=shapes,
                      transcendentals=out_elems if ot in TRANSCENDENTAL else 0, **kw)

    if ot in ("Conv", "ConvTranspose"):
        return _conv_cost(op, t, mk, in_elems, out_elems)
    if ot in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        cost = _matmul_cost(op, t, mk)
        reads = _subnormal_reads(g, op) if ot == "MatMul" and cost.klass == "matrix" and cost.gemm else 0
        left = t.get(op.inputs[0])
        if reads and left is not None and left.numel:
            # each element of the left operand is read once per GEMM of the batch it broadcasts over
            count, m, n, k = cost.gemm
            cost.subnormal_reads = ((reads * count * m * k // left.numel, n),)
        return cost
    if ot in RECURRENT:
        return _recurrent_cost(op, t, mk)
    if ot in ACTIVATIONS:
        return mk("activation", "vector", ACTIVATIONS[ot] * out_elems)
    if ot in ELEMENTWISE:
        return mk("elementwise", "vector", ELEMENTWISE[ot] * out_elems)
    last = acts[0].shape[-1] if acts and acts[0].shape else 0
    rows = out_elems // last if last else 0
    if ot in NORMS:
        return mk("norm", "vector", NORMS[ot] * out_elems, rows=rows if ot != "BatchNormalization" else 0)
    if ot in SOFTMAX:
        sub, zero = softmax_exp_bands(g, op) if ot == "Softmax" else (0, 0)
        return mk("attention", "vector", SOFTMAX[ot] * out_elems, rows=rows, exp_subnormal=sub, exp_zero=zero)
    if ot in POOLS:
        k = op.attrs.get("kernel_shape", [1])
        window = math.prod(k) if ot in ("MaxPool", "AveragePool", "LpPool") else 0
        flops = window * out_elems if window else in_elems
        return mk("pooling", "vector", flops, work=max(out_elems, in_elems // 64, 1))
    if ot in REDUCES:
        # A mean over the last axis only is the statistics step of a decomposed LayerNorm.
        axes = op.attrs.get("axes")
        if axes is None and len(op.inputs) > 1 and op.inputs[1] in t and t[op.inputs[1]].value is not None:
            axes = list(np.atleast_1d(t[op.inputs[1]].value))
        rank = len(acts[0].shape) if acts and acts[0].shape else 0
        last_only = axes is not None and len(axes) == 1 and int(axes[0]) in (-1, rank - 1)
        return mk("norm" if last_only and ot == "ReduceMean" else "pooling", "vector", in_elems,
                  work=max(out_elems, in_elems // 64, 1))
    if ot in VIEWS:
        return mk("layout", "view", 0)
    if ot == "Transpose":
        shape, perm = (acts[0].shape if acts else None), op.attrs.get("perm")
        return mk("layout", "layout", 0, runs=_transpose_runs(shape, perm), raw_runs=_transpose_runs(shape, perm, raw=True),
                  moves_last_axis=_moves_last_axis(shape, perm))
    if ot in LAYOUT:
        return mk("layout", "layout", 0)
    if ot in OTHER_COMPUTE:
        return mk("other", "vector", OTHER_COMPUTE[ot] * out_elems)
    return mk("other", "layout", 0, known=ot in CONTROL_FLOW)


def _conv_cost(op: OpNode, t: dict[str, TensorInfo], mk, in_elems: int, out_elems: int) -> OpCost:
    x = t.get(op.inputs[0])
    w = t.get(op.inputs[1]) if len(op.inputs) > 1 else None
    y = t.get(op.outputs[0])
    group = int(op.attrs.get("group", 1))
    if not (x and w and y and x.shape and w.shape and y.shape):
        return mk("conv", "vector", 2 * out_elems, known=True)
    kernel = math.prod(w.shape[2:])
    if group < 1 or x.shape[1] % group or (op.op_type == "Conv" and y.shape[1] % group):
        raise ValueError(f"group {group} does not divide the {x.shape[1]} input and {y.shape[1]} output channels")
    if op.op_type == "ConvTranspose":
        n, cin = x.shape[0], x.shape[1]
        cout = y.shape[1]
        rows = n * math.prod(x.shape[2:])
        k = cin // group
        flops = 2.0 * rows * (cout // group) * k * kernel * group
        return mk("conv", "matrix", flops, gemm=(group, rows, cout // group, k * kernel))
    n, cin = x.shape[0], x.shape[1]
    cout = y.shape[1]
    spatial = math.prod(y.shape[2:])
    cin_g = cin // group
    macs = n * cout * spatial * cin_g * kernel
    bias = out_elems if len(op.inputs) > 2 else 0
    conv = (n, cin, cout, group, kernel, spatial) if len(w.shape) == 4 else None
    if group > 1 and cin_g == 1:  # depthwise: no reduction over channels, runs on vector units
        return mk("dwconv", "vector", 2.0 * macs + bias, conv=conv)
    unit = all(v == 1 for v in list(op.attrs.get("strides", [1])) + list(op.attrs.get("dilations", [1])))
    unpadded = not any(op.attrs.get("pads", [0])) and _auto_pad(op) in ("NOTSET", "VALID")
    im2col_free = kernel == 1 and unit and unpadded
    return mk("conv", "matrix", 2.0 * macs + bias, gemm=(group, n * spatial, cout // group, cin_g * kernel),
              winograd_3x3=group == 1 and tuple(w.shape[2:]) == (3, 3) and unit, conv=conv,
              filter_shape=tuple(w.shape[2:]), conv_in_elems=math.prod(x.shape), im2col_free=im2col_free,
              conv_cols=_conv_cols(op, x.shape, w.shape, y.shape, im2col_free))


def _auto_pad(op: OpNode) -> str:
    """A convolution's auto_pad attribute as text (the graph keeps ONNX strings as bytes)."""
    v = op.attrs.get("auto_pad", "NOTSET")
    return v.decode() if isinstance(v, bytes) else str(v)


def _conv_cols(op: OpNode, x: tuple[int, ...], w: tuple[int, ...], y: tuple[int, ...], pointwise: bool) -> tuple[int, ...]:
    """(output rows, columns per row, columns per row whose window crosses the padding) of a 2-D
    convolution (OpCost.conv_cols); () for other ranks."""
    if len(y) != 4 or len(x) != 4 or len(w) != 4:
        return ()
    n, _, ho, wo = y
    if pointwise:
        return (n, ho * wo, 0)
    kw, wi = w[3], x[3]
    stride = int((list(op.attrs.get("strides", [1, 1])) + [1, 1])[1])
    dil = int((list(op.attrs.get("dilations", [1, 1])) + [1, 1])[1])
    pads = list(op.attrs.get("pads", [])) or [0, 0, 0, 0]
    if _auto_pad(op) in ("SAME_UPPER", "SAME_LOWER"):
        total = max(0, (wo - 1) * stride + (kw - 1) * dil + 1 - wi)
        left = total // 2 if _auto_pad(op) == "SAME_UPPER" else total - total // 2
    else:
        left = int(pads[1]) if len(pads) >= 4 else 0
    span = (kw - 1) * dil + 1
    # a column is clear of the padding where its window starts at or after 0 and ends inside the input
    clear = sum(1 for c in range(wo) if c * stride - left >= 0 and c * stride - left + span <= wi)
    return (n * ho, wo, wo - clear)


def _matmul_cost(op: OpNode, t: dict[str, TensorInfo], mk) -> OpCost:
    a, b = t.get(op.inputs[0]), t.get(op.inputs[1])
    y = t.get(op.outputs[0])
    if not (a and b and a.shape and b.shape):
        out = y.numel if y is not None else 0
        return mk("linear", "vector", 2 * out)
    if op.op_type == "Gemm":
        m, k = a.shape[::-1] if op.attrs.get("transA", 0) else a.shape
        n = b.shape[0] if op.attrs.get("transB", 0) else b.shape[1]
        bias = m * n if len(op.inputs) > 2 else 0
        return mk("linear", "matrix", 2.0 * m * n * k + bias, gemm=(1, m, n, k))
    sa, sb = (a.shape if len(a.shape) > 1 else (1,) + a.shape), (b.shape if len(b.shape) > 1 else b.shape + (1,))
    m, k, n = sa[-2], sa[-1], sb[-1]
    lead = np.broadcast_shapes(sa[:-2], sb[:-2]) if (len(sa) > 2 or len(sb) > 2) else ()
    count = math.prod(lead) if lead else 1
    a_act, b_act = a.kind in ("activation", "input"), b.kind in ("activation", "input")
    flops = 2.0 * count * m * n * k
    if a_act and b_act:  # activation x activation: attention scores or attention-weighted values
        return mk("attention", "matrix", flops, gemm=(count, m, n, k), batch_in="count")
    if a_act and len(sb) == 2:  # x @ W: every leading dim is a row of one GEMM
        return mk("linear", "matrix", flops, gemm=(1, count * m, n, k), batch_in="m")
    return mk("linear", "matrix", flops, gemm=(count, m, n, k), batch_in="count")


def _recurrent_cost(op: OpNode, t: dict[str, TensorInfo], mk) -> OpCost:
    """X [T, B, I], hidden size H: T sequential steps of a (B, gates x H, I + H) GEMM. Only one
    step's outputs are independent, so that is the parallel work."""
    x = t.get(op.inputs[0])
    hidden = int(op.attrs.get("hidden_size", 0))
    dirs = 2 if op.attrs.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    if hidden < 0:
        raise ValueError(f"hidden_size {hidden} is negative")
    if not (x and x.shape and len(x.shape) == 3 and hidden):
        return mk("linear", "vector", 0, known=False)
    steps, batch, inp = x.shape
    gates = RECURRENT[op.op_type]
    flops = 2.0 * steps * batch * dirs * gates * hidden * (inp + hidden)
    return mk("linear", "vector", flops, work=batch * dirs * gates * hidden)


def price_graph(g: OpGraph) -> dict[str, OpCost]:
    """OpCost for every op of `g`, keyed by op name (execution order is g.order)."""
    costs = {}
    for name in g.order:
        op = g.op(name)
        try:
            costs[name] = op_cost(g, op)
        except (ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError) as e:
            # Attributes or input shapes that contradict the op's definition (a Conv with group 0,
            # a Gemm of a 3-D input): shape inference lets them through, the cost rules cannot.
            raise AutoVitError(f"{g.source or 'model'}: node '{name}' ({op.op_type}) has attributes or input shapes "
                               f"its ONNX definition does not allow ({type(e).__name__}: {str(e)[:80]})") from None
    return costs
