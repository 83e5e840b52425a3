"""Every bad input of issue 2 gets one line on stderr, a non-zero exit and no traceback."""
import json
import subprocess
import sys

import pytest

from autovit.cli import lat, nas


def run_cli(module, args, capsys):
    old = sys.argv
    sys.argv = ["prog", *args]
    try:
        with pytest.raises(SystemExit) as e:
            module.main()
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_estimate_json_contract(tiny_conv_onnx, capsys):
    code, out, _ = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", "v100", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    for key in ("latency_ms", "throughput_per_s", "params", "flops", "bytes", "hw", "batch", "dtype",
                "breakdown", "kernels", "warnings"):
        assert key in d
    assert d["hw"] == "v100" and d["batch"] == 1 and d["latency_ms"] > 0
    assert {"name", "op_types", "ms", "bound"} <= set(d["kernels"][0])


def test_estimate_plots(tiny_conv_onnx, tmp_path, capsys):
    png = tmp_path / "b.png"
    code, _, _ = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", "cpu-x86", "--plot", str(png)], capsys)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    roof = tmp_path / "r.png"
    code, _, _ = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", "a100", "--plot", str(roof), "--roofline"], capsys)
    assert code == 0 and roof.read_bytes()[:4] == b"\x89PNG"


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(lat, ["estimate", str(tmp_path / "nope.onnx"), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "not found")


def test_not_onnx(tmp_path, capsys):
    p = tmp_path / "x.onnx"
    p.write_text("definitely not protobuf")
    code, _, err = run_cli(lat, ["estimate", str(p), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "not a readable ONNX model")


def test_truncated_onnx(tiny_conv_onnx, tmp_path, capsys):
    p = tmp_path / "cut.onnx"
    p.write_bytes(tiny_conv_onnx.read_bytes()[: len(tiny_conv_onnx.read_bytes()) // 3])
    code, _, err = run_cli(lat, ["estimate", str(p), "--hw", "v100"], capsys)
    assert_one_line_error(code, err)


def test_unknown_op_warns_not_crashes(unknown_op_onnx, capsys):
    code, out, _ = run_cli(lat, ["estimate", str(unknown_op_onnx), "--hw", "v100", "--json"], capsys)
    assert code == 0
    assert any("FancyOp" in w for w in json.loads(out)["warnings"])


def test_dynamic_shape(dynamic_onnx, capsys):
    code, _, err = run_cli(lat, ["estimate", str(dynamic_onnx), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "--input-shape")
    code, out, _ = run_cli(lat, ["estimate", str(dynamic_onnx), "--hw", "v100", "--input-shape", "2,16,8,8", "--json"], capsys)
    assert code == 0 and json.loads(out)["batch"] == 2


def test_unknown_hw_lists_valid(tiny_conv_onnx, capsys):
    code, _, err = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", "gpu9000"], capsys)
    assert_one_line_error(code, err, "gpu9000", "iphone13", "v100")


def test_malformed_profile(tiny_conv_onnx, tmp_path, capsys):
    p = tmp_path / "my.toml"
    p.write_text('base = "a100"\nname = "my"\n[compute]\nunits = -3\n')
    code, _, err = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", str(p)], capsys)
    assert_one_line_error(code, err, "compute.units")


def test_arch_outside_space(tmp_path, capsys):
    from autovit.nas.space import load_space

    d = load_space("xxs").sample(0).to_dict()
    d["transformer"][1]["width"] = 72
    p = tmp_path / "arch.json"
    p.write_text(json.dumps(d))
    code, _, err = run_cli(lat, ["estimate", str(p), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "transformer[1].width = 72 not in {64, 80}")


@pytest.mark.parametrize("batch", ["0", "-4"])
def test_bad_batch(tiny_conv_onnx, batch, capsys):
    code, _, err = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", "v100", "--batch", batch], capsys)
    assert_one_line_error(code, err, "--batch")


def test_unknown_timm_name(capsys):
    code, _, err = run_cli(lat, ["estimate", "timm:resnet_does_not_exist", "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "unknown timm model")


def test_coreml_format_prices_rank5_layers_of_an_mlmodel_off_the_engine(tmp_path, capsys):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model

    s = numpy_helper.from_array(np.array([1, 16, 3, 2, 8], dtype=np.int64), "s")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["a"]),
             helper.make_node("Transpose", ["a"], ["y"], perm=[2, 0, 3, 1, 4])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "qkv.onnx"
    onnx.save(make_model(nodes, [x], [y], [s]), path)
    ms = {}
    for fmt in ("mlprogram", "neuralnetwork"):
        code, out, _ = run_cli(lat, ["estimate", str(path), "--hw", "iphone13", "--coreml-format", fmt, "--json"], capsys)
        assert code == 0
        ms[fmt] = json.loads(out)["latency_ms"]
    assert ms["neuralnetwork"] > ms["mlprogram"]
    code, _, err = run_cli(lat, ["estimate", str(path), "--hw", "rtx4090", "--coreml-format", "mlprogram"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "--coreml-format", "not a Neural Engine profile")


def test_bad_dtype_for_device(tiny_conv_onnx, capsys):
    code, _, err = run_cli(lat, ["estimate", str(tiny_conv_onnx), "--hw", "iphone13", "--dtype", "fp32"], capsys)
    assert_one_line_error(code, err, "fp16")


def test_usage_error_is_one_line_exit_2(capsys):
    code, _, err = run_cli(lat, ["estimate"], capsys)
    assert code == 2
    assert_one_line_error(code, err)


def test_hw_list_and_show(capsys):
    code, out, _ = run_cli(lat, ["hw", "list", "--json"], capsys)
    assert code == 0 and {"v100", "iphone13", "cpu-x86"} <= {p["name"] for p in json.loads(out)}
    code, out, _ = run_cli(lat, ["hw", "show", "iphone13", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["last_axis_align_bytes"] == 64 and "eff_matrix" in d["free_parameters"]


def test_nas_spaces(capsys, tmp_path):
    code, out, _ = run_cli(nas, ["spaces", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["xxs", "xs", "s"]
    code, out, _ = run_cli(nas, ["spaces", "--sample", "2", "--space", "xxs", "--json", "--out", str(tmp_path / "a")], capsys)
    assert code == 0 and len(json.loads(out)) == 2
    from autovit.nas.arch import arch_from_dict, load_arch

    assert arch_from_dict(json.loads(out)[1]) == load_arch(tmp_path / "a" / "arch_001.json")  # samples load as they are
    bad = tmp_path / "s.toml"
    bad.write_text("name = 'x'\n")
    code, _, err = run_cli(nas, ["spaces", "--check", str(bad)], capsys)
    assert_one_line_error(code, err, "missing field")


def test_console_script_end_to_end(tiny_conv_onnx):
    """The installed entry point, as a user runs it."""
    r = subprocess.run([sys.executable, "-m", "autovit.cli.lat", "estimate", str(tiny_conv_onnx), "--hw", "h100", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hw"] == "h100"
    r = subprocess.run([sys.executable, "-m", "autovit.cli.lat", "estimate", "missing.onnx", "--hw", "h100"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
