import math
from dataclasses import replace

import pytest

from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.graph import build_graph
from autovit.latmodel.hardware import load_profile
from autovit.latmodel.kernels import Kernel
from autovit.latmodel.timing import kernel_time, matrix_utilization, network_time, padded_elems, vector_utilization

from conftest import conv_model

V100 = load_profile("v100")


def _vector_kernel(flops: float, elems: int) -> Kernel:
    return Kernel("k", ["k"], ["Add"], "elementwise", "vector", flops, elems, elems, 0, elems, None, "m", [])


def test_kernel_time_is_launch_plus_max_of_compute_and_memory():
    p = replace(V100, cache_mib=0.0)  # everything from DRAM, to make the arithmetic plain
    k = _vector_kernel(flops=1e9, elems=10_000_000)
    t = kernel_time(k, p, "fp32", 1.0)
    util = vector_utilization(10_000_000, p)
    compute = 1e9 / (p.vector_tflops["fp32"] * 1e12 * p.eff_vector * util)
    memory = 2 * 10_000_000 * 4 / (p.dram_gbps * 1e9 * p.eff_memory) / util
    assert t.compute_ms == pytest.approx(compute * 1e3)
    assert t.memory_ms == pytest.approx(memory * 1e3)
    assert t.device_ms == pytest.approx((p.launch_us * 1e-6 + max(compute, memory)) * 1e3)
    assert t.bound == ("compute" if compute > memory else "memory")


def test_wave_quantization():
    p = replace(V100, k_half=0.0, matrix_align={})
    tm, tn = p.gemm_tile
    full = (1, tm * p.units, tn, 4096)  # exactly one tile per SM
    assert matrix_utilization(full, p, "fp32") == pytest.approx(1.0)
    one_more = (1, tm * (p.units + 1), tn, 4096)  # one tile spills into a second wave
    assert matrix_utilization(one_more, p, "fp32") == pytest.approx((p.units + 1) / (2 * p.units))


def test_tensor_core_alignment_penalty():
    p = replace(V100, k_half=0.0)
    big = (1, 128 * 80, 64, 64)
    odd = (1, 128 * 80, 60, 64)
    assert matrix_utilization(odd, p, "fp16") < matrix_utilization(odd, p, "fp32") * 0.95
    assert matrix_utilization(big, p, "fp16") == pytest.approx(matrix_utilization(big, p, "fp32"))


def test_async_host_hides_short_kernels_behind_dispatch():
    short = [_vector_kernel(1, 32) for _ in range(100)]
    total, _ = network_time(short, V100, "fp32", 1.0)
    # Tiny kernels: the host's dispatch cost sets the pace.
    assert total == pytest.approx(100 * V100.dispatch_us * 1e-3, rel=0.05)
    sync = replace(V100, async_dispatch=False)
    total_sync, times = network_time(short, sync, "fp32", 1.0)
    assert total_sync == pytest.approx(sum(t.device_ms for t in times) + 100 * sync.dispatch_us * 1e-3)


def test_ane_pads_last_axis_to_64_bytes():
    assert padded_elems((1, 96, 8, 8), 2, 64) == 96 * 8 * 32
    assert padded_elems((4, 64), 2, 64) == 4 * 64
    g = build_graph(conv_model(cin=16, cout=16, hw=8, act=None))
    ane = load_profile("iphone13")
    unpadded = replace(ane, last_axis_align_bytes=0)
    m = LatencyModel(g)
    assert m.estimate(ane).bytes > m.estimate(unpadded).bytes


def test_fusion_removes_intermediate_traffic():
    g = build_graph(conv_model(cin=16, cout=32, hw=16, act="Relu"))
    m = LatencyModel(g)
    cpu = load_profile("cpu-x86")
    fused = m.kernels(cpu)
    assert len(fused) == 1 and fused[0].op_types == ["Conv", "Relu"]
    no_rules = replace(cpu, fusion=())
    m2 = LatencyModel(g)
    assert len(m2.kernels(no_rules)) == 2
    assert m.estimate(cpu).bytes < m2.estimate(no_rules).bytes


def test_batch_scales_work_not_weights():
    g = build_graph(conv_model(cin=32, cout=64, hw=16))
    m = LatencyModel(g)
    e1, e8 = m.estimate(V100, 1), m.estimate(V100, 8)
    assert e8.flops == pytest.approx(8 * e1.flops)
    assert e8.latency_ms >= e1.latency_ms  # both dispatch-bound on a V100: the host sets the pace
    assert e8.throughput_per_s > 7 * e1.throughput_per_s
    e1k, e1k2 = m.estimate(V100, 1024), m.estimate(V100, 2048)
    assert e1k2.latency_ms > 1.8 * e1k.latency_ms  # large batches: device-bound, linear in work


def test_fallback_engine_switch_costs_time():
    from autovit.latmodel.kernels import Kernel as K

    ane = load_profile("iphone13")
    a = _vector_kernel(1e3, 1000)
    b = K("g", ["g"], ["Gather"], "layout", "layout", 0, 1000, 1000, 0, 1000, None, "m", [], unsupported=True)
    total, times = network_time([a, b, replace(a)], ane, "fp16", 1.0)
    assert times[1].engine == ane.fallback.name
    assert times[1].overhead_ms >= ane.fallback.switch_us * 1e-3
    assert times[2].overhead_ms >= ane.fallback.switch_us * 1e-3  # and back again
    assert math.isclose(total, sum(t.ms for t in times))


def test_sdpa_pattern_fuses_on_gpu():
    import autovit.nas  # noqa: F401  (registers the autovit: source this test reads)
    from autovit.latmodel.sources import graph_for

    g = graph_for("autovit:xxs")
    kernels = LatencyModel(g).kernels(V100)
    att = [k for k in kernels if k.category == "attention"]
    assert att and all("Softmax" in k.op_types and k.op_types.count("MatMul") == 2 for k in att)
