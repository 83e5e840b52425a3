"""Estimates must not change by accident: every golden model on every built-in profile,
compared with tests/data/golden_estimates.json (written by tests/make_golden.py from the code
before a refactor). A change on purpose regenerates the file with that script."""
from __future__ import annotations

import json

import pytest

from autovit.latmodel.estimate import LatencyModel
from autovit.latmodel.hardware import builtin_names, load_profile
from autovit.latmodel.sources import graph_for
import autovit.nas  # noqa: F401 - registers the autovit: and architecture-file sources
from tests.golden_models import GOLDEN, model_names, pinned_machine, priced, sources

REL = 1e-9


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """Each model exported once per session, priced on every profile by the tests below."""
    return {name: graph_for(src) for name, src in sources(tmp_path_factory.mktemp("golden")).items()}


def _close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys differ"
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    else:
        assert got == pytest.approx(want, rel=REL, abs=1e-12), where


def test_golden_file_covers_every_model_and_profile(golden):
    assert sorted(golden) == sorted(model_names())
    for name, by_hw in golden.items():
        assert sorted(by_hw) == builtin_names(), name


@pytest.mark.parametrize("name", model_names())
def test_estimates_are_unchanged(name, graphs, golden):
    model = LatencyModel(graphs[name])
    with pinned_machine():
        profiles = {hw: load_profile(hw) for hw in golden[name]}
    for hw, want in golden[name].items():
        _close(priced(model.estimate(profiles[hw]).to_dict()), want, f"{name} on {hw}")


def test_cli_estimate_json_matches_the_golden_file(graphs, golden, tmp_path, capsys):
    """The command itself, once: `estimate --json` prints the figures the library computes."""
    from autovit.cli import lat
    from tests.test_cli import run_cli

    hw = builtin_names()[0]
    code, out, _ = run_cli(lat, ["estimate", "autovit:xxs", "--hw", hw, "--json"], capsys)
    assert code == 0
    _close(priced(json.loads(out)), golden["autovit:xxs"][hw], f"estimate autovit:xxs --hw {hw}")
