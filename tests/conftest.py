"""Small ONNX graphs made with onnx.helper: fast, exact, no torch export needed."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_model(batch: int | str = 1, cin: int = 16, cout: int = 32, hw: int = 8, group: int = 1,
               act: str | None = "Relu") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)]
    nodes.append(helper.make_node(act, ["c"], ["y"]) if act else helper.make_node("Identity", ["c"], ["y"]))
    return make_model(nodes, [x], [y], [_init("w", (cout, cin // group, 3, 3)), _init("b", (cout,))])


@pytest.fixture
def tiny_conv_onnx(tmp_path):
    p = tmp_path / "conv.onnx"
    onnx.save(conv_model(), p)
    return p


@pytest.fixture
def dynamic_onnx(tmp_path):
    p = tmp_path / "dyn.onnx"
    onnx.save(conv_model(batch="N"), p)
    return p


@pytest.fixture
def unknown_op_onnx(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("FancyOp", ["r"], ["f"], domain="com.example"),
             helper.make_node("Relu", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    p = tmp_path / "unknown.onnx"
    onnx.save(model, p)
    return p


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A one-epoch XXS supernet checkpoint on mnist5k (32 px, 3 steps): the input that hostile
    tests forge their broken checkpoints from."""
    from dataclasses import replace

    from autovit.nas.train import train
    from tests.test_train import TINY

    out = tmp_path_factory.mktemp("tiny_run")
    train(replace(TINY, epochs=1), out, progress=False, log=lambda _m: None)
    return out / "last.ckpt"
