"""ONNX file -> onnx shape inference -> a networkx DiGraph of ops with shapes and weights.

Tensors are sorted into four kinds, because the cost model treats them differently:
- input:      a graph input (the image batch);
- activation: anything computed from an input; scales with the batch size;
- weight:     an initializer or a Constant's output consumed by an op on activations;
- static:     shape arithmetic (Shape -> Gather -> Concat -> Reshape ...) that a runtime folds
              away at load time; ops whose inputs are all static cost nothing and are left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from autovit.latmodel.errors import AutoVitError, UsageError
from autovit.latmodel.onnx_input import (
    ELEM_BYTES, MAX_DIM, MAX_VALUE_ELEMS, check_dims, check_graph, has_subgraph, inline_small_external, node_label,
    numel, read_model, subgraph_ops, tensor_value)

_ELEM_BYTES = ELEM_BYTES
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}

# Ops whose output describes a tensor's shape, not its data: static even on activations.
_SHAPE_OF = {"Shape", "Size"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...] | None  # None when shape inference could not tell
    elem_type: int
    kind: str  # input | activation | weight | static
    value: np.ndarray | None = None  # small static values (shape constants, scalars), for attrs
    # A constant added to activations (an attention mask): the shares of its entries whose
    # probability a softmax over its last axis would leave subnormal, and round to 0 (graph.exp_bands).
    exp_bands: tuple[float, float] = (0.0, 0.0)

    @property
    def numel(self) -> int:
        # math.prod: np.prod costs microseconds per call on tiny tuples, and this is the hot path.
        return math.prod(self.shape) if self.shape is not None else 0

    @property
    def is_float(self) -> bool:
        return self.elem_type in _FLOAT_TYPES

    @property
    def elem_bytes(self) -> int:
        return _ELEM_BYTES.get(self.elem_type, 4)


@dataclass
class OpNode:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpGraph:
    """The ops of one network that cost time, in execution (topological) order."""

    graph: nx.DiGraph
    tensors: dict[str, TensorInfo]
    order: list[str]
    batch: int
    input_shapes: dict[str, tuple[int, ...]]
    source: str
    params: int
    dtype: str
    warnings: list[str] = field(default_factory=list)

    def op(self, name: str) -> OpNode:
        return self.graph.nodes[name]["op"]

    def ops(self) -> list[OpNode]:
        return [self.graph.nodes[n]["op"] for n in self.order]

    def __len__(self) -> int:
        return len(self.order)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file with errors a user can act on (data stored beside it is not read)."""
    return read_model(path)


# Most axes an input shape may have (images are 4-D, video 5-D).
_MAX_RANK = 8


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' or '1x3x224x224' -> (1, 3, 224, 224)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts) or len(parts) > _MAX_RANK:
        raise UsageError(f"--input-shape '{text[:40]}': expected up to {_MAX_RANK} positive integers like 1,3,224,224")
    if any(len(p) > len(str(MAX_DIM)) or int(p) > MAX_DIM or int(p) == 0 for p in parts):
        raise UsageError(f"--input-shape '{text[:40]}': every dimension must be between 1 and {MAX_DIM:,}")
    return tuple(int(p) for p in parts)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _weight_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that hold parameters of a weight-less export (export_params=False): every
    input after the first when the file has no initializers but more than one input."""
    g = model.graph
    if g.initializer or len(g.input) < 2:
        return set()
    return {i.name for i in g.input[1:]}


def _fix_inputs(model: onnx.ModelProto, input_shape: tuple[int, ...] | None, source: str) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer} | _weight_inputs(model)
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    if not real_inputs:
        raise AutoVitError(f"{source or 'model'}: the ONNX graph has no inputs")
    if input_shape is not None and len(real_inputs) > 1:
        raise UsageError(f"--input-shape fixes one input, but the graph has {len(real_inputs)}: "
                         f"{', '.join(i.name for i in real_inputs[:4])}; give their shapes in the file instead")
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in real_inputs:
        dims = _dims(vi)
        dynamic = [d for d in dims if not isinstance(d, int) or d <= 0]
        if input_shape is not None:
            if dims and len(dims) != len(input_shape):
                raise UsageError(
                    f"--input-shape has {len(input_shape)} dims but input '{vi.name}' has {len(dims)}: {dims}")
            fixed = input_shape
        elif dynamic or not dims:
            shown = ",".join(str(d) for d in dims) or "unknown"
            raise AutoVitError(
                f"input '{vi.name}' has dynamic shape [{shown}]; pass --input-shape, e.g. --input-shape 1,3,224,224")
        else:
            fixed = tuple(int(d) for d in dims)
        check_dims(fixed, f"{source or 'model'}: input '{vi.name}'")
        shape_proto = vi.type.tensor_type.shape
        del shape_proto.dim[:]
        for d in fixed:
            shape_proto.dim.add().dim_value = d
        shapes[vi.name] = fixed
    return shapes


def _infer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Shapes of the whole graph; with onnx's data propagation only when every value it could
    compute is small: it materialises them (a Range to 1e12 followed by a Cast ran for minutes
    and took gigabytes). Where it is skipped, the bounded node-by-node pass fills the gaps."""
    try:
        plain = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=False)
        if not _small_constant_values(plain):
            return plain
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises several types for malformed graphs
        raise AutoVitError(f"{source or 'model'}: ONNX shape inference failed ({str(e).splitlines()[0][:160]})") from None


def _data_dependent(g: onnx.GraphProto, roots: set[str]) -> set[str]:
    """Tensors computed from `roots` (a Shape or Size of one depends on its shape alone)."""
    dynamic = set(roots)
    for node in g.node:
        if node.op_type not in _SHAPE_OF and any(i in dynamic for i in node.input if i):
            dynamic.update(node.output)
    return dynamic


def _small_constant_values(inferred: onnx.ModelProto) -> bool:
    """Whether every op output that does not depend on a graph input (the values data
    propagation computes) has a known size of at most MAX_VALUE_ELEMS."""
    g = inferred.graph
    inits = {i.name for i in g.initializer}
    dynamic = _data_dependent(g, {vi.name for vi in g.input if vi.name not in inits})
    types = {vi.name: vi.type for vi in list(g.value_info) + list(g.output)}
    outs = [o for n in g.node for o in n.output if o and o not in dynamic]
    return all((n := _known_numel(types.get(o))) is not None and n <= MAX_VALUE_ELEMS for o in outs)


def _has_unknown_shapes(model: onnx.ModelProto) -> bool:
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.input) if _dims(vi)}
    known |= {i.name for i in model.graph.initializer}
    return any(o and o not in known for n in model.graph.node for o in n.output if n.op_type != "Constant")


# Shape arithmetic the node-by-node pass may compute: cheap ops of the default domain whose work
# is bounded by their inputs and outputs, run only once inference has bounded their output size.
# Nothing else is ever evaluated, above all no op with a subgraph (If, Loop, Scan: a Loop's trip
# count is data, so its cost is unbounded).
_FOLDABLE = frozenset({
    "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Cast", "Transpose",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Sign", "Max", "Min", "Ceil", "Floor", "Round", "Sqrt", "Pow",
    "Clip", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where",
    "Range", "ConstantOfShape", "Expand", "Tile", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin",
})


def _known_numel(t: onnx.TypeProto | None) -> int | None:
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return numel(d.dim_value for d in dims)


def _shape_value(node: onnx.NodeProto, types: dict[str, onnx.TypeProto]) -> list[np.ndarray] | None:
    """Shape and Size of a tensor of known shape, from the shape alone."""
    t = types.get(node.input[0]) if node.input else None
    if t is None or _known_numel(t) is None:
        return None
    dims = [d.dim_value for d in t.tensor_type.shape.dim]
    if node.op_type == "Size":
        return [np.array(numel(dims), dtype=np.int64)]
    attrs = {a.name: a.i for a in node.attribute}
    return [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]


def _fold(node: onnx.NodeProto, ins: list[str], outs: dict[str, onnx.TypeProto],
          values: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """Evaluate a whitelisted op on known values when inference bounded every output's size."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or not all(i in values for i in ins):
        return None
    sizes = [_known_numel(outs.get(o)) for o in node.output if o]
    if not sizes or any(n is None or n > MAX_VALUE_ELEMS for n in sizes):
        return None
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(node).run(None, {i: values[i] for i in ins})]
    except Exception:  # the reference runtime cannot evaluate it: the inferred types stand
        return None


def _infer_node(node: onnx.NodeProto, ins: list[str], opset: dict[str, int], types: dict[str, onnx.TypeProto],
                values: dict[str, np.ndarray]) -> dict[str, onnx.TypeProto]:
    from onnx import defs

    if not all(i in types for i in ins):
        return {}
    try:
        schema = defs.get_schema(node.op_type, opset.get(node.domain, 1), node.domain)
        data = {i: numpy_helper.from_array(values[i], i) for i in ins if i in values}
        return dict(onnx.shape_inference.infer_node_outputs(schema, node, {i: types[i] for i in ins}, data))
    except Exception:  # unknown op or failed inference: its outputs stay unknown
        return {}


def _infer_node_by_node(model: onnx.ModelProto, data_inputs: set[str]) -> dict[str, onnx.TypeProto]:
    """Shapes of every tensor, one node at a time, computing the shape arithmetic that depends
    only on constants and tensor shapes (e.g. TF-style "same" padding computed from x.shape) so
    that it becomes known. Valid because every input shape is fixed. Used only where the
    whole-graph inference leaves gaps; evaluates only `_FOLDABLE` ops of bounded size."""
    g = model.graph
    opset = {o.domain: o.version for o in model.opset_import}
    types: dict[str, onnx.TypeProto] = {vi.name: vi.type for vi in list(g.value_info) + list(g.input)}
    values: dict[str, np.ndarray] = {}
    for init in g.initializer:
        types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        v = tensor_value(init)
        if v is not None:
            values[init.name] = v
    dynamic = _data_dependent(g, data_inputs)
    for node in g.node:
        ins = [i for i in node.input if i]
        outs = _infer_node(node, ins, opset, types, values)
        if node.op_type not in _SHAPE_OF and any(i in dynamic for i in ins):
            computed = None
        elif node.op_type in _SHAPE_OF:
            computed = _shape_value(node, types)
        elif node.op_type == "Constant":
            info = _constant_info(node, MAX_VALUE_ELEMS)
            computed = [info[2]] if info is not None and info[2] is not None else None
        else:
            computed = _fold(node, ins, outs, values)
        types.update(outs)
        for name, v in zip(node.output, computed or []):
            try:
                types[name] = onnx.helper.make_tensor_type_proto(
                    onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            except (TypeError, ValueError, KeyError):
                continue  # a value of no tensor type (strings, objects): its inferred type stands
            if v.size <= MAX_VALUE_ELEMS:
                values[name] = v
    return types


def _tensor_table(g: onnx.GraphProto, shapes: dict[str, tuple[int, ...]], weight_inputs: set[str],
                  extra_types: dict[str, onnx.TypeProto], source: str) -> dict[str, TensorInfo]:
    """Every tensor's shape, type and first guess at its kind (inputs, stored constants)."""
    tensors: dict[str, TensorInfo] = {}
    value_infos = list(g.value_info) + list(g.input) + list(g.output)
    value_infos += [onnx.helper.make_value_info(name, t) for name, t in extra_types.items()]
    for vi in value_infos:
        dims = _dims(vi)
        shape = tuple(int(d) for d in dims) if dims and all(isinstance(d, int) and d > 0 for d in dims) else (
            () if vi.type.tensor_type.HasField("shape") and not dims else None)
        if shape:
            check_dims(shape, f"{source or 'model'}: tensor '{vi.name}'")
        tensors[vi.name] = TensorInfo(vi.name, shape, vi.type.tensor_type.elem_type, "activation")
    for name in shapes:
        tensors[name].kind = "input"
    for name in weight_inputs:
        tensors[name].kind = "static"  # a parameter whose values were left out of the file
    for init in g.initializer:
        tensors[init.name] = TensorInfo(init.name, tuple(int(d) for d in init.dims), init.data_type, "static",
                                        tensor_value(init, _VALUE_ELEMS))
    for sp in g.sparse_initializer:
        tensors[sp.values.name] = TensorInfo(sp.values.name, tuple(int(d) for d in sp.dims), sp.values.data_type, "static")
    return tensors


# Values kept on a TensorInfo (axes, scalars, small shape constants that op attributes refer to).
_VALUE_ELEMS = 64

# IEEE 754 binary32: a value below 2**-126 is subnormal, and one below half the smallest subnormal,
# 2**-150, rounds to 0; as natural logs:
LOG_SMALLEST_NORMAL = -126 * math.log(2.0)  # -87.3
LOG_ROUNDS_TO_ZERO = -150 * math.log(2.0)  # -104.0
# Largest constant read for its exp bands (elements): Swin-L's first mask at 384 px is 64 x 144 x 144 (1.3 M).
_BAND_ELEMS = 1 << 23


def exp_bands(value: np.ndarray) -> tuple[float, float]:
    """What a softmax over the last axis makes of scores this constant is added to, the scores
    themselves taken as small beside it (a randomly initialised network's are): the shares of
    its entries whose probability is a subnormal fp32, and whose probability rounds to 0, its exp
    having left the normal range on the way. (0, 0) when every probability stays normal."""
    if value.ndim == 0 or value.shape[-1] < 2 or value.size == 0:
        return (0.0, 0.0)
    # No probability of a row can fall below exp(-(its spread)) / (its length): a constant whose
    # whole spread keeps that normal (a bias, an embedding) needs no float64 pass (NaN and inf
    # spreads fail the test and take the full one)
    with np.errstate(invalid="ignore", over="ignore"):
        spread = float(np.ptp(value))
    if spread + math.log(value.shape[-1]) < -LOG_SMALLEST_NORMAL:
        return (0.0, 0.0)
    rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = rows - rows.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    # NaN (a row holding inf or NaN) compares false: counted in neither
    zero = log_p <= LOG_ROUNDS_TO_ZERO
    subnormal = (log_p < LOG_SMALLEST_NORMAL) & ~zero
    return (float(subnormal.mean()), float(zero.mean()))


def _mark_exp_bands(g: onnx.GraphProto, graph: nx.DiGraph, order: list[str], tensors: dict[str, TensorInfo]) -> None:
    """Set exp_bands on every fp32 constant a run-time Add reads (masks reach a softmax that way)."""
    wanted = {i for n in order if graph.nodes[n]["op"].op_type == "Add" for i in graph.nodes[n]["op"].inputs
              if i in tensors and tensors[i].kind in ("weight", "static")
              and tensors[i].elem_type == onnx.TensorProto.FLOAT and 2 <= tensors[i].numel <= _BAND_ELEMS}
    if not wanted:
        return
    stored = {init.name: init for init in g.initializer if init.name in wanted}
    stored.update({node.output[0]: a.t for node in g.node if node.op_type == "Constant" and node.output
                   and node.output[0] in wanted for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR})
    for name, proto in stored.items():
        value = tensor_value(proto, _BAND_ELEMS)
        if value is not None and value.dtype == np.float32:
            tensors[name].exp_bands = exp_bands(value)


def _constant_info(node: onnx.NodeProto, max_elems: int) -> tuple[tuple[int, ...], int, np.ndarray | None] | None:
    """(shape, element type, value if at most `max_elems`) of a Constant's output, or None for
    the kinds that never feed shape arithmetic (strings, sparse)."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return tuple(int(d) for d in a.t.dims), a.t.data_type, tensor_value(a.t, max_elems)
        if a.name in ("value_int", "value_ints", "value_float", "value_floats"):
            is_int = a.name.startswith("value_int")
            elem = onnx.TensorProto.INT64 if is_int else onnx.TensorProto.FLOAT
            values = onnx.helper.get_attribute_value(a)
            shape = (len(values),) if a.name.endswith("s") else ()
            if math.prod(shape) > max_elems:
                return shape, elem, None
            return shape, elem, np.asarray(values, dtype=np.int64 if is_int else np.float32)
    return None


def _constant(node: onnx.NodeProto, tensors: dict[str, TensorInfo]) -> None:
    """A Constant's output: static, with its value when small."""
    out = node.output[0] if node.output else ""
    info = _constant_info(node, _VALUE_ELEMS)
    if out and info is not None:
        tensors[out] = TensorInfo(out, *info[:2], "static", info[2])
    elif out in tensors:
        tensors[out].kind = "static"


def _control_flow_warning(nodes) -> list[str]:
    """If/Loop/Scan bodies are not priced (a Loop's trip count is data); say so, never 0 ms silently."""
    found = [(node_label(n, i), subgraph_ops(n)) for i, n in enumerate(nodes) if has_subgraph(n)]
    if not found:
        return []
    shown = ", ".join(label for label, _ in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return [f"control flow is not priced: {sum(n for _, n in found)} ops inside the subgraphs of {shown} "
            "are left out of the estimate"]


def build_graph(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None,
                source: str = "", base_dir: str | Path | None = None) -> OpGraph:
    """Shape-infer `model` and keep the ops that do work at run time.

    `input_shape` fixes a single graph input's shape (needed when it has dynamic dims);
    `base_dir` is the model file's folder, the only place its external data is read from.
    """
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    check_graph(model_copy, source)
    inline_small_external(model_copy, Path(base_dir) if base_dir is not None else None, source)
    shapes = _fix_inputs(model_copy, input_shape, source)
    inferred = _infer(model_copy, source)
    g = inferred.graph
    extra_types = _infer_node_by_node(inferred, set(shapes)) if _has_unknown_shapes(inferred) else {}
    tensors = _tensor_table(g, shapes, _weight_inputs(model_copy), extra_types, source)
    graph, order = _run_time_ops(g, tensors, set(shapes))
    _mark_exp_bands(g, graph, order, tensors)
    if not order:
        raise AutoVitError(f"{source or 'model'}: no op computes on the graph's input "
                           f"({', '.join(shapes)}); there is nothing to price")
    # Weights are counted once even when several ops read them (tied embeddings, shared heads);
    # BatchNorm running statistics are buffers, not parameters.
    buffers = {op.inputs[i] for op in (graph.nodes[n]["op"] for n in order)
               if op.op_type == "BatchNormalization" for i in (3, 4) if i < len(op.inputs)}
    params = sum(t.numel for t in tensors.values() if t.kind == "weight" and t.name not in buffers)
    warn = _control_flow_warning(g.node)
    unknown_shapes = [n for n in order if any(tensors[o].shape is None for o in graph.nodes[n]["op"].outputs)]
    if unknown_shapes:
        warn.append(f"{len(unknown_shapes)} ops have outputs of unknown shape (priced from their inputs): "
                    + ", ".join(sorted({graph.nodes[n]['op'].op_type for n in unknown_shapes})))
    first = next(iter(shapes.values()))
    batch = first[0] if first else 1
    float_types = [tensors[n].elem_type for n in shapes if tensors[n].is_float]
    dtype = "fp16" if float_types and float_types[0] == onnx.TensorProto.FLOAT16 else "fp32"
    return OpGraph(graph, tensors, order, batch, shapes, source, params, dtype, warn)


def _run_time_ops(g: onnx.GraphProto, tensors: dict[str, TensorInfo], inputs: set[str]) -> tuple[nx.DiGraph, list[str]]:
    """The ops that compute on the inputs, in order, as a DiGraph; sorts tensors into kinds."""
    dynamic: set[str] = set(inputs)
    graph = nx.DiGraph()
    order: list[str] = []
    producer: dict[str, str] = {}
    for idx, node in enumerate(g.node):
        if node.op_type == "Constant":
            _constant(node, tensors)
            continue
        name = node.name or f"{node.op_type}_{idx}"
        if name in graph:  # node names need not be unique in ONNX; ours key the graph
            name = f"{name}#{idx}"
        ins = [i for i in node.input if i]
        is_dynamic = any(i in dynamic for i in ins) and node.op_type not in _SHAPE_OF
        for o in node.output:
            if o not in tensors:
                tensors[o] = TensorInfo(o, None, onnx.TensorProto.FLOAT, "activation")
            if is_dynamic:
                dynamic.add(o)
            else:
                tensors[o].kind = "static"
        if not is_dynamic:
            continue  # folded at load time by every runtime we model
        for i in ins:
            t = tensors.get(i)
            # A float tensor read by a run-time op is a weight; scalars (scales, epsilons) and
            # integer data (shapes, axes, indices) are constants.
            if t is not None and i not in dynamic and t.kind == "static" and t.is_float and t.numel > 1:
                t.kind = "weight"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op = OpNode(name, node.op_type, ins, [o for o in node.output if o], attrs)
        graph.add_node(name, op=op)
        order.append(name)
        for i in ins:
            if i in producer:
                graph.add_edge(producer[i], name, tensor=i)
        for o in op.outputs:
            producer[o] = name
    return graph, order


def graph_from_onnx_file(path: str | Path, input_shape: tuple[int, ...] | None = None) -> OpGraph:
    return build_graph(load_onnx(path), input_shape, source=str(path), base_dir=Path(path).parent)
