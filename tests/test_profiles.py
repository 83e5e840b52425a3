import re
from importlib import resources

import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import builtin_names, load_profile

REQUIRED = {"v100", "a100", "h100", "rtx3090", "rtx4090", "iphone13", "cpu-x86"}


def test_required_profiles_exist_and_load():
    assert REQUIRED <= set(builtin_names())
    for name in builtin_names():
        p = load_profile(name)
        assert p.name == name and p.units > 0 and p.dram_gbps > 0


def test_every_figure_has_a_source_comment():
    """Hardware facts live in TOML with a source for each figure (brief, 'Layout')."""
    sections_with_facts = {"compute", "memory", "cpu", "overhead", "fallback", "efficiency", "ane"}
    for f in resources.files("autovit.hw_profiles").iterdir():
        if not f.name.endswith(".toml"):
            continue
        section = ""
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.startswith("["):
                section = line.strip("[] ")
            elif section in sections_with_facts and re.match(r"^\w+\s*=\s*[\d\[{]", line):
                assert "#" in line, f"{f.name}:{n} has a figure without a source comment: {line}"


def test_cpu_peak_follows_core_count(tmp_path):
    p = tmp_path / "cpu16.toml"
    p.write_text('base = "cpu-x86"\nname = "cpu16"\n[cpu]\ncores = 16\n')
    assert load_profile(str(p)).matrix_tflops["fp32"] == pytest.approx(2 * load_profile("cpu-x86").matrix_tflops["fp32"])


@pytest.mark.parametrize("text, message", [
    ('base = "v100"\nname = "bad"\n[memory]\ndram_gbps = "fast"\n', "memory.dram_gbps"),
    ('base = "v100"\nname = "bad"\n[efficiency]\nmatrix = 1.5\n', "efficiency.matrix"),
    ("name = 'x'\nkind = 'gpu'\n", "missing field"),
    ("name = [", "not valid TOML"),
])
def test_malformed_profile_names_the_field(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(AutoVitError, match=message):
        load_profile(str(p))


def test_unknown_hw_lists_valid_ones():
    with pytest.raises(AutoVitError, match="v100"):
        load_profile("tpu-v9")


def test_ane_is_fp16_only():
    with pytest.raises(AutoVitError, match="--dtype fp16"):
        load_profile("iphone13").check_dtype("fp32")


def test_local_cpu_cache_counts_private_caches_per_core_and_shared_ones_once(monkeypatch):
    """detect_local_cpu over a fake sysfs: L1 and instruction caches left out, a per-core L2 times
    the cores, an L3 shared by the CPUs once; the listing stops at the first missing index."""
    from autovit.latmodel import hardware, measure

    base = "/sys/devices/system/cpu/cpu0/cache/index"
    files = {}
    for i, (level, kind, size, shared) in enumerate([("1", "Data", "48K", "0"), ("1", "Instruction", "32K", "0"),
                                                    ("2", "Unified", "2048K", "0"), ("3", "Unified", "32M", "0-3")]):
        files.update({f"{base}{i}/level": level, f"{base}{i}/type": kind, f"{base}{i}/size": size,
                      f"{base}{i}/shared_cpu_list": shared})
    files[f"{base}5/level"] = "4"  # after the gap at index 4: not read
    monkeypatch.setattr(hardware, "_read_first_line", files.get)
    monkeypatch.setattr(measure, "physical_cores", lambda: 4)
    assert [c["level"] for c in hardware.os_caches()] == ["1", "2", "3"]
    assert hardware.detect_local_cpu()["memory"]["cache_mib"] == pytest.approx(4 * 2 + 32)
    # the per-core L2 is the private level of two (timing._memory_s), per core
    assert hardware.detect_local_cpu()["memory"]["private_mib"] == pytest.approx(2.0)
    # with SMT a core's L2 lists its two hardware threads: still the core's own
    files[f"{base}2/shared_cpu_list"] = "0,4"
    files["/sys/devices/system/cpu/cpu0/topology/thread_siblings_list"] = "0,4"
    assert hardware.detect_local_cpu()["memory"] == {"cache_mib": pytest.approx(40.0), "private_mib": pytest.approx(2.0)}


def test_measured_streaming_rates_set_the_two_cache_levels():
    """A LUT's streaming probes set the private caches' rate and the shared level's, for a profile
    with two levels only; a bad or missing probe leaves the profile's figures."""
    from autovit.latmodel.hardware import stream_override

    two = {"memory": {"private_mib": 2.0, "cache_mib": 484.0, "cache_gbps": 400.0}}
    assert stream_override(two, {"private": 190.04, "shared": 110.0}) == {
        "memory": {"cache_gbps": 190.0, "shared_gbps": 110.0}}
    assert stream_override(two, None) == {} and stream_override(two, {"private": 190.0}) == {}
    assert stream_override(two, {"private": 190.0, "shared": 0.0}) == {}
    assert stream_override({"memory": {"cache_mib": 36.0}}, {"private": 190.0, "shared": 110.0}) == {}  # one level


def test_the_stream_probe_times_relu_passes_here():
    from autovit.latmodel.runner import stream_probe

    assert stream_probe("onnxruntime", 1, 0.25)() > 0
    assert stream_probe("torch-cuda", 1, 0.25) is None


def test_a_measured_gemm_above_the_peak_raises_the_clock():
    """A VM's OS reports the nominal clock; a GEMM measured faster than the peak it implies
    raises [cpu] ghz to the clock that peak needs, never lowers it."""
    from autovit.latmodel.hardware import clock_override

    d = {"cpu": {"cores": 2, "ghz": 2.6, "simd_bits": 512, "fma_units": 2}}  # 2 x 2.6 x 64 = 332.8 GFLOP/s
    assert clock_override(d, 2, 459.0) == {"cpu": {"ghz": round(459.0 / 128, 3)}}
    assert clock_override(d, 1, 200.0) == {"cpu": {"ghz": round(200.0 / 64, 3)}}  # the LUT's one core
    assert clock_override(d, 2, 300.0) == {} and clock_override(d, 2, None) == {}  # below peak: efficiency
    assert clock_override({}, 2, 459.0) == {}  # a profile without [cpu] (a GPU) is left alone


def test_the_gemm_probe_times_a_matmul_here():
    from autovit.latmodel.runner import sgemm_probe

    assert sgemm_probe("onnxruntime", 1)() > 0
    assert sgemm_probe("torch-cuda", 1) is None
