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

from autovit.latmodel.errors import AutoVitError

# ONNX element type -> bytes per element.
_ELEM_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.BOOL: 1,
}
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
    """Read an ONNX file with errors a user can act on."""
    p = Path(path)
    if not p.exists():
        raise AutoVitError(f"model file not found: {p}")
    if not p.is_file():
        raise AutoVitError(f"not a file: {p}")
    data = p.read_bytes()
    if not data:
        raise AutoVitError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception:
        raise AutoVitError(f"{p}: not a readable ONNX model (truncated or another format); re-export it") from None
    if not model.graph.node:
        raise AutoVitError(f"{p}: not a readable ONNX model (no graph nodes; truncated or another format)")
    return model


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' or '1x3x224x224' -> (1, 3, 224, 224)."""
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise AutoVitError(f"--input-shape '{text}': expected integers like 1,3,224,224") from None
    if not dims or min(dims) <= 0:
        raise AutoVitError(f"--input-shape '{text}': every dimension must be a positive integer")
    return dims


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


def _fix_inputs(model: onnx.ModelProto, input_shape: tuple[int, ...] | None) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer} | _weight_inputs(model)
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    if not real_inputs:
        raise AutoVitError("the ONNX graph has no inputs")
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in real_inputs:
        dims = _dims(vi)
        dynamic = [d for d in dims if not isinstance(d, int) or d <= 0]
        if input_shape is not None and len(real_inputs) == 1:
            if dims and len(dims) != len(input_shape):
                raise AutoVitError(
                    f"--input-shape has {len(input_shape)} dims but input '{vi.name}' has {len(dims)}: {dims}")
            fixed = input_shape
        elif dynamic or not dims:
            shown = ",".join(str(d) for d in dims) or "unknown"
            raise AutoVitError(
                f"input '{vi.name}' has dynamic shape [{shown}]; pass --input-shape, e.g. --input-shape 1,3,224,224")
        else:
            fixed = tuple(int(d) for d in dims)
        shape_proto = vi.type.tensor_type.shape
        del shape_proto.dim[:]
        for d in fixed:
            shape_proto.dim.add().dim_value = d
        shapes[vi.name] = fixed
    return shapes


def _infer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises several types for malformed graphs
        raise AutoVitError(f"{source or 'model'}: ONNX shape inference failed ({str(e).splitlines()[0][:160]})") from None


def _has_unknown_shapes(model: onnx.ModelProto) -> bool:
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.input) if _dims(vi)}
    known |= {i.name for i in model.graph.initializer}
    return any(o and o not in known for n in model.graph.node for o in n.output if n.op_type != "Constant")


# Largest static tensor evaluated while inferring shapes (shape arithmetic is a few integers).
_FOLD_MAX_ELEMS = 100_000


def _infer_node_by_node(model: onnx.ModelProto, data_inputs: set[str]) -> dict[str, onnx.TypeProto]:
    """Shapes of every tensor, one node at a time, evaluating the ops that depend only on
    constants and on tensor shapes (onnx.reference) so that shape arithmetic done at run time
    (e.g. TF-style "same" padding computed from x.shape) becomes known. Valid because every
    input shape is fixed. Used only where the whole-graph inference leaves gaps."""
    from onnx import defs
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    opset = {o.domain: o.version for o in model.opset_import}
    types: dict[str, onnx.TypeProto] = {vi.name: vi.type for vi in list(g.value_info) + list(g.input)}
    values: dict[str, np.ndarray] = {}
    for init in g.initializer:
        types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        if int(np.prod(init.dims)) <= _FOLD_MAX_ELEMS:
            values[init.name] = numpy_helper.to_array(init)
    dynamic = set(data_inputs)
    for node in g.node:
        ins = [i for i in node.input if i]
        is_dynamic = node.op_type not in _SHAPE_OF and any(i in dynamic for i in ins)
        if is_dynamic:
            dynamic.update(node.output)
        else:
            try:
                if node.op_type == "Shape":
                    dims = [d.dim_value for d in types[node.input[0]].tensor_type.shape.dim]
                    attrs = {a.name: a.i for a in node.attribute}
                    if all(d > 0 for d in dims):
                        out = [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]
                    else:
                        out = None
                elif all(i in values for i in ins):
                    out = ReferenceEvaluator(node).run(None, {i: values[i] for i in ins})
                else:
                    out = None
            except Exception:
                out = None  # the reference runtime cannot evaluate it: fall through to inference
            if out is not None:
                for name, v in zip(node.output, out):
                    v = np.asarray(v)
                    types[name] = onnx.helper.make_tensor_type_proto(
                        onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                    if v.size <= _FOLD_MAX_ELEMS:
                        values[name] = v
                continue
        if not all(i in types for i in ins):
            continue
        try:
            schema = defs.get_schema(node.op_type, opset.get(node.domain, 1), node.domain)
            data = {i: numpy_helper.from_array(values[i], i) for i in ins if i in values}
            outs = onnx.shape_inference.infer_node_outputs(schema, node, {i: types[i] for i in ins}, data)
        except Exception:
            continue  # unknown op or failed inference: its outputs stay unknown
        types.update(outs)
    return types


def build_graph(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None,
                source: str = "") -> OpGraph:
    """Shape-infer `model` and keep the ops that do work at run time.

    `input_shape` fixes a single graph input's shape (needed when it has dynamic dims).
    """
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    shapes = _fix_inputs(model_copy, input_shape)
    inferred = _infer(model_copy, source)
    g = inferred.graph
    extra_types = _infer_node_by_node(inferred, set(shapes)) if _has_unknown_shapes(inferred) else {}

    tensors: dict[str, TensorInfo] = {}
    value_infos = list(g.value_info) + list(g.input) + list(g.output)
    value_infos += [onnx.helper.make_value_info(name, t) for name, t in extra_types.items()]
    for vi in value_infos:
        dims = _dims(vi)
        shape = tuple(int(d) for d in dims) if dims and all(isinstance(d, int) and d > 0 for d in dims) else (
            () if vi.type.tensor_type.HasField("shape") and not dims else None)
        tensors[vi.name] = TensorInfo(vi.name, shape, vi.type.tensor_type.elem_type, "activation")
    for name in shapes:
        tensors[name].kind = "input"
    for name in _weight_inputs(model_copy):
        tensors[name].kind = "static"  # a parameter whose values were left out of the file
    for init in g.initializer:
        arr_shape = tuple(int(d) for d in init.dims)
        value = numpy_helper.to_array(init) if int(np.prod(arr_shape)) <= 64 else None
        tensors[init.name] = TensorInfo(init.name, arr_shape, init.data_type, "static", value)

    dynamic: set[str] = set(shapes)
    graph = nx.DiGraph()
    order: list[str] = []
    producer: dict[str, str] = {}
    warn: list[str] = []
    for idx, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{idx}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            t = attrs.get("value")
            if isinstance(t, onnx.TensorProto):
                arr_shape = tuple(int(d) for d in t.dims)
                value = numpy_helper.to_array(t) if int(np.prod(arr_shape)) <= 64 else None
                tensors[node.output[0]] = TensorInfo(node.output[0], arr_shape, t.data_type, "static", value)
            continue
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
        op = OpNode(name, node.op_type, ins, [o for o in node.output if o], attrs)
        graph.add_node(name, op=op)
        order.append(name)
        for i in ins:
            if i in producer:
                graph.add_edge(producer[i], name, tensor=i)
        for o in op.outputs:
            producer[o] = name
    # Weights are counted once even when several ops read them (tied embeddings, shared heads);
    # BatchNorm running statistics are buffers, not parameters.
    buffers = {op.inputs[i] for op in (graph.nodes[n]["op"] for n in order)
               if op.op_type == "BatchNormalization" for i in (3, 4) if i < len(op.inputs)}
    params = sum(t.numel for t in tensors.values() if t.kind == "weight" and t.name not in buffers)
    unknown_shapes = [n for n in order if any(tensors[o].shape is None for o in graph.nodes[n]["op"].outputs)]
    if unknown_shapes:
        warn.append(f"{len(unknown_shapes)} ops have outputs of unknown shape (priced from their inputs): "
                    + ", ".join(sorted({graph.nodes[n]['op'].op_type for n in unknown_shapes})))
    first = next(iter(shapes.values()))
    batch = first[0] if first else 1
    float_types = [tensors[n].elem_type for n in shapes if tensors[n].is_float]
    dtype = "fp16" if float_types and float_types[0] == onnx.TensorProto.FLOAT16 else "fp32"
    return OpGraph(graph, tensors, order, batch, shapes, source, params, dtype, warn)


def graph_from_onnx_file(path: str | Path, input_shape: tuple[int, ...] | None = None) -> OpGraph:
    return build_graph(load_onnx(path), input_shape, source=str(path))
