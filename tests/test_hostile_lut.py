"""Hostile lookup tables, block lists and runs that fail (issue 15): one line each, and nothing
already written is lost."""
import json

import pytest

from autovit.cli import lat
from autovit.latmodel import profiler
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.lut import Lut, load_lut
from autovit.latmodel.blocks import load_blocks
from autovit.nas.blocks import BlockSpec
from test_cli import assert_one_line_error, run_cli

CONV = BlockSpec("conv", 16, 3, 8, 3, 2)
MB = BlockSpec("mbconv", 8, 8, 8, 3, 1, 1.0)


def _lut(tmp_path, mutate=None, name="lut.json", entries=(CONV, MB)):
    lut = Lut("cpu-x86", "onnxruntime", {}, {}, reference={"model": "autovit:xxs", "ref_ms": 5.0})
    for b in entries:
        lut.add("isolated", b, {"median_ms": 0.1, "round_medians": [0.1], "ci_pct": 1.0})
    d = lut.to_dict()
    if mutate:
        mutate(d)
    p = tmp_path / name
    p.write_text(d if isinstance(d, str) else json.dumps(d))
    return p


def _first(d):
    return next(iter(d["entries"].values()))


def _block_field(field, value):
    def mutate(d):
        _first(d)["block"][field] = value
    return mutate


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(device=5), "'device' must be a profile name"),
    (lambda d: d.update(reference=[1, 2]), "'reference' must be an object"),
    (lambda d: d.update(reference={"model": "m", "ref_ms": -1}), "reference.ref_ms"),
    (lambda d: d.update(backend="abacus"), "'backend' must be one of"),
    (lambda d: d.update(entires={}), "unknown key 'entires' (did you mean 'entries'?)"),
    (lambda d: d.update(entries=[]), "'entries' must be an object"),
    (_block_field("hw", "abc"), "field 'hw' must be an integer"),
    (_block_field("hw", -3), "field 'hw' must be >= 1"),
    (_block_field("hw", 32.5), "field 'hw' must be an integer"),
    (_block_field("hw", 10**12), "field 'hw' must be <= 4096"),
    (_block_field("hw", True), "field 'hw' must be an integer"),
    (_block_field("kind", "warp"), "'kind' must be one of"),
    (_block_field("colour", 3), "unknown key 'colour'"),
    (_block_field("cin", 8192), "beyond any real block"),
    (lambda d: _first(d).update(median_ms=0), "must be finite and > 0"),
    (lambda d: _first(d).update(mode="sideways"), "'mode' must be one of"),
    (lambda d: _first(d).update(round_medians=[]), "round_medians must be a list of 1 to"),
    (lambda d: _first(d).update(round_medians=[0.1, "x"]), "round_medians is 'x'"),
    (lambda d: _first(d).update(with_round_ms=[0.1, 0.2]), "rounds disagree"),
    (lambda d: _first(d).update(converged="yes"), "converged must be true or false"),
    (lambda d: _first(d).update(medain_ms=1), "unknown key 'medain_ms' (did you mean 'median_ms'?)"),
    (lambda d: d["entries"].update({"isolated|conv:hw=1": d["entries"].pop(next(iter(d["entries"])))}),
     "does not match its block"),
])
def test_bad_luts_are_one_line(tmp_path, capsys, mutate, needle):
    code, _, err = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(_lut(tmp_path, mutate))], capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("text, needle", [
    ('{"schema": "autovit-lut/1", "device": "cpu-x86", "backend": "onnxruntime", "entries": {"a": {"median_ms": 1e400}}}',
     "beyond the range"),
    ('{"schema": "autovit-lut/1", "device": "cpu-x86", "backend": "onnxruntime", "entries": {}, "x": NaN}', "NaN"),
    ("[" * 100 + "]" * 100, "nested more than"),
    ('{"schema": "autovit-lut/1", "device": "cpu-x86", "backend": "onnxruntime", "entries": {}, "n": '
     + "9" * 30 + "}", "30 digits"),
])
def test_hostile_json_is_one_line(tmp_path, capsys, text, needle):
    p = tmp_path / "l.json"
    p.write_text(text)
    code, _, err = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(p)], capsys)
    assert_one_line_error(code, err, needle)


def test_a_lut_with_inf_statistics_round_trips(tmp_path):
    lut = Lut("cpu-x86", "onnxruntime", {}, {})
    lut.add("isolated", CONV, {"median_ms": 0.1, "ci_pct": float("inf")})
    lut.save(tmp_path / "l.json")
    assert "Infinity" not in (tmp_path / "l.json").read_text()
    assert load_lut(tmp_path / "l.json").entries[Lut.entry_key("isolated", CONV)]["ci_pct"] is None


def _calibrated_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    p = tmp_path / "home" / "profiles" / "cpu-x86@calibrated.toml"
    p.parent.mkdir(parents=True)
    p.write_text('base = "cpu-x86"\nname = "cpu-x86@calibrated"\n')
    return p


@pytest.mark.parametrize("entries, args, needle", [
    ((), [], "it is empty"),
    ((CONV, MB), ["--mode", "ablation"], "it holds isolated entries: pass --mode isolated"),
    ((CONV,), [], "at least as many measured blocks as free parameters"),
])
def test_calibrate_refuses_too_few_points_and_keeps_the_old_profile(tmp_path, capsys, monkeypatch, entries, args, needle):
    old = _calibrated_file(tmp_path, monkeypatch)
    before = old.read_text()
    lut = _lut(tmp_path, entries=entries)
    code, _, err = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(lut), *args], capsys)
    assert_one_line_error(code, err, needle)
    assert old.read_text() == before


def test_calibrate_never_writes_a_non_finite_fit(tmp_path, capsys, monkeypatch):
    from autovit.latmodel import fit

    old = _calibrated_file(tmp_path, monkeypatch)
    before = old.read_text()
    monkeypatch.setattr(fit, "least_squares", lambda f, x0, **kw: type("R", (), {
        "x": x0 * float("nan"), "fun": f(x0), "jac": None})())
    lut = _lut(tmp_path, entries=[BlockSpec("conv", 16 * i, 3, 8 * j, 3, 2) for i in (1, 2, 3, 4) for j in (1, 2, 3, 4)])
    code, _, err = run_cli(lat, ["calibrate", "--hw", "cpu-x86", "--lut", str(lut)], capsys)
    assert_one_line_error(code, err, "did not converge")
    assert old.read_text() == before


def _fake_runners(fail):
    """Instant 'measurements'; the blocks in `fail` raise as a backend refusing them would."""
    def runners(block, mode, backend, threads):
        if block in fail:
            raise RuntimeError("backend refuses this block")
        return [(lambda: None, lambda run: 0.05)]
    return runners


@pytest.mark.parametrize("fail, kept", [({CONV, MB}, 0), ({MB}, 1)])
def test_profile_with_failed_blocks_exits_non_zero(tmp_path, capsys, monkeypatch, fail, kept):
    monkeypatch.setattr(profiler, "block_runners", _fake_runners(fail))
    blocks = tmp_path / "b.json"
    blocks.write_text(json.dumps([CONV.to_dict(), MB.to_dict()]))
    out = tmp_path / "l.json"
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--blocks", str(blocks), "--out", str(out),
                                 "--no-reference", "--rounds", "1", "--max-repeats", "6"], capsys)
    assert code == 1 and "Traceback" not in err
    assert f"{len(fail)} of 2 blocks failed" in err.strip().splitlines()[-1]
    if kept:
        assert len(load_lut(out).entries) == kept and "keeps the 1 measured" in err
    else:
        assert not out.exists() and "nothing was written" in err


@pytest.mark.parametrize("text, needle", [
    ("[]", "an empty list"), ('{"kind": "conv"}', "got dict"), ("[1]", "block #1: a block description is a JSON"),
    ('[{"kind": "transformer", "hw": 8, "cin": 16, "cout": 16}]', "needs heads"),
    ('[{"kind": "transformer", "hw": 2, "cin": 16, "cout": 16, "heads": 2, "mlp_ratio": 2, "head_dim": 8, "patch": 4}]',
     "patch 4 is larger"),
    ('[{"kind": "mbconv", "hw": 4096, "cin": 4096, "cout": 4096, "expansion": 16}]', "beyond any real block"),
    ('[{"kind": "conv", "cin": 3, "cout": 8}]', "missing field 'hw'"),
    # even kernels: 'same' padding grew the map (a 9 x 9 output measured) or the branches failed to concat
    ('[{"kind": "mvit_convs", "hw": 8, "cin": 16, "cout": 16, "fusion_kernel": 2}]', "kernels must be odd"),
    ('[{"kind": "mvit_convs", "hw": 8, "cin": 16, "cout": 16, "kernel": 4}]', "kernels must be odd, got kernel 4"),
    ('[{"kind": "conv", "hw": 8, "cin": 16, "cout": 16, "kernel": 2}]', "kernels must be odd, got kernel 2"),
])
def test_bad_block_lists_are_one_line(tmp_path, capsys, text, needle):
    p = tmp_path / "b.json"
    p.write_text(text)
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--blocks", str(p), "--out", str(tmp_path / "l.json")],
                           capsys)
    assert_one_line_error(code, err, "--blocks" if needle == "got dict" else needle)
    assert not (tmp_path / "l.json").exists()


def test_block_lists_drop_duplicates(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps([CONV.to_dict(), MB.to_dict(), CONV.to_dict()]))
    assert load_blocks(str(p)) == [CONV, MB]
    with pytest.raises(AutoVitError, match="expansion"):
        BlockSpec.from_dict(dict(MB.to_dict(), expansion=0))


# ---- cases of the fresh break-it pass: outputs that would destroy inputs ------------------
def test_outputs_never_overwrite_the_commands_inputs(tmp_path, capsys, tiny_conv_onnx):
    lut = _lut(tmp_path)
    before = lut.read_text()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for cmd, needle in (
            (["calibrate", "--hw", "cpu-x86", "--lut", str(lut), "--out", str(lut)], "input of this command"),
            (["calibrate", "--hw", "cpu-x86", "--lut", str(lut), "--out", str(notes)], "not a profile written by calibrate"),
            (["validate", "--hw", "cpu-x86", "--lut", str(lut), "--out", str(lut)], "input of this command"),
            (["estimate", str(tiny_conv_onnx), "--hw", "v100", "--plot", str(tiny_conv_onnx)], "input of this command")):
        code, _, err = run_cli(lat, cmd, capsys)
        assert_one_line_error(code, err, needle)
        assert code == 2
    assert lut.read_text() == before and notes.read_text() == "mine" and tiny_conv_onnx.read_bytes()[:4] != b"\x89PNG"


def test_a_second_profile_run_on_the_same_lut_folder_is_refused(tmp_path, capsys, monkeypatch):
    from autovit.latmodel.io import FolderLock

    monkeypatch.setattr(profiler, "block_runners", _fake_runners(set()))
    blocks = tmp_path / "b.json"
    blocks.write_text(json.dumps([CONV.to_dict()]))
    out = tmp_path / "luts" / "l.json"
    with FolderLock(out.parent, "LUT folder"):
        code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--blocks", str(blocks), "--out", str(out),
                                     "--no-reference"], capsys)
    assert_one_line_error(code, err, "another process")
    assert not out.exists()
