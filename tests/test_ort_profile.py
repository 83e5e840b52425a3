"""Kernel time per op class from onnxruntime's profiler, and the calibration that uses it."""
import json
import math
from dataclasses import replace

import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.fit import ProfileCalibrator
from autovit.latmodel.hardware import load_profile
from autovit.latmodel.ort_profile import OP_POINT_MIN_MS, class_times, op_class, op_points


def test_op_class_maps_onnxruntime_ops_to_the_models_categories():
    dense = [{"float": [1, 16, 8, 8]}, {"float": [32, 16, 3, 3]}]
    depthwise = [{"float": [1, 16, 8, 8]}, {"float": [16, 1, 3, 3]}]
    assert op_class("FusedConv", dense) == "conv" and op_class("Conv", depthwise) == "dwconv"
    # A 1-channel input convolution (a stem on grey images) is dense, not depthwise.
    assert op_class("Conv", [{"float": [1, 1, 8, 8]}, {"float": [1, 1, 3, 3]}]) == "conv"
    assert op_class("MatMul", param_bytes=4096) == "linear" and op_class("FusedMatMul") == "attention"
    assert op_class("Softmax") == "attention" and op_class("LayerNormalization") == "norm"
    assert op_class("QuickGelu") == "activation" and op_class("Add") == "elementwise"
    assert op_class("ReorderOutput") == "layout" and op_class("GlobalAveragePool") == "pooling"
    assert op_class("SomethingNew") == "other"


def test_class_times_of_a_real_onnxruntime_run():
    import torch
    from torch import nn

    from autovit.latmodel.convert import export_onnx_bytes

    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16)).eval()
    with torch.no_grad():
        times = class_times(export_onnx_bytes(net, (1, 8, 16, 16)), (1, 8, 16, 16), threads=1, runs=3)
    assert {"conv", "dwconv"} <= set(times) and all(v > 0 for v in times.values())


def test_op_points_keep_large_compute_classes_scaled_to_the_block_time():
    pts = op_points({"conv": 0.6, "activation": 0.2, "layout": 0.15, "norm": OP_POINT_MIN_MS / 2}, block_ms=0.5)
    # Scaled by 0.5 / 1.0 (every class counts in the sum); layout is never a point (the
    # profiler's own cost dominates it), tiny classes neither.
    assert pts == pytest.approx({"conv": 0.3, "activation": 0.1})
    assert op_points({}, 1.0) == {} and op_points({"conv": 0.0}, 1.0) == {}


def _lut_with_op_classes(truth, base):
    """A cpu-x86 LUT whose block and per-class times `truth` priced."""
    from autovit.latmodel.fit import block_model
    from autovit.latmodel.lut import Lut
    from test_fit import BLOCKS

    lut = Lut("cpu-x86", "onnxruntime", {"threads": base.units}, {})
    cal = ProfileCalibrator(base)
    for b in BLOCKS:
        per = {}
        for k in block_model(b).estimate(truth).kernels:
            per[k.kernel.category] = per.get(k.kernel.category, 0.0) + k.ms
        lut.add("isolated", b, {"median_ms": cal._pricer(b)(truth), "op_ms": per})
    return lut


def _one_core():
    """cpu-x86 on one thread: blocks slow enough for per-class points (>= OP_POINT_MIN_MS)."""
    from autovit.latmodel.hardware import profile_at_threads

    return profile_at_threads("cpu-x86", 1)[0]


def test_per_class_points_pin_what_block_times_leave_open():
    base = _one_core()
    truth = replace(base, eff_matrix=0.3, eff_vector=0.1, dispatch_us=6.0)
    lut = _lut_with_op_classes(truth, base)
    from autovit.nas.blocks import BlockSpec

    entries = list(lut.entries.values())
    blocks = [BlockSpec.from_dict(e["block"]) for e in entries]
    cal = ProfileCalibrator(base, ("eff_matrix", "eff_vector", "dispatch_us"))
    c = cal.fit(blocks, [e["median_ms"] for e in entries], None, [e["op_ms"] for e in entries])
    assert c.n_points > len(blocks) and any(k.startswith("op:") for k in c.mape_by_kind)
    assert c.params["eff_matrix"] == pytest.approx(0.3, rel=0.03) and c.rms_log_error < 1e-2


def test_lut_checks_op_ms(tmp_path):
    from autovit.latmodel.lut import load_lut

    base = load_profile("cpu-x86")
    lut = _lut_with_op_classes(replace(base, eff_matrix=0.3), base)
    lut.save(tmp_path / "ok.json")
    assert all("op_ms" in e for e in load_lut(tmp_path / "ok.json").entries.values())
    d = json.loads((tmp_path / "ok.json").read_text())
    first = next(iter(d["entries"].values()))
    for bad, msg in (({"convolution": 1.0}, "unknown op class"), ({"conv": -1.0}, "must be >= 0"),
                     ([1.0], "must be an object"), ({"conv": "1"}, "latencies must be finite")):
        first["op_ms"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(d))
        with pytest.raises(AutoVitError, match=msg):
            load_lut(tmp_path / "bad.json")
    first["op_ms"] = {"conv": 1.0}
    for bad in (True, "2", 0, -1, 10**9, 2.0):
        d["environment"] = {"threads": bad}
        (tmp_path / "bad.json").write_text(json.dumps(d))
        with pytest.raises(AutoVitError, match="environment.threads"):
            load_lut(tmp_path / "bad.json")
    (tmp_path / "nan.json").write_text((tmp_path / "ok.json").read_text().replace('"op_ms": {', '"op_ms": {"conv": NaN, ', 1))
    with pytest.raises(AutoVitError):
        load_lut(tmp_path / "nan.json")


def test_calibrate_cli_fits_op_classes_and_writes_a_loadable_profile(tmp_path, monkeypatch, capsys):
    from autovit.cli import lat
    from test_cli import run_cli

    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    base = _one_core()
    _lut_with_op_classes(replace(base, eff_matrix=0.3, eff_vector=0.1, dispatch_us=6.0), base).save(tmp_path / "lut.json")
    code, out, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--json"], capsys)
    assert code == 0
    with_ops = json.loads(out)
    calibrated = load_profile("cpu-x86@calibrated")
    assert calibrated.calibration["n_points"] == with_ops["n_points"] and math.isfinite(calibrated.eff_matrix)
    code, out, _ = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(tmp_path / "lut.json"), "--no-per-op",
                                 "--out", str(tmp_path / "blocks_only.toml"), "--json"], capsys)
    assert code == 0 and json.loads(out)["n_points"] < with_ops["n_points"]


def test_op_points_threshold_is_on_the_scaled_time():
    # A profile taken in a slow spell (every kernel 2x) gives the same points as a fast one ...
    fast = op_points({"conv": 0.6, "activation": 0.2}, block_ms=0.4)
    assert op_points({"conv": 1.2, "activation": 0.4}, block_ms=0.4) == pytest.approx(fast)
    # ... and a class large only in the profiled run (0.3 ms there, 0.05 of the block's time) is no point.
    assert set(op_points({"conv": 1.5, "activation": 0.3}, block_ms=0.3)) == {"conv"}


def test_annotate_lut_keeps_each_blocks_fastest_round_and_resumes(tmp_path, monkeypatch):
    from autovit.latmodel import ort_profile
    from autovit.latmodel.lut import Lut, load_lut
    from test_fit import BLOCKS

    a, b = BLOCKS[:2]
    lut = Lut("cpu-x86", "onnxruntime", {"threads": 1}, {})
    lut.add("isolated", a, {"median_ms": 1.0})
    lut.add("isolated", b, {"median_ms": 1.0, "op_ms": {"conv": 0.5}})  # profiled before rounds were counted
    # Three passes over the blocks; `b` already holds one round, so the calls run a, a, b, a, b.
    runs = iter([{"conv": 0.9, "layout": 0.3}, {"conv": 0.4, "layout": 0.1}, {"conv": 0.3}, {"conv": 0.8},
                 {"conv": 0.6}])
    monkeypatch.setattr(ort_profile, "class_times", lambda *args, **kw: next(runs))
    path = tmp_path / "lut.json"
    assert ort_profile.op_rounds_left(lut, [a, b], 3) == 3 + 2
    assert ort_profile.annotate_lut(lut, path, [a, b], lambda blk: b"", threads=1, rounds=3) == 2
    saved = load_lut(path)
    ea, eb = (saved.entries[saved.entry_key("isolated", x)] for x in (a, b))
    assert ea["op_ms"] == {"conv": 0.4, "layout": 0.1} and ea["op_rounds"] == 3
    assert eb["op_ms"] == {"conv": 0.3} and eb["op_rounds"] == 3  # faster than its own first round (0.5)
    assert ort_profile.op_rounds_left(saved, [a, b], 3) == 0
    assert ort_profile.annotate_lut(saved, path, [a, b], lambda blk: b"", threads=1, rounds=3) == 0


def test_an_interrupted_annotation_keeps_every_finished_profile(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a pass: the LUT on disk holds each profile taken before it, and the
    same call finishes the rest (two of three rounds of `a` and one of `b` are not run again)."""
    from autovit.latmodel import ort_profile
    from autovit.latmodel.lut import Lut, load_lut
    from test_fit import BLOCKS

    a, b = BLOCKS[:2]
    lut = Lut("cpu-x86", "onnxruntime", {"threads": 1}, {})
    for blk in (a, b):
        lut.add("isolated", blk, {"median_ms": 1.0})
    path = tmp_path / "lut.json"
    calls = iter([{"conv": 0.5}, {"conv": 0.6}, {"conv": 0.4}, KeyboardInterrupt])

    def interrupted(*args, **kw):
        got = next(calls)
        if got is KeyboardInterrupt:
            raise KeyboardInterrupt
        return got

    monkeypatch.setattr(ort_profile, "class_times", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ort_profile.annotate_lut(lut, path, [a, b], lambda blk: b"", threads=1, rounds=3)
    saved = load_lut(path)
    ea, eb = (saved.entries[saved.entry_key("isolated", x)] for x in (a, b))
    assert (ea["op_rounds"], eb["op_rounds"]) == (2, 1) and ea["op_ms"] == {"conv": 0.4}
    rest = iter([{"conv": 0.3}, {"conv": 0.7}, {"conv": 0.2}])
    monkeypatch.setattr(ort_profile, "class_times", lambda *args, **kw: next(rest))
    assert ort_profile.op_rounds_left(saved, [a, b], 3) == 3
    ort_profile.annotate_lut(saved, path, [a, b], lambda blk: b"", threads=1, rounds=3)
    again = load_lut(path)
    ea, eb = (again.entries[again.entry_key("isolated", x)] for x in (a, b))
    # resumed: b (pass 2), then a and b (pass 3); a keeps its 0.4 of pass 2
    assert ea["op_ms"] == {"conv": 0.4} and eb["op_ms"] == {"conv": 0.2} and ea["op_rounds"] == eb["op_rounds"] == 3


@pytest.mark.parametrize("rounds", [-1, 0, True, "2", 1e9, 2.5])
def test_a_lut_with_a_bad_op_rounds_is_refused_in_one_line(tmp_path, rounds):
    from autovit.latmodel.lut import Lut, load_lut
    from test_fit import BLOCKS

    lut = Lut("cpu-x86", "onnxruntime", {"threads": 1}, {})
    lut.add("isolated", BLOCKS[0], {"median_ms": 1.0, "op_ms": {"conv": 0.5}, "op_rounds": rounds})
    lut.save(tmp_path / "lut.json")
    with pytest.raises(AutoVitError, match="op_rounds"):
        load_lut(tmp_path / "lut.json")


def test_op_rounds_without_op_ms_is_refused(tmp_path):
    from autovit.latmodel.lut import Lut, load_lut
    from test_fit import BLOCKS

    lut = Lut("cpu-x86", "onnxruntime", {"threads": 1}, {})
    lut.add("isolated", BLOCKS[0], {"median_ms": 1.0, "op_rounds": 3})
    lut.save(tmp_path / "lut.json")
    with pytest.raises(AutoVitError, match="op_rounds but no op_ms"):
        load_lut(tmp_path / "lut.json")
