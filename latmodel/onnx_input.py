"""The ONNX reader's checks: a file that cannot hurt, tensors that are what they claim, a graph
that is one.

A latency model needs tensor shapes, not weight values, so nothing here reads weights. Values are
read only where shape arithmetic needs a few integers; data stored outside the model file is
then read only from inside the model's folder. Graph hygiene: every input a node reads is
produced by something, no tensor is produced twice, and the nodes form no cycle.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autovit.latmodel.errors import AutoVitError

# Protobuf cannot encode a message beyond 2 GiB, so a larger file is not an ONNX model.
MAX_ONNX_BYTES = 2**31
# No real network reaches these: a dimension beyond what runtimes index with 32-bit integers, or
# a tensor of more than 2**40 elements (4 TB in fp32).
MAX_DIM = 2**31 - 1
MAX_ELEMS = 2**40
# Largest stored tensor whose values are read (shape arithmetic is a few integers).
MAX_VALUE_ELEMS = 100_000
# Largest externally stored tensor read for its values: shape constants (a Reshape's target, a
# Resize's scales) have a handful; anything larger is a weight, and weights are never read.
MAX_EXTERNAL_VALUE_ELEMS = 64

# ONNX element type -> bytes per element, for the types stored one element per unit.
ELEM_BYTES = {
    TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
    TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.INT16: 2, TensorProto.INT8: 1,
    TensorProto.UINT64: 8, TensorProto.UINT32: 4, TensorProto.UINT16: 2, TensorProto.UINT8: 1,
    TensorProto.BOOL: 1, TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16,
}
_DATA_TYPES = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_COMPLEX = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}
_SUBGRAPH_ATTRS = {onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS}


def read_model(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX file without touching any data stored beside it."""
    p = Path(path)
    if not p.exists():
        raise AutoVitError(f"model file not found: {p}")
    if not p.is_file():
        raise AutoVitError(f"not a file: {p}")
    size = p.stat().st_size
    if size == 0:
        raise AutoVitError(f"{p}: empty file, not an ONNX model")
    if size >= MAX_ONNX_BYTES:
        raise AutoVitError(f"{p}: {size:,} bytes, more than an ONNX file can hold (2 GiB); not an ONNX model")
    try:
        model = onnx.load_from_string(p.read_bytes())
    except Exception:  # protobuf's DecodeError and friends: the bytes are not a ModelProto
        raise AutoVitError(f"{p}: not a readable ONNX model (truncated or another format); re-export it") from None
    if not model.graph.node:
        raise AutoVitError(f"{p}: not a readable ONNX model (no graph nodes; truncated or another format)")
    return model


def numel(dims) -> int:
    return math.prod(int(d) for d in dims)


def check_dims(dims, what: str) -> None:
    """Refuse a shape no network has (negative, beyond MAX_DIM per axis or MAX_ELEMS in all)."""
    for d in dims:
        if d < 0 or d > MAX_DIM:
            raise AutoVitError(f"{what}: dimension {d} is outside 0..{MAX_DIM:,}, beyond any real network; "
                               "the file is corrupt")
    if numel(dims) > MAX_ELEMS:
        raise AutoVitError(f"{what}: shape {list(dims)} has {numel(dims):.3g} elements, beyond any real network "
                           f"(at most {MAX_ELEMS:.3g})")


def check_tensor(t: onnx.TensorProto, what: str) -> None:
    """A stored tensor's type, dims and the size of its data agree; its external data stays local."""
    if t.data_type not in _DATA_TYPES:
        raise AutoVitError(f"{what}: data_type {t.data_type} is not an ONNX element type; the file is corrupt, re-export it")
    check_dims(t.dims, what)
    if t.data_location == TensorProto.EXTERNAL:
        location = external_location(t, what)
        norm = os.path.normpath(location)
        if os.path.isabs(location) or norm == ".." or norm.startswith(".." + os.sep):
            raise AutoVitError(f"{what}: external data '{location}' points outside the model's folder; refusing it")
        return
    size = ELEM_BYTES.get(t.data_type)
    if size is None:
        return  # packed (4-bit) and string tensors: their values are never read
    n = numel(t.dims)
    if t.raw_data:
        if len(t.raw_data) != n * size:
            raise AutoVitError(f"{what}: raw_data holds {len(t.raw_data):,} bytes but {list(t.dims)} x {size} bytes "
                               f"need {n * size:,}; the file is corrupt, re-export it")
        return
    count = len(getattr(t, helper.tensor_dtype_to_field(t.data_type)))
    if count != n * (2 if t.data_type in _COMPLEX else 1):
        raise AutoVitError(f"{what}: holds {count:,} values for shape {list(t.dims)}; the file is corrupt, re-export it")


def external_location(t: onnx.TensorProto, what: str) -> str:
    info = {e.key: e.value for e in t.external_data}
    if not info.get("location"):
        raise AutoVitError(f"{what}: stored outside the model without a location; the file is corrupt")
    return info["location"]


def _read_external(t: onnx.TensorProto, base_dir: Path, what: str) -> bytes | None:
    """The bytes of a small externally stored tensor, read from inside `base_dir` only."""
    info = {e.key: e.value for e in t.external_data}
    root = base_dir.resolve()
    path = (root / external_location(t, what)).resolve()
    if not path.is_relative_to(root):
        raise AutoVitError(f"{what}: external data '{info['location']}' resolves outside the model's folder {root}; refusing it")
    if not path.is_file():
        return None  # its shape is all the model needs unless it is shape arithmetic
    size = numel(t.dims) * ELEM_BYTES[t.data_type]
    try:
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(size)))
    except ValueError:
        raise AutoVitError(f"{what}: external data offset/length are not integers; the file is corrupt") from None
    if offset < 0 or length != size or offset + size > path.stat().st_size:
        raise AutoVitError(f"{what}: external data of {length} bytes at offset {offset} does not fit shape "
                           f"{list(t.dims)} or the {path.stat().st_size:,}-byte file {path.name}; the file is corrupt")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise AutoVitError(f"{what}: external data file {path.name} ends before the tensor's {size} bytes")
    return data


def inline_small_external(model: onnx.ModelProto, base_dir: Path | None, source: str = "") -> None:
    """Load the few tiny externally stored tensors (shape constants) into `model`, from the
    model's folder; weights stay unread, which costs nothing: only their shapes matter."""
    for init in model.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL or base_dir is None:
            continue
        if init.data_type not in ELEM_BYTES or numel(init.dims) > MAX_EXTERNAL_VALUE_ELEMS:
            continue
        data = _read_external(init, base_dir, f"{source or 'model'}: initializer '{init.name}'")
        if data is not None:
            del init.external_data[:]
            init.data_location = TensorProto.DEFAULT
            init.raw_data = data


def tensor_value(t: onnx.TensorProto, max_elems: int = MAX_VALUE_ELEMS) -> np.ndarray | None:
    """A checked stored tensor's values when it is small and held in the file, else None."""
    if t.data_location == TensorProto.EXTERNAL or numel(t.dims) > max_elems or t.data_type not in ELEM_BYTES:
        return None
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        raise AutoVitError(f"tensor '{t.name}': unreadable data ({str(e).splitlines()[0][:80]}); re-export the model") from None


def node_label(node: onnx.NodeProto, idx: int) -> str:
    return f"node '{node.name or f'{node.op_type}_{idx}'}' ({node.op_type})"


def subgraph_ops(node: onnx.NodeProto) -> int:
    """Ops inside a node's subgraphs (If branches, Loop and Scan bodies), nested ones included."""
    count = 0
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for g in graphs:
            count += sum(1 + subgraph_ops(n) for n in g.node)
    return count


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in _SUBGRAPH_ATTRS for a in node.attribute)


def check_graph(model: onnx.ModelProto, source: str) -> None:
    """Stored tensors are sound, every tensor read is produced exactly once, and the nodes form
    no cycle; nodes are put in execution order if the file lists them otherwise."""
    g = model.graph
    where = source or "model"
    for init in g.initializer:
        check_tensor(init, f"{where}: initializer '{init.name}'")
    for sp in g.sparse_initializer:
        check_dims(sp.dims, f"{where}: sparse initializer '{sp.values.name}'")
    for vi in g.input:
        elem = vi.type.tensor_type.elem_type
        if vi.type.HasField("tensor_type") and elem not in _DATA_TYPES:
            raise AutoVitError(f"{where}: input '{vi.name}' has element type {elem}, not an ONNX type; re-export the model")
    producer: dict[str, int] = {}
    outer = {i.name for i in g.input} | {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    for idx, node in enumerate(g.node):
        if not node.op_type:
            raise AutoVitError(f"{where}: node #{idx + 1} ('{node.name}') has no op type; the file is corrupt")
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                check_tensor(a.t, f"{where}: {node_label(node, idx)} attribute '{a.name}'")
        for o in node.output:
            if not o:
                continue
            if o in producer or o in outer:
                raise AutoVitError(f"{where}: {node_label(node, idx)} writes tensor '{o}', which is already "
                                   "produced elsewhere; an ONNX tensor has one producer")
            producer[o] = idx
    deps = nx.DiGraph()
    deps.add_nodes_from(range(len(g.node)))
    for idx, node in enumerate(g.node):
        for i in node.input:
            if not i or i in outer:
                continue
            if i not in producer:
                raise AutoVitError(f"{where}: {node_label(node, idx)} reads tensor '{i}', which no node, input or "
                                   "initializer produces; the graph is incomplete")
            deps.add_edge(producer[i], idx)
    try:
        cycle = nx.find_cycle(deps)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = " -> ".join(node_label(g.node[a], a) for a, _ in cycle)
        raise AutoVitError(f"{where}: the graph has a cycle ({names}); ONNX graphs are acyclic")
    if any(a > b for a, b in deps.edges):
        ordered = [g.node[i] for i in nx.lexicographical_topological_sort(deps)]
        copies = [onnx.NodeProto() for _ in ordered]
        for c, n in zip(copies, ordered):
            c.CopyFrom(n)
        del g.node[:]
        g.node.extend(copies)
