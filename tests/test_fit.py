from dataclasses import replace

import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.fit import ProfileCalibrator
from autovit.latmodel.hardware import load_profile
from autovit.nas.blocks import BlockSpec

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



def _lut_priced_by_a_known_profile():
    """A cpu-x86 LUT of BLOCKS whose times a known profile (the truth a fit should find) priced."""
    from autovit.latmodel.lut import Lut

    base = load_profile("cpu-x86")
    truth = replace(base, eff_matrix=0.3, eff_vector=0.1, dispatch_us=6.0)
    cal = ProfileCalibrator(base)
    lut = Lut("cpu-x86", "onnxruntime", {}, {})
    for b in BLOCKS:
        lut.add("isolated", b, {"median_ms": cal._pricer(b)(truth)})
    return lut, truth


def test_calibrate_cli_writes_a_selectable_profile(tmp_path, monkeypatch, capsys):
    import json

    from autovit.cli import lat
    from autovit.latmodel.lut import Lut
    from test_cli import assert_one_line_error, run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    lut, _ = _lut_priced_by_a_known_profile()
    lut.save(tmp_path / "lut.json")
    code, out, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["rms_log_error"] < 0.05 and result["profile"].endswith("cpu-x86@calibrated.toml")
    calibrated = load_profile("cpu-x86@calibrated")
    assert calibrated.calibration["n_points"] == len(BLOCKS) and calibrated.units == load_profile("cpu-x86").units
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


def test_calibrate_models_the_threads_the_lut_was_measured_with(tmp_path, monkeypatch, capsys):
    """Blocks timed with 2 threads on an 8-core profile: the fit and the written profile run on
    2 cores (one core's peak x 2), so a compute-bound network is not priced at 8 cores' speed."""
    import json

    from autovit.cli import lat
    from autovit.latmodel.hardware import profile_at_threads
    from autovit.latmodel.lut import Lut
    from test_cli import run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    two, fixed = profile_at_threads("cpu-x86", 2)
    assert fixed == {"cpu": {"cores": 2}} and two.units == 2 and load_profile("cpu-x86").units == 8
    assert profile_at_threads("cpu-x86", 8)[1] == {} and profile_at_threads("cpu-x86", 64)[1] == {}
    truth = replace(two, eff_matrix=0.3, eff_vector=0.1, dispatch_us=6.0)
    cal = ProfileCalibrator(two)
    lut = Lut("cpu-x86", "onnxruntime", {"threads": 2}, {})
    for b in BLOCKS:
        lut.add("isolated", b, {"median_ms": cal._pricer(b)(truth)})
    lut.save(tmp_path / "lut.json")
    code, out, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"], capsys)
    assert code == 0 and json.loads(out)["rms_log_error"] < 0.05
    calibrated = load_profile("cpu-x86@calibrated")
    assert calibrated.units == 2 and calibrated.calibration["threads"] == 2
    assert calibrated.eff_matrix == pytest.approx(0.3, rel=0.05)


def test_a_profile_based_on_a_detected_one_can_set_its_cores(tmp_path):
    """`detect = true` fills [cpu] where the detecting profile is; a profile based on it wins."""
    (tmp_path / "one.toml").write_text('name = "one"\nbase = "local-cpu"\n[cpu]\ncores = 1\n')
    assert load_profile(str(tmp_path / "one.toml")).units == 1


def test_every_free_parameter_has_bounds():
    from autovit.latmodel.fit import BOUNDS
    from autovit.latmodel.hardware import CLASS_PARAMETERS, HardwareProfile

    assert set(BOUNDS) == set(HardwareProfile.FREE_PARAMETERS) | set(CLASS_PARAMETERS)
    assert HardwareProfile.FREE_PARAMETERS == ("eff_matrix", "eff_gemm", "eff_vector", "eff_memory", "launch_us",
                                               "dispatch_us", "view_dispatch_us", "layout_penalty", "k_half",
                                               "run_us", "layout_run_ns", "reduce_row_ns", "softmax_row_ns", "fork_join_us",
                                               "transcendental_flops")


def _op_count_pricer(ops: int):
    """A part run once per session.run with `ops` ops: run_us + ops x dispatch_us (ms)."""
    return lambda p: (p.run_us + ops * p.dispatch_us) * 1e-3


def test_a_whole_network_separates_per_run_from_per_op_cost():
    """Blocks of one op count see only run_us + n x dispatch_us; a network (one run, many ops)
    pins the split. Without it the fit can keep a per-run cost the network pays only once."""
    start = replace(load_profile("local-cpu"), run_us=20.0, dispatch_us=1.0)
    truth = replace(start, run_us=2.0, dispatch_us=3.0)
    blocks = [_op_count_pricer(10)] * 4
    network = _op_count_pricer(300)
    names = ("dispatch_us", "run_us")
    alone = ProfileCalibrator(start, names).fit_pricers(blocks, [b(truth) for b in blocks], ["mbconv"] * 4)
    assert network(replace(start, **alone.params)) < 0.9 * network(truth)
    c = ProfileCalibrator(start, names).fit_pricers(blocks + [network], [b(truth) for b in blocks] + [network(truth)],
                                                    ["mbconv"] * 4 + ["network"], weights=[1.0] * 4 + [8.0])
    assert c.params["dispatch_us"] == pytest.approx(3.0, rel=0.02)
    assert c.params["run_us"] == pytest.approx(2.0, abs=0.5)
    assert c.mape_by_kind["network"] < 1.0


def test_a_weight_counts_as_copies_of_the_point():
    base = load_profile("cpu-x86")
    names = ("eff_matrix", "eff_vector", "dispatch_us")
    cal = ProfileCalibrator(base, names)
    pricers = [cal._pricer(b) for b in BLOCKS]
    # Deliberately inconsistent data, so the weights matter.
    measured = [p(replace(base, eff_matrix=0.3 + 0.02 * i)) for i, p in enumerate(pricers)]
    copies = ProfileCalibrator(base, names).fit_pricers(pricers + [pricers[0]] * 3, measured + [measured[0]] * 3,
                                                        ["x"] * (len(BLOCKS) + 3))
    weighted = ProfileCalibrator(base, names).fit_pricers(pricers, measured, ["x"] * len(BLOCKS),
                                                          weights=[4.0] + [1.0] * (len(BLOCKS) - 1))
    assert weighted.params == pytest.approx(copies.params, rel=1e-3)
    with pytest.raises(AutoVitError, match="weights must be"):
        ProfileCalibrator(base, names).fit_pricers(pricers, measured, ["x"] * len(BLOCKS), weights=[0.0] * len(BLOCKS))


def test_reference_network_comes_from_the_lut():
    from types import SimpleNamespace

    from autovit.cli.lat import reference_network

    assert reference_network(SimpleNamespace(reference={})) is None
    net = reference_network(SimpleNamespace(reference={"model": "autovit:xxs", "ref_ms": 4.8}))
    # The XXS preset stands for its blocks (stem, MBConvs, MobileViT parts, transformer layers, head).
    assert (net.source, net.ms) == ("autovit:xxs", 4.8) and net.weight > 10
    # Only the drift monitor's kind of reference is priced: a LUT cannot make calibrate read a file.
    assert reference_network(SimpleNamespace(reference={"model": "/etc/x.onnx", "ref_ms": 1.0})) is None
    with pytest.raises(AutoVitError, match="--no-network"):
        reference_network(SimpleNamespace(reference={"model": "autovit:nope", "ref_ms": 1.0}))


def test_calibrate_cli_fits_the_luts_reference_network(tmp_path, monkeypatch, capsys):
    import json

    from autovit.cli import lat
    from autovit.latmodel.fit import network_pricer
    from test_cli import run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    lut, truth = _lut_priced_by_a_known_profile()
    lut.reference = {"model": "autovit:xxs", "ref_ms": network_pricer("autovit:xxs")(truth)}
    lut.save(tmp_path / "lut.json")
    args = ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"]
    code, out, _ = run_cli(lat, args, capsys)
    result = json.loads(out)
    assert code == 0 and result["network"].startswith("autovit:xxs") and result["mape_by_kind"]["network"] < 5
    assert load_profile("cpu-x86@calibrated").calibration["network"] == result["network"]
    code, out, _ = run_cli(lat, args + ["--no-network"], capsys)
    assert code == 0 and json.loads(out)["network"] is None and "network" not in json.loads(out)["mape_by_kind"]


def _rate_pricer(ops: float):
    """A part whose time is `ops` divided by the product of two efficiencies (ms): the data see
    only the product, never how it splits."""
    return lambda p: ops / (p.eff_matrix * p.eff_vector)


def test_a_prior_splits_what_the_data_cannot_tell_apart_evenly_in_log():
    """Under a prior the fit is a MAP estimate: the data fix the product of two efficiencies,
    the prior (equal widths, centred on the profile) shares the change equally in log."""
    start = replace(load_profile("cpu-x86"), eff_matrix=0.6, eff_vector=0.3)
    pricers = [_rate_pricer(ops) for ops in (1.0, 2.0, 5.0)]
    measured = [2.0 * p(start) for p in pricers]  # half the product
    c = ProfileCalibrator(start, ("eff_matrix", "eff_vector"), prior=0.69).fit_pricers(pricers, measured, ["x"] * 3)
    assert c.params["eff_matrix"] == pytest.approx(0.6 / 2 ** 0.5, rel=0.03)
    assert c.params["eff_vector"] == pytest.approx(0.3 / 2 ** 0.5, rel=0.03)
    assert c.rms_log_error < 0.02  # over the measured points only: the prior's residuals are not errors


def test_a_prior_fits_fewer_points_than_parameters_and_leaves_zero_terms_alone():
    start = replace(load_profile("cpu-x86"), eff_matrix=0.6, eff_vector=0.3, layout_run_ns=0.0)
    pricers = [_rate_pricer(1.0)]
    with pytest.raises(AutoVitError, match="at least as many measured blocks"):
        ProfileCalibrator(start, ("eff_matrix", "eff_vector")).fit_pricers(pricers, [2.0 * pricers[0](start)], ["x"])
    cal = ProfileCalibrator(start, ("eff_matrix", "eff_vector", "layout_run_ns"), prior=0.69)
    assert cal.names == ("eff_matrix", "eff_vector")  # a term the profile prices at 0 is not invented
    c = cal.fit_pricers(pricers, [2.0 * pricers[0](start)], ["x"])
    assert c.params["eff_matrix"] * c.params["eff_vector"] == pytest.approx(0.6 * 0.3 / 2, rel=0.05)
    with pytest.raises(AutoVitError, match="prior's width"):
        ProfileCalibrator(start, prior=0.0)


def test_calibrate_cli_fits_the_networks_the_lut_timed(tmp_path, monkeypatch, capsys):
    """Networks `profile` timed into the LUT are fitted with its blocks, each weighing as much
    as the reference network did, and take its place; a LUT cannot make calibrate
    build a file it names."""
    import json

    from autovit.cli import lat
    from autovit.cli.lat import lut_networks
    from autovit.latmodel.fit import network_pricer
    from test_cli import run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    lut, truth = _lut_priced_by_a_known_profile()
    lut.reference = {"model": "autovit:xxs", "ref_ms": 1.0}  # far off: must not be used
    lut.networks = {s: {"median_ms": network_pricer(s)(truth)} for s in ("autovit:xxs", "autovit:xs")}
    nets = lut_networks(lut)
    # each as heavy as the reference network was: the XXS preset's blocks
    assert [n.source for n in nets] == ["autovit:xxs", "autovit:xs"] and all(n.weight == 27 for n in nets)
    lut.save(tmp_path / "lut.json")
    code, out, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["networks"] == ["autovit:xxs", "autovit:xs"] and result["mape_by_kind"]["network"] < 5
    assert result["n_points"] == len(BLOCKS) + 2
    # Not a timm model or a preset (an architecture file, by its suffix): never built from a LUT.
    lut.networks = {"timm:x.json": {"median_ms": 3.0}}
    assert lut_networks(lut)[0].ms == 1.0  # the reference network again
    lut.networks = {"timm:no_such_model_x": {"median_ms": 3.0}}
    with pytest.raises(AutoVitError, match="--no-network"):
        lut_networks(lut)


def test_calibrate_raises_the_clock_to_the_luts_gemm_probe(tmp_path, monkeypatch, capsys):
    import json

    from autovit.cli import lat
    from test_cli import run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    lut, _ = _lut_priced_by_a_known_profile()
    peak_gflops = load_profile("cpu-x86").matrix_tflops["fp32"] * 1e3
    lut.environment = {"threads": 8, "sgemm_gflops": 1.5 * peak_gflops}
    lut.save(tmp_path / "lut.json")
    code, _, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"], capsys)
    calibrated = load_profile("cpu-x86@calibrated")
    assert code == 0 and calibrated.matrix_tflops["fp32"] * 1e3 == pytest.approx(1.5 * peak_gflops, rel=1e-3)
    assert calibrated.calibration["sgemm_gflops"] == pytest.approx(1.5 * peak_gflops)
    # a probe no clock can give is the LUT's fault, said in one line
    lut.environment = {"threads": 8, "sgemm_gflops": 1e6}
    lut.save(tmp_path / "huge.json")
    code, _, err = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "huge.json")], capsys)
    assert code != 0 and "environment.sgemm_gflops" in err and "Traceback" not in err
    bad = json.loads((tmp_path / "lut.json").read_text())
    for value in ("fast", -1.0, True):
        bad["environment"]["sgemm_gflops"] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(AutoVitError, match="sgemm_gflops"):
            from autovit.latmodel.lut import load_lut
            load_lut(tmp_path / "bad.json")
    bad["environment"]["sgemm_gflops"] = 100.0
    for value in ("fast", {"private": -1.0, "shared": 1.0}, {"private": 1.0, "shared": "x"}, [1, 2], {"private": 180.0},
                  {"private": 1.0, "shared": 1.0, 'x"y': 5.0}, {"private": 1e9, "shared": 1.0}):
        bad["environment"]["stream_gbps"] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(AutoVitError, match="stream_gbps"):
            load_lut(tmp_path / "bad.json")
    bad["environment"].pop("stream_gbps")
    for value in ("fast", {"alternating": 1.0, "sigmoid": 1.0}, {"alternating": 1.0, "sigmoid": 1.0, "relu": -1.0},
                  {"alternating": 1.0, "sigmoid": True, "relu": 1.0}, {"alternating": 1e9, "sigmoid": 1.0, "relu": 1.0}):
        bad["environment"]["handoff_ms"] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(AutoVitError, match="handoff_ms"):
            load_lut(tmp_path / "bad.json")


def test_calibrate_sets_two_cache_rates_from_the_luts_streaming_probes(tmp_path, monkeypatch, capsys):
    """With private caches below a shared one, a LUT's streaming probes become the calibrated
    profile's [memory] cache_gbps and shared_gbps; recorded in [calibration]."""
    from autovit.cli import lat
    from autovit.latmodel import hardware
    from test_cli import run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hardware, "detect_local_cpu", lambda: {
        "cpu": {"cores": 2, "ghz": 2.6, "simd_bits": 512}, "memory": {"cache_mib": 36.0, "private_mib": 2.0}})
    lut, _ = _lut_priced_by_a_known_profile()
    lut.device = "local-cpu"
    lut.environment = {"threads": 2, "stream_gbps": {"private": 180.0, "shared": 100.0},
                       "handoff_ms": {"alternating": 0.25, "sigmoid": 0.3, "relu": 0.1}}
    lut.save(tmp_path / "lut.json")
    code, _, err = run_cli(lat, ["calibrate", "--hw", "local-cpu", "--lut", str(tmp_path / "lut.json")], capsys)
    assert code == 0, err
    calibrated = load_profile("local-cpu@calibrated")
    assert (calibrated.cache_gbps, calibrated.shared_gbps, calibrated.private_mib) == (180.0, 100.0, 2.0)
    assert calibrated.calibration["stream_gbps"] == {"private": 180.0, "shared": 100.0}
    # the handoff probe: 0.05 ms more than the chains alone for 21.5 crossings of half of 256 KiB
    assert calibrated.cross_core_gbps == pytest.approx(21.5 * 65536 * 4 / 2 / (0.05 * 1e6), abs=0.05)
    assert calibrated.calibration["cross_core_gbps"] == calibrated.cross_core_gbps
    # the mechanisms the fit priced with are recorded, and the file keeps them
    assert calibrated.calibration["mechanisms"] == list(load_profile("local-cpu").mechanisms)
    assert calibrated.mechanisms == load_profile("local-cpu").mechanisms
