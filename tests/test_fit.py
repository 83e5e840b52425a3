from dataclasses import replace

import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.fit import ProfileCalibrator
from autovit.latmodel.hardware import load_profile
from autovit.latmodel.modules import BlockSpec

BLOCKS = [BlockSpec("conv", 64, 3, 16, 3, 2), BlockSpec("conv", 64, 3, 24, 3, 2),
          BlockSpec("mbconv", 32, 16, 16, 3, 1, 1.0), BlockSpec("mbconv", 16, 24, 32, 3, 2, 2.0),
          BlockSpec("mbconv", 16, 32, 32, 3, 1, 1.0)] + [
          BlockSpec("transformer", hw, w, w, heads=h, mlp_ratio=2.0, head_dim=16)
          for hw, w, h in ((16, 48, 2), (8, 64, 3), (8, 80, 4), (4, 96, 2), (4, 112, 4), (16, 64, 4), (8, 48, 3),
                        (16, 80, 2), (4, 64, 5))]


def test_fit_recovers_parameters_it_generated():
    """Measurements made by the model itself with known parameters: the fit must find them."""
    base = load_profile("cpu-x86")
    names = ("eff_matrix", "eff_vector", "dispatch_us")
    truth = replace(base, eff_matrix=0.35, eff_vector=0.12, dispatch_us=9.0)
    cal = ProfileCalibrator(base, names)
    measured = [cal._pricer(b)(truth) for b in BLOCKS]
    c = cal.fit(BLOCKS, measured)
    assert c.rms_log_error < 1e-3
    assert c.params["eff_matrix"] == pytest.approx(0.35, rel=0.02)
    assert c.params["dispatch_us"] == pytest.approx(9.0, rel=0.05)
    assert list(cal.predict(BLOCKS)) == pytest.approx(measured, rel=1e-3)


def test_refuses_fewer_points_than_parameters():
    cal = ProfileCalibrator(load_profile("cpu-x86"))
    with pytest.raises(AutoVitError, match="at least as many measured blocks as free parameters"):
        cal.fit(BLOCKS[:3], [1.0, 1.0, 1.0])
    with pytest.raises(AutoVitError, match="calibrate first"):
        ProfileCalibrator(load_profile("cpu-x86")).predict(BLOCKS)


def test_calibrate_cli_writes_a_selectable_profile(tmp_path, monkeypatch, capsys):
    import json

    from autovit.cli import lat
    from autovit.latmodel.lut import Lut
    from test_cli import assert_one_line_error, run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    base = load_profile("cpu-x86")
    truth = replace(base, eff_matrix=0.3, eff_vector=0.1, dispatch_us=6.0)
    cal = ProfileCalibrator(base)
    lut = Lut("cpu-x86", "onnxruntime", {}, {})
    for b in BLOCKS:
        lut.add("isolated", b, {"median_ms": cal._pricer(b)(truth)})
    lut.save(tmp_path / "lut.json")
    code, out, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["rms_log_error"] < 0.05 and result["profile"].endswith("cpu-x86@calibrated.toml")
    calibrated = load_profile("cpu-x86@calibrated")
    assert calibrated.calibration["n_points"] == len(BLOCKS) and calibrated.units == base.units
    code, out, _ = run_cli(lat, ["hw", "list", "--json"], capsys)
    assert any(p["name"] == "cpu-x86@calibrated" and p["calibration"] for p in json.loads(out))
    code, out, _ = run_cli(lat, ["estimate", "autovit:xxs", "--hw", "cpu-x86@calibrated", "--json"], capsys)
    assert code == 0 and json.loads(out)["hw"] == "cpu-x86@calibrated"
    # Too few blocks, and a calibrated profile that does not exist yet.
    small = Lut("cpu-x86", "onnxruntime", {}, {})
    small.add("isolated", BLOCKS[0], {"median_ms": 0.5})
    small.save(tmp_path / "small.json")
    code, _, err = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "small.json")], capsys)
    assert_one_line_error(code, err, "at least as many measured blocks")
    code, _, err = run_cli(lat, ["estimate", "autovit:xxs", "--hw", "v100@calibrated"], capsys)
    assert_one_line_error(code, err, "no calibrated profile")


def test_every_free_parameter_has_bounds():
    from autovit.latmodel.fit import BOUNDS
    from autovit.latmodel.hardware import HardwareProfile

    assert set(BOUNDS) == set(HardwareProfile.FREE_PARAMETERS)
    assert HardwareProfile.FREE_PARAMETERS == ("eff_matrix", "eff_gemm", "eff_vector", "eff_memory", "launch_us",
                                               "dispatch_us", "view_dispatch_us", "layout_penalty", "k_half",
                                               "run_us", "layout_run_ns", "reduce_row_ns", "fork_join_us", "transcendental_flops")
