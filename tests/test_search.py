"""Search building blocks: budget parsing, constraints, operators, strategies (fake oracle and
evaluator: fast and exact)."""
from __future__ import annotations

import numpy as np
import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.nas.params import count_params
from autovit.nas.search import (Constraints, EvolutionSettings, Searcher, arch_key, parse_latency,
                                parse_latency_budgets, parse_param_window)
from autovit.nas.space import load_space


class ParamsOracle:
    """Latency proportional to parameters: 1 ms per million."""

    def latency_ms(self, archs):
        return np.array([count_params(a) / 1e6 for a in archs])


def fake_top1(arch) -> float:
    """Bigger transformer widths and depths score higher; deterministic."""
    return float(sum(s.width * (1 + 0.1 * s.depth) for s in arch.transformer) / 10 + arch.stem_width / 100)


@pytest.mark.parametrize("text, ms", [("10ms", 10.0), ("0.01s", 10.0), ("10", 10.0), ("500us", 0.5), (" 2 MS ", 2.0)])
def test_latency_units(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "-3ms", "0", "10 parsecs", ""])
def test_latency_garbage(text):
    with pytest.raises(AutoVitError, match="not a positive time"):
        parse_latency(text)


def test_param_window():
    assert parse_param_window("1.0M:1.8M") == (1_000_000, 1_800_000)
    assert parse_param_window(":900k") == (0, 900_000)
    with pytest.raises(AutoVitError, match="reversed"):
        parse_param_window("2M:1M")
    with pytest.raises(AutoVitError, match="LOW:HIGH"):
        parse_param_window("1M")


def test_budgets_per_device():
    assert parse_latency_budgets("iphone13=10ms,v100=2ms", ["iphone13", "v100"]) == {"iphone13": 10.0, "v100": 2.0}
    assert parse_latency_budgets("3", ["v100"]) == {"v100": 3.0}
    with pytest.raises(AutoVitError, match="given twice"):
        parse_latency_budgets("2ms", ["v100", "v100"])
    with pytest.raises(AutoVitError, match="no budget for v100"):
        parse_latency_budgets("iphone13=10ms", ["iphone13", "v100"])
    with pytest.raises(AutoVitError, match="one budget each"):
        parse_latency_budgets("2ms", ["iphone13", "v100"])


def make_searcher(seed=0, budget_ms=1.6, window=(0, 2**62)):
    space = load_space("xxs")
    cons = Constraints(window, {"dev": budget_ms}, {"dev": ParamsOracle()})
    return Searcher(space, cons, fake_top1, seed=seed)


def test_budget_no_architecture_meets_names_the_binding_one():
    with pytest.raises(AutoVitError, match="dev latency 0.01 ms .*fastest candidate"):
        make_searcher(budget_ms=0.01).random(5)
    with pytest.raises(AutoVitError, match="parameters 5.00-6.00 M"):
        make_searcher(window=(5_000_000, 6_000_000)).random(5)


@pytest.mark.parametrize("strategy", ["random", "evolution", "coarse_to_fine"])
def test_strategies_evaluate_only_legal_distinct_archs_and_are_seeded(strategy):
    s = EvolutionSettings(population=10, generations=4, parents=4)

    def run(seed):
        se = make_searcher(seed)
        if strategy == "random":
            return se, se.random(30)
        return se, getattr(se, strategy)(s, **({"coarse": 2000} if strategy == "coarse_to_fine" else {}))

    se, res = run(0)
    keys = [arch_key(h["arch"]) for h in res.history]
    assert len(keys) == len(set(keys))
    assert all(count_params(h["arch"]) / 1e6 <= 1.6 and not se.space.problems(h["arch"]) for h in res.history)
    assert res.best_top1 == max(h["top1"] for h in res.history)
    _, again = run(0)
    assert [arch_key(h["arch"]) for h in again.history] == keys


def test_evolution_improves_on_its_first_generation():
    se = make_searcher(1)
    res = se.evolution(EvolutionSettings(population=12, generations=6, parents=4))
    first = max(h["top1"] for h in res.history if h["generation"] == 0)
    assert res.best_top1 >= first
    assert res.evaluations <= 12 * 6


def test_resume_replays_known_results_and_continues_exactly():
    s = EvolutionSettings(population=8, generations=4, parents=3)
    full = make_searcher(2).evolution(s)
    calls = []

    def counting(arch):
        calls.append(arch)
        return fake_top1(arch)

    half = {arch_key(h["arch"]): h["top1"] for h in full.history[: len(full.history) // 2]}
    se = make_searcher(2)
    se._evaluate = counting
    se.known = half
    resumed = se.evolution(s)
    assert [arch_key(h["arch"]) for h in resumed.history] == [arch_key(h["arch"]) for h in full.history]
    assert len(calls) == len(full.history) - len(half)


def test_lut_oracle_of_another_device_is_refused(tmp_path):
    from autovit.latmodel.lut import Lut
    from autovit.latmodel.modules import arch_blocks
    from autovit.nas.search import make_oracle

    lut = Lut("local-cpu", "onnxruntime", {}, {})
    for b in arch_blocks(load_space("xxs").sample(1)):
        lut.add("isolated", b, {"median_ms": 0.1})
    lut.save(tmp_path / "cpu.json")
    assert make_oracle(f"lut:{tmp_path / 'cpu.json'}", "local-cpu") is not None
    with pytest.raises(AutoVitError, match="LUT was measured on 'local-cpu'"):
        make_oracle(f"lut:{tmp_path / 'cpu.json'}", "v100")
