"""Hostile input to `autovit-nas search` and to search spaces (issue 15): a corrupt or forged
state.json, flags beyond sane bounds, a second writer on one results folder, space files that
would hang the exact counter or exhaust memory. One line each; nothing written is lost."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from autovit.cli import nas
from autovit.latmodel.checks import read_json
from autovit.latmodel.io import FolderLock
from tests.test_cli import assert_one_line_error, run_cli

BUDGET = ["--hw", "iphone13", "--latency-budget", "100ms"]
SMALL = [*BUDGET, "--population", "2", "--generations", "1", "--parents", "1", "--coarse", "50", "--val-images", "16"]


@pytest.fixture(scope="module")
def finished(tiny_ckpt, tmp_path_factory) -> Path:
    """A finished small search (its state.json, search.json and best_arch.json); run as a
    process, since a module-wide fixture has no capsys for an in-process call."""
    out = tmp_path_factory.mktemp("search")
    proc = subprocess.run([sys.executable, "-m", "autovit.cli.nas", "search", "--supernet", str(tiny_ckpt), *SMALL,
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["evaluations"] == 2
    return out


def test_outputs_are_strict_json_and_resume_reads_them(finished, tiny_ckpt, capsys):
    for name in ("state.json", "search.json", "best_arch.json"):
        read_json(finished / name, name)  # no NaN/Infinity, bounded numbers and nesting
    code, out, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *SMALL, "--resume", str(finished),
                                   "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["evaluations"] == 2


@pytest.mark.parametrize("state, needle", [
    ([], "must be a JSON object, got list"),
    ({}, "field 'settings' must be an object, got nothing"),
    ({"settings": {}, "results": {}}, "field 'wall_s' must be an object, got nothing"),
    ({"settings": {}, "results": [], "wall_s": {}}, "field 'results' must be an object, got list"),
    ({"settings": {}, "results": {"a": 50}, "wall_s": {}}, "name different architectures"),
    ({"settings": {}, "results": {"a": "x"}, "wall_s": {"a": 1}}, "a result (top-1 %) must be a number"),
    ({"settings": {}, "results": {"a": 1e308}, "wall_s": {"a": 1}}, "a result (top-1 %) must be <= 100"),
    ({"settings": {}, "results": {"a": 50}, "wall_s": {"a": -1}}, "a wall_s value (seconds) must be >= 0"),
    ({"settings": {}, "reslts": {}, "results": {}, "wall_s": {}}, "unknown key 'reslts' (did you mean 'results'?)"),
    ('{"settings": {}, "results": {"a": NaN}, "wall_s": {"a": 1}}', "not a number JSON allows"),
    ('{"settings": ' + "[" * 100_000, "nested more than 64 levels"),
    ('{"settings": {"seed": 1' + "0" * 5000 + "}}", "an integer of 5001 digits"),
])
def test_corrupt_state_is_one_line_and_kept(tiny_ckpt, tmp_path, capsys, state, needle):
    text = state if isinstance(state, str) else json.dumps(state)
    (tmp_path / "state.json").write_text(text)
    code, _, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *BUDGET, "--resume", str(tmp_path)], capsys)
    assert_one_line_error(code, err, needle)
    assert (tmp_path / "state.json").read_text() == text  # nothing overwritten


@pytest.mark.parametrize("args, needle", [
    (["--coarse", "1000000000000"], "--coarse must be <= 100000"),
    (["--population", "100000000"], "--population must be <= 10000"),
    (["--generations", "100000000"], "--generations must be <= 10000"),
    (["--population", "5000", "--generations", "5000", "--parents", "2"], "(the evaluations) must be <= 100000"),
    (["--evaluations", "1000000000"], "--evaluations must be <= 100000"),
    (["--parents", "0"], "--parents must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--seed", "1" + "0" * 25], "--seed must be <= 4.29497e+09"),
    (["--p-depth", "nan"], "--p-depth is a probability"),
    (["--param-budget", "99999999999999999999999999M:"], "out of range"),
    (["--param-budget", ":" + "9" * 400], "out of range"),
    (["--latency-budget", "1e999ms"], "out of range"),
    (["--latency-budget", "x" * 100_000], "is not a positive time"),
    (["--latency-oracle", "guess"], "use analytical, lut:PATH"),
    ([*(["--hw", "v100"] * 20)], "at most 16 devices"),
])
def test_search_flags_out_of_bounds_are_usage_errors(tiny_ckpt, tmp_path, capsys, args, needle):
    code, _, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *BUDGET, "--out", str(tmp_path / "s"),
                                 *args], capsys)
    assert_one_line_error(code, err, needle)
    assert code == 2 and not (tmp_path / "s").exists()


def test_a_reversed_window_is_still_called_reversed(tiny_ckpt, tmp_path, capsys):
    code, _, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *BUDGET, "--param-budget", "2M:1M",
                                 "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "reversed")
    assert code == 2


def test_a_second_search_on_one_folder_gets_one_line(finished, tiny_ckpt, tmp_path, capsys):
    busy = tmp_path / "busy"
    with FolderLock(busy):  # as a running search holds it
        code, _, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *SMALL, "--out", str(busy)], capsys)
        assert_one_line_error(code, err, "another process", "is writing this search results folder")
        before = (finished / "state.json").read_text()
        with FolderLock(finished):
            code, _, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *SMALL, "--resume", str(finished)],
                                   capsys)
            assert_one_line_error(code, err, "another process")
        assert (finished / "state.json").read_text() == before
    assert [p.name for p in busy.iterdir()] == [".lock"]


def test_a_missing_resume_folder_is_not_created(tiny_ckpt, tmp_path, capsys):
    code, _, err = run_cli(nas, ["search", "--supernet", str(tiny_ckpt), *BUDGET, "--resume", str(tmp_path / "no")],
                           capsys)
    assert_one_line_error(code, err, "no search state there")
    assert not (tmp_path / "no").exists()


# ---- space files: a space is input too -----------------------------------------------------------
def _space(tmp_path: Path, old: str = "", new: str = "", text: str | None = None) -> Path:
    base = (resources.files("autovit.nas") / "spaces" / "xxs.toml").read_text()
    if old:
        assert old in base
        base = base.replace(old, new, 1)
    p = tmp_path / "space.toml"
    p.write_text(text if text is not None else base)
    return p


@pytest.mark.parametrize("old, new, text, needle", [
    ("mlp_ratios = [1.5, 2.0]", "mlp_ratios = [nan, 2.0]", None, "must be finite and > 0"),
    ("mlp_ratios = [1.5, 2.0]", "mlp_ratios = [inf]", None, "must be finite and > 0"),
    ("resolutions = [224, 256]", "resolutions = [1" + "0" * 5000 + "]", None, "not valid TOML"),
    ("", "", "a = " + "[" * 100_000 + "]" * 100_000, "not valid TOML"),
    ("resolutions = [224, 256]", "resolutions = [100000]", None, "'resolutions' is 100000"),
    ("widths = [48, 64]", "widths = [" + ", ".join(str(8 * i) for i in range(1, 200)) + "]", None,
     "values listed)' is 199, beyond the sane bound 64"),
    ("head_dim = 16", "head_dim = 1000000", None, "'head_dim' is 1e+06"),
    ("depths = [2, 3, 4, 5]", "depths = [2, 3, 4, 1000000000]", None, "beyond the sane bound 64"),
    ("", "", "x = '" + "a" * 3_000_000 + "'", "more than a space file holds"),
    ("params_range_m = [1.0, 1.8]", 'params_range_m = "abc"', None, "'params_range_m' must be two numbers"),
])
def test_hostile_space_files_are_one_line(tmp_path, capsys, old, new, text, needle):
    p = _space(tmp_path, old, new, text)
    code, _, err = run_cli(nas, ["spaces", "--check", str(p)], capsys)
    assert_one_line_error(code, err, needle)


def test_a_space_too_rich_to_count_is_refused_before_counting(tmp_path, capsys):
    import re

    twelve = _space(tmp_path).read_text()
    twelve = twelve.replace("heads = [2, 3, 4]", f"heads = {list(range(1, 13))}")
    twelve = twelve.replace("mlp_ratios = [1.5, 2.0]", f"mlp_ratios = {[1 + i / 8 for i in range(12)]}")
    twelve = re.sub(r"widths = \[(\d+), \d+\]\ndepths = \[2, 3, 4, 5\]",
                    lambda m: f"widths = {[int(m.group(1)) + 4 * i for i in range(12)]}\ndepths = [2, 3, 4, 5]", twelve)
    p = _space(tmp_path, text=twelve)
    code, _, err = run_cli(nas, ["spaces", "--check", str(p)], capsys)  # counting it would take ~10 s
    assert_one_line_error(code, err, "counting and sampling it exactly would take")


def test_the_built_in_spaces_are_within_the_bounds(capsys):
    code, out, err = run_cli(nas, ["spaces", "--json"], capsys)
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == ["xxs", "xs", "s"]


def test_sampled_files_of_a_space_file_name_it_absolutely(tmp_path, capsys, monkeypatch):
    space = _space(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(nas, ["spaces", "--sample", "1", "--space", "space.toml", "--out", "archs"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "archs" / "arch_000.json").read_text())
    assert saved["space"] == str(space.resolve())


def test_resume_refuses_a_supernet_retrained_at_the_same_path(finished, tiny_ckpt, tmp_path, capsys):
    import hashlib
    import shutil

    import torch

    ck = tmp_path / "supernet.ckpt"
    shutil.copy(tiny_ckpt, ck)
    state = json.loads((finished / "state.json").read_text())
    state["settings"].update(supernet=str(ck.resolve()),
                             supernet_sha256=hashlib.sha256(ck.read_bytes()).hexdigest()[:16])
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps(state))
    retrained = torch.load(ck, weights_only=True)
    retrained["model"]["classifier.weight"] += 1  # what another training run leaves at the same path
    torch.save(retrained, ck)
    code, _, err = run_cli(nas, ["search", "--supernet", str(ck), *SMALL, "--resume", str(folder)], capsys)
    assert_one_line_error(code, err, "different settings", "supernet_sha256")
