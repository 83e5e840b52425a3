"""Hostile ONNX files (issue 15): nothing runs unbounded, every bad file is one line, no traceback.

Time and memory bounds are checked by refusal: the tests record which ops the reference
evaluator is asked to run and assert that Loop and oversized constants are never among them.
"""
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from autovit.cli import lat
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.graph import graph_from_onnx_file
from conftest import _init, make_model
from test_cli import assert_one_line_error, run_cli

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def _const(name, dtype, dims, vals):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, vals))


def _ints(name, vals):
    return numpy_helper.from_array(np.array(vals, np.int64), name)


def _save(tmp_path, model, name="m.onnx"):
    p = tmp_path / name
    onnx.save(model, p)
    return p


def _with_unknown_op(nodes):
    """An op of another domain leaves shapes unknown, so the node-by-node pass runs (where
    constants used to be evaluated)."""
    nodes = nodes + [helper.make_node("FancyOp", ["r"], ["y"], domain="com.example")]
    model = make_model(nodes, [X], [Y])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


@pytest.fixture
def evaluated(monkeypatch):
    """Op types the ONNX reference evaluator is built for during the test."""
    seen = []
    init = ReferenceEvaluator.__init__

    def spy(self, proto, *a, **kw):
        seen.append(getattr(proto, "op_type", "model"))
        init(self, proto, *a, **kw)
    monkeypatch.setattr(ReferenceEvaluator, "__init__", spy)
    return seen


def _estimate_json(capsys, path, *extra):
    code, out, err = run_cli(lat, ["estimate", str(path), "--hw", "v100", "--json", *extra], capsys)
    assert code == 0, err
    return json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))


def test_loop_with_huge_trip_count_is_never_run(tmp_path, capsys, evaluated):
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("c_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [1])])
    nodes = [_const("M", TensorProto.INT64, [], [10**12]), _const("cond", TensorProto.BOOL, [], [True]),
             _const("c0", TensorProto.FLOAT, [1], [1.0]),
             helper.make_node("Loop", ["M", "cond", "c0"], ["cf"], body=body),
             helper.make_node("Add", ["x", "cf"], ["r"])]
    d = _estimate_json(capsys, _save(tmp_path, _with_unknown_op(nodes)))
    assert "Loop" not in evaluated
    assert any("control flow is not priced" in w and "Loop" in w for w in d["warnings"])


def test_constant_of_shape_is_not_materialised(tmp_path, capsys, evaluated):
    nodes = [_const("s", TensorProto.INT64, [3], [750, 1000, 1000]), helper.make_node("ConstantOfShape", ["s"], ["big"]),
             helper.make_node("Shape", ["big"], ["bs"]), helper.make_node("Relu", ["x"], ["r"])]
    d = _estimate_json(capsys, _save(tmp_path, _with_unknown_op(nodes)))
    assert "ConstantOfShape" not in evaluated and d["latency_ms"] > 0


def test_shape_arithmetic_is_still_folded(tmp_path, evaluated):
    """Small shape arithmetic keeps working (TF-"same" padding needs it): Range of 4 is computed."""
    nodes = [helper.make_node("Range", ["a", "b", "c"], ["rng"]), helper.make_node("Shape", ["rng"], ["n"]),
             helper.make_node("Concat", ["one", "n"], ["shape"], axis=0), helper.make_node("Reshape", ["x", "shape"], ["r"])]
    model = _with_unknown_op(nodes)
    model.graph.initializer.extend([_ints("a", 0), _ints("b", 256), _ints("c", 1), _ints("one", [1])])
    g = graph_from_onnx_file(_save(tmp_path, model))
    assert "Range" in evaluated and g.tensors["r"].shape == (1, 256)


@pytest.mark.parametrize("node, init, needle", [
    (helper.make_node("Range", ["a", "b", "c"], ["rng"]), [_ints("a", 0), _ints("b", 10**15), _ints("c", 1)], "'rng'"),
    (helper.make_node("ConstantOfShape", ["s"], ["big"]), [_ints("s", [10**6, 10**6, 10**6])], "'big'"),
])
def test_absurd_constant_sizes_are_refused(tmp_path, capsys, evaluated, node, init, needle):
    model = _with_unknown_op([node, helper.make_node("Relu", ["x"], ["r"])])
    model.graph.initializer.extend(init)
    code, _, err = run_cli(lat, ["estimate", str(_save(tmp_path, model)), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, needle, "beyond")
    assert not {"Range", "ConstantOfShape"} & set(evaluated)


def _external_model(tmp_path, location="w.bin"):
    """A conv + reshape saved with every tensor in an external file beside the model."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Reshape", ["c", "s"], ["y"])]
    model = make_model(nodes, [X], [Y], [_init("w", (8, 4, 3, 3)), _ints("s", [1, -1])])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return folder / "m.onnx"


def test_external_data_works_from_any_folder(tmp_path, capsys, monkeypatch):
    path = _external_model(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    d = _estimate_json(capsys, path)
    assert d["params"] == 8 * 4 * 9 and not d["warnings"]  # the reshape's target was read from w.bin


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, capsys, location):
    path = _external_model(tmp_path)
    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        for e in init.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, path)
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "outside the model's folder")


def test_external_data_symlinked_out_of_the_folder_is_refused(tmp_path, capsys):
    path = _external_model(tmp_path)
    secret = tmp_path / "secret.bin"
    (path.parent / "w.bin").rename(secret)
    (path.parent / "w.bin").symlink_to(secret)
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "outside the model's folder")


def _tensor_model(tmp_path, tensor):
    return _save(tmp_path, make_model([helper.make_node("Add", ["x", tensor.name], ["y"])], [X], [Y], [tensor]))


def _corrupt(kind):
    t = numpy_helper.from_array(np.ones(4, np.float32), "w")
    if kind == "raw_data":
        t.raw_data = b"\0" * 7
    elif kind == "data_type":
        t.data_type = 999
    elif kind == "dims":
        t.dims[0] = -4
    elif kind == "typed":
        t.ClearField("raw_data")
        t.float_data.extend([1.0, 2.0, 3.0])
    return t


@pytest.mark.parametrize("kind, needle", [("raw_data", "raw_data holds 7 bytes"), ("data_type", "data_type 999"),
                                          ("dims", "dimension -4"), ("typed", "holds 3 values")])
def test_corrupt_initializers_are_one_line(tmp_path, capsys, kind, needle):
    code, _, err = run_cli(lat, ["estimate", str(_tensor_model(tmp_path, _corrupt(kind))), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "initializer 'w'", needle)


def test_corrupt_constant_is_one_line(tmp_path, capsys):
    node = _const("c", TensorProto.FLOAT, [4], [1.0] * 4)
    node.attribute[0].t.float_data.pop()
    path = _save(tmp_path, make_model([node, helper.make_node("Add", ["x", "c"], ["y"])], [X], [Y]))
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "Constant", "holds 3 values")


@pytest.mark.parametrize("shape, needle", [("1" * 23 + ",3,8,8", "between 1 and"), ("1,0,8,8", "between 1 and"),
                                           ("1,-3,8,8", "positive integers"), ("a,b", "positive integers"),
                                           ("\u00b2,3,8,8", "positive integers"), ("\u0661,4,8,8", "positive integers"),
                                           (",".join(["1"] * 9), "up to 8")])
def test_bad_input_shapes_are_usage_errors(dynamic_onnx, capsys, shape, needle):
    code, _, err = run_cli(lat, ["estimate", str(dynamic_onnx), "--hw", "v100", "--input-shape", shape], capsys)
    assert_one_line_error(code, err, "--input-shape", needle)
    assert code == 2


def test_input_shape_for_a_graph_of_two_inputs_is_a_usage_error(tmp_path, capsys):
    x2 = helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("Add", ["x", "x2"], ["a"]), helper.make_node("Mul", ["a", "w"], ["y"])]
    path = _save(tmp_path, make_model(nodes, [X, x2], [Y], [_init("w", (8,))]))
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100", "--input-shape", "1,4,8,8"], capsys)
    assert_one_line_error(code, err, "fixes one input")
    assert code == 2


@pytest.mark.parametrize("nodes, needle", [
    ([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "ghost"], ["y"])],
     "node 'Add_1' (Add) reads tensor 'ghost'"),
    ([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Relu", ["a"], ["y"])],
     "cycle"),
    ([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])], "already produced"),
    ([helper.make_node("Shape", ["x"], ["y"])], "no op computes on the graph's input"),
])
def test_graph_hygiene(tmp_path, capsys, nodes, needle):
    code, _, err = run_cli(lat, ["estimate", str(_save(tmp_path, make_model(nodes, [X], [Y]))), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, needle)


def test_unsorted_nodes_and_repeated_names_are_priced_in_order(tmp_path):
    nodes = [helper.make_node("Relu", ["a"], ["b"], name="n"), helper.make_node("Sigmoid", ["x"], ["a"], name="n"),
             helper.make_node("Tanh", ["b"], ["y"], name="n")]
    g = graph_from_onnx_file(_save(tmp_path, make_model(nodes, [X], [Y])))
    assert [g.op(n).op_type for n in g.order] == ["Sigmoid", "Relu", "Tanh"]


def _if_model():
    branch = lambda op, out: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["x"], [out])], op, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])])
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0), helper.make_node("Greater", ["m", "z"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=branch("Relu", "t"), else_branch=branch("Sigmoid", "e"))]
    return make_model(nodes, [X], [Y], [numpy_helper.from_array(np.array(0, np.float32), "z")])


def test_work_inside_if_is_warned_about(tmp_path, capsys):
    d = _estimate_json(capsys, _save(tmp_path, _if_model()))
    assert any("control flow is not priced: 2 ops" in w and "If" in w for w in d["warnings"])
    assert not any("without a cost rule" in w for w in d["warnings"])


def test_a_graph_of_views_is_0_ms_with_a_warning_and_valid_json(tmp_path, capsys):
    path = _save(tmp_path, make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [X], [Y], [_ints("s", [1, -1])]))
    d = _estimate_json(capsys, path)
    assert d["latency_ms"] == 0 and d["throughput_per_s"] is None
    assert any("0 ms" in w for w in d["warnings"])
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100"], capsys)
    assert code == 0 and "- img/s" in err and "inf" not in err


@pytest.mark.parametrize("node, init, needle", [
    (helper.make_node("Conv", ["x", "w"], ["y"], group=0), [_init("w", (8, 4, 3, 3))], "Conv"),
    (helper.make_node("Conv", ["x", "w"], ["y"], group=3), [_init("w", (8, 4, 3, 3))], "group 3"),
    (helper.make_node("Gemm", ["x", "w"], ["y"]), [_init("w", (8, 5))], "Gemm"),
    (helper.make_node("Transpose", ["x"], ["y"], perm=[9, 8, 7, 6]), [], "Transpose"),
])
def test_ops_contradicting_their_definition_are_one_line(tmp_path, capsys, node, init, needle):
    code, _, err = run_cli(lat, ["estimate", str(_save(tmp_path, make_model([node], [X], [Y], init))), "--hw", "v100"],
                           capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("vi, needle", [
    (helper.make_tensor_value_info("x", 999, [1, 4]), "element type 999"),
    (helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**40, 8]), "dimension 1099511627776"),
])
def test_bad_graph_inputs_are_one_line(tmp_path, capsys, vi, needle):
    path = _save(tmp_path, make_model([helper.make_node("Relu", ["x"], ["y"])], [vi], [Y]))
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, needle)


def test_a_folder_and_an_oversized_file_are_not_models(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(lat, ["estimate", str(tmp_path), "--hw", "v100"], capsys)
    assert_one_line_error(code, err)
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0")
    real_stat = type(big).stat

    def huge(self, *a, **kw):
        s = real_stat(self, *a, **kw)
        return type(s)((s.st_mode, s.st_ino, s.st_dev, s.st_nlink, s.st_uid, s.st_gid, 2**31, *s[7:10])) \
            if self.name == "big.onnx" else s
    monkeypatch.setattr(type(big), "stat", huge)
    with pytest.raises(AutoVitError, match="2 GiB"):
        graph_from_onnx_file(big)


def test_estimates_of_hostile_graphs_are_finite(tmp_path):
    """Whatever a file says, a graph that loads prices to finite numbers."""
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile

    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2**18)
    # A weight-less export: parameters are shaped inputs, so nothing of their size is allocated.
    shapes = {"x": [2**20, 1, 4], "w": [1, 4 * 2**18, 4], "r": [1, 4 * 2**18, 2**18]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    model = make_model([lstm], inputs, [Y])
    est = LatencyModel(graph_from_onnx_file(_save(tmp_path, model))).estimate(load_profile("v100"))
    assert math.isfinite(est.latency_ms) and est.latency_ms > 0


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, 3e38, -3e38])
def test_masks_of_non_finite_or_extreme_values_price_to_finite_numbers(tmp_path, fill):
    """A constant added before a softmax is read for its exp bands (subnormal_assists): NaN, inf
    and the ends of fp32 in it give a finite estimate, never a warning from numpy or a crash."""
    import warnings

    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile

    mask = np.zeros((4, 8), np.float32)
    mask[0, 3:] = fill
    mask[1, :] = fill
    mask[2, 5:] = -100.0
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 4, 8])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 8, 16])
    nodes = [helper.make_node("Add", ["s", "m"], ["a"]), helper.make_node("Softmax", ["a"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    model = make_model(nodes, [s, v], [Y], [numpy_helper.from_array(mask, "m")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = LatencyModel(graph_from_onnx_file(_save(tmp_path, model))).estimate(load_profile("local-cpu"))
    assert math.isfinite(est.latency_ms) and est.latency_ms > 0


# ---- cases of the fresh break-it pass -------------------------------------------------------
def test_more_malformed_graphs_are_one_line(tmp_path, capsys):
    no_op = make_model([helper.make_node("", ["x"], ["y"])], [X], [Y])
    out_is_init = make_model([helper.make_node("Relu", ["x"], ["w"]), helper.make_node("Relu", ["x"], ["y"])], [X], [Y],
                             [_init("w", (4,))])
    tile = _with_unknown_op([helper.make_node("Tile", ["c", "rep"], ["t"]), helper.make_node("Relu", ["x"], ["r"])])
    tile.graph.initializer.extend([_init("c", (4,)), _ints("rep", [10**9])])
    for model, needle in ((no_op, "has no op type"), (out_is_init, "already produced"), (tile, "tensor 't'")):
        code, _, err = run_cli(lat, ["estimate", str(_save(tmp_path, model)), "--hw", "v100"], capsys)
        assert_one_line_error(code, err, needle)
    (tmp_path / "t.onnx").write_bytes(_init("w", (10,)).SerializeToString())  # a protobuf, but not a model
    code, _, err = run_cli(lat, ["estimate", str(tmp_path / "t.onnx"), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "not a readable ONNX model")


def _set_external(path, name, key, value):
    model = onnx.load(path, load_external_data=False)
    init = next(i for i in model.graph.initializer if i.name == name)
    entry = next((e for e in init.external_data if e.key == key), None) or init.external_data.add(key=key)
    entry.value = value
    onnx.save(model, path)


@pytest.mark.parametrize("key, value, needle", [("offset", str(10**15), "does not fit"), ("offset", "-5", "does not fit"),
                                                ("length", "3", "does not fit"), ("offset", "abc", "not integers")])
def test_external_data_offsets_are_checked(tmp_path, capsys, key, value, needle):
    path = _external_model(tmp_path)
    _set_external(path, "s", key, value)
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, str(path), "initializer 's'", needle)


def test_external_data_path_that_stays_inside_is_read(tmp_path, capsys):
    path = _external_model(tmp_path)
    (path.parent / "sub").mkdir()
    _set_external(path, "s", "location", "sub/../w.bin")
    assert not _estimate_json(capsys, path)["warnings"]


def test_scan_on_constants_is_not_run_and_is_warned_about(tmp_path, capsys, evaluated):
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "e"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["o"])], "b",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1]), helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1]), helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])])
    model = _with_unknown_op([helper.make_node("Scan", ["s0", "seq"], ["sf", "so"], body=body, num_scan_inputs=1),
                              helper.make_node("Relu", ["x"], ["r"])])
    model.graph.initializer.extend([_init("s0", (1,)), _init("seq", (1000, 1))])
    d = _estimate_json(capsys, _save(tmp_path, model))
    assert "Scan" not in evaluated and any("Scan" in w and "not priced" in w for w in d["warnings"])


@pytest.mark.parametrize("limit", ["constant", "from_shape"])
def test_data_propagation_never_materialises_a_big_constant(tmp_path, capsys, monkeypatch, limit):
    """onnx's data propagation computes constant values element by element: a Range to 1e12
    followed by a Cast ran past a minute and took 8 GB. It is used only when every such value is
    small; here the Range has 3e6 (or, from the input's shape, 6.4e7) elements."""
    from onnx import shape_inference

    calls = []
    infer = shape_inference.infer_shapes
    monkeypatch.setattr(shape_inference, "infer_shapes", lambda m, **kw: calls.append(kw["data_prop"]) or infer(m, **kw))
    if limit == "constant":
        inits, first, x = [numpy_helper.from_array(np.array(3e6, np.float32), "b")], [], X
    else:
        inits = []
        first = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceProd", ["s"], ["p"], keepdims=0),
                 helper.make_node("Cast", ["p"], ["b"], to=TensorProto.FLOAT)]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 1000, 1000])
    nodes = first + [helper.make_node("Range", ["a", "b", "c"], ["rng"]),
                     helper.make_node("Cast", ["rng"], ["rf"], to=TensorProto.INT64),
                     helper.make_node("Shape", ["rf"], ["n"]), helper.make_node("Relu", ["x"], ["y"])]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("a", 0), ("c", 1))]
    d = _estimate_json(capsys, _save(tmp_path, make_model(nodes, [x], [Y], inits)))
    assert d["latency_ms"] > 0 and True not in calls
