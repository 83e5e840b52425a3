import onnx
import pytest
from onnx import TensorProto, helper

from autovit.latmodel.costs import price_graph
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.graph import build_graph, graph_from_onnx_file, load_onnx, parse_input_shape

from conftest import _init, conv_model, make_model


def test_conv_flops_and_weights():
    g = build_graph(conv_model(cin=16, cout=32, hw=8))
    costs = price_graph(g)
    conv = next(c for c in costs.values() if c.op_type == "Conv")
    assert conv.category == "conv" and conv.klass == "matrix"
    assert conv.flops == 2 * 32 * 8 * 8 * 16 * 9 + 32 * 8 * 8  # MACs x 2 + bias
    assert conv.w_elems == 32 * 16 * 9 + 32
    assert conv.gemm == (1, 64, 32, 144)
    assert g.params == 32 * 16 * 9 + 32


def test_depthwise_is_vector_work():
    g = build_graph(conv_model(cin=16, cout=16, group=16))
    conv = next(c for c in price_graph(g).values() if c.op_type == "Conv")
    assert conv.category == "dwconv" and conv.klass == "vector" and conv.gemm is None


def test_matmul_kinds():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 10, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),                 # x @ W: a linear layer
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "ht"], ["s"]),                # activation x activation
             helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    g = build_graph(make_model(nodes, [x], [y], [_init("w", (16, 8))]))
    c = {k.split("_")[0]: v for k, v in price_graph(g).items()}
    lin, att = [v for v in price_graph(g).values() if v.op_type == "MatMul"]
    assert lin.category == "linear" and lin.gemm == (1, 20, 8, 16) and lin.batch_in == "m"
    assert att.category == "attention" and att.gemm == (2, 10, 10, 8) and att.batch_in == "count"
    assert att.flops == 2 * 2 * 10 * 10 * 8
    assert c  # every op priced


def test_shape_arithmetic_is_folded_away():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["nu"]),
             helper.make_node("Concat", ["nu", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [onnx.numpy_helper.from_array(__import__("numpy").array(0, dtype="int64"), "i0"),
             onnx.numpy_helper.from_array(__import__("numpy").array([0], dtype="int64"), "ax"),
             onnx.numpy_helper.from_array(__import__("numpy").array([-1], dtype="int64"), "m1")]
    g = build_graph(make_model(nodes, [x], [y], inits))
    assert [g.op(n).op_type for n in g.order] == ["Reshape"]
    assert g.params == 0


def test_dynamic_input_needs_shape(dynamic_onnx):
    with pytest.raises(AutoVitError, match="--input-shape"):
        graph_from_onnx_file(dynamic_onnx)
    g = graph_from_onnx_file(dynamic_onnx, (4, 16, 8, 8))
    assert g.batch == 4


def test_unknown_op_priced_as_copy_with_warning(unknown_op_onnx):
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile

    m = LatencyModel(graph_from_onnx_file(unknown_op_onnx))
    assert any("FancyOp" in w for w in m.warnings)
    fancy = next(c for c in m.costs.values() if c.op_type == "FancyOp")
    assert not fancy.known and fancy.klass == "layout"
    assert m.estimate(load_profile("v100")).latency_ms > 0


def test_bad_files(tmp_path, tiny_conv_onnx):
    with pytest.raises(AutoVitError, match="not found"):
        load_onnx(tmp_path / "none.onnx")
    text = tmp_path / "t.onnx"
    text.write_text("hello, I am not a model")
    with pytest.raises(AutoVitError, match="not a readable ONNX model"):
        load_onnx(text)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_conv_onnx.read_bytes()[:200])
    with pytest.raises(AutoVitError):
        graph_from_onnx_file(cut)


def test_parse_input_shape():
    assert parse_input_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_input_shape("1x3x32x32") == (1, 3, 32, 32)
    for bad in ("a,b", "0,3,2,2", ""):
        with pytest.raises(AutoVitError):
            parse_input_shape(bad)


def test_atomic_write_keeps_old_file_on_failure_and_normal_permissions(tmp_path):
    import os

    from autovit.latmodel.io import atomic_write_bytes

    p = tmp_path / "lut.json"
    atomic_write_bytes(p, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(p, object())  # type: ignore[arg-type]  # fails mid-write
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["lut.json"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_lstm_is_priced():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, 2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=16, direction="bidirectional")
    g = build_graph(make_model([node], [x], [y], [_init("w", (2, 64, 8)), _init("r", (2, 64, 16))]))
    (c,) = price_graph(g).values()
    assert c.known and c.flops == 2 * 10 * 2 * 2 * 4 * 16 * (8 + 16)
