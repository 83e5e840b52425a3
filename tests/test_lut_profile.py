import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from dataclasses import replace

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.lut import LUT_SCHEMA, Lut, load_lut
from autovit.latmodel.measure import (
    TimingPolicy, check_backend, cuda_event_timer, median_ci_halfwidth_pct, summarize, time_callable)
from autovit.nas.blocks import BlockSpec, arch_blocks, paper46, space_blocks
from autovit.latmodel.profiler import profile_blocks
from autovit.nas.params import count_params
from autovit.nas.space import load_space

from test_cli import assert_one_line_error, run_cli

FAST = TimingPolicy(warmup=1, min_repeats=5, max_repeats=6, ci_pct=50.0)
SMALL = [BlockSpec("mbconv", 8, 8, 8, 3, 1, 1.0), BlockSpec("transformer", 4, 16, 16, heads=2, mlp_ratio=2.0, head_dim=8)]


def test_paper46_is_the_papers_table():
    blocks = paper46()
    kinds = [b.kind for b in blocks]
    assert len(blocks) == 46 and kinds.count("conv") == 2 and kinds.count("mbconv") == 4
    assert len({b.key for b in blocks}) == 46


@pytest.mark.parametrize("name", ["xxs", "xs", "s"])
@pytest.mark.parametrize("internals", [{}, dict(local_conv="dense", fusion_kernel=3, conv_ratio=0.75)])
def test_space_blocks_cover_every_sampled_architecture(name, internals):
    sp = replace(load_space(name), **internals)
    blocks = set(space_blocks(sp))
    for seed in range(40):
        arch = sp.sample(seed)
        assert set(arch_blocks(arch)) <= blocks
    # The blocks are the network: their parameters add up to the architecture's.
    assert sum(sum(p.numel() for p in b.build().parameters()) for b in arch_blocks(arch)) == count_params(arch)


def test_block_keys_of_older_luts_stay_valid():
    """A LUT block written before the internals fields is MobileViT v1's block, under its old key."""
    old = {"kind": "mvit_convs", "hw": 8, "cin": 16, "cout": 16, "kernel": 3, "stride": 1, "expansion": 1.0,
           "heads": 0, "mlp_ratio": 0.0, "head_dim": 8, "patch": 2, "num_classes": 0}
    b = BlockSpec.from_dict(old)
    assert (b.local_conv, b.fusion_kernel) == ("dense", 3)
    assert b.key == "mvit_convs:hw=8,cin=16,cout=16,kernel=3,patch=2"
    new = replace(b, local_conv="depthwise", fusion_kernel=1)
    assert new.key.endswith(",local_conv=depthwise,fusion_kernel=1")


def test_statistics():
    xs = [1.0] * 50 + [1.1] * 50
    m = summarize(xs, 5.0)
    assert m.median_ms == pytest.approx(1.05) and m.repeats == 100 and m.converged
    assert summarize([1.0] * 20 + [50.0], 5.0).outliers == 1
    assert median_ci_halfwidth_pct([1, 2, 3]) == math.inf


def test_time_callable_stops_when_the_median_is_stable():
    ticks = iter(range(10_000))
    m = time_callable(lambda: None, TimingPolicy(warmup=2, min_repeats=10, max_repeats=200, ci_pct=1.0),
                      clock=lambda: next(ticks) * 1e-3)  # every run takes exactly 1 ms
    assert m.repeats == 10 and m.median_ms == pytest.approx(1.0) and m.converged


def test_cuda_timer_synchronises_and_reads_events():
    calls = []

    class FakeEvent:
        def __init__(self, enable_timing):
            assert enable_timing
        def record(self): calls.append("record")
        def synchronize(self): calls.append("event-sync")
        def elapsed_time(self, other): return 2.5

    class Cuda:
        Event = FakeEvent
        @staticmethod
        def synchronize(): calls.append("device-sync")

    class FakeTorch:
        cuda = Cuda

    ms = cuda_event_timer(FakeTorch)(lambda: calls.append("run"))
    assert ms == 2.5 and calls == ["device-sync", "record", "run", "record", "event-sync"]


def test_backends_that_cannot_run_here():
    import platform

    if platform.system() != "Darwin":
        with pytest.raises(AutoVitError, match="needs macOS"):
            check_backend("coreml")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(AutoVitError, match="needs a CUDA GPU"):
            check_backend("torch-cuda")


def _lut_file(tmp_path, **changes):
    lut = Lut("local-cpu", "onnxruntime", {}, {})
    lut.add("isolated", SMALL[0], {"median_ms": 0.1})
    d = lut.to_dict() | changes
    p = tmp_path / "lut.json"
    p.write_text(json.dumps(d))
    return p, d


def test_lut_round_trip_and_bad_luts(tmp_path):
    p, d = _lut_file(tmp_path)
    assert load_lut(p, "local-cpu").median_ms("isolated", SMALL[0]) == 0.1
    assert load_lut(p, "local-cpu@calibrated")  # same device
    with pytest.raises(AutoVitError, match="measured on 'local-cpu', not 'v100'"):
        load_lut(p, "v100")
    p, _ = _lut_file(tmp_path, schema="autovit-lut/0")
    with pytest.raises(AutoVitError, match="schema"):
        load_lut(p)
    p.write_text(json.dumps(d)[:40])
    with pytest.raises(AutoVitError, match="not valid JSON"):
        load_lut(p)
    for bad in (float("nan"), -1.0, 0.0, "fast"):
        e = dict(d["entries"])
        key = next(iter(e))
        e[key] = dict(e[key], median_ms=bad)
        p.write_text(json.dumps(d | {"entries": e}))
        with pytest.raises(AutoVitError, match="must be finite and > 0|NaN is not a number JSON allows"):
            load_lut(p)


def test_failing_block_is_reported_and_the_rest_measured(tmp_path):
    broken = BlockSpec("mbconv", 8, 8, 8, 3, 0, 1.0)  # stride 0: torch refuses it before ONNX Runtime sees it
    lut = Lut("local-cpu", "onnxruntime", {}, {})
    measured, failures = profile_blocks([broken] + SMALL, lut, tmp_path / "l.json", "onnxruntime", 1, "isolated", FAST)
    assert measured == 2 and len(failures) == 1 and failures[0][0] == broken.key
    assert len(load_lut(tmp_path / "l.json").entries) == 2


def test_interrupted_profile_is_intact_and_resumes(tmp_path):
    out = tmp_path / "l.json"
    lut = Lut("local-cpu", "onnxruntime", {}, {})

    def stop_after_first(block, m, err):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_blocks(SMALL, lut, out, "onnxruntime", 1, "isolated", FAST, stop_after_first)
    resumed = load_lut(out, "local-cpu")
    assert len(resumed.entries) == 1
    measured, _ = profile_blocks(SMALL, resumed, out, "onnxruntime", 1, "isolated", FAST)
    assert measured == 1 and len(load_lut(out).entries) == 2


def test_profile_cli_resumes_and_refuses_bad_input(tmp_path, capsys):
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps([b.to_dict() for b in SMALL]))
    out = tmp_path / "lut.json"
    args = ["profile", "--hw", "local-cpu", "--blocks", str(blocks), "--out", str(out), "--max-repeats", "6",
            "--ci-pct", "50", "--json"]
    code, stdout, _ = run_cli(__import__("autovit.cli.lat", fromlist=["x"]), args, capsys)
    assert code == 0 and json.loads(stdout)["measured"] == 2 and json.loads(stdout)["op_classes_recorded"] == 2
    # Each entry also holds its kernel time per op class (onnxruntime's profiler), for calibrate.
    assert all(e["op_ms"] and all(v >= 0 for v in e["op_ms"].values()) for e in load_lut(out).entries.values())
    code, stdout, _ = run_cli(__import__("autovit.cli.lat", fromlist=["x"]), args, capsys)
    assert code == 0 and json.loads(stdout)["measured"] == 0 and json.loads(stdout)["already_there"] == 2
    lat = __import__("autovit.cli.lat", fromlist=["x"])
    code, _, err = run_cli(lat, ["profile", "--hw", "v100", "--blocks", str(blocks), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "not 'v100'")
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--backend", "coreml", "--preset", "paper46"], capsys)
    assert_one_line_error(code, err, "macOS")
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--preset", "paper46", "--space", "xxs"], capsys)
    assert_one_line_error(code, err, "exactly one module set")


def test_ctrl_c_during_profile_leaves_a_valid_lut(tmp_path):
    """A real SIGINT to the real command: the LUT on disk stays valid and the run resumes."""
    out = tmp_path / "lut.json"
    cmd = [sys.executable, "-m", "autovit.cli.lat", "profile", "--hw", "local-cpu", "--space", "xxs",
           "--out", str(out), "--max-repeats", "300", "--ci-pct", "0.01"]
    # An unreachable CI keeps every block at 300 repeats, so the run is still going when the
    # signal comes (with a loose CI the 160 blocks finished before a busy 2-core CI box polled).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out.exists() and len(json.loads(out.read_text())["entries"]) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume" in err
    saved = load_lut(out, "local-cpu")
    assert 3 <= len(saved.entries) < len(space_blocks(load_space("xxs")))
    assert json.loads(out.read_text())["schema"] == LUT_SCHEMA
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_profile_cli_bad_inputs(tmp_path, capsys):
    lat = __import__("autovit.cli.lat", fromlist=["x"])
    base = ["profile", "--hw", "local-cpu", "--out", str(tmp_path / "l.json")]
    code, _, err = run_cli(lat, base + ["--blocks", str(tmp_path / "missing.json")], capsys)
    assert_one_line_error(code, err, "--blocks")
    garbage = tmp_path / "g.json"
    for text in ("not json", '{"kind": "conv"}', '[{"kind": "warp-drive", "hw": 8}]', "[1, 2]"):
        garbage.write_text(text)
        code, _, err = run_cli(lat, base + ["--blocks", str(garbage)], capsys)
        assert_one_line_error(code, err)
    code, _, err = run_cli(lat, base + ["--preset", "paper46", "--threads", "0"], capsys)
    assert_one_line_error(code, err, "--threads")
    code, _, err = run_cli(lat, base + ["--preset", "paper46", "--ci-pct", "0"], capsys)
    assert_one_line_error(code, err, "--ci-pct")
    lut = Lut("local-cpu", "torch", {}, {})
    lut.add("isolated", SMALL[0], {"median_ms": 0.2})
    lut.save(tmp_path / "l.json")
    code, _, err = run_cli(lat, base + ["--preset", "paper46"], capsys)
    assert_one_line_error(code, err, "measured with torch, not onnxruntime")
    assert load_lut(tmp_path / "l.json").backend == "torch"  # the existing LUT is untouched


def test_unwritable_output_paths_are_one_line_errors(tmp_path, capsys):
    lat = __import__("autovit.cli.lat", fromlist=["x"])
    nas = __import__("autovit.cli.nas", fromlist=["x"])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, _, err = run_cli(nas, ["spaces", "--sample", "1", "--space", "xxs", "--out", str(a_file / "sub")], capsys)
    assert_one_line_error(code, err, "cannot use")
    blocks = tmp_path / "b.json"
    blocks.write_text(json.dumps([SMALL[0].to_dict()]))
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--blocks", str(blocks), "--out",
                                 str(a_file / "lut.json"), "--max-repeats", "6", "--ci-pct", "50"], capsys)
    assert_one_line_error(code, err, "cannot use")


def test_a_measurement_is_its_fast_state_scaled_once_per_run(monkeypatch):
    from autovit.latmodel import measure
    from autovit.latmodel.measure import DriftMonitor, Measurement, at_reference, fast_share, fast_state_ms

    # Bursts that lost a core (1.7x) are left out; the rest's median is the measurement.
    rounds = [10.0, 17.0, 10.4, 16.8, 9.8, 17.5]
    assert fast_state_ms(rounds) == pytest.approx(10.0) and fast_share(rounds) == pytest.approx(0.5)
    assert fast_state_ms([5.0]) == 5.0
    # A lone fast round is the state (the machine's fast phases can be one round long).
    assert fast_state_ms([6.0, 10.0, 10.1, 10.2, 9.9]) == 6.0
    assert fast_state_ms([6.0, 6.2, 10.0, 10.1]) == pytest.approx(6.1)
    for bad in ([], [0.0, 1.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError):
            fast_state_ms(bad)
    # A run whose reference ran 1.2x slower than in the LUT's run is scaled back, once.
    assert at_reference(rounds, 6.0, 5.0) == pytest.approx(10.0 * 5.0 / 6.0)
    assert at_reference(rounds, None, 5.0) == pytest.approx(10.0)  # no monitor: unscaled
    speeds = iter([5.0, 10.0, 6.0, 5.2])
    monkeypatch.setattr(measure, "time_callable",
                        lambda run, policy, timed=None: Measurement(next(speeds), 0, 0, 0, 5, 0, 1.0, True))
    mon = DriftMonitor(lambda: None, FAST, every=2)
    got = [mon.before_item() for _ in range(7)]
    assert got == [5.0, 5.0, 10.0, 10.0, 6.0, 6.0, 5.2] and mon.fastest_ms == 5.0
    assert mon.run_ms == pytest.approx(5.2)  # the median of 5.0, 6.0, 5.2: 10.0 lost a core


def test_lut_entries_are_their_fast_state_and_the_reference_speed_is_the_runs():
    from autovit.latmodel.measure import DriftMonitor
    from autovit.latmodel.profiler import settle_lut

    lut = Lut("local-cpu", "onnxruntime", {}, {})
    lut.add("isolated", SMALL[0], {"round_medians": [0.28, 0.48, 0.29, 0.49, 0.27], "round_reference_ms": [4.3, 4.9, 4.4]})
    mon = DriftMonitor(lambda: None, FAST, model="autovit:xxs", history=[4.3, 4.9, 4.4])
    settle_lut(lut, mon)
    (e,) = lut.entries.values()
    assert e["median_ms"] == pytest.approx(0.28)  # 0.48 and 0.49 lost a core
    assert lut.reference == {"model": "autovit:xxs", "ref_ms": pytest.approx(4.4)}
    # Re-settled without a monitor (profile --no-reference), the speed still comes from the
    # entries' reference bursts, not from what an older rule left there.
    lut.reference = {"model": "autovit:xxs", "ref_ms": 4.0}
    settle_lut(lut, None)
    assert lut.reference["ref_ms"] == pytest.approx(4.4)


def test_a_run_at_another_machine_speed_is_told():
    from autovit.latmodel.measure import DriftMonitor
    from autovit.latmodel.profiler import run_speed_change

    mon = DriftMonitor(lambda: None, FAST, history=[4.6, 4.7, 4.6])
    assert run_speed_change(4.0, mon) == pytest.approx(4.6 / 4.0)
    assert run_speed_change(None, mon) is None and run_speed_change(4.0, None) is None


def test_bad_rounds_and_bad_lut_reference(tmp_path, capsys):
    lat = __import__("autovit.cli.lat", fromlist=["x"])
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--preset", "paper46", "--rounds", "0",
                                 "--out", str(tmp_path / "l.json")], capsys)
    assert_one_line_error(code, err, "--rounds")
    lut = Lut("local-cpu", "onnxruntime", {}, {}, reference={"model": "autovit:xxs", "ref_ms": -1.0})
    lut.add("isolated", SMALL[0], {"median_ms": 0.2})
    lut.save(tmp_path / "bad.json")
    with pytest.raises(AutoVitError, match="reference.ref_ms"):
        load_lut(tmp_path / "bad.json")


def test_profile_times_whole_networks_in_the_blocks_rounds(tmp_path):
    """A network is timed whole beside the blocks, round by round, into the LUT's `networks`
    (saved with them, loaded back, resumed like them)."""
    from autovit.latmodel.profiler import NetworkItem, rounds_done

    out = tmp_path / "l.json"
    net = NetworkItem("autovit:xxs")
    lut = Lut("local-cpu", "onnxruntime", {}, {})
    seen = []
    measured, failures = profile_blocks([SMALL[0], net], lut, out, "onnxruntime", 1, "isolated",
                                        replace(FAST, rounds=2), lambda item, m, err: seen.append(item.key),
                                        after_round=lambda r: seen.append(f"round {r}"))
    assert measured == 2 and not failures
    # one pass over the blocks and the network per round, each followed by after_round (the GEMM probe)
    assert seen == [SMALL[0].key, net.key, "round 0", SMALL[0].key, net.key, "round 1"]
    saved = load_lut(out, "local-cpu")
    e = saved.networks["autovit:xxs"]
    assert len(e["round_medians"]) == 2 and e["median_ms"] > 0 and rounds_done(saved, "isolated", net) == 2
    assert list(saved.entries) == [Lut.entry_key("isolated", SMALL[0])]  # not a block entry
    measured, _ = profile_blocks([SMALL[0], net], saved, out, "onnxruntime", 1, "isolated", replace(FAST, rounds=2))
    assert measured == 0  # nothing left to do on a resumed LUT


def test_a_luts_networks_name_models_never_files(tmp_path):
    p, d = _lut_file(tmp_path)
    good = {"median_ms": 4.0, "round_medians": [4.0, 4.2]}
    p.write_text(json.dumps(d | {"networks": {"timm:resnet18": good}}))
    assert load_lut(p).networks == {"timm:resnet18": good}
    for networks, match in (({"/etc/passwd": good}, "never by file"), ({"timm:../x.onnx": good}, "never by file"),
                            ({"timm:resnet18": dict(good, median_ms=-1.0)}, "finite and > 0"),
                            ({"timm:resnet18": dict(good, round_medians=[4.0, "x"])}, "finite and > 0"),
                            ({"timm:resnet18": dict(good, op_ms={"conv": 1.0})}, "op_ms"),
                            ({"timm:resnet18": [4.0]}, "must be an object"), ([1], "must be an object")):
        p.write_text(json.dumps(d | {"networks": networks}))
        with pytest.raises(AutoVitError, match=match):
            load_lut(p)


def test_profile_cli_networks_option(tmp_path, capsys):
    lat = __import__("autovit.cli.lat", fromlist=["x"])
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps([SMALL[0].to_dict()]))
    base = ["profile", "--hw", "local-cpu", "--blocks", str(blocks), "--out", str(tmp_path / "l.json"),
            "--max-repeats", "6", "--ci-pct", "50", "--rounds", "1", "--no-per-op"]
    for bad, match in (("timm:no_such_model_x", "unknown timm model"), (str(tmp_path / "m.onnx"), "timm:NAME"),
                       ("autovit:huge", "unknown AutoViT preset"), (",", "comma list")):
        code, _, err = run_cli(lat, base + ["--networks", bad], capsys)
        assert_one_line_error(code, err, match)
    assert not (tmp_path / "l.json").exists()  # refused before any timing
    code, out, _ = run_cli(lat, base + ["--networks", "autovit:xxs", "--json"], capsys)
    assert code == 0 and json.loads(out)["networks"] == ["autovit:xxs"]
    saved = load_lut(tmp_path / "l.json")
    # the summary reports the probes the LUT keeps
    assert json.loads(out)["sgemm_gflops"] == saved.environment["sgemm_gflops"]
    assert json.loads(out)["stream_gbps"] == saved.environment.get("stream_gbps")
    # the GEMM probe's fastest round, for calibrate's clock (hardware.clock_override)
    assert list(saved.networks) == ["autovit:xxs"] and saved.environment["sgemm_gflops"] > 0
    # the streaming probes' fastest rounds, where the OS lists private caches below a shared one
    if lat._stream_probes("onnxruntime", 1):
        assert set(saved.environment["stream_gbps"]) == {"private", "shared"}
        assert all(v > 0 for v in saved.environment["stream_gbps"].values())
    from autovit.nas.blocks import CALIB50_NETWORKS

    assert lat._network_set("preset", "calib50") and [n.source for n in lat._network_set("preset", "calib50")] == \
        list(CALIB50_NETWORKS)
    assert lat._network_set("preset", "paper46") == [] and lat._network_set("none", "calib50") == []


def test_a_lut_resumes_only_at_the_threads_it_was_measured_with(tmp_path, capsys):
    """calibrate models the LUT's thread count; entries and GEMM probe at another would mix two machines."""
    lat = __import__("autovit.cli.lat", fromlist=["x"])
    lut = Lut("local-cpu", "onnxruntime", {"threads": 4, "sgemm_gflops": 100.0}, {})
    lut.add("isolated", SMALL[0], {"median_ms": 0.2})
    lut.save(tmp_path / "l.json")
    blocks = tmp_path / "b.json"
    blocks.write_text(json.dumps([SMALL[1].to_dict()]))
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--blocks", str(blocks), "--out", str(tmp_path / "l.json"),
                                 "--threads", "1"], capsys)
    assert_one_line_error(code, err, "--threads 4")
    assert load_lut(tmp_path / "l.json").environment["sgemm_gflops"] == 100.0  # untouched
