"""The backend behaviours the model encodes, one test each (tiny hand-made graphs)."""
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.graph import build_graph
from autovit.latmodel.hardware import load_profile

from conftest import _init, make_model


def conv_bn_relu(c: int = 32, hw: int = 16):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    inits = [_init("w", (c, c, 3, 3))] + [_init(k, (c,)) for k in "gbmv"]
    return build_graph(make_model(nodes, [x], [y], inits))


def test_batchnorm_fusion_is_the_profiles_call():
    g = conv_bn_relu()
    assert g.params == 32 * 32 * 9 + 2 * 32  # running mean/var are buffers
    m = LatencyModel(g)
    ane = [k.op_types for k in m.kernels(load_profile("iphone13"))]
    cuda = [k.op_types for k in m.kernels(load_profile("v100"))]
    cpu = [k.op_types for k in m.kernels(load_profile("cpu-x86"))]
    assert ane == [["Conv", "BatchNormalization", "Relu"]]          # Core ML fuses all three
    assert cuda == [["Conv"], ["BatchNormalization"], ["Relu"]]    # eager PyTorch: a kernel each
    assert cpu == [["Conv"], ["BatchNormalization", "Relu"]]       # Inductor: BN + act one loop


def _transpose_graph(reader: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1])]
    inits = []
    if reader == "MatMul":
        nodes.append(helper.make_node("MatMul", ["t", "w"], ["y"]))
        inits.append(_init("w", (64, 16)))
    else:
        nodes.append(helper.make_node("Reshape", ["t", "s"], ["y"]))
        inits.append(numpy_helper.from_array(np.array([4, -1], dtype=np.int64), "s"))
    return build_graph(make_model(nodes, [x], [y], inits))


def test_pytorch_transposes_are_views_until_a_reshape_copies():
    cuda = replace(load_profile("v100"), fusion=())  # look at the layout rule alone
    into_matmul = {k.op_types[0]: k.klass for k in LatencyModel(_transpose_graph("MatMul")).kernels(cuda)}
    assert into_matmul["Transpose"] == "view"
    into_reshape = {k.op_types[0]: k.klass for k in LatencyModel(_transpose_graph("Reshape")).kernels(cuda)}
    assert into_reshape["Transpose"] == "layout" or into_reshape["Reshape"] == "layout"


def test_conv_relayout_reads_and_writes_activations_once_more():
    g = conv_bn_relu(c=64, hw=56)
    cpu = load_profile("cpu-x86")  # oneDNN without pre-packed weights: NCHW <-> blocked per call
    assert "fp32" in cpu.nchw_conv_relayout and "dwconv" in cpu.relayout_categories

    def conv_bytes(profile):
        est = LatencyModel(g).estimate(profile, 8)
        return next(t.bytes for t in est.kernels if t.kernel.op_types[0] == "Conv")

    weights = 64 * 64 * 9 * 4
    plain = conv_bytes(replace(cpu, nchw_conv_relayout=()))
    # The weights are reordered too (mechanism weight_relayout): three passes over them.
    assert conv_bytes(cpu) - 3 * weights == pytest.approx(3 * (plain - weights))
    assert load_profile("v100").nchw_conv_relayout == ()  # cuDNN 8+ transposes inside the kernel


def test_gemm_and_conv_efficiencies_are_separate():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096, 1024])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = build_graph(make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [_init("w", (1024, 1024))]))
    v100 = load_profile("v100")
    fast = LatencyModel(g).estimate(v100, 1, "fp16").kernels[0].compute_ms
    slow = LatencyModel(g).estimate(replace(v100, eff_gemm=v100.eff_gemm / 2), 1, "fp16").kernels[0].compute_ms
    assert slow == pytest.approx(2 * fast)


def test_tanh_gelu_is_one_kernel():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 128])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    c = [numpy_helper.from_array(np.array(v, dtype=np.float32), f"c{i}") for i, v in enumerate([0.044715, 0.79788, 1.0, 0.5])]
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Mul", ["x", "a"], ["b"]),
             helper.make_node("Mul", ["c0", "b"], ["d"]), helper.make_node("Add", ["x", "d"], ["e"]),
             helper.make_node("Mul", ["c1", "e"], ["f"]), helper.make_node("Tanh", ["f"], ["h"]),
             helper.make_node("Add", ["c2", "h"], ["i"]), helper.make_node("Mul", ["x", "i"], ["j"]),
             helper.make_node("Mul", ["c3", "j"], ["y"])]
    g = build_graph(make_model(nodes, [x], [y], c))
    for hw in ("v100", "iphone13", "cpu-x86"):
        ks = [k for k in LatencyModel(g).kernels(load_profile(hw)) if k.klass != "view"]
        assert len(ks) == 1 and ks[0].category == "activation", hw


def _permute_graph(shape, perm):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return build_graph(make_model([helper.make_node("Transpose", ["x"], ["y"], perm=list(perm))], [x], [y]))


def test_strided_permutes_pay_per_contiguous_run():
    from autovit.latmodel.costs import _transpose_runs

    # MobileViT's unfold moves 2-element runs: one run per element.
    assert _transpose_runs((1, 48, 16, 2, 16, 2), (0, 3, 5, 2, 4, 1)) == 48 * 16 * 2 * 16 * 2
    assert _transpose_runs((4, 256, 3, 2, 16), (2, 0, 3, 1, 4)) == 4 * 256 * 3 * 2  # 16-float runs kept
    assert _transpose_runs((8, 256, 16), (0, 2, 1)) == 0  # a batched 2-D transpose: blocked, no per-run cost
    assert _transpose_runs((1, 4, 5), (0, 1, 2)) == 0
    cpu = load_profile("local-cpu")
    unfold = _permute_graph((1, 48, 16, 2, 16, 2), (0, 3, 5, 2, 4, 1))
    slow = LatencyModel(unfold).estimate(replace(cpu, layout_run_ns=10.0)).latency_ms
    fast = LatencyModel(unfold).estimate(replace(cpu, layout_run_ns=0.0)).latency_ms
    assert slow - fast == pytest.approx(48 * 16 * 2 * 16 * 2 * 10e-6, rel=1e-6)


def test_blocked_layout_reorders_at_the_ends_of_conv_chains():
    g = conv_bn_relu(c=32, hw=16)
    cpu = replace(load_profile("local-cpu"), run_us=0.0)
    plain = LatencyModel(g).estimate(replace(cpu, chain_reorder=False)).latency_ms
    both = LatencyModel(g).estimate(cpu).latency_ms
    inside = LatencyModel(g).estimate(cpu, edges=(True, True)).latency_ms
    assert inside == pytest.approx(plain)  # between two convolutions nothing is reordered
    assert both > LatencyModel(g).estimate(cpu, edges=(True, False)).latency_ms > inside
    # 3-channel inputs (an image) are read as they are: no reorder before the stem.
    stem = conv_bn_relu(c=3, hw=16)
    assert LatencyModel(stem).estimate(cpu, edges=(False, True)).latency_ms == pytest.approx(
        LatencyModel(stem).estimate(replace(cpu, chain_reorder=False)).latency_ms)


def test_cached_weights_and_per_run_overhead():
    g = conv_bn_relu(c=512, hw=1)  # weight-bound: 9.4 MB of weights, 4.7 MFLOP
    cpu = load_profile("local-cpu")
    cold = LatencyModel(g).estimate(replace(cpu, weights_cached=False)).latency_ms
    warm = LatencyModel(g).estimate(cpu).latency_ms
    assert warm < cold
    with_run = LatencyModel(g).estimate(replace(cpu, run_us=50.0)).latency_ms
    assert with_run - LatencyModel(g).estimate(replace(cpu, run_us=0.0)).latency_ms == pytest.approx(0.05)
    assert LatencyModel(g).estimate(replace(cpu, run_us=50.0), per_run=False).latency_ms == pytest.approx(
        LatencyModel(g).estimate(replace(cpu, run_us=0.0)).latency_ms)


def test_short_rows_of_layernorm_cost_per_row():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = build_graph(make_model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)], [x], [y],
                               [_init("s", (48,)), _init("b", (48,))]))
    assert LatencyModel(g).costs[next(iter(LatencyModel(g).costs))].rows == 1024
    cpu = replace(load_profile("local-cpu"), reduce_row_ns=0.0)
    base = LatencyModel(g).estimate(cpu).latency_ms
    assert LatencyModel(g).estimate(replace(cpu, reduce_row_ns=100.0)).latency_ms > base


def test_softmax_rows_cost_their_own_figure_where_the_profile_has_one():
    """ORT's Softmax (MLAS, blocks of rows per thread) and LayerNorm (a job per row) pay per row
    apiece; a profile without softmax_row_ns prices both at reduce_row_ns, and calibration leaves
    the missing term out."""
    from autovit.latmodel.fit import ProfileCalibrator

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    soft = build_graph(make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [x], [y]))
    norm = build_graph(make_model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)], [x], [y],
                                  [_init("s", (48,)), _init("b", (48,))]))
    cpu = replace(load_profile("local-cpu"), reduce_row_ns=100.0, softmax_row_ns=0.0)
    ms = lambda g, p: LatencyModel(g).estimate(p).latency_ms  # noqa: E731
    assert ms(soft, replace(cpu, softmax_row_ns=50.0)) - ms(soft, cpu) == pytest.approx(1024 * 50e-9 * 1e3 / 2, rel=0.05)
    assert ms(norm, replace(cpu, softmax_row_ns=50.0)) == pytest.approx(ms(norm, cpu))  # LayerNorm: reduce_row_ns
    shared = replace(cpu, softmax_row_ns=None)
    assert ms(soft, shared) > ms(soft, cpu)  # without its own figure a softmax row costs reduce_row_ns
    assert "softmax_row_ns" in ProfileCalibrator(cpu).names
    assert "softmax_row_ns" not in ProfileCalibrator(shared).names
    assert load_profile("cpu-x86").softmax_row_ns is None  # PyTorch's CPU profiles keep one row cost


def test_activations_beyond_the_private_caches_stream_at_the_shared_rate():
    """Two cache levels: a working set within the cores' private caches streams at cache_gbps,
    the part beyond them at shared_gbps; private_mib = 0 (or equal rates) is the one level of before."""
    def relu(c: int, hw: int):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return build_graph(make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]))

    cpu = replace(load_profile("local-cpu"), run_us=0.0, dispatch_us=0.0, eff_vector=1.0, units=2, cache_mib=480.0,
                  private_mib=2.0, cache_gbps=200.0, shared_gbps=100.0)
    mem = lambda g, p: LatencyModel(g).estimate(p).kernels[0].memory_ms  # noqa: E731
    small, big = relu(64, 32), relu(256, 128)  # 0.5 MiB in + out; 32 MiB in + out, past 2 x 2 MiB
    assert mem(small, cpu) == pytest.approx(mem(small, replace(cpu, shared_gbps=1.0)))  # fits: never shared
    one = replace(cpu, private_mib=0.0)
    assert mem(big, one) == pytest.approx(32 * 2**20 / 200e9 * 1e3)
    assert mem(big, cpu) == pytest.approx((4 * 2**20 / 200e9 + 28 * 2**20 / 100e9) * 1e3)
    assert mem(big, replace(cpu, shared_gbps=200.0)) == pytest.approx(mem(big, one))


def _squeeze_excite(c: int = 32, hw: int = 16):
    """conv -> (global mean -> 1x1 conv -> sigmoid) gate, x * gate -> conv: a squeeze-excitation."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["a"], ["m"]),
             helper.make_node("Conv", ["m", "w2"], ["s"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["s"], ["g"]),
             helper.make_node("Mul", ["a", "g"], ["p"]),
             helper.make_node("Conv", ["p", "w3"], ["y"], kernel_shape=[1, 1])]
    inits = [_init("w1", (c, c, 1, 1)), _init("w2", (c, c, 1, 1)), _init("w3", (c, c, 1, 1))]
    return build_graph(make_model(nodes, [x], [y], inits))


def test_a_broadcast_gate_breaks_the_blocked_chain():
    """nchwc_broadcast: ORT keeps x * gate ((N, C, H, W) x (N, C, 1, 1)) in NCHW, and never keeps a
    Div or Sub blocked. In a squeeze-excitation the tensor leaves the blocked layout once (at the
    global mean, which the model reorders before, or at the product) and comes back once, before
    the next convolution: the product itself reorders only its gate. A same-shape product stays
    blocked."""
    from autovit.latmodel.timing import broadcast_product, nchwc_unblocked_binary

    g = _squeeze_excite()
    cpu = replace(load_profile("local-cpu"), run_us=0.0, dispatch_us=0.0)  # reorders by their bytes alone
    assert "nchwc_broadcast" in cpu.mechanisms
    on = LatencyModel(g).estimate(cpu)
    off = LatencyModel(g).estimate(replace(cpu, mechanisms=()))
    assert [k.kernel.op_types for k in on.kernels if broadcast_product(k.kernel)] == [["Mul"]]
    mul_on = next(k for k in on.kernels if k.kernel.op_types == ["Mul"])
    mul_off = next(k for k in off.kernels if k.kernel.op_types == ["Mul"])
    last_on, last_off = on.kernels[-1], off.kernels[-1]
    # the gate's 32 elements out, the (1, 32, 16, 16) tensor back in before the last convolution
    assert 0 < mul_on.ms - mul_off.ms < 0.1 * (last_on.ms - last_off.ms)
    assert last_on.ms > last_off.ms and on.latency_ms > off.latency_ms
    same = replace(mul_on.kernel, act_shapes=[(1, 32, 16, 16)] * 3)
    assert not broadcast_product(same) and not nchwc_unblocked_binary(same)
    assert nchwc_unblocked_binary(replace(same, op_types=["Div"])) and nchwc_unblocked_binary(replace(same, op_types=["Sub"]))
    assert not nchwc_unblocked_binary(replace(same, op_types=["Add"]))


def test_a_profile_calibrated_before_softmax_rows_keeps_its_row_cost():
    """A calibrated file whose fit had no softmax_row_ns priced softmax rows at its reduce_row_ns;
    a base profile's starting value must not replace that."""
    from autovit.latmodel.hardware import _softmax_row_ns  # noqa: PLC2701 - the rule profile_from_dict applies

    base = {"efficiency.softmax_row_ns": 10.0}
    assert _softmax_row_ns(base, {"stderr": {"reduce_row_ns": 1.0}}) is None  # calibrated before the term
    assert _softmax_row_ns(base, {"stderr": {"reduce_row_ns": 1.0, "softmax_row_ns": 1.0}}) == 10.0
    assert _softmax_row_ns(base, {}) == 10.0  # a data-sheet profile keeps its figure
    assert _softmax_row_ns({}, {}) is None
    assert load_profile("local-cpu").softmax_row_ns is None  # local-cpu prices softmax rows at reduce_row_ns

def _separable(c: int, hw: int = 16):
    """1x1 conv 32 -> c, depthwise 3x3 on c, 1x1 conv c -> 32 (an inverted-residual body)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]),
             helper.make_node("Conv", ["a", "wd"], ["d"], group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "w2"], ["y"])]
    inits = [_init("w1", (c, 32, 1, 1)), _init("wd", (c, 1, 3, 3)), _init("w2", (32, c, 1, 1))]
    return build_graph(make_model(nodes, [x], [y], inits))


def test_nchwc_takes_only_convolutions_whose_channels_it_can_pad_to_whole_blocks():
    from autovit.latmodel.timing import nchwc_runs

    # (batch, input channels, output channels, groups): ORT's TransformConv at 16 channels per block.
    assert nchwc_runs((1, 32, 32, 32), 16) and not nchwc_runs((1, 24, 24, 24), 16)  # depthwise
    assert nchwc_runs((1, 24, 24, 24), 8)  # AVX2's 8-float blocks take it
    assert nchwc_runs((1, 3, 24, 1), 16)  # fewer input channels than a block: the image, read as it is
    assert nchwc_runs((1, 32, 24, 1), 16)  # output channels are padded to the block
    assert not nchwc_runs((1, 24, 32, 1), 16)  # 24 input channels: a block and a half
    assert not nchwc_runs((1, 16, 32, 2), 16) and nchwc_runs((1, 64, 64, 2), 16)  # grouped: 8 or 32 per group
    # A runtime that pads multiples of 4 up to whole blocks takes 24 and 36 channels, not 18 or 22;
    # groups still need whole blocks each.
    assert nchwc_runs((1, 24, 32, 1), 16, 4) and nchwc_runs((1, 36, 36, 36), 16, 4)
    assert not nchwc_runs((1, 18, 18, 1), 16, 4) and not nchwc_runs((1, 22, 22, 22), 16, 4)
    assert nchwc_runs((1, 14, 14, 1), 16, 4)  # fewer than a block: read as NCHW, whatever the count
    assert not nchwc_runs((1, 96, 96, 4), 16, 4) and nchwc_runs((1, 96, 96, 2), 16, 4)  # 24 or 48 per group
    # A multiple that does not divide the block adds counts; it never takes whole blocks away.
    assert nchwc_runs((1, 32, 32, 1), 16, 24) and nchwc_runs((1, 48, 48, 48), 16, 5)


def test_blocked_convolutions_pay_for_their_padded_channels_and_depthwise_ones_reorder_into_blocks():
    """20 channels in 16-float blocks are stored and (depthwise) computed as 32; a depthwise
    convolution of 8 channels at a graph's input is reordered into a padded block, a dense one of
    8 input channels reads NCHW as it is (what onnxruntime does: the probe test above)."""
    from autovit.latmodel.timing import _reorder_ms, nchwc_padding, network_time

    cpu = replace(load_profile("local-cpu"), matrix_align={"fp32": 16})
    dw20, dw32 = (LatencyModel(_separable(c, 32)).estimate(cpu) for c in (20, 32))
    k20, k32 = (next(t for t in e.kernels if t.kernel.category == "dwconv") for e in (dw20, dw32))
    assert nchwc_padding(k20.kernel, cpu, "fp32") == pytest.approx((1.6, 1.6))
    assert k20.memory_ms == pytest.approx(k32.memory_ms, rel=0.02) and k20.compute_ms == pytest.approx(k32.compute_ms)
    assert nchwc_padding(k20.kernel, load_profile("cpu-x86"), "fp32") == (1.0, 1.0)  # no blocked layout there

    def start_reorder_ms(cout: int, group: int) -> float:
        """What an 8-channel 32 x 32 convolution pays for its input arriving in NCHW, not blocked."""
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
        g = build_graph(make_model([conv], [x], [y], [_init("w", (cout, 8 // group, 3, 3))]))
        ks = [t.kernel for t in LatencyModel(g).estimate(cpu).kernels]
        nchw_in, blocked_in = (network_time(ks, cpu, "fp32", 1.0, (edge, False))[0] for edge in (False, True))
        return nchw_in - blocked_in

    # depthwise: the NCHW side read as it is (8 channels), the blocked side written padded (16)
    assert start_reorder_ms(8, 8) == pytest.approx(_reorder_ms(8 * 32 * 32 * (8 + 16) / 2 / 8, cpu, "fp32"))
    # dense, fewer input channels than a block: it reads NCHW, so a blocked input (nchwc_tensors) is
    # reordered out for it; the chain rule charged neither way
    assert start_reorder_ms(32, 1) == pytest.approx(-_reorder_ms(8 * 32 * 32 * (8 + 16) / 2 / 8, cpu, "fp32"))
    cpu = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "nchwc_tensors"))
    assert start_reorder_ms(8, 8) == pytest.approx(_reorder_ms(8 * 32 * 32 * (8 + 16) / 2 / 8, cpu, "fp32"))
    assert start_reorder_ms(32, 1) == 0


# (input channels, output channels, groups): each side of every branch of nchwc_runs.
_NCHWC_PROBES = [(3, 16, 1), (8, 32, 1), (12, 20, 1), (14, 14, 1), (16, 18, 1), (17, 17, 1), (18, 18, 1),
                 (20, 20, 1), (24, 24, 1), (36, 36, 1), (40, 40, 1), (64, 64, 1), (4, 4, 4), (8, 8, 8),
                 (10, 10, 10), (20, 20, 20), (22, 22, 22), (36, 36, 36), (72, 72, 72), (8, 16, 8), (48, 48, 3),
                 (64, 64, 4), (64, 64, 8), (96, 96, 4), (96, 96, 2), (16, 18, 2)]


def test_nchwc_rule_matches_the_installed_onnxruntime(tmp_path):
    """local-cpu's rule against what this machine's onnxruntime does: its optimized model shows
    which convolutions the NCHWc rewrite took (nodes of the com.microsoft.nchwc domain)."""
    import onnx
    import onnxruntime as ort

    from autovit.latmodel.timing import nchwc_block, nchwc_reorders_input, nchwc_runs

    cpu = load_profile("local-cpu")
    block = nchwc_block(cpu, "fp32")
    if block not in (8, 16):
        pytest.skip(f"no NCHWc layout on this CPU (fp32 vector of {block})")
    taken = {}
    for cin, cout, group in _NCHWC_PROBES:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 16, 16])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
        model = make_model([node], [x], [y], [_init("w", (cout, cin // group, 3, 3))])
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "opt.onnx")
        options.log_severity_level = 3  # ORT warns that an NCHWc model is machine-specific
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
        taken[(cin, cout, group)] = ("com.microsoft.nchwc" in {n.domain for n in nodes},
                                     any(n.op_type == "ReorderInput" for n in nodes))
    # (taken, with a ReorderInput in front): the model's rule, and where its chains start with a reorder
    ours = {}
    for c in _NCHWC_PROBES:
        runs = nchwc_runs((1, *c), block, cpu.nchwc_pad_multiple)
        ours[c] = (runs, runs and nchwc_reorders_input((1, *c), block))
    assert ours == taken


def test_blocked_depthwise_runs_mlas_fma_kernel_at_its_own_share_of_the_peak():
    """MLAS's NCHWc depthwise kernel is an FMA loop bound by its two loads per tap
    (efficiency.nchwc_dwconv); a depthwise convolution left in NCHW (a GEMM per channel) and every
    profile without the figure keep the vector share."""
    cpu = replace(load_profile("local-cpu"), units=2, matrix_align={"fp32": 16}, run_us=0.0, eff_vector=0.1)
    assert cpu.eff_nchwc_dw == 0.5 and load_profile("cpu-x86").eff_nchwc_dw == 0.0
    plain = replace(cpu, eff_nchwc_dw=0.0)

    def dw_compute(c, profile, hw=64):
        est = LatencyModel(_separable(c, hw)).estimate(profile)
        return next(t for t in est.kernels if t.kernel.category == "dwconv").compute_ms

    # 32 channels run blocked: compute at 0.5 instead of 0.1 of the peak, five times faster.
    assert dw_compute(32, cpu) == pytest.approx(dw_compute(32, plain) / 5, rel=1e-6)
    # 20 and 24 channels are padded to 32 and run blocked: the kernel's share, on 32 channels' work.
    assert dw_compute(24, cpu) == pytest.approx(dw_compute(24, plain) / 5, rel=1e-6)
    assert dw_compute(20, cpu) == pytest.approx(dw_compute(32, cpu), rel=1e-6)
    # 22 channels (not a multiple of 4: not padded to 16-float blocks) run in NCHW: the figure does not apply.
    assert dw_compute(22, cpu) == pytest.approx(dw_compute(22, plain), rel=1e-9)


def test_convolutions_left_in_nchw_run_im2col_and_gemm_on_mlas_threads():
    # eff_nchwc_dw = 0: both layouts' depthwise at the vector share, so only this rule differs.
    cpu = replace(load_profile("local-cpu"), units=2, matrix_align={"fp32": 16}, run_us=0.0, eff_nchwc_dw=0.0)
    assert cpu.nchwc_channels and cpu.gemm_thread_macs == 65536
    off = replace(cpu, nchwc_channels=False)

    def dw(c, profile, hw=16):
        est = LatencyModel(_separable(c, hw)).estimate(profile)
        return next(t for t in est.kernels if t.kernel.category == "dwconv"), est.latency_ms

    # Whole blocks: the rule changes nothing.
    assert dw(32, cpu)[1] == pytest.approx(dw(32, off)[1])
    # 22 channels: the depthwise convolution expands its input 9x (written, then read by the GEMM) ...
    (on_k, on_ms), (off_k, off_ms) = dw(22, cpu, hw=64), dw(22, off, hw=64)
    assert on_k.bytes - off_k.bytes == pytest.approx(2 * 9 * 22 * 64 * 64 * 4)
    # ... and, 9 x 4096 multiply-adds per channel being below MLAS's 64 Ki per thread, runs on one
    # of the two cores (priced blocked, MLAS would split its 64 rows of 2 channel blocks over both) ...
    from autovit.latmodel.timing import blocked_rows_share, nchw_conv

    assert nchw_conv(on_k.kernel, cpu, "fp32", 1.0).threads == 1
    assert blocked_rows_share(off_k.kernel, cpu, 1.0) == 1.0
    assert on_k.compute_ms == pytest.approx(off_k.compute_ms / 0.5)
    assert nchw_conv(dw(22, cpu, hw=128)[0].kernel, cpu, "fp32", 1.0).threads == 2  # 9 x 16384 MACs: two threads
    # ... with a reorder out of the blocked layout in front of it, and none back (its reader is NCHW too).
    assert on_ms > off_ms


def test_blocked_convolutions_start_every_thread_of_the_pool_whatever_their_size():
    """MLAS runs a convolution in the blocked layout on all the pool's threads (its output rows
    split over them), a tiny depthwise one included, so each pays fork_join_us per thread; a small
    element-wise op stays on one thread and pays none; a convolution the layout leaves in NCHW
    pays for the threads its GEMM takes (one for a small depthwise map)."""
    from autovit.latmodel.timing import fork_join_s, nchw_conv

    cpu = replace(load_profile("local-cpu"), units=2, matrix_align={"fp32": 16}, fork_join_us=3.0)
    assert "fork_join" in cpu.mechanisms

    def kernels(c, hw, profile=cpu):
        return {t.kernel.category: t.kernel for t in LatencyModel(_separable(c, hw)).estimate(profile).kernels}

    team = 2 * 3.0e-6
    dw = kernels(32, 4)["dwconv"]  # 512 outputs: one vector block, yet both threads start ...
    assert fork_join_s(dw, cpu, "fp32", 1.0) == pytest.approx(team)
    # ... and share its 4 rows of 2 channel blocks: the work is priced on both units too.
    from autovit.latmodel.timing import blocked_rows_share, vector_utilization

    assert blocked_rows_share(dw, cpu, 1.0) == 1.0 and vector_utilization(512, cpu) == 0.5
    one_row = kernels(16, 1)["dwconv"]  # one row of one block: one item, one thread busy
    assert blocked_rows_share(one_row, cpu, 1.0) == 0.5
    assert fork_join_s(kernels(32, 4)["conv"], cpu, "fp32", 1.0) == pytest.approx(team)
    # Without the blocked layout the same depthwise kernel is one block of element-wise work: one thread.
    flat = replace(cpu, chain_reorder=False)
    assert fork_join_s(kernels(32, 4, flat)["dwconv"], flat, "fp32", 1.0) == 0.0
    # 22 channels stay in NCHW: a small map's depthwise GEMM runs on one thread, a large one's on two.
    small, large = kernels(22, 16)["dwconv"], kernels(22, 128)["dwconv"]
    assert nchw_conv(small, cpu, "fp32", 1.0).threads == 1 and fork_join_s(small, cpu, "fp32", 1.0) == 0.0
    assert nchw_conv(large, cpu, "fp32", 1.0).threads == 2 and fork_join_s(large, cpu, "fp32", 1.0) == pytest.approx(team)
    # The fork_join switch off: nothing at all, and the kernel's time drops by exactly the team's cost.
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "fork_join"))
    on_t = next(t for t in LatencyModel(_separable(32, 4)).estimate(cpu).kernels if t.kernel.category == "dwconv")
    off_t = next(t for t in LatencyModel(_separable(32, 4)).estimate(off).kernels if t.kernel.category == "dwconv")
    assert on_t.device_ms - off_t.device_ms == pytest.approx(team * 1e3)


def test_a_local_cpu_profile_calibrated_before_fork_join_keeps_its_estimates(tmp_path):
    """A calibrated file whose fit had no fork_join_us holds what threads cost in its other fitted
    terms; the base profile's starting value must not be added on top (it would raise every
    blocked convolution by 2 x 1 us). A value the file sets itself stays."""

    def calibrated(stderr: str, own: str = ""):
        p = tmp_path / f"cal{len(stderr)}{len(own)}.toml"
        p.write_text(f'name = "local-cpu@calibrated"\nbase = "local-cpu"\n[overhead]\ndispatch_us = 1.5\n{own}'
                     f'[calibration]\nstderr = {{ {stderr} }}\n')
        return load_profile(str(p))

    old, new = calibrated('"dispatch_us" = 0.1'), calibrated('"dispatch_us" = 0.1, "fork_join_us" = 0.3')
    assert old.fork_join_us == 0.0 and new.fork_join_us == 1.0  # new: the base's value (the fit wrote none here)
    assert calibrated('"dispatch_us" = 0.1', "fork_join_us = 2.0\n").fork_join_us == 2.0  # set by hand: kept
    g = _separable(32, 16)
    no_fork = replace(new, mechanisms=tuple(m for m in new.mechanisms if m != "fork_join"))
    assert LatencyModel(g).estimate(old).latency_ms == pytest.approx(LatencyModel(g).estimate(no_fork).latency_ms)
    assert LatencyModel(g).estimate(new).latency_ms > LatencyModel(g).estimate(old).latency_ms


def _masked_attention(mask: np.ndarray, as_constant: bool = False, width: int = 32):
    """scores (12, 49, 49) + mask -> Reshape -> Softmax(-1) -> @ v (12, 49, width), Swin's pattern."""
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [12, 49, 49])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [12, 49, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = numpy_helper.from_array(mask.astype(np.float32), "m")
    nodes = [helper.make_node("Add", ["s", "m"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("Softmax", ["r"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [numpy_helper.from_array(np.array([12, 49, 49], np.int64), "shape")]
    if as_constant:  # the exporter folds Swin's mask into a Constant node
        nodes.insert(0, helper.make_node("Constant", [], ["m"], value=m))
    else:
        inits.append(m)
    return build_graph(make_model(nodes, [s, v], [y], inits))


def test_exp_bands_read_a_constant_mask_as_the_softmax_would_round_it():
    from autovit.latmodel.graph import exp_bands

    row = np.zeros((1, 49), np.float32)
    row[0, 25:] = -100.0  # 25 unmasked: log p = -100 - ln 25 = -103.2, a subnormal of about one unit
    assert exp_bands(row) == pytest.approx((24 / 49, 0.0))
    row[0, 25:] = -1000.0  # far below exp's range: rounds to 0
    assert exp_bands(row) == pytest.approx((0.0, 24 / 49))
    row[0, 25:] = -np.inf
    assert exp_bands(row) == pytest.approx((0.0, 24 / 49))
    row[0, 25:] = -50.0  # 2e-22: a normal float, no assist
    assert exp_bands(row) == (0.0, 0.0)
    two = np.zeros((4, 49), np.float32)
    two[1, :5] = -100.0
    assert exp_bands(two) == pytest.approx((5 / (4 * 49), 0.0))
    assert exp_bands(np.full((3, 1), -100.0, np.float32)) == (0.0, 0.0)  # one entry per row: its probability is 1


def test_a_masked_softmax_and_the_product_reading_it_pay_subnormal_assists():
    """A constant mask of -100 (timm's shifted-window Swin) turns masked probabilities into
    subnormal floats: the softmax pays its assists per subnormal probability, the product one per
    multiply-add vector that broadcasts one (ceil(width / lanes) per element); a mask of -inf
    rounds them to 0, which only onnxruntime's softmax pays for; profiles without the mechanism,
    GPUs and unmasked scores do not move; the assist's cycles run at the profile's clock."""
    from autovit.latmodel.kernels import form_kernels
    from autovit.latmodel.timing import subnormal_s

    mask = np.zeros((1, 49, 49), np.float32)
    mask[0, :, 25:] = -100.0
    cpu = load_profile("local-cpu")
    assert cpu.uses("subnormal_assists") and cpu.subnormal_assist_ns > 0
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "subnormal_assists"))
    g = _masked_attention(mask, as_constant=True)
    costs = LatencyModel(g).costs
    soft = next(c for c in costs.values() if c.op_type == "Softmax")
    prod = next(c for c in costs.values() if c.op_type == "MatMul")
    assert (soft.exp_subnormal, soft.exp_zero) == (12 * 49 * 24, 0)
    assert prod.subnormal_reads == ((12 * 49 * 24, 32),)  # (elements, the product's columns)
    lanes = cpu.matrix_align["fp32"]  # the detected vector width: 16 floats on AVX-512, 8 on AVX2
    ns = cpu.subnormal_assist_ns * 1e-9
    kernels = {k.op_types[0]: k for k in form_kernels(g, costs, cpu)}
    soft_s = 12 * 49 * 24 * cpu.softmax_subnormal_assists * ns
    prod_s = 12 * 49 * 24 * -(-32 // lanes) * ns
    assert subnormal_s(kernels["Softmax"], cpu, 1.0) == pytest.approx(soft_s)
    assert subnormal_s(kernels["MatMul"], cpu, 1.0) == pytest.approx(prod_s)
    assert subnormal_s(kernels["MatMul"], cpu, 2.0) == pytest.approx(2 * prod_s)  # a batch of two: twice
    ms = lambda g, p: LatencyModel(g).estimate(p).latency_ms  # noqa: E731
    # the assists split over the threads as the kernel's work does: between all of them and one
    added = (ms(g, cpu) - ms(g, off)) * 1e-3
    assert (soft_s + prod_s) / cpu.units * 0.999 <= added <= (soft_s + prod_s) * 1.001
    assert ms(_masked_attention(mask), cpu) == pytest.approx(ms(g, cpu))  # an initializer mask alike

    mask[0, :, 25:] = -np.inf
    g_inf = _masked_attention(mask)
    kernels = {k.op_types[0]: k for k in form_kernels(g_inf, LatencyModel(g_inf).costs, cpu)}
    assert kernels["MatMul"].subnormal_reads == () and subnormal_s(kernels["MatMul"], cpu, 1.0) == 0
    assert subnormal_s(kernels["Softmax"], cpu, 1.0) == pytest.approx(12 * 49 * 24 * cpu.softmax_underflow_assists * ns)
    assert ms(g_inf, cpu) > ms(g_inf, off)
    torch_cpu = load_profile("cpu-i9-10940x")  # PyTorch's softmax returns 0 below exp's range: no assist
    assert torch_cpu.uses("subnormal_assists") and torch_cpu.softmax_underflow_assists == 0
    assert sum(subnormal_s(k, torch_cpu, 1.0) for k in form_kernels(g_inf, LatencyModel(g_inf).costs, torch_cpu)) == 0

    plain = _masked_attention(np.zeros((1, 49, 49), np.float32))
    assert ms(plain, cpu) == pytest.approx(ms(plain, off))
    assert not load_profile("rtx4090").uses("subnormal_assists")  # GPUs handle subnormals at full speed
    slow = replace(torch_cpu, subnormal_assist_ns=torch_cpu.subnormal_assist_ns * 2)
    assert torch_cpu.subnormal_assist_ns == pytest.approx(110 / 3.3)  # cpu-x86's cycles at the i9's 3.3 GHz
    assert ms(g, slow) > ms(g, torch_cpu)


def test_subnormal_assists_survive_fusion_into_one_attention_kernel():
    """torch.compile's profiles fuse written-out attention (scores, one mask Add, softmax, product)
    into one kernel: it keeps the product's subnormal reads with the product's own columns (d),
    not the score GEMM's (the tokens)."""
    from autovit.latmodel.kernels import form_kernels
    from autovit.latmodel.timing import subnormal_s

    q, k, v = (helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 49, 32]) for x in "qkv")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    mask = np.zeros((1, 1, 49, 49), np.float32)
    mask[..., 25:] = -100.0
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "c"], ["sc"]),
             helper.make_node("Add", ["sc", "m"], ["a"]), helper.make_node("Softmax", ["a"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    g = build_graph(make_model(nodes, [q, k, v], [y], [_init("c", ()), numpy_helper.from_array(mask, "m")]))
    cpu = load_profile("cpu-i9-10940x")
    fused = [kk for kk in form_kernels(g, LatencyModel(g).costs, cpu) if kk.klass != "view"]
    assert len(fused) == 1 and fused[0].op_types.count("MatMul") == 2
    assert fused[0].subnormal_reads == ((3 * 49 * 24, 32),) and fused[0].exp_subnormal == 3 * 49 * 24
    expected = 3 * 49 * 24 * (cpu.softmax_subnormal_assists + 32 // cpu.matrix_align["fp32"] + (32 % cpu.matrix_align["fp32"] > 0))
    assert subnormal_s(fused[0], cpu, 1.0) == pytest.approx(expected * cpu.subnormal_assist_ns * 1e-9)


def test_subnormal_reads_follow_the_product_and_the_softmax_definition(monkeypatch):
    """Probabilities broadcast over the product's batch are read once per GEMM; a Softmax without
    its axis attribute on a 3-D input (opset-dependent meaning) is left unpriced; the class
    efficiency a fit may set does not scale the measured assists; off x86 the assists cost nothing."""
    import autovit.latmodel.hardware as hardware
    from autovit.latmodel.kernels import form_kernels

    mask = numpy_helper.from_array(np.where(np.arange(49) >= 25, -100.0, 0.0).astype(np.float32).reshape(1, 1, 49), "m")
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 49, 49])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [12, 49, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def graph(**softmax_attrs):
        nodes = [helper.make_node("Add", ["s", "m"], ["a"]), helper.make_node("Softmax", ["a"], ["p"], **softmax_attrs),
                 helper.make_node("MatMul", ["p", "v"], ["y"])]
        return build_graph(make_model(nodes, [s, v], [y], [mask]))

    costs = LatencyModel(graph(axis=-1)).costs
    assert next(c for c in costs.values() if c.op_type == "MatMul").subnormal_reads == ((12 * 49 * 24, 32),)
    costs = LatencyModel(graph()).costs
    assert all(c.exp_subnormal == 0 and not c.subnormal_reads for c in costs.values())

    g = graph(axis=-1)
    cpu = load_profile("local-cpu")
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "subnormal_assists"))
    ms = lambda p: LatencyModel(g).estimate(p).latency_ms  # noqa: E731
    added = ms(cpu) - ms(off)
    assert added > 0
    assert ms(replace(cpu, eff_attention=2.0)) - ms(replace(off, eff_attention=2.0)) == pytest.approx(added, rel=1e-6)

    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    assert hardware.detect_local_cpu()["compute"]["subnormal_assist_cycles"] == 0
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    assert "compute" not in hardware.detect_local_cpu()


def test_onnxruntime_copies_a_transpose_run_by_run_unless_its_written_permutation_moves_one_axis():
    """ort_transpose: onnxruntime judges the single-axis fast path on the permutation as written,
    size-1 axes included (transpose.cc: IsTransposeMovingSingleAxis), so XCiT's qkv permute runs
    element by element while the same move without its size-1 axes, and ViT's qkv permute (whose
    last axis stays), do not; PyTorch's profiles keep judging without the size-1 axes."""
    from autovit.latmodel.costs import _transpose_runs

    assert _transpose_runs((1, 196, 1, 4, 32), (2, 0, 3, 4, 1)) == 0
    assert _transpose_runs((1, 196, 1, 4, 32), (2, 0, 3, 4, 1), raw=True) == 196 * 4 * 32
    assert _transpose_runs((1, 196, 1, 4, 32), (0, 2, 3, 4, 1), raw=True) == 0  # one axis moved, as written
    assert _transpose_runs((1, 197, 3, 3, 64), (2, 0, 3, 1, 4), raw=True) == 197 * 3 * 3  # 64-float runs
    assert _transpose_runs((1, 196, 1, 4, 32), (2, 0, 1, 3, 4), raw=True) == 0  # only size-1 axes move: a copy
    # onnxruntime's generic loop copies the trailing axes left in place, a moved size-1 axis ending the block
    assert _transpose_runs((4, 196, 32, 1), (1, 0, 3, 2), raw=True) == 4 * 196 * 32
    assert _transpose_runs((4, 196, 32, 1), (1, 0, 3, 2)) == 0  # PyTorch coalesces the size-1 axis: one axis moved

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 196, 3, 4, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = build_graph(make_model([helper.make_node("Transpose", ["x"], ["y"], perm=[2, 0, 3, 4, 1])], [x], [y]))
    cpu = load_profile("local-cpu")
    assert cpu.uses("ort_transpose")
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "ort_transpose"))
    ms = lambda p: LatencyModel(g).estimate(p).latency_ms  # noqa: E731
    assert ms(cpu) - ms(off) == pytest.approx(196 * 3 * 4 * 32 * cpu.layout_run_ns * 1e-6, rel=1e-6)
    torch_cpu = load_profile("cpu-x86")
    assert not torch_cpu.uses("ort_transpose")


def _conv(cin: int, cout: int, hw: int, k: int = 3, stride: int = 1):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    pad = k // 2
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2)]
    return build_graph(make_model(nodes, [x], [y], [_init("w", (cout, cin, k, k))]))


def test_mlas_convolution_fills_its_fma_pipeline_only_with_enough_channel_blocks_and_columns():
    """mlas_conv_tiles: MLAS's direct convolution computes runs of 6 columns for up to 4 blocks of
    16 output channels; an FMA pipeline of latency 4 on 2 ports needs 8 accumulators."""
    from autovit.latmodel.timing import mlas_conv_share

    base = load_profile("local-cpu")
    assert not base.uses("mlas_conv_tiles") and base.fma_ports == 2  # off unless a profile lists it
    cpu = replace(base, mechanisms=base.mechanisms + ("mlas_conv_tiles",))

    def kernel(cin, cout, hw, k=3, stride=1):
        return next(k_ for k_ in LatencyModel(_conv(cin, cout, hw, k, stride)).kernels(cpu) if k_.category == "conv")

    # the columns whose window crosses the padding: one each side at stride 1, the left one at stride 2
    assert kernel(64, 64, 56).conv_cols == (56, 56, 2)
    assert kernel(64, 64, 56, stride=2).conv_cols == (28, 28, 1)
    assert kernel(64, 64, 56, k=1).conv_cols == (1, 56 * 56, 0)  # pointwise: one run of all pixels
    # 16 channels (one block): a 6-column run is latency-bound (6 accumulators < 8), 4 cycles for 3 at the peak.
    narrow = kernel(64, 16, 56, k=1)
    assert mlas_conv_share(narrow, cpu) == pytest.approx(3 / 4, rel=0.01)
    # 64 channels: nine 6-column runs x 4 blocks fill it (12 cycles each); a 56-column row loses only
    # its two padded columns, one at a time (4 FMAs: 2 cycles at the peak, 4 by latency).
    wide = kernel(64, 64, 56)
    assert mlas_conv_share(wide, cpu) == pytest.approx((9 * 12 + 2 * 2) / (9 * 12 + 2 * 4), rel=1e-9)
    # a 7-column map (3 + 2 inner columns, 2 padded): far below a 56-column one
    assert mlas_conv_share(kernel(256, 256, 7), cpu) < 0.8 < mlas_conv_share(wide, cpu)
    # switched off, the share drops out of the estimate
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "mlas_conv_tiles"))
    ms = lambda p: LatencyModel(_conv(64, 16, 56, k=1)).estimate(p).latency_ms  # noqa: E731
    assert ms(cpu) > ms(off)


def test_conv_walk_reads_auto_pad_and_groups():
    """conv_cols reads auto_pad as ONNX stores it (bytes) and MLAS's blocks count per group."""
    from autovit.latmodel.timing import mlas_conv_share

    base = load_profile("local-cpu")
    cpu = replace(base, mechanisms=base.mechanisms + ("mlas_conv_tiles",))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 7, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def conv(**attrs):
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], **attrs)
        g = build_graph(make_model([node], [x], [y], [_init("w", (16, 16, 3, 3))]))
        return next(k for k in LatencyModel(g).kernels(cpu) if k.category == "conv")

    assert conv(auto_pad="SAME_UPPER").conv_cols == conv(pads=[1, 1, 1, 1]).conv_cols == (4, 4, 2)
    # one 16-channel block per group: the same share as a 16-channel dense convolution of that walk
    grouped = next(k for k in LatencyModel(_grouped(128, 8)).kernels(cpu) if k.category == "conv")
    dense = next(k for k in LatencyModel(_conv(16, 16, 14)).kernels(cpu) if k.category == "conv")
    assert grouped.conv_cols == dense.conv_cols
    assert mlas_conv_share(grouped, cpu) == pytest.approx(mlas_conv_share(dense, cpu))
    assert mlas_conv_share(grouped, cpu) < 0.5


def _grouped(c: int, groups: int, hw: int = 14):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, group=groups)
    return build_graph(make_model([node], [x], [y], [_init("w", (c, c // groups, 3, 3))]))


def test_reorder_threads_split_the_blocked_layout_reorders_over_the_pool():
    """reorder_threads: onnxruntime's NCHW <-> NCHWc reorders run on every thread of the pool."""
    from autovit.latmodel.timing import _reorder_ms

    base = replace(load_profile("local-cpu"), units=2, dispatch_us=0.0)
    on = replace(base, mechanisms=base.mechanisms + ("reorder_threads",))
    assert not base.uses("reorder_threads")
    assert _reorder_ms(1e6, on, "fp32") == pytest.approx(_reorder_ms(1e6, base, "fp32") / 2)


def _chain(ops: list[str], elems: int):
    """x (1, elems / 64, 64) through `ops` one after another (a binary op adds x, BatchNormalization
    reads the tokens as (batch, channels, length))."""
    shape = [1, elems // 64, 64]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        inputs = {"Add": [prev, "x"], "BatchNormalization": [prev, "g", "b", "m", "v"],
                  "LayerNormalization": [prev, "lg", "lb"]}.get(op, [prev])
        nodes.append(helper.make_node(op, inputs, [out], **({"axis": -1} if op == "LayerNormalization" else {})))
        prev = out
    inits = [_init(k, (elems // 64,)) for k in "gbmv"] if "BatchNormalization" in ops else []
    inits += [_init(k, (64,)) for k in ("lg", "lb")] if "LayerNormalization" in ops else []
    return build_graph(make_model(nodes, [x], [y], inits))


def test_onnxruntime_sizes_element_wise_thread_teams_with_eigens_cost_model():
    """ThreadPool::TryParallelFor asks Eigen's TensorCostModel: (elements x (8 bytes x 11/64 +
    the functor's cycles) - 100,000) / 100,000 + 0.9 threads. Relu and Add (1 cycle) stay on one
    thread up to 88,421 floats, Sigmoid (2) up to 62,222: what benchmarks/ort_core_handoff.py
    measured (one thread at 65,536 for Relu and Add, two at 98,304; Sigmoid two at 65,536).
    BatchNormalization never starts the pool; a copy costs its bytes alone; an op without such a
    rule (Softmax) keeps the vector_block rule, as does everything with the mechanism off."""
    from autovit.latmodel.timing import fork_join_s, kernel_threads, ort_threads

    cpu = replace(load_profile("local-cpu"), units=2, fork_join_us=1.0)
    assert "ort_parallel_for" in cpu.mechanisms

    def kernel(op, elems, profile=cpu):
        return next(k for k in LatencyModel(_chain([op], elems)).kernels(profile) if k.op_types == [op])

    def threads(op, elems):
        return ort_threads(kernel(op, elems), cpu, "fp32", 1.0)

    assert [threads("Relu", n) for n in (65536, 88320, 88576, 98304)] == [1, 1, 2, 2]
    assert [threads("Add", n) for n in (65536, 98304)] == [1, 2]
    assert [threads("Sigmoid", n) for n in (16384, 65536)] == [1, 2]
    assert threads("BatchNormalization", 1 << 20) == 1
    assert threads("LayerNormalization", 128) == 2 and threads("LayerNormalization", 64) == 1  # rows of 64: 2, then 1
    copy = next(k for k in LatencyModel(_transpose_graph("Reshape")).kernels(cpu) if k.op_types == ["Transpose"])
    assert ort_threads(copy, cpu, "fp32", 1.0) == 1 and ort_threads(copy, cpu, "fp32", 64.0) == 1  # copies: one thread
    assert threads("Softmax", 1 << 20) is None
    # the batch scales the elements: 4 x 16,384 floats of Relu take a second thread
    assert ort_threads(kernel("Relu", 16384), cpu, "fp32", 4.0) == 1 and ort_threads(kernel("Relu", 32768), cpu, "fp32", 4.0) == 2
    # a one-thread kernel pays no fork-join and is priced on one core
    add = kernel("Add", 65536)
    assert kernel_threads(add, cpu, "fp32", 1.0) == 1 and fork_join_s(add, cpu, "fp32", 1.0) == 0.0
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "ort_parallel_for"))
    assert ort_threads(add, off, "fp32", 1.0) is None and kernel_threads(add, off, "fp32", 1.0) == 2  # 2 blocks of 32,768
    t_on = next(t for t in LatencyModel(_chain(["Add"], 65536)).estimate(cpu).kernels if t.kernel.op_types == ["Add"])
    t_off = next(t for t in LatencyModel(_chain(["Add"], 65536)).estimate(off).kernels if t.kernel.op_types == ["Add"])
    assert t_on.memory_ms == pytest.approx(2 * t_off.memory_ms)  # one core's share of the caches' rate, not two


def test_a_tensor_crosses_cores_where_one_thread_reads_what_two_wrote():
    """Mechanism core_handoff: Sigmoid (two threads at 65,536 floats) -> Relu (one) -> Sigmoid
    (two). The Relu reads the half of its 256 KiB input the other core wrote, the second Sigmoid
    the half of the Relu's output its second thread needs, the first Sigmoid half the graph input
    the calling thread wrote: each 128 KiB at cross_core_gbps. Two kernels on one thread, or
    two on two, hand nothing across; a tensor that crossed once crosses no more; one beyond its
    writers' private caches is left to the shared level."""
    from autovit.latmodel.timing import kernel_threads

    cpu = replace(load_profile("local-cpu"), units=2, private_mib=2.0, cross_core_gbps=10.0)
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "core_handoff"))

    def extra_ms(ops, elems=65536, profile=cpu):
        g = _chain(ops, elems)
        on = LatencyModel(g).estimate(profile)
        base = LatencyModel(g).estimate(replace(profile, mechanisms=off.mechanisms))
        return [a.device_ms - b.device_ms for a, b in zip(on.kernels, base.kernels)], on

    half = 65536 * 4 / 2 / 10e9 * 1e3  # ms: 128 KiB at 10 GB/s
    extra, est = extra_ms(["Sigmoid", "Relu", "Sigmoid"])
    assert [kernel_threads(t.kernel, cpu, "fp32", 1.0) for t in est.kernels] == [2, 1, 2]
    assert extra == pytest.approx([half, half, half])
    assert extra_ms(["Relu", "Relu"])[0] == pytest.approx([0.0, 0.0])  # one thread reads what it wrote
    assert extra_ms(["Sigmoid", "Sigmoid"])[0] == pytest.approx([half, 0.0])  # two alike
    # Add reads x again at every step: x crosses to the Add's second thread once (98,304 floats: 2 threads)
    adds, _ = extra_ms(["Add", "Add", "Add"], 98304)
    assert adds == pytest.approx([98304 * 4 / 2 / 10e9 * 1e3, 0.0, 0.0])
    # beyond the writers' private caches: nothing crosses that the shared level does not price
    small = replace(cpu, private_mib=0.1)
    assert extra_ms(["Sigmoid", "Relu"], profile=small)[0] == pytest.approx([0.0, 0.0])


def test_a_calibrated_profile_keeps_the_mechanisms_its_fit_priced_with(tmp_path):
    """A calibrated file prices with the mechanisms its [calibration] record lists, whatever its
    base gained since; one written before calibrate recorded them leaves out the mechanisms added
    after it (its fit priced those costs in its other terms); a file's own list always stands."""
    def calibrated(extra: str, top: str = ""):
        p = tmp_path / f"cal{abs(hash(extra + top))}.toml"
        p.write_text(f'name = "local-cpu@calibrated"\nbase = "local-cpu"\n{top}[overhead]\ndispatch_us = 1.5\n'
                     f'[calibration]\nstderr = {{ "dispatch_us" = 0.1 }}\n{extra}')
        return load_profile(str(p))

    later = ("ort_parallel_for", "core_handoff", "nchwc_tensors")
    base = load_profile("local-cpu").mechanisms
    assert set(later) <= set(base)
    assert calibrated("").mechanisms == tuple(m for m in base if m not in later)
    assert calibrated('mechanisms = ["fork_join"]\n').mechanisms == ("fork_join",)
    assert calibrated('mechanisms = ["fork_join"]\n', 'mechanisms = ["dw_taps"]\n').mechanisms == ("dw_taps",)
    p = tmp_path / "hand.toml"  # not a fit's file: the base's list
    p.write_text('name = "mine"\nbase = "local-cpu"\n')
    assert load_profile(str(p)).mechanisms == base


def test_the_handoff_probe_gives_a_rate_only_where_the_alternating_chain_is_slower():
    """runner.handoff_gbps: the alternating chain's time over the mean of the two chains alone,
    against what crossed: 21 crossings and half of one more (the graph's input), each of the share
    1 - 1/threads of 256 KiB; no rate where the difference is within the bursts' 2 % noise or
    implies less than 0.1 GB/s (the profile keeps its figure), and no probe where onnxruntime's
    thread rule cannot make it cross."""
    from autovit.latmodel.runner import HANDOFF_ELEMS, HANDOFF_PAIRS, handoff_gbps, handoff_probe

    ms = {"alternating": 0.3, "sigmoid": 0.3, "relu": 0.1}
    half = (2 * HANDOFF_PAIRS - 0.5) * HANDOFF_ELEMS * 4 / 2
    assert handoff_gbps(ms) == pytest.approx(half / (0.1 * 1e6))
    assert handoff_gbps(ms, 4) == pytest.approx(1.5 * half / (0.1 * 1e6))  # three quarters cross on 4 threads
    assert handoff_gbps({**ms, "alternating": 0.2}) is None and handoff_gbps({**ms, "alternating": 0.1}) is None
    assert handoff_gbps({**ms, "alternating": 0.2 + 1e-7}) is None  # within the noise: not a huge rate
    assert handoff_gbps({**ms, "alternating": 1000.0}) is None  # 0.003 GB/s: no cache is that slow
    assert handoff_gbps(ms, 1) is None
    assert handoff_probe("onnxruntime", 1) is None and handoff_probe("torch", 2) is None


def _nchwc_conv(x: str, y: str, w: str, pads: int = 1, k: int = 3, group: int = 1):
    return helper.make_node("Conv", [x, w], [y], kernel_shape=[k, k], pads=[pads] * 4, group=group)


def _nchwc_cases(c: int = 32, hw: int = 8):
    """Small graphs around onnxruntime's NCHWc rewrite: (name, nodes, initializers)."""
    w = _init("w", (c, c, 3, 3))
    w2 = _init("w2", (c, c, 3, 3))
    wr, we = _init("wr", (4, c, 1, 1)), _init("we", (c, 4, 1, 1))
    wc = _init("wc", (c, 2 * c, 1, 1))
    pool = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    return [
        # PoolFormer's token mixer: a pool over whole blocks runs blocked, the Sub in NCHW
        ("pool_sub", [_nchwc_conv("x", "a", "w"), helper.make_node("AveragePool", ["a"], ["p"], **pool),
                      helper.make_node("Sub", ["p", "a"], ["s"]), _nchwc_conv("s", "y", "w2")], [w, w2]),
        # a pool reading an NCHW tensor is reordered in, and its output out for the Add
        ("pool_nchw", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MaxPool", ["r"], ["p"], **pool),
                       helper.make_node("Add", ["p", "r"], ["y"])], []),
        # a channel Concat of two blocked tensors stays blocked ...
        ("concat_blocked", [_nchwc_conv("x", "a", "w"), _nchwc_conv("a", "b", "w2"),
                            helper.make_node("Concat", ["a", "b"], ["k"], axis=1), _nchwc_conv("k", "y", "wc", 0, 1)], [w, w2, wc]),
        # ... but a ReorderInput's copy of an NCHW input is no blocked tensor for it
        ("concat_input", [_nchwc_conv("x", "a", "w"), helper.make_node("Concat", ["x", "a"], ["k"], axis=1),
                          _nchwc_conv("k", "y", "wc", 0, 1)], [w, wc]),
        # squeeze-excitation: the global pool and ReLU follow the blocked tensor, the 4-channel
        # expand convolution reads NCHW, the broadcast product runs in NCHW
        ("squeeze_excite", [_nchwc_conv("x", "a", "w"), helper.make_node("GlobalAveragePool", ["a"], ["g"]),
                            _nchwc_conv("g", "r", "wr", 0, 1), helper.make_node("Relu", ["r"], ["q"]),
                            _nchwc_conv("q", "e", "we", 0, 1), helper.make_node("Sigmoid", ["e"], ["s"]),
                            helper.make_node("Mul", ["a", "s"], ["y"])], [w, wr, we]),
        # two convolutions reading one NCHW tensor share its ReorderInput
        ("shared_input", [helper.make_node("Relu", ["x"], ["r"]), _nchwc_conv("r", "a", "w"), _nchwc_conv("r", "b", "w2"),
                          helper.make_node("Add", ["a", "b"], ["y"])], [w, w2]),
        # a constant operand is no blocked tensor: the Add runs in NCHW
        ("constant_add", [_nchwc_conv("x", "a", "w"), helper.make_node("MaxPool", ["a"], ["p"], **pool),
                          helper.make_node("Add", ["p", "k"], ["q"]), _nchwc_conv("q", "y", "w2")], [w, w2, _init("k", (c, 1, 1))]),
        # a Concat along the width is no channel Concat
        ("concat_width", [_nchwc_conv("x", "a", "w"), _nchwc_conv("a", "b", "w2"),
                          helper.make_node("Concat", ["a", "b"], ["k"], axis=3), _nchwc_conv("k", "y", "w")], [w, w2]),
        # a residual Add reading an NCHW tensor runs in NCHW after the convolution
        ("nchw_residual", [helper.make_node("Relu", ["x"], ["r"]), _nchwc_conv("r", "a", "w"),
                           helper.make_node("Add", ["a", "r"], ["s"]), _nchwc_conv("s", "y", "w2")], [w, w2]),
        # an Identity is gone before the rewrite
        ("identity", [_nchwc_conv("x", "a", "w"), helper.make_node("Identity", ["a"], ["i"]), _nchwc_conv("i", "y", "w2")], [w, w2]),
    ]


def test_nchwc_tensors_inserts_the_reorders_the_installed_onnxruntime_does(tmp_path):
    """Mechanism nchwc_tensors against this machine's onnxruntime: per graph, as many reorders as
    its optimized model holds (ReorderInput and ReorderOutput nodes); the chain rule it replaces
    misses some of them."""  # the cases of a review's break-it pass included (constant_add ... identity)
    import onnx
    import onnxruntime as ort

    import autovit.latmodel.timing as timing

    cpu = load_profile("local-cpu")
    if timing.nchwc_block(cpu, "fp32") not in (8, 16):
        pytest.skip("no NCHWc layout on this CPU")
    tensors = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "nchwc_tensors") + ("nchwc_tensors",))
    chain = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "nchwc_tensors"))

    def ours(model, profile) -> int:
        return sum(t.reorders for t in LatencyModel(build_graph(model)).estimate(profile).kernels)

    theirs, mine, chained = {}, {}, {}
    for name, nodes, inits in _nchwc_cases():
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        model = make_model(nodes, [x], [y], inits)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        opt = onnx.load(options.optimized_model_filepath).graph.node
        theirs[name] = sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in opt)
        mine[name], chained[name] = ours(model, tensors), ours(model, chain)
    assert mine == theirs
    assert chained != theirs


def test_a_bias_is_found_on_a_gemm_or_a_fused_constant_add_only():
    """Kernel.bias_elems: the output elements a product's constant bias is added to."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 49, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["a", "at"], ["s"]),          # two activations: no layer
             helper.make_node("MatMul", ["s", "w2"], ["m"]),          # a layer without a bias
             helper.make_node("Add", ["m", "a"], ["y"])]              # a residual, not a bias
    g = build_graph(make_model(nodes, [x], [y], [_init("w1", (64, 96)), _init("b1", (96,)), _init("w2", (49, 96))]))
    cpu = load_profile("local-cpu")
    bias = [(k.op_types, k.bias_elems) for k in LatencyModel(g).kernels(cpu)]
    assert bias == [(["MatMul", "Add"], 49 * 96), (["Transpose", "MatMul"], 0), (["MatMul", "Add"], 0)]
    gx = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])
    gemm = build_graph(make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"])], [gx], [y],
                                  [_init("w", (64, 32)), _init("c", (32,))]))
    assert [k.bias_elems for k in LatencyModel(gemm).kernels(cpu)] == [8 * 32]


def test_gemm_bias_pass_prices_the_output_written_once_more_at_its_rate():
    """Mechanism gemm_bias_pass: onnxruntime's Gemm fills its output with the bias, then its
    SGEMM reads it back: bias_elems x 4 bytes at memory.gemm_bias_gbps, serial, on top of the
    product; off, or without a bias, nothing changes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [_init("w", (64, 384)), _init("c", (384,))]
    with_bias = build_graph(make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"])], [x], [y], inits))
    plain = build_graph(make_model([helper.make_node("Gemm", ["x", "w"], ["y"])], [x], [y], inits[:1]))
    cpu = load_profile("local-cpu")
    on = replace(cpu, mechanisms=cpu.mechanisms + ("gemm_bias_pass",), gemm_bias_gbps=11.2)
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "gemm_bias_pass"))

    def ms(g, profile):
        return LatencyModel(g).estimate(profile).latency_ms

    assert ms(with_bias, on) - ms(with_bias, off) == pytest.approx(1024 * 384 * 4 / 11.2e9 * 1e3, rel=1e-6)
    assert ms(plain, on) == pytest.approx(ms(plain, off), rel=1e-12)


def test_reorder_handoff_moves_the_other_cores_share_of_a_reorder_across():
    """Mechanism reorder_handoff: a reorder splits its work by channel blocks, the kernels around
    it by rows, so the other cores' share of the bytes it reads and writes crosses at
    cross_core_gbps: on 2 threads half of 2 x elements x 4 bytes; on 1 thread nothing."""
    from autovit.latmodel.timing import _reorder_ms

    cpu = replace(load_profile("local-cpu"), units=2, cross_core_gbps=10.0)
    on = replace(cpu, mechanisms=cpu.mechanisms + ("reorder_handoff",))
    off = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "reorder_handoff"))
    elems = 37632
    assert _reorder_ms(elems, on, "fp32") - _reorder_ms(elems, off, "fp32") == pytest.approx(
        2 * elems * 4 * 0.5 / 10e9 * 1e3, rel=1e-9)
    one = replace(on, units=1)
    assert _reorder_ms(elems, one, "fp32") == pytest.approx(_reorder_ms(elems, replace(off, units=1), "fp32"))


def test_nchwc_tensors_lets_a_block_inside_a_network_keep_its_blocked_edges():
    """`edges` with nchwc_tensors: a convolution block whose input arrives blocked and whose output
    may stay blocked pays no reorder; alone in a graph it pays one in and one out."""
    cpu = load_profile("local-cpu")
    tensors = replace(cpu, mechanisms=tuple(m for m in cpu.mechanisms if m != "nchwc_tensors") + ("nchwc_tensors",))
    g = conv_bn_relu(32)
    from autovit.latmodel.timing import network_time

    kernels = LatencyModel(g).kernels(tensors)
    _, alone = network_time(kernels, tensors, "fp32", 1.0)
    _, inside = network_time(kernels, tensors, "fp32", 1.0, edges=(True, True))
    assert sum(t.reorders for t in alone) == 2 and sum(t.reorders for t in inside) == 0


def test_producers_first_orders_a_long_reversed_chain_without_recursion():
    """timing._producers_first puts every kernel after the writers of its inputs; a chain of
    3,000 kernels listed backwards (each deferred until the next is placed) stays flat."""
    from autovit.latmodel.timing import _producers_first

    cpu = load_profile("local-cpu")
    t0 = LatencyModel(conv_bn_relu(32)).estimate(cpu).kernels[0]
    chain = [replace(t0, kernel=replace(t0.kernel, inputs=((f"t{i}", 1),), outputs=(f"t{i + 1}",))) for i in range(3000)]
    ordered = _producers_first(list(reversed(chain)))
    assert [t.kernel.outputs[0] for t in ordered] == [f"t{i + 1}" for i in range(3000)]
