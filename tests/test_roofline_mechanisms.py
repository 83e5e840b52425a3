"""The GPU/CPU roofline mechanisms (hardware.ROOFLINE_MECHANISMS), one test each on tiny graphs:
each does what docs/COST_MODEL.md says when on, and nothing when switched off."""
import re
import statistics
import tomllib
from dataclasses import replace

import pytest
from onnx import TensorProto, helper

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.graph import build_graph
from autovit.latmodel.hardware import ROOFLINE_MECHANISMS, _resolved_dict, load_profile, profile_from_dict
from autovit.latmodel.timing import dw_tap_s, host_us, vector_utilization

from conftest import _init, make_model

V100 = load_profile("v100")


def without(profile, *mechanisms: str):
    return replace(profile, mechanisms=tuple(m for m in profile.mechanisms if m not in mechanisms))


def attention_graph(sdpa: bool, n: int = 49, d: int = 32):
    """Scores and their use over (1, 3 heads, n tokens, d): as F.scaled_dot_product_attention
    exports (q and k^T each scaled) or as a model writes it out (q * scale @ k^T)."""
    q, k, v = (helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, n, d]) for x in "qkv")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("Mul", ["q", "c"], ["qs"])]
    if sdpa:
        nodes.append(helper.make_node("Mul", ["kt", "c"], ["ks"]))
    nodes += [helper.make_node("MatMul", ["qs", "ks" if sdpa else "kt"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["y"])]
    return build_graph(make_model(nodes, [q, k, v], [y], [_init("c", ())]))


def op_groups(graph, profile) -> list[list[str]]:
    return [k.op_types for k in LatencyModel(graph).kernels(profile) if k.klass != "view"]


def test_every_cuda_profile_prices_attention_by_how_the_model_called_it():
    for name in ("v100", "rtx3090", "rtx4090", "a100", "h100"):
        assert set(load_profile(name).mechanisms) == {"sdpa_call", "dw_taps", "autocast", "dw_loop", "dw_index",
                                                      "cudnn_dw", "host_classes"} <= set(ROOFLINE_MECHANISMS)
    fused = op_groups(attention_graph(sdpa=True), V100)
    assert len(fused) == 1 and "Softmax" in fused[0] and fused[0].count("MatMul") == 2
    written_out = op_groups(attention_graph(sdpa=False), V100)
    assert ["Softmax"] in written_out and len(written_out) >= 3  # scores written by one kernel, read by the next


def test_written_out_attention_costs_the_scores_round_trips():
    g = attention_graph(sdpa=False)
    eager = LatencyModel(g).estimate(V100, 4096, "fp16").latency_ms
    fused = LatencyModel(g).estimate(without(V100, "sdpa_call"), 4096, "fp16").latency_ms
    assert eager > 1.5 * fused
    # Switched off, the written-out form fuses like the F.sdpa one.
    assert len(op_groups(g, without(V100, "sdpa_call"))) == 1
    # torch.compile (the CPU profiles) pattern-matches written-out attention into SDPA.
    assert len(op_groups(g, load_profile("cpu-x86"))) == 1


def depthwise_graph(k: int, c: int = 64, hw: int = 32):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4, group=c)
    return build_graph(make_model([node], [x], [y], [_init("w", (c, 1, k, k))]))


def test_depthwise_time_grows_with_taps_at_the_l1_load_rate():
    def kernel(k, profile):
        return LatencyModel(depthwise_graph(k)).estimate(profile, 64, "fp32").kernels[0]

    big = kernel(7, without(V100, "dw_loop", "dw_index"))
    loads = 2 * 64 * 64 * 32 * 32 * 49  # an input and a weight element per multiply-add
    busy = vector_utilization(64 * 64 * 32 * 32, V100)  # whole waves of blocks over the SMs
    assert big.compute_ms == pytest.approx(loads / (80 * 1.53e9 * 32 * busy) * 1e3, rel=1e-6)
    assert big.compute_ms == pytest.approx(dw_tap_s(big.kernel, without(V100, "dw_loop", "dw_index"), 64, busy) * 1e3, rel=1e-6)
    on = kernel(7, without(V100, "dw_loop", "dw_index")).device_ms / kernel(3, without(V100, "dw_index")).device_ms
    off = kernel(7, without(V100, "dw_taps")).device_ms / kernel(3, without(V100, "dw_taps")).device_ms
    assert on > 2.0 > 1.5 > off  # 49 vs 9 taps show through only with the L1 roof
    # A profile without an L1 figure (the CPUs: oneDNN keeps the taps in registers) has no such roof.
    cpu = replace(load_profile("cpu-x86"), mechanisms=("dw_taps",))
    assert cpu.l1_loads_per_clock == 0
    assert LatencyModel(depthwise_graph(7)).estimate(cpu, 64).latency_ms == pytest.approx(
        LatencyModel(depthwise_graph(7)).estimate(replace(cpu, mechanisms=()), 64).latency_ms)


def test_an_unknown_mechanism_is_a_one_line_error():
    d, _ = _resolved_dict("v100")
    with pytest.raises(AutoVitError, match="did you mean 'dw_taps'"):
        profile_from_dict({**d, "mechanisms": ["dw_tap"]}, "test")


def _ofa_mbv3():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ofa_mbv3

    return ofa_mbv3


def test_ofa_code_graph_runs_ofas_own_elementwise_ops():
    """HELP timed OFA's code: h_swish is x * relu6(x + 3) / 6 (four kernels), the squeeze-excite
    mean two reductions. The rewrite of a torch-form graph holds exactly those ops."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("HardSwish", ["x"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("HardSigmoid", ["m"], ["s"]),
             helper.make_node("Mul", ["h", "s"], ["y"])]
    torch_form = build_graph(make_model(nodes, [x], [y]))
    code = _ofa_mbv3().ofa_code_graph(torch_form)
    assert [code.op(n).op_type for n in code.order] == [
        "Add", "Clip", "Mul", "Div", "ReduceMean", "ReduceMean", "Add", "Clip", "Div", "Mul"]
    assert code.tensors[code.op(code.order[4]).outputs[0]].shape == (1, 16, 8, 1)
    assert [torch_form.op(n).op_type for n in torch_form.order] == ["HardSwish", "ReduceMean", "HardSigmoid", "Mul"]
    # Batch-1 eager GPU time is host-bound: six more kernels, six more dispatches.
    flat = without(V100, "host_classes")
    gap = LatencyModel(code).estimate(flat, 1).latency_ms - LatencyModel(torch_form).estimate(flat, 1).latency_ms
    assert gap == pytest.approx(6 * V100.dispatch_us * 1e-3, rel=0.05)
    # With the host cost per class, each form pays its own ops' host costs.
    cost = {t: host_us([t], "", V100) for t in ("Add", "Clip", "Mul", "Div", "ReduceMean", "HardSwish", "HardSigmoid")}
    code_host = 2 * (cost["Add"] + cost["Clip"] + cost["Div"] + cost["Mul"]) + 2 * cost["ReduceMean"]
    assert "HardSigmoid" not in V100.host_us  # unprobed: the table's median ratio
    torch_host = cost["HardSwish"] + cost["ReduceMean"] + cost["HardSigmoid"] + cost["Mul"]
    gap = LatencyModel(code).estimate(V100, 1).latency_ms - LatencyModel(torch_form).estimate(V100, 1).latency_ms
    assert gap == pytest.approx((code_host - torch_host) * 1e-3, rel=0.05)


def relu_graph(elems: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, elems])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return build_graph(make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]))


def test_cpu_kernels_pay_to_start_and_join_each_thread_they_use():
    cpu = load_profile("cpu-i9-10940x")
    assert "fork_join" in cpu.mechanisms and cpu.fork_join_us > 0
    assert "fork_join" in load_profile("local-cpu").mechanisms  # ONNX Runtime's pool: each parallel section too
    cpu = without(cpu, "inductor_threads")  # eager ATen's grain; a compiled loop's threads: the next test

    def cost(elems, profile):
        return LatencyModel(relu_graph(elems)).estimate(profile).latency_ms

    big = 64 * cpu.vector_block  # more blocks than cores: every core starts and joins
    assert cost(big, cpu) - cost(big, without(cpu, "fork_join")) == pytest.approx(cpu.units * cpu.fork_join_us * 1e-3)
    small = cpu.vector_block // 2  # one block: one thread, nothing to start
    assert cost(small, cpu) == pytest.approx(cost(small, without(cpu, "fork_join")))
    three = 3 * cpu.vector_block
    assert cost(three, cpu) - cost(three, without(cpu, "fork_join")) == pytest.approx(3 * cpu.fork_join_us * 1e-3)


def test_compiled_cpu_loops_run_on_one_thread_or_on_every_core():
    """torch.compile's C++ loops go parallel over all threads once each gets min_chunk elements,
    never over a few (convolutions and GEMMs call oneDNN and keep their own split)."""
    cpu = load_profile("cpu-i9-10940x")
    assert "inductor_threads" in cpu.mechanisms and cpu.min_chunk > 0
    off = without(cpu, "inductor_threads")

    def kernel(elems, profile):
        return LatencyModel(relu_graph(elems)).estimate(profile).kernels[0]

    # Below cores x min_chunk elements: one thread, the whole op on one core's bandwidth, no team.
    small = cpu.units * cpu.min_chunk - 1
    assert kernel(small, cpu).memory_ms == pytest.approx(kernel(1, cpu).memory_ms * small, rel=1e-6)
    assert kernel(small, cpu).device_ms > kernel(small, off).device_ms  # ATen's grain would split it
    # At the threshold every core starts and joins, and the op is spread over all of them.
    big = cpu.units * cpu.min_chunk
    assert kernel(big, cpu).memory_ms == pytest.approx(kernel(big, off).memory_ms * vector_utilization(big, cpu), rel=1e-6)
    gap = kernel(big, cpu).device_ms - LatencyModel(relu_graph(big)).estimate(without(cpu, "fork_join")).kernels[0].device_ms
    assert gap == pytest.approx(cpu.units * cpu.fork_join_us * 1e-3)
    # A convolution is oneDNN's, not a compiled loop: the switch leaves it alone.
    conv = LatencyModel(depthwise_graph(3, c=8, hw=8))
    assert conv.estimate(cpu).latency_ms == pytest.approx(conv.estimate(off).latency_ms)


def test_depthwise_sizes_without_an_unrolled_kernel_pay_integer_ops_per_tap():
    """PyTorch's direct depthwise kernel is unrolled for 3x3 (and 1x1); 5x5 and 7x7 run a loop
    whose integer ops per tap outweigh the two L1 loads."""
    def kernel(k, profile):
        return LatencyModel(depthwise_graph(k)).estimate(profile, 64, "fp32").kernels[0]

    assert V100.dw_unrolled_max == 3 and V100.dw_loop_int_ops > 2 * V100.int_ops_per_clock / V100.l1_loads_per_clock
    loop = without(V100, "dw_index")  # dw_loop alone: integer ops per tap of the looped sizes only
    assert kernel(3, loop).compute_ms == pytest.approx(kernel(3, without(V100, "dw_loop", "dw_index")).compute_ms)
    busy = vector_utilization(64 * 64 * 32 * 32, V100)
    taps = 64 * 64 * 32 * 32 * 49
    assert kernel(7, loop).compute_ms == pytest.approx(
        taps * V100.dw_loop_int_ops / (80 * 1.53e9 * 64 * busy) * 1e3, rel=1e-6)
    assert kernel(7, loop).compute_ms > 2 * kernel(7, without(V100, "dw_loop", "dw_index")).compute_ms


def conv_graph(cin: int, cout: int, k: int, hw: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k])
    return build_graph(make_model([node], [x], [y], [_init("w", (cout, cin, k, k))]))


def test_onednn_convolutions_reorder_unpacked_weights_every_call():
    cpu = load_profile("cpu-i9-10940x")
    assert "weight_relayout" in cpu.mechanisms
    g = conv_graph(512, 512, 7, 7)  # a VGG-head-like convolution: 12.8 M weights, a 7 x 7 map
    on, off = (LatencyModel(g).estimate(p).kernels[0] for p in (cpu, without(cpu, "weight_relayout")))
    assert on.bytes - off.bytes == pytest.approx(2 * 512 * 512 * 49 * 4)  # written blocked, read again
    assert on.memory_ms > 2 * off.memory_ms
    # Only where the library reorders (the profile's nchw_conv_relayout dtypes): not on a GPU.
    gpu = replace(V100, mechanisms=V100.mechanisms + ("weight_relayout",))
    assert LatencyModel(g).estimate(gpu).latency_ms == pytest.approx(LatencyModel(g).estimate(V100).latency_ms)


def test_class_factors_move_only_their_class_and_are_one_in_every_shipped_profile():
    from autovit.latmodel.hardware import CLASS_PARAMETERS, builtin_names

    assert all(getattr(load_profile(n), f) == 1.0 for n in builtin_names() for f in CLASS_PARAMETERS)
    g = attention_graph(sdpa=False)
    slow = replace(V100, eff_attention=0.5)
    for base, other in zip(LatencyModel(g).estimate(V100, 4096).kernels, LatencyModel(g).estimate(slow, 4096).kernels):
        want = 2.0 if base.kernel.category == "attention" else 1.0
        assert other.device_ms - slow.launch_us * 1e-3 == pytest.approx(want * (base.device_ms - V100.launch_us * 1e-3))
    dw = LatencyModel(depthwise_graph(7))
    assert dw.estimate(replace(V100, eff_dwconv=0.5), 64).kernels[0].compute_ms == pytest.approx(
        2 * dw.estimate(V100, 64).kernels[0].compute_ms)
    assert dw.estimate(slow, 64).latency_ms == pytest.approx(dw.estimate(V100, 64).latency_ms)


def linear_graph(n: int, d: int, op: str = "MatMul"):
    """A token MLP layer (1, n tokens, d) @ (d, 4d): a linear layer, no attention; op="Relu": an
    activation over the same tokens (memory-bound)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, d])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if op == "Relu":
        return build_graph(make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]))
    return build_graph(make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [_init("w", (d, 4 * d))]))


def test_a_class_factor_fits_what_no_class_wide_term_can():
    """Networks whose attention runs at half the roofline the linear layers reach: eff_gemm
    prices both, so a fit of the class-wide terms alone misses its own rows; with the class
    factor (and a prior) the training error falls to the noise."""
    from autovit.latmodel.fit import ProfileCalibrator

    nets = [LatencyModel(attention_graph(sdpa=False, n=n, d=d)) for n, d in ((196, 32), (784, 32), (3136, 64))]
    nets += [LatencyModel(linear_graph(n, d, op)) for n, d in ((196, 384), (784, 256), (3136, 128))
             for op in ("MatMul", "Relu")]
    pricers = [lambda p, m=m: m.estimate(p, 256, "fp16").latency_ms for m in nets]
    truth = replace(V100, eff_attention=0.5)
    measured = [p(truth) for p in pricers]
    names = ("eff_gemm", "eff_vector", "eff_memory")
    alone = ProfileCalibrator(V100, names, prior=0.69).fit_pricers(pricers, measured, ["x"] * len(nets))
    both = ProfileCalibrator(V100, names + ("eff_attention",), prior=0.69).fit_pricers(pricers, measured, ["x"] * len(nets))
    assert both.rms_log_error < 0.05 < alone.rms_log_error
    assert both.params["eff_attention"] == pytest.approx(0.5, rel=0.15)


def strided_depthwise_graph(k: int, c: int, hw: int, stride: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4, group=c, strides=[stride] * 2)
    return build_graph(make_model([node], [x], [y], [_init("w", (c, 1, k, k))]))


def test_the_direct_depthwise_kernel_pays_integer_divisions_per_output():
    """dw_index: every output of PyTorch's direct kernel divides its flat index three times, and
    every tap, unrolled or not, pays its address and bound ops: on an H200 (docs/BENCHMARKS.md
    §1.1) a 7x7 layer took 3.6x a 3x3 one, not the 49/9 of the taps or the 10.7x of dw_loop alone."""
    def kernel(k, profile, batch=64):
        return LatencyModel(depthwise_graph(k)).estimate(profile, batch, "fp32").kernels[0]

    outputs = 64 * 64 * 32 * 32
    busy = vector_utilization(outputs, V100)
    for k in (3, 5, 7):
        ops = outputs * (V100.dw_index_int_ops + k * k * V100.dw_loop_int_ops)
        assert kernel(k, V100).compute_ms == pytest.approx(ops / (80 * 1.53e9 * 64 * busy) * 1e3, rel=1e-6)
    assert 3.0 < kernel(7, V100).compute_ms / kernel(3, V100).compute_ms < 4.0
    assert kernel(3, V100).compute_ms > 3 * kernel(3, without(V100, "dw_index")).compute_ms
    # Switched off with dw_taps, whose direct kernel it refines.
    assert kernel(3, without(V100, "dw_taps")).compute_ms == pytest.approx(
        kernel(3, without(V100, "dw_taps", "dw_index")).compute_ms)


def test_fp16_depthwise_layers_cudnn_takes_skip_the_direct_kernel():
    """cudnn_dw: ATen hands fp16 depthwise layers to cuDNN by shape (Convolution.cpp,
    check_cudnn_depthwise_workload_with_filter); those cost the L1 roof only."""
    def kernel(g, profile, batch, dtype="fp16"):
        return LatencyModel(g).estimate(profile, batch, dtype).kernels[0]

    roof = without(V100, "dw_index", "dw_loop", "cudnn_dw")
    direct = without(V100, "cudnn_dw")

    def runs_cudnn(g, batch, dtype="fp16"):
        on, r, d = (kernel(g, p, batch, dtype).compute_ms for p in (V100, roof, direct))
        assert d > 1.5 * r and on in (pytest.approx(r), pytest.approx(d))  # the two prices tell which ran
        return on == pytest.approx(r)

    assert runs_cudnn(depthwise_graph(3), 64) and runs_cudnn(depthwise_graph(5), 64)
    assert not runs_cudnn(depthwise_graph(7), 64)  # only 1x1, 3x3 and 5x5 filters
    assert not runs_cudnn(depthwise_graph(3), 64, "fp32")  # only fp16
    assert not runs_cudnn(depthwise_graph(3, c=16), 64)  # at least 32 channels
    assert not runs_cudnn(strided_depthwise_graph(3, 64, 32, 2), 64)  # stride 2 at batch > 1: 512 channels, or 256 and >= 28 wide
    assert runs_cudnn(strided_depthwise_graph(3, 64, 32, 2), 1)  # ... any at batch 1
    assert runs_cudnn(strided_depthwise_graph(3, 256, 32, 2), 64)


def _host_bound_chain(op_type: str, n: int = 40, c: int = 16):
    """n ops of one type in a chain on a (1, c, 8, 8) tensor: tiny kernels, so batch 1 on a GPU is
    host-bound and its latency is the sum of the ops' host costs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits, nodes, prev = [], [], "x"
    for i in range(n):
        out = "y" if i == n - 1 else f"t{i}"
        if op_type == "Conv":
            inits.append(_init(f"w{i}", (c, c, 1, 1)))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out]))
        elif op_type == "DWConv":
            inits.append(_init(f"w{i}", (c, 1, 3, 3)))
            nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], group=c, pads=[1, 1, 1, 1]))
        elif op_type == "BatchNormalization":
            inits += [_init(f"{p}{i}", (c,)) for p in ("s", "b", "m", "v")]
            nodes.append(helper.make_node("BatchNormalization", [prev, f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [out]))
        elif op_type == "Add":
            nodes.append(helper.make_node("Add", [prev, "x"], [out]))
        else:
            nodes.append(helper.make_node(op_type, [prev], [out]))
        prev = out
    return build_graph(make_model(nodes, [x], [y], inits))


@pytest.mark.parametrize("op_type, key", [("Conv", "@conv"), ("DWConv", "@dwconv"), ("BatchNormalization", "BatchNormalization"),
                                          ("Relu", "Relu"), ("Add", "Add"), ("Softsign", None)])
def test_each_op_class_costs_the_host_its_share_of_dispatch_us(op_type, key):
    """host_classes: a host-bound chain of one op class costs its class's entry of [overhead.host_us]
    over the reference entry's, times dispatch_us, per op; a class not in the table (Softsign)
    costs the median of the table's ratios; switched off, every op costs dispatch_us as before
    the mechanism."""
    table, ref = V100.host_us, V100.host_reference
    assert V100.uses("host_classes") and ref == "Add"
    median = statistics.median(table.values()) / table[ref]
    per_op = V100.dispatch_us * (table[key] / table[ref] if key else median)
    g = _host_bound_chain(op_type)
    kernels = [k for k in LatencyModel(g).kernels(V100) if k.klass != "view"]
    assert len(kernels) == 40 and [host_us(k.op_types, k.category, V100) for k in kernels] == pytest.approx([per_op] * 40)
    assert LatencyModel(g).estimate(V100, 1).latency_ms == pytest.approx(40 * per_op * 1e-3, rel=0.05)
    off = without(V100, "host_classes")
    assert LatencyModel(g).estimate(off, 1).latency_ms == pytest.approx(40 * V100.dispatch_us * 1e-3, rel=0.05)
    # The backend-selecting modules cost the host 2-3x an element-wise op; element-wise ops about one.
    if key in ("@conv", "@dwconv", "BatchNormalization"):
        assert 1.9 < per_op / V100.dispatch_us < 3.2
    # dispatch_us stays the level: calibration and the sensitivity scale every class with it.
    assert host_us(kernels[0].op_types, kernels[0].category, replace(V100, dispatch_us=20.0)) == pytest.approx(2 * per_op)


def test_a_fused_kernel_pays_its_category_and_views_keep_their_own_cost():
    """One ATen call for several ONNX ops (nn.Linear: MatMul + bias Add) is looked up by the category
    its fusion rule names, not by its first op type; a view pays view_dispatch_us either way."""
    table = V100.host_us
    assert host_us(["MatMul", "Add"], "linear", V100) == pytest.approx(V100.dispatch_us * table["@linear"] / table["Add"])
    assert host_us(["Add"], "elementwise", V100) == pytest.approx(V100.dispatch_us)
    median = statistics.median(table.values()) / table["Add"]  # GELU: no @activation entry
    assert host_us(["Div", "Erf", "Add", "Mul", "Mul"], "activation", V100) == pytest.approx(V100.dispatch_us * median)
    g = _host_bound_chain("Relu", n=3)
    assert LatencyModel(g).estimate(V100, 1).latency_ms == pytest.approx(
        LatencyModel(g).estimate(without(V100, "host_classes"), 1).latency_ms * table["Relu"] / table["Add"], rel=0.05)


def test_host_classes_leave_device_bound_networks_and_other_profiles_alone():
    """Where the device is the bottleneck (a large batch), the host runs ahead and its per-class
    costs change only the first kernel's issue time; profiles without the table (the CPUs, the
    Neural Engine) price exactly as before."""
    g = _host_bound_chain("Conv", n=20, c=256)
    big = LatencyModel(g).estimate(V100, 1024).latency_ms
    first = (host_us(["Conv"], "conv", V100) - V100.dispatch_us) * 1e-3
    assert big - LatencyModel(g).estimate(without(V100, "host_classes"), 1024).latency_ms == pytest.approx(first, abs=1e-9)
    for name in ("cpu-x86", "cpu-i9-10940x", "local-cpu", "iphone13"):
        p = load_profile(name)
        assert not p.host_us and not p.uses("host_classes")
        assert host_us(["Conv"], "conv", p) == p.dispatch_us


@pytest.mark.parametrize("overhead, error", [
    ('host_reference = "Add"\n[overhead.host_us]\n"@convv" = 2.0\nAdd = 1.0', "names no op category"),
    ('host_reference = "Mul"\n[overhead.host_us]\nAdd = 1.0', "host_reference"),
    ('host_reference = "Add"\n[overhead.host_us]\nAdd = 0.0', "must be >= 0.01"),
    ('host_reference = "Add"\n[overhead.host_us]\nAdd = 5e-324\nRelu = 12.0', "must be >= 0.01"),  # would divide to inf
    ('host_reference = "Add"\n[overhead.host_us]\nAdd = 10.0\nRelu = -1.0', "must be >= 0.01"),
    ('host_reference = "Add"\n[overhead.host_us]\nAdd = 10.0\nConvv = 24.0', "'Convv' is no ONNX op type the cost model prices (did you mean 'Conv'?)"),
    ('host_reference = "Add"\n[overhead.host_us]\nAdd = 10.0\nrelu = 12.0', "'relu' is no ONNX op type the cost model prices (did you mean 'Relu'?)"),
    ('host_reference = "add"\n[overhead.host_us]\nadd = 10.0', "'add' is no ONNX op type"),
    ('host_reference = "Add"\n[overhead.host_us]\nAdd = 10.0\n"" = 12.0', "'' is no ONNX op type"),
    ('host_reference = "Add"', "without an [overhead.host_us] table"),
])
def test_a_bad_host_table_is_a_one_line_error(overhead, error):
    base = dict(_resolved_dict("v100")[0])
    base["overhead"] = {k: v for k, v in base["overhead"].items() if k not in ("host_us", "host_reference")}
    extra = tomllib.loads("[overhead]\n" + overhead)["overhead"]
    d = {**base, "overhead": {**base["overhead"], **extra}}
    with pytest.raises(AutoVitError, match=re.escape(error)) as e:
        profile_from_dict(d, "test")
    assert "\n" not in str(e.value)
    no_table = {**base, "overhead": base["overhead"]}
    with pytest.raises(AutoVitError, match=re.escape("needs an [overhead.host_us] table")):
        profile_from_dict(no_table, "test")  # host_classes still in its mechanisms
    assert not profile_from_dict({**no_table, "mechanisms": ["dw_taps"]}, "test").host_us


def test_an_ofa_subnet_prices_every_op_by_a_probed_class():
    """The graph the OFA benchmark prices (benchmarks/external.py: the subnet exported by
    module_graph, BatchNorm kept, rewritten to OFA's own element-wise ops) has every kernel in a
    class of the host table: its convolutions, depthwise convolutions, BatchNorms (one per
    convolution outside squeeze-excite and the feature mix, not folded), element-wise ops, means
    and the classifier; only the flatten view stays out (view_dispatch_us)."""
    from autovit.latmodel.sources import module_graph

    ofa = _ofa_mbv3()
    net = ofa.OFAMobileNetV3([3] * 20, [3] * 20, [2] * 5, ops="torch")
    g = ofa.ofa_code_graph(module_graph(net, (1, 3, 128, 128)))
    kernels = LatencyModel(g).kernels(V100)
    table = V100.host_us

    def key(k):
        return k.op_types[0] if len(k.op_types) == 1 and k.op_types[0] in table else "@" + k.category

    by_key: dict[str, int] = {}
    for k in kernels:
        if k.klass != "view":
            by_key[key(k)] = by_key.get(key(k), 0) + 1
    assert set(by_key) <= set(table), set(by_key) - set(table)
    assert [k.op_types for k in kernels if k.klass == "view"] == [["Flatten"]]
    blocks, se_blocks = 1 + 10, 6  # the fixed first block and 2 per stage; squeeze-excite in stages 2, 4, 5
    assert by_key["@dwconv"] == blocks
    assert by_key["@conv"] == 1 + (2 * blocks - 1) + 2 * se_blocks + 2  # stem, 1x1s (the first block has no expansion), SE, final
    # One after every convolution but the SE ones and the feature mix, depthwise included.
    assert by_key["BatchNormalization"] == by_key["@conv"] - 2 * se_blocks - 1 + by_key["@dwconv"]
    assert by_key["@linear"] == 1 and by_key["ReduceMean"] == 2 * (se_blocks + 1)
def test_small_dense_fp32_convolutions_at_batch_1_run_in_aten_not_onednn():
    """ATen's use_mkldnn keeps a dense fp32 convolution at batch 1 with a filter no larger than 3
    on some side and at most 20480 input elements in its own im2col + GEMM: NCHW throughout, so no
    activation or weight reorders, and an im2col copy on one thread unless the filter is 1x1."""
    cpu = load_profile("cpu-i9-10940x")
    assert "thnn_conv" in cpu.mechanisms and cpu.thnn_max_input == 20480
    off = without(cpu, "thnn_conv")

    def kernel(g, profile, batch=1):
        return LatencyModel(g).estimate(profile, batch, "fp32").kernels[0]

    small_1x1 = conv_graph(256, 256, 1, 8)  # 16384 input elements: native, no im2col
    on, base = kernel(small_1x1, cpu), kernel(small_1x1, off)
    w, acts = 256 * 256 * 4, (256 * 64 + 256 * 64) * 4
    assert base.bytes - on.bytes == pytest.approx(2 * w + 2 * acts)  # neither weights nor activations reordered
    assert on.device_ms < base.device_ms
    small_3x3 = conv_graph(64, 64, 3, 16)  # 16384 input elements: native, with a serial im2col copy
    on3 = kernel(small_3x3, cpu)
    cols = 64 * 9 * 14 * 14
    serial = 2 * cols * 4 / (cpu.cache_gbps * 1e9 / cpu.units) * 1e3
    assert on3.device_ms == pytest.approx(serial + max(on3.compute_ms, on3.memory_ms) + cpu.fork_join_us * 1e-3
                                          * _threads(on3, cpu), rel=1e-6)
    # oneDNN's: an input above the limit, a 5x5 filter, a batch above 1, a grouped convolution.
    for g, batch in ((conv_graph(256, 256, 1, 9), 1), (conv_graph(64, 64, 5, 8), 1), (small_1x1, 2),
                     (depthwise_graph(3, c=8, hw=8), 1)):
        assert kernel(g, cpu, batch).device_ms == pytest.approx(kernel(g, off, batch).device_ms)
    # Not on a GPU profile (fp16 there, and no such rule).
    gpu = replace(V100, mechanisms=V100.mechanisms + ("thnn_conv",), thnn_max_input=20480)
    assert LatencyModel(small_1x1).estimate(gpu).latency_ms == pytest.approx(LatencyModel(small_1x1).estimate(V100).latency_ms)


def _threads(t, profile) -> int:
    from autovit.latmodel.timing import gemm_tiles, split_k

    g = t.kernel.gemm
    return min(profile.units, gemm_tiles(g, profile) * split_k(g, profile))


def test_compiled_reductions_go_parallel_by_their_whole_loop_nest():
    """A squeeze-excitation mean reads a whole map but writes one value per channel: Inductor's
    decide_parallel_depth counts the reduced axes too, so it runs on every core (over its
    outputs), not on the one thread its 256 outputs alone would give."""
    cpu = load_profile("cpu-i9-10940x")
    assert {"inductor_threads", "inductor_reductions"} <= set(cpu.mechanisms)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 88, 88])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = build_graph(make_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)], [x], [y], opset=13))

    def kernel(profile):
        return LatencyModel(g).estimate(profile, 1, "fp32").kernels[0]

    on, off = kernel(cpu), kernel(without(cpu, "inductor_reductions"))
    assert on.memory_ms == pytest.approx(off.memory_ms / cpu.units, rel=1e-6)  # every core instead of one
    assert on.device_ms - on.memory_ms == pytest.approx(cpu.units * cpu.fork_join_us * 1e-3)  # and it wakes them
    # A small map stays on one thread either way.
    x.type.tensor_type.shape.dim[2].dim_value = x.type.tensor_type.shape.dim[3].dim_value = 4
    small = build_graph(make_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)], [x], [y], opset=13))
    a, b = (LatencyModel(small).estimate(p, 1, "fp32").kernels[0] for p in (cpu, without(cpu, "inductor_reductions")))
    assert a.device_ms == pytest.approx(b.device_ms)


def test_cpu_convolutions_pad_output_channels_to_one_vector_not_to_the_gemm_tile():
    """oneDNN blocks a convolution's output channels by the SIMD width (16 fp32 with AVX-512, 8
    with AVX2): a grouped convolution of 16 channels per group wastes nothing on AVX-512, where a
    32-column tile would waste half; a linear layer (MKL's GEMM) keeps the profile's tile."""
    from autovit.latmodel.timing import kernel_tile

    i9, i7 = load_profile("cpu-i9-10940x"), load_profile("cpu-i7-12700h")
    assert "conv_channel_block" in i9.mechanisms and "conv_channel_block" in i7.mechanisms
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16)
    g = build_graph(make_model([node], [x], [y], [_init("w", (256, 16, 3, 3))]))
    for cpu, lanes in ((i9, 16), (i7, 8)):
        k = LatencyModel(g).kernels(cpu)[0]
        assert kernel_tile(k, cpu, "fp32") == (cpu.gemm_tile[0], lanes)
        assert kernel_tile(k, without(cpu, "conv_channel_block"), "fp32") == cpu.gemm_tile
    on, off = (LatencyModel(g).estimate(p, 1, "fp32").kernels[0] for p in (i9, without(i9, "conv_channel_block")))
    assert on.compute_ms == pytest.approx(off.compute_ms / 2, rel=0.05)  # 16 of 32 columns were waste
    linear = [k for k in LatencyModel(attention_graph(sdpa=False)).kernels(i9) if k.klass == "matrix"]
    assert linear and all(kernel_tile(k, i9, "fp32") == i9.gemm_tile for k in linear)
    # ATen's own small dense convolutions (thnn_conv: im2col + a BLAS GEMM) keep the GEMM tile
    native = LatencyModel(conv_graph(256, 256, 1, 8)).kernels(i9)[0]
    assert kernel_tile(native, i9, "fp32") == i9.gemm_tile
    assert kernel_tile(native, without(i9, "thnn_conv"), "fp32") == (i9.gemm_tile[0], 16)


def test_onednn_convolutions_start_the_whole_team_for_themselves_and_their_weight_reorder():
    """With the OpenMP runtime oneDNN starts every thread for each primitive however small; under
    torch.compile a convolution reads and writes channels-last activations as they are and reorders
    its plain weights on every call: two whole-team regions, the stem's too."""
    cpu = load_profile("cpu-i9-10940x")
    assert {"fork_join", "onednn_team"} <= set(cpu.mechanisms)
    off = without(cpu, "onednn_team")

    def kernel(g, profile):
        return LatencyModel(g).estimate(profile, 1, "fp32").kernels[0]

    team = cpu.units * cpu.fork_join_us * 1e-3
    bare = without(cpu, "fork_join", "onednn_team")  # no thread starts at all
    tiny = conv_graph(64, 64, 5, 6)  # a 5x5 filter (oneDNN's) with 2 x 2 outputs: a few tiles, some threads before
    assert kernel(tiny, cpu).device_ms - kernel(tiny, bare).device_ms == pytest.approx(2 * team)
    assert kernel(tiny, off).device_ms - kernel(tiny, bare).device_ms < 2 * team
    stem = conv_graph(3, 64, 7, 64)
    assert kernel(stem, cpu).device_ms - kernel(stem, bare).device_ms == pytest.approx(2 * team)
    # ATen's own convolutions (thnn_conv) are not oneDNN's, and without fork_join nothing is paid.
    native = conv_graph(256, 256, 1, 8)
    assert kernel(native, cpu).device_ms == pytest.approx(kernel(native, off).device_ms)
    no_fork = without(cpu, "fork_join")
    assert kernel(tiny, no_fork).device_ms == pytest.approx(kernel(tiny, bare).device_ms)


def test_onednn_team_prices_a_kernel_in_its_own_dtype(tmp_path):
    """The regions are charged only in the dtypes whose convolutions ideep relayouts
    (`nchw_conv_relayout`, fp32 on the CPU profiles): a bf16 convolution of a profile that
    computes bf16 too pays none of them (fork_join_s once priced every kernel as fp32)."""
    path = tmp_path / "bf16.toml"
    path.write_text('name = "bf16"\nbase = "cpu-i9-10940x"\ndtypes = ["fp32", "bf16"]\ndefault_dtype = "fp32"\n')
    cpu = load_profile(str(path))
    assert "bf16" not in cpu.nchw_conv_relayout
    off = without(cpu, "onednn_team")
    tiny = conv_graph(64, 64, 5, 6)

    def ms(profile, dtype):
        return LatencyModel(tiny).estimate(profile, 1, dtype).kernels[0].device_ms

    assert ms(cpu, "bf16") == pytest.approx(ms(off, "bf16"))
    assert ms(cpu, "fp32") - ms(off, "fp32") > 0
