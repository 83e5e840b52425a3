"""Hostile hardware profiles and flags (issue 15): one line each, no NaN reaching a latency,
unknown keys named, bases resolved against the file naming them, usage errors exit 2."""
import json
import math

import pytest

from autovit.cli import lat
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import PROFILE_KEYS, load_profile, user_profile_dir
from test_cli import assert_one_line_error, run_cli

BASE = 'base = "v100"\nname = "x"\n'


def _profile(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("text, needles", [
    (BASE + "dtypes = []\n", ["dtypes", "1 to 4 entries"]),
    (BASE.encode() + b'description = "\xff"\n', ["not UTF-8"]),
    (BASE + "calibration = 5\n", ["calibration", "must be a table"]),
    (BASE + "[calibration]\nlut = 5\n", ["[calibration]", "'lut' must be a string"]),
    (BASE + "[memory]\ndram_gbps = nan\n", ["memory.dram_gbps", "finite"]),
    (BASE + "[overhead]\nlaunch_us = inf\n", ["overhead.launch_us", "finite"]),
    (BASE + "[compute]\nmatrix_tflops = { fp32 = -inf }\n", ["compute.matrix_tflops.fp32"]),
    ('base = "cpu-x86"\nname = "x"\n[cpu]\ncoers = 4\n', ["[cpu]", "unknown key 'coers'", "did you mean 'cores'"]),
    (BASE + "[memroy]\ndram_gbps = 4\n", ["unknown key 'memroy'", "did you mean 'memory'"]),
    (BASE + "[compute]\nunits = 1e12\n", ["compute.units", "integer"]),
    (BASE + "[compute]\nunits = 10000000000\n", ["compute.units", "<= 1e+06"]),
    (BASE + "[compute]\ngemm_tile = [32]\n", ["compute.gemm_tile", "[M, N]"]),
    (BASE + "[compute]\nmatrix_tflops = { fp64 = 1.0 }\n", ["unknown key 'fp64'"]),
    (BASE + "[memory]\ndram_gbps = true\n", ["memory.dram_gbps", "must be a number"]),
    (BASE + "[efficiency]\nmatrix = 0\n", ["efficiency.matrix", ">= 0.0001"]),
    (BASE + "[memory]\ndram_gbps = 1e-300\n", ["memory.dram_gbps", ">= 0.001"]),
    (BASE + "kind = \"tpu\"\n", ["'tpu' is not one of gpu, cpu, npu"]),
    (BASE + "memory = 3\n", ["[memory] must be a table"]),
    (BASE + '[[fusion]]\nname = "a"\nhead = ["Conv"]\ntail = ["@activaton"]\n', ["'@activaton'", "did you mean 'activation'"]),
    (BASE + '[[fusion]]\nnme = "a"\n', ["[[fusion]] #1", "unknown key 'nme'"]),
    (BASE + '[[fusion]]\nname = "a"\ncategory = "warp"\n', ["'warp' is not one of"]),
    (BASE + "fusion = 3\n", ["fusion", "array of tables"]),
    (BASE + '[layout]\nrelayout_categories = ["cnv"]\n', ["'cnv'", "did you mean 'conv'"]),
    ('base = "cpu-x86"\nname = "x"\n[cpu]\ncores = 0\n', ["cpu.cores", ">= 1"]),
    ("name = [", ["not valid TOML"]),
    ('base = "p.toml"\nname = "x"\n', ["loops back"]),
    ('base = "missing.toml"\nname = "x"\n', ["not found"]),
    ('base = "nope"\nname = "x"\n', ["unknown hardware 'nope'"]),
    ('base = 5\nname = "x"\n', ["field 'base' must be a string"]),
    (BASE + "x" * 2**20 + "\n", ["1 MiB"]),
    # a GPU with a Neural Engine table was priced half as an engine (3.18 ms for xxs on v100, not 3.38)
    (BASE + "[ane]\nl2_mib = 2\nl2_gbps = 5\n", ["an [ane] table describes a Neural Engine", "kind = 'gpu'"]),
    # a tile of 64 halved iphone13's prediction; no engine uses Winograd tiles beyond F(6x6, 3x3)
    ('base = "iphone13"\nname = "x"\n[ane]\nwinograd_tile = 8\n', ["ane.winograd_tile", "<= 6"]),
    ('base = "cpu-x86"\nname = "x"\n[compute]\nthnn_max_input = -1\n', ["compute.thnn_max_input"]),
    ('base = "cpu-x86"\nname = "x"\n[compute]\nthnn_max_input = "big"\n', ["compute.thnn_max_input"]),
    ('base = "cpu-x86"\nname = "x"\n[layout]\nnchwc_pad_multiple = -4\n', ["layout.nchwc_pad_multiple"]),
    ('base = "cpu-x86"\nname = "x"\n[layout]\nnchwc_pad_multiple = 2.5\n', ["layout.nchwc_pad_multiple"]),
    ('base = "cpu-x86"\nname = "x"\n[layout]\nnchwc_pad_multiple = "4"\n', ["layout.nchwc_pad_multiple"]),
    ('base = "cpu-x86"\nname = "x"\n[layout]\nnchwc_pad_multiple = true\n', ["layout.nchwc_pad_multiple"]),
    ('base = "cpu-x86"\nname = "x"\n[layout]\nnchwc_pad_multiple = 1025\n', ["layout.nchwc_pad_multiple"]),
    ('base = "local-cpu"\nname = "x"\n[memory]\nprivate_mib = -1\n', ["memory.private_mib"]),
    ('base = "local-cpu"\nname = "x"\n[memory]\nprivate_mib = "2"\n', ["memory.private_mib"]),
    ('base = "local-cpu"\nname = "x"\n[memory]\nshared_gbps = 0\n', ["memory.shared_gbps"]),
    ('base = "local-cpu"\nname = "x"\n[memory]\nshared_gbps = nan\n', ["memory.shared_gbps"]),
    ('base = "local-cpu"\nname = "x"\n[efficiency]\nsoftmax_row_ns = -5\n', ["efficiency.softmax_row_ns"]),
    ('base = "local-cpu"\nname = "x"\n[efficiency]\nsoftmax_row_ns = true\n', ["efficiency.softmax_row_ns"]),
    ('base = "local-cpu"\nname = "x"\n[overhead]\nfork_join_us = -1\n', ["overhead.fork_join_us"]),
    ('base = "local-cpu"\nname = "x"\n[overhead]\nfork_join_us = nan\n', ["overhead.fork_join_us"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nsubnormal_assist_cycles = -1\n', ["compute.subnormal_assist_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nsubnormal_assist_cycles = inf\n', ["compute.subnormal_assist_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nsoftmax_subnormal_assists = "6"\n', ["compute.softmax_subnormal_assists"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nsoftmax_underflow_assists = nan\n', ["compute.softmax_underflow_assists"]),
    ('base = "local-cpu"\nname = "x"\nmechanisms = ["subnormal"]\n', ["subnormal"]),
    # the loader rule for profiles calibrated before fork_join reads [overhead] and [calibration] before the checks do
    ('base = "local-cpu"\nname = "x"\noverhead = 5\n[calibration]\nstderr = { "dispatch_us" = 0.1 }\n', ["[overhead]"]),
    ('base = "local-cpu"\nname = "x"\n[calibration]\nstderr = "x"\n', ["stderr"]),
    (BASE + '[[fusion]]\nname = "a"\npattern = ["Sigmoid", "Mul"]\nself_gated = "yes"\n', ["self_gated"]),
])
def test_bad_profiles_are_one_line(tmp_path, capsys, text, needles):
    code, _, err = run_cli(lat, ["hw", "show", str(_profile(tmp_path, text))], capsys)
    assert_one_line_error(code, err, *needles)


def test_every_known_key_has_a_type_and_sane_bounds():
    for path, key in PROFILE_KEYS.items():
        if key.kind in ("int", "number", "numbers", "ints", "tile"):
            assert key.lo is not None and key.hi is not None and math.isfinite(key.hi), path


def test_base_is_resolved_against_the_naming_files_folder(tmp_path, monkeypatch):
    _profile(tmp_path, 'base = "v100"\nname = "parent"\n[overhead]\ndispatch_us = 7.0\n', "sub/parent.toml")
    child = _profile(tmp_path, 'base = "parent.toml"\nname = "child"\n', "sub/child.toml")
    _profile(tmp_path, 'base = "sub/child.toml"\nname = "top"\n', "top.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_profile(str(child)).dispatch_us == 7.0
    assert load_profile(str(tmp_path / "top.toml")).dispatch_us == 7.0
    # A bare name is a built-in profile, whatever lies in the working directory.
    _profile(elsewhere, 'base = "v100"\nname = "fake"\n', "cpu-x86.toml")
    assert load_profile(str(_profile(tmp_path, 'base = "cpu-x86"\nname = "y"\n', "y.toml"))).kind == "cpu"


def test_deep_base_chains_are_refused(tmp_path):
    for i in range(20):
        _profile(tmp_path, f'base = "{i + 1}.toml"\nname = "p{i}"\n', f"{i}.toml")
    _profile(tmp_path, 'base = "v100"\nname = "last"\n', "20.toml")
    with pytest.raises(AutoVitError, match="levels of 'base'"):
        load_profile(str(tmp_path / "0.toml"))


def test_hw_list_skips_a_corrupt_calibrated_profile(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    d = user_profile_dir()
    d.mkdir(parents=True)
    (d / "broken@calibrated.toml").write_bytes(b"\xff\xfe not toml")
    (d / "nan@calibrated.toml").write_text('base = "v100"\nname = "nan@calibrated"\n[efficiency]\nmatrix = nan\n')
    (d / "good@calibrated.toml").write_text('base = "v100"\nname = "good@calibrated"\n')
    code, out, err = run_cli(lat, ["hw", "list", "--json"], capsys)
    assert code == 0
    names = [p["name"] for p in json.loads(out)]
    assert "v100" in names and "good@calibrated" in names and "broken@calibrated" not in names
    assert "skipped broken@calibrated" in err and "skipped nan@calibrated" in err and "Traceback" not in err


def test_a_profile_that_loads_prices_finitely(tmp_path, tiny_conv_onnx, capsys):
    """Extreme but legal values: the latency stays a finite positive number."""
    p = _profile(tmp_path, 'base = "cpu-x86"\nname = "x"\n[cpu]\ncores = 1024\nghz = 10\nsimd_bits = 2048\n'
                           'fma_units = 16\n[efficiency]\nmatrix = 1e-4\nvector = 1e-4\nmemory = 1e-4\n'
                           'layout_penalty = 1000\n[memory]\ndram_gbps = 1e-3\ncache_gbps = 1e-3\n'
                           '[overhead]\ndispatch_us = 1e6\n')
    code, out, err = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", str(p), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["latency_ms"] > 0 and math.isfinite(d["latency_ms"]) and d["throughput_per_s"] is not None


@pytest.mark.parametrize("args, needle", [
    (["--batch", "0"], "--batch"), (["--batch", "9" * 30], "--batch"), (["--top", "-1"], "--top"),
    (["--roofline"], "--roofline"), (["--dtype", "fp16", "--hw", "cpu-x86"], "--dtype fp16"),
    (["--input-shape", "1,2"], "--input-shape"), (["--plot", "{tmp}"], "is a directory"),
])
def test_estimate_usage_errors_exit_2(tiny_conv_onnx, tmp_path, capsys, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    hw = [] if "--hw" in args else ["--hw", "v100"]
    code, _, err = run_cli(lat, ["estimate", str(tiny_conv_onnx), *hw, *args], capsys)
    assert_one_line_error(code, err, needle)
    assert code == 2


@pytest.mark.parametrize("command, needle", [
    (["compare", "X", "--hw", "v100", "--hw", "v100"], "named twice"),
    (["compare", "X", "--hw", "v100", "--batch", "-1"], "--batch"),
    (["profile", "--hw", "local-cpu", "--preset", "paper46", "--ci-pct", "nan"], "--ci-pct"),
    (["profile", "--hw", "local-cpu", "--preset", "paper46", "--ci-pct", "inf"], "--ci-pct"),
    (["profile", "--hw", "local-cpu", "--preset", "paper46", "--threads", "100000"], "--threads"),
    (["profile", "--hw", "local-cpu", "--preset", "paper46", "--max-repeats", "4"], "--max-repeats"),
    (["profile", "--hw", "local-cpu"], "exactly one module set"),
    (["validate", "--hw", "local-cpu", "--seed", "-1"], "--seed"),
    (["validate", "--hw", "local-cpu", "--models", "random:99999999999"], "--models"),
    (["validate", "--hw", "local-cpu", "--space", ","], "--space is empty"),
    (["calibrate", "--hw", "v100@calibrated", "--lut", "X"], "already calibrated"),
])
def test_usage_errors_exit_2_everywhere(tiny_conv_onnx, capsys, command, needle):
    command = [str(tiny_conv_onnx) if a == "X" else a for a in command]
    code, _, err = run_cli(lat, command, capsys)
    assert_one_line_error(code, err, needle)
    assert code == 2


def test_plot_and_out_create_missing_folders_alike(tiny_conv_onnx, tmp_path, capsys):
    """--plot and --out in every command create missing parent folders (as `train --out` does)."""
    from autovit.cli.common import output_path

    for cmd, flag in ((["estimate", str(tiny_conv_onnx)], "--plot"), (["compare", str(tiny_conv_onnx)], "--plot")):
        png = tmp_path / cmd[0] / "deep" / "x.png"
        code, _, err = run_cli(lat, [*cmd, "--hw", "v100", flag, str(png)], capsys)
        assert code == 0 and png.read_bytes()[:4] == b"\x89PNG", err
    assert output_path(str(tmp_path / "validate" / "a" / "s.png"), "--plot").parent.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AutoVitError, match="is a file, not a folder"):
        output_path(str(blocker / "x.png"), "--out")


def test_calibrating_from_a_profile_path_writes_an_absolute_base(tmp_path, monkeypatch):
    from autovit.latmodel.hardware import write_calibrated_profile

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _profile(tmp_path, 'base = "cpu-x86"\nname = "mine"\n', "mine.toml")
    written = write_calibrated_profile("mine.toml", {"eff_matrix": 0.4}, {"lut": "l.json", "stderr": {"eff_matrix": math.nan}})
    monkeypatch.chdir(tmp_path / "home")
    p = load_profile("mine@calibrated")
    assert written.name == "mine@calibrated.toml" and p.eff_matrix == 0.4 and "nan" not in written.read_text()
    with pytest.raises(AutoVitError, match="non-finite"):
        write_calibrated_profile("mine.toml", {"eff_matrix": math.nan}, {})
    # keys the fit was made under: a table's and a top-level switch list (an ablation's variant)
    fixed = {"mechanisms": ["fork_join"], "compute": {"subnormal_assist_cycles": 0.0}}
    variant = write_calibrated_profile("local-cpu", {"eff_matrix": 0.5}, {"lut": "l.json"}, tmp_path / "v.toml", fixed)
    p = load_profile(str(variant))
    assert p.mechanisms == ("fork_join",) and p.subnormal_assist_ns == 0 and p.eff_matrix == 0.5
    # a fixed key that would not load is refused before anything is written
    for bad, needle in (({"name": "x"}, "writes name"), ({"mechanisms": ["bogus"]}, "bogus"),
                        ({"mechanisms": "fork_join"}, "mechanisms"), ({"bogus": 1}, "bogus"), ({"mechanisms": None}, "None")):
        with pytest.raises(AutoVitError, match=needle):
            write_calibrated_profile("local-cpu", {"eff_matrix": 0.5}, {}, tmp_path / "v.toml", bad)
    assert load_profile(str(variant)).mechanisms == ("fork_join",)  # the earlier file stands


# ---- cases of the fresh break-it pass -------------------------------------------------------
@pytest.mark.parametrize("text, needles", [
    (BASE + "z = " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deep"]),
    (BASE + "z = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n", ["nested too deep"]),
    ('base = ""\nname = "x"\n', ["'base' must have 1 to"]),
    (BASE + "[calibration]\nmode = \"sideways\"\n", ["'sideways' is not one of isolated, ablation"]),
    (BASE + "[calibration.stderr]\neff = \"x\"\n", ["stderr.eff", "must be a number"]),
    ('base = "v100"\nname = "' + "x" * 500 + '"\n', ["'name' must have 1 to 200"]),
    # a denormal share priced blocked depthwise convolutions at inf ms (review of issue 12's third pass)
    (BASE + "[efficiency]\nnchwc_dwconv = 5e-324\n", ["efficiency.nchwc_dwconv", "use 0 (off)"]),
    (BASE + "[efficiency]\nnchwc_dwconv = 1.5\n", ["efficiency.nchwc_dwconv", "<= 1"]),
    # mlas_conv_tiles' figures: a zero one switches the share off, a bad one is refused
    ('base = "local-cpu"\nname = "x"\n[compute]\nconv_filter_set = -1\n', ["compute.conv_filter_set"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nconv_output_block = 6.5\n', ["compute.conv_output_block"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nfma_latency_cycles = nan\n', ["compute.fma_latency_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nfma_ports = "2"\n', ["compute.fma_ports"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nload_ports = 1000\n', ["compute.load_ports"]),
    ('base = "local-cpu"\nname = "x"\nmechanisms = ["mlas_conv_tile"]\n', ["mlas_conv_tile"]),
    # ort_parallel_for's and core_handoff's figures: refused when bad, required by their switch
    ('base = "local-cpu"\nname = "x"\n[compute]\nop_cycles = { Rleu = 1 }\n', ["op_cycles", "Rleu", "Relu"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nop_cycles = { Relu = -1 }\n', ["compute.op_cycles.Relu"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nparallel_byte_cycles = inf\n', ["compute.parallel_byte_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nparallel_startup_cycles = -1\n', ["compute.parallel_startup_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[calibration]\ncross_core_gbps = "fast"\n', ["cross_core_gbps"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nparallel_thread_cycles = 0\n', ["ort_parallel_for", "parallel_thread_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[memory]\ncross_core_gbps = 0\n', ["core_handoff", "cross_core_gbps"]),
    ('base = "local-cpu"\nname = "x"\n[memory]\ncross_core_gbps = 1e-320\n', ["core_handoff", "cross_core_gbps"]),
    ('base = "local-cpu"\nname = "x"\n[compute]\nparallel_thread_cycles = 1e-320\n', ["ort_parallel_for", "parallel_thread_cycles"]),
    ('base = "local-cpu"\nname = "x"\n[calibration]\nmechanisms = ["core_hand_off"]\n', ["core_hand_off"]),
    # gemm_bias_pass's rate: refused when bad, required by its switch
    ('base = "local-cpu"\nname = "x"\n[memory]\ngemm_bias_gbps = -2\n', ["memory.gemm_bias_gbps"]),
    ('base = "local-cpu"\nname = "x"\nmechanisms = ["gemm_bias_pass"]\n[memory]\ngemm_bias_gbps = 0\n',
     ["gemm_bias_pass", "gemm_bias_gbps"]),
    ('base = "local-cpu"\nname = "x"\nmechanisms = ["nchwc_tensor"]\n', ["nchwc_tensor"]),
    ('base = "local-cpu"\nname = "x"\nmechanisms = ["reorder_handoff"]\n[memory]\ncross_core_gbps = 0\n',
     ["reorder_handoff", "cross_core_gbps"]),
])
def test_more_bad_profiles(tmp_path, capsys, text, needles):
    code, _, err = run_cli(lat, ["hw", "show", str(_profile(tmp_path, text))], capsys)
    assert_one_line_error(code, err, *needles)


def test_byte_order_mark_is_accepted_and_calibrated_names_are_not_paths(tmp_path, capsys):
    assert load_profile(str(_profile(tmp_path, b"\xef\xbb\xbf" + BASE.encode()))).name == "x"
    code, _, err = run_cli(lat, ["hw", "show", "../../etc/passwd@calibrated"], capsys)
    assert_one_line_error(code, err, "file not found")
