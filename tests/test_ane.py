"""The Neural Engine model (latmodel/neural_engine.py): one test per mechanism, each also switched off.

Tiny hand-made graphs; profile figures are read from the profile, so the tests pin the rules,
not the numbers.
"""
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.graph import build_graph
from autovit.latmodel.hardware import ANE_MECHANISMS, load_profile, profile_from_dict
from autovit.latmodel.kernels import Kernel
from autovit.latmodel.neural_engine import COREML_FORMATS, NeuralEngineTimer, for_format, without
from autovit.latmodel.timing import RooflineTimer, timer_for

from conftest import _init, make_model

ANE = load_profile("iphone13")


def _graph(nodes, shape, inits=(), out_shape=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    return build_graph(make_model(nodes, [x], [y], list(inits)))


def _consts(**values):
    return [numpy_helper.from_array(np.array(v, dtype=np.float32), k) for k, v in values.items()]


def _conv(cin=16, cout=16, out="c"):
    return helper.make_node("Conv", ["x", "w"], [out], kernel_shape=[1, 1]), _init("w", (cout, cin, 1, 1))


def _kernels(g, profile=ANE):
    return [k for k in LatencyModel(g).kernels(profile) if k.klass != "view"]


def _ms(g, profile=ANE):
    return LatencyModel(g).estimate(profile).latency_ms


def _vector(elems: int, shape, **kw) -> Kernel:
    return Kernel("k", ["k"], ["Add"], "elementwise", "vector", elems, elems, elems, 0, elems, None, "m", [shape], **kw)


# ---- profiles -----------------------------------------------------------------------------------
def test_apple_profiles_share_the_neural_engine_base():
    names = ("iphone12", "iphone13", "iphone14pro", "iphone15pro")
    ps = [load_profile(n) for n in names]
    assert all(p.kind == "npu" and p.ane is not None and p.dtypes == ("fp16",) for p in ps)
    assert len({p.ane.mechanisms for p in ps}) == 1 and len({p.fusion for p in ps}) == 1
    peaks = [p.matrix_tflops["fp16"] for p in ps]
    assert peaks == sorted(peaks)  # each generation at least as fast as the one before
    # A17 Pro's 35 TOPS doubles int8 only: its fp16 rate is A16-class, not twice it.
    assert peaks[3] < 1.2 * peaks[2]
    assert ps[2].dram_gbps > ps[1].dram_gbps  # LPDDR5 from A16 on


def test_unknown_mechanism_is_a_one_line_error():
    d = {"name": "x", "kind": "npu", "runtime": "r", "dtypes": ["fp16"],
         "compute": {"units": 1, "matrix_tflops": {"fp16": 1}, "vector_tflops": {"fp16": 1}, "gemm_tile": [1, 1],
                     "tiles_per_unit": 1, "vector_block": 1},
         "memory": {"dram_gbps": 1, "cache_mib": 1, "cache_gbps": 1},
         "overhead": {"launch_us": 0, "dispatch_us": 0, "async": False},
         "efficiency": {"matrix": 1, "vector": 1, "memory": 1},
         "ane": {"mechanisms": ["l2", "warp"], "l2_mib": 1, "l2_gbps": 1}}
    with pytest.raises(AutoVitError, match="'warp' is not one of"):
        profile_from_dict(d, "x.toml")


def test_the_neural_engine_has_its_own_timer_and_gpus_keep_theirs():
    assert isinstance(timer_for(ANE, "fp16", 1.0), NeuralEngineTimer)
    assert isinstance(timer_for(load_profile("v100"), "fp16", 1.0), RooflineTimer)
    with pytest.raises(ValueError):
        without(ANE, "warp")


def test_task_time_is_layer_plus_max_of_compute_and_memory():
    timer = NeuralEngineTimer(ANE, "fp16", 1.0)
    k = _vector(1 << 16, (1, 64, 32, 32))
    t = timer.time(k)
    assert t.device_ms == pytest.approx(ANE.launch_us * 1e-3 + max(t.compute_ms, t.memory_ms))


# ---- mechanisms, each also switched off ---------------------------------------------------------
def test_epilogue_runs_any_unary_function_of_a_conv_result_in_its_task():
    conv, w = _conv()
    gelu = [helper.make_node("Div", ["c", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["f"]), helper.make_node("Mul", ["c", "f"], ["h"]),
            helper.make_node("Mul", ["h", "half"], ["y"])]
    g = _graph([conv] + gelu, (1, 16, 8, 8), [w] + _consts(s2=1.4142, one=1.0, half=0.5))
    assert [k.op_types for k in _kernels(g)] == [["Conv", "Div", "Erf", "Add", "Mul", "Mul"]]
    assert len(_kernels(g, without(ANE, "epilogue"))) == 2
    silu = _graph([conv, helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])],
                  (1, 16, 8, 8), [w])
    assert [k.op_types for k in _kernels(silu)] == [["Conv", "Sigmoid", "Mul"]]


def test_epilogue_leaves_hardswish_and_a_result_read_elsewhere_alone():
    conv, w = _conv()
    hs = _graph([conv, helper.make_node("HardSwish", ["c"], ["y"])], (1, 16, 8, 8), [w])
    assert len(_kernels(hs)) == 2  # its own task (EfficientFormer, observation 4)
    # A second branch also reads c: the subgraph would have two results, so nothing joins the conv.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    nodes = [conv, helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"]),
             helper.make_node("Relu", ["c"], ["z"])]
    g = build_graph(make_model(nodes, [x], outs, [w]))
    assert _kernels(g)[0].op_types == ["Conv"]


def test_l2_serves_a_task_whose_working_set_fits_and_slc_the_next_size():
    timer = NeuralEngineTimer(ANE, "fp16", 1.0)
    l2, slc = ANE.ane.l2_mib * 2**20, ANE.cache_mib * 2**20
    assert timer.act_bandwidth(l2) == ANE.ane.l2_gbps * 1e9
    assert timer.act_bandwidth(l2 + 2) == ANE.cache_gbps * 1e9
    assert timer.act_bandwidth(slc + 2) == pytest.approx(ANE.dram_gbps * 1e9 * ANE.eff_memory)
    assert NeuralEngineTimer(without(ANE, "l2"), "fp16", 1.0).act_bandwidth(l2) == ANE.cache_gbps * 1e9
    no_slc = NeuralEngineTimer(without(ANE, "slc"), "fp16", 1.0)
    assert no_slc.act_bandwidth(l2 + 2) == pytest.approx(ANE.dram_gbps * 1e9 * ANE.eff_memory)
    # A whole task: twice the bytes past the buffer costs more than twice the time.
    small, big = _vector(1, (1, 16, 128, 128)), _vector(1, (1, 64, 128, 128))
    small.in_elems = small.out_elems = 16 * 128 * 128
    big.in_elems = big.out_elems = 64 * 128 * 128
    assert timer.time(big).memory_ms > 4 * timer.time(small).memory_ms


def test_weights_stream_from_dram_even_when_activations_fit():
    conv, w = _conv(256, 256)
    g = _graph([conv], (1, 256, 4, 4), [w])
    t = [t for t in LatencyModel(g).estimate(ANE).kernels if t.kernel.klass != "view"][0]
    w_bytes = 256 * 256 * 2
    assert t.memory_ms >= w_bytes / (ANE.dram_gbps * 1e9 * ANE.eff_memory) * 1e3


def test_layer_cost_is_paid_per_task():
    conv, w = _conv()
    g = _graph([conv, helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]),
                helper.make_node("Conv", ["t", "w2"], ["y"], kernel_shape=[1, 1])], (1, 16, 8, 8),
               [w, _init("w2", (16, 16, 1, 1))])
    n = len(_kernels(g))
    assert n == 3
    off = without(ANE, "layer")
    assert _ms(g) - _ms(g, off) == pytest.approx(n * ANE.launch_us * 1e-3, rel=1e-6)


def test_heads_run_a_batched_activation_matmul_as_one_task_per_batch_element():
    q = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["x", "kt"], ["y"])]
    g = build_graph(make_model(nodes, [q], [y]))
    mm = [k for k in _kernels(g) if k.op_types == ["MatMul"]][0]
    assert NeuralEngineTimer(ANE, "fp16", 1.0).tasks(mm) == 8
    assert NeuralEngineTimer(without(ANE, "heads"), "fp16", 1.0).tasks(mm) == 1
    assert _ms(g) - _ms(g, without(ANE, "heads")) == pytest.approx(7 * ANE.launch_us * 1e-3, rel=1e-6)


def test_align_pads_every_row_to_64_bytes():
    timer = NeuralEngineTimer(ANE, "fp16", 1.0)
    k = _vector(1, (1, 64, 7, 7))
    k.in_elems = k.out_elems = 64 * 49
    # 7 fp16 = 14 bytes per row -> 64: 32 elements per row instead of 7.
    assert timer.act_bytes(k) == pytest.approx(2 * 64 * 7 * 32 * 2)
    assert NeuralEngineTimer(without(ANE, "align"), "fp16", 1.0).act_bytes(k) == pytest.approx(2 * 64 * 49 * 2)


def test_layout_reshapes_that_keep_rows_are_free_and_transposes_of_the_last_axis_cost_most():
    shape_in = [1, 16, 8, 32]
    keep = _graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["y"])],
                  shape_in, [numpy_helper.from_array(np.array([1, 128, 32], dtype=np.int64), "s")])
    repack = _graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["y"])],
                    shape_in, [numpy_helper.from_array(np.array([1, 16, 256], dtype=np.int64), "s")])
    assert [k.klass for k in LatencyModel(keep).kernels(ANE)] == ["vector", "view"]
    assert [k.klass for k in LatencyModel(repack).kernels(ANE)] == ["vector", "layout"]
    off = without(ANE, "layout")
    assert [k.klass for k in LatencyModel(keep).kernels(off)] == ["vector", "layout"]
    square = [1, 16, 32, 32]  # both transposes then read and write the same padded bytes
    rows = _graph([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1, 3])], square)
    cols = _graph([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])], square)
    t_rows, t_cols = _ms(rows) - ANE.launch_us * 1e-3, _ms(cols) - ANE.launch_us * 1e-3
    assert t_cols == pytest.approx(ANE.layout_penalty * t_rows, rel=1e-6)
    assert _ms(cols, off) == pytest.approx(_ms(rows, off), rel=1e-6)
    # A channel slice re-addresses rows.
    sl = _graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Slice", ["r", "st", "en", "ax"], ["y"])],
                shape_in, [numpy_helper.from_array(np.array([v], dtype=np.int64), n) for n, v in
                           (("st", 0), ("en", 8), ("ax", 1))])
    assert [k.klass for k in LatencyModel(sl).kernels(ANE)] == ["vector", "view"]


def test_a_reshape_transpose_reshape_chain_is_one_copy():
    s1 = numpy_helper.from_array(np.array([1, 16, 4, 2, 4, 2], dtype=np.int64), "s1")
    s2 = numpy_helper.from_array(np.array([1, 64, 16], dtype=np.int64), "s2")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s1"], ["a"]),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 1, 3, 5, 2, 4]),
             helper.make_node("Reshape", ["b", "s2"], ["y"])]
    g = _graph(nodes, (1, 16, 8, 8), [s1, s2])
    ks = _kernels(g)
    assert [k.op_types for k in ks] == [["Relu"], ["Reshape", "Transpose", "Reshape"]]
    # The 6-D intermediate (last axis 2, padded 32x) is never materialised.
    assert ks[1].act_shapes == [(1, 16, 8, 8), (1, 64, 16)]


def test_fallback_sends_unsupported_ops_to_the_gpu_with_a_switch_each_way():
    idx = numpy_helper.from_array(np.array([0, 2, 1], dtype=np.int64), "i")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gather", ["r", "i"], ["gth"], axis=1),
             helper.make_node("Relu", ["gth"], ["y"])]
    g = _graph(nodes, (1, 4, 8, 8), [idx])
    e = LatencyModel(g).estimate(ANE)
    engines = [t.engine for t in e.kernels if t.kernel.klass != "view"]
    assert engines == [ANE.name, ANE.fallback.name, ANE.name]
    switch = ANE.fallback.switch_us * 1e-3
    assert sum(t.overhead_ms for t in e.kernels) >= 2 * switch
    off = LatencyModel(g).estimate(without(ANE, "fallback"))
    assert {t.engine for t in off.kernels} == {ANE.name}
    assert off.latency_ms < e.latency_ms - 2 * switch + 1e-9


def test_depthwise_mechanism_moves_depthwise_convs_to_the_planar_path():
    dw = _graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=64)],
                (1, 64, 16, 16), [_init("w", (64, 1, 3, 3))])
    k = _kernels(dw)[0]
    assert k.category == "dwconv"
    on = replace(ANE, ane=replace(ANE.ane, mechanisms=ANE.ane.mechanisms + ("depthwise",)))
    assert "depthwise" in ANE_MECHANISMS and "depthwise" not in ANE.ane.mechanisms
    ratio = NeuralEngineTimer(on, "fp16", 1.0).compute_s(k) / NeuralEngineTimer(ANE, "fp16", 1.0).compute_s(k)
    assert ratio == pytest.approx(ANE.matrix_tflops["fp16"] * ANE.eff_matrix
                                  / (ANE.vector_tflops["fp16"] * ANE.eff_vector))


def test_rank5_mechanism_sends_copies_through_rank5_tensors_to_the_fallback():
    s = numpy_helper.from_array(np.array([1, 16, 3, 2, 8], dtype=np.int64), "s")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["a"]),
             helper.make_node("Transpose", ["a"], ["y"], perm=[2, 0, 3, 1, 4])]
    g = _graph(nodes, (1, 16, 48), [s])
    assert "rank5" in ANE_MECHANISMS and "rank5" not in ANE.ane.mechanisms
    assert not any(k.unsupported for k in _kernels(g))
    on = replace(ANE, ane=replace(ANE.ane, mechanisms=ANE.ane.mechanisms + ("rank5",)))
    assert [k.unsupported for k in _kernels(g, on)] == [False, True]


def test_tokens_mechanism_streams_linear_layers_and_layernorms_on_bnc_tokens_through_dram():
    w = _init("w", (32, 32))
    tok = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], (1, 64, 32), [w])
    conv = _graph([_conv(32, 32, out="y")[0]], (1, 32, 8, 8), [_conv(32, 32)[1]])
    norm = _graph([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)], (1, 64, 32),
                  _consts(g=np.ones(32), b=np.zeros(32)))
    on = replace(ANE, ane=replace(ANE.ane, mechanisms=ANE.ane.mechanisms + ("tokens",)))
    assert "tokens" in ANE_MECHANISMS and "tokens" not in ANE.ane.mechanisms
    for g in (tok, norm):
        (k,) = _kernels(g)
        act = NeuralEngineTimer(ANE, "fp16", 1.0).act_bytes(k)
        dram = ANE.dram_gbps * 1e9 * ANE.eff_memory
        assert NeuralEngineTimer(on, "fp16", 1.0).time(k).memory_ms == pytest.approx(act / dram * 1e3 + k.w_elems * 2 / dram * 1e3)
        assert _ms(g, on) > _ms(g)
    assert _ms(conv, on) == _ms(conv)  # a (B, C, H, W) convolution keeps its activations on chip


def test_the_neuralnetwork_format_adds_rank5_and_an_ml_program_takes_it_away():
    nn = for_format(ANE, "neuralnetwork")
    assert set(COREML_FORMATS) == {"mlprogram", "neuralnetwork"}
    assert nn.ane.mechanisms == ANE.ane.mechanisms + ("rank5",)
    assert for_format(nn, "neuralnetwork") == nn  # set, not stacked
    assert for_format(nn, "mlprogram").ane.mechanisms == ANE.ane.mechanisms
    with pytest.raises(ValueError, match="unknown Core ML format 'onnx'"):
        for_format(ANE, "onnx")
    with pytest.raises(ValueError, match="no \\[ane\\] table"):
        for_format(load_profile("rtx4090"), "mlprogram")


def _benchmarks():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import apple

    return apple


def test_apples_split_head_attention_is_timms_attention_without_a_rank5_tensor():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from autovit.latmodel.sources import module_graph

    apple = _benchmarks()
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=1, num_heads=2,
                          embed_dim=32, num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    graphs, outs = [], []
    for patched in (False, True):
        if patched:
            assert apple.split_head_attention(m) == 1
        with torch.no_grad():
            outs.append(m(x))
        graphs.append(module_graph(m, (1, 3, 32, 32)))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    nn = for_format(ANE, "neuralnetwork")
    timm_graph, split = graphs
    assert any(k.unsupported for k in _kernels(timm_graph, nn))  # the rank-5 qkv split leaves the engine
    assert not any(k.unsupported for k in _kernels(split, nn))


def test_apple_tables_know_their_core_ml_format_and_which_rows_are_apples_conversion():
    apple = _benchmarks()
    assert apple.coreml_format("apple-swiftformer-a15") == "neuralnetwork"
    assert apple.coreml_format("apple-mnv4-a15") == apple.coreml_format("apple-iformer-a15") == "mlprogram"
    assert apple.coreml_form("apple-swiftformer-a15", "mobilevit_xs") == "cvnets"  # Apple's converter, an .mlmodel
    assert apple.coreml_form("apple-iformer-a15", "mobilevit_xxs") == "timm"  # an ML Program: not cvnets-convert's
    assert apple.coreml_form("apple-swiftformer-a15", "mobilevitv2_100") == "timm"
    assert apple.coreml_form("apple-swiftformer-a15", "deit_tiny_patch16_224") == "timm"
    assert apple.coreml_form("apple-mobilevitv2-a14", "deit_tiny_patch16_224") == "cvnets"
    row = apple.AppleRow("apple-mobilevitv2-a14", "DeiT-Tiny", "deit_tiny_patch16_224", 224, 3.4, "A14", "cvnets")
    assert row.key == "timm-rep__deit_tiny_patch16_224__224" != row.graph_key


def test_weights_and_onchip_activations_stream_at_once_but_share_dram():
    timer = NeuralEngineTimer(ANE, "fp16", 1.0)
    dram = ANE.dram_gbps * 1e9 * ANE.eff_memory
    small = _vector(0, (1, 64, 32, 32))  # 128 KB each way: in the buffer
    small.in_elems = small.out_elems = 64 * 32 * 32
    small.w_elems = 1 << 20
    act = timer.act_bytes(small)
    assert timer.time(small).memory_ms == pytest.approx(max(act / (ANE.ane.l2_gbps * 1e9), 2 * (1 << 20) / dram) * 1e3)
    big = _vector(0, (1, 256, 256, 256))  # past the system cache: activations and weights both from DRAM
    big.in_elems = big.out_elems = 256 ** 3
    big.w_elems = 1 << 20
    assert timer.time(big).memory_ms == pytest.approx((timer.act_bytes(big) + 2 * (1 << 20)) / dram * 1e3)


def test_winograd_prices_dense_3x3_stride1_convolutions_at_fewer_multiplies():
    def conv(stride, group=1, k=3):
        return _graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4,
                                        strides=[stride, stride], group=group)],
                      (1, 64, 16, 16), [_init("w", (64, 64 // group, k, k))])
    timer, off = NeuralEngineTimer(ANE, "fp16", 1.0), NeuralEngineTimer(without(ANE, "winograd"), "fp16", 1.0)
    eligible = _kernels(conv(1))[0]
    assert eligible.winograd_3x3
    m = ANE.ane.winograd_tile
    assert timer.compute_s(eligible) == pytest.approx(off.compute_s(eligible) * (m + 2) ** 2 / (9 * m * m))
    for k in (_kernels(conv(2))[0], _kernels(conv(1, group=4))[0], _kernels(conv(1, k=5))[0]):
        assert not k.winograd_3x3 and timer.compute_s(k) == off.compute_s(k)
