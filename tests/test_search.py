"""Search building blocks: budget parsing, constraints, operators, strategies (fake oracle and
evaluator: fast and exact)."""
from __future__ import annotations

import numpy as np
import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.nas.params import count_params
from autovit.nas.search import (Constraints, EvolutionSettings, Searcher, parse_latency,
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


def make_searcher(seed=0, budget_ms=1.6, window=(0, 2**62), **kw):
    space = load_space("xxs")
    cons = Constraints(window, {"dev": budget_ms}, {"dev": ParamsOracle()})
    return Searcher(space, cons, kw.pop("evaluate", fake_top1), seed=seed, **kw)


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
    keys = [h["arch"].key() for h in res.history]
    assert len(keys) == len(set(keys))
    assert all(count_params(h["arch"]) / 1e6 <= 1.6 and not se.space.problems(h["arch"]) for h in res.history)
    assert res.best_top1 == max(h["top1"] for h in res.history)
    _, again = run(0)
    assert [h["arch"].key() for h in again.history] == keys


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

    half = {h["arch"].key(): h["top1"] for h in full.history[: len(full.history) // 2]}
    se = make_searcher(2)
    se._evaluate = counting
    se.known = half
    resumed = se.evolution(s)
    assert [h["arch"].key() for h in resumed.history] == [h["arch"].key() for h in full.history]
    assert len(calls) == len(full.history) - len(half)


def test_lut_oracle_of_another_device_is_refused(tmp_path):
    from autovit.latmodel.lut import Lut
    from autovit.nas.blocks import arch_blocks
    from autovit.nas.latency import make_oracle

    lut = Lut("local-cpu", "onnxruntime", {}, {})
    for b in arch_blocks(load_space("xxs").sample(1)):
        lut.add("isolated", b, {"median_ms": 0.1})
    lut.save(tmp_path / "cpu.json")
    assert make_oracle(f"lut:{tmp_path / 'cpu.json'}", "local-cpu") is not None
    with pytest.raises(AutoVitError, match="LUT was measured on 'local-cpu'"):
        make_oracle(f"lut:{tmp_path / 'cpu.json'}", "v100")


class ThreadGather:
    """all_gather_object for ranks played by threads."""

    def __init__(self, world):
        import threading

        self.slots, self.barrier = [None] * world, threading.Barrier(world, timeout=60)

    def for_rank(self, rank):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return out
        return gather


@pytest.mark.parametrize("strategy", ["random", "evolution", "coarse_to_fine"])
def test_ranks_split_each_generation_and_decide_as_one_process(strategy):
    import threading

    s = EvolutionSettings(population=9, generations=4, parents=3)

    def run(se):
        if strategy == "random":
            return se.random(25)
        return getattr(se, strategy)(s, **({"coarse": 1000} if strategy == "coarse_to_fine" else {}))

    single = run(make_searcher(3))
    world, g = 2, ThreadGather(2)
    calls = {r: [] for r in range(world)}
    recorded = {r: [] for r in range(world)}
    results = {}

    def rank_main(r):
        def evaluate(arch):
            calls[r].append(arch.key())
            return fake_top1(arch)
        se = make_searcher(3, evaluate=evaluate, rank=r, world=world, gather=g.for_rank(r),
                           on_result=lambda key, top1: recorded[r].append(key))
        results[r] = run(se)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = [(h["arch"].key(), h["top1"], h["generation"]) for h in single.history]
    for r in range(world):
        assert [(h["arch"].key(), h["top1"], h["generation"]) for h in results[r].history] == want
        assert sorted(recorded[r]) == sorted(k for k, _, _ in want)  # every result reaches every rank
    assert not set(calls[0]) & set(calls[1])  # disjoint slices ...
    assert sorted(calls[0] + calls[1]) == sorted(k for k, _, _ in want)  # ... that cover the run
    assert abs(len(calls[0]) - len(calls[1])) <= s.generations


def test_pricing_is_lazy_a_rejected_candidate_is_never_timed():
    seen = []

    class Recording(ParamsOracle):
        def latency_ms(self, archs):
            seen.extend(archs)
            return super().latency_ms(archs)

    space = load_space("xxs")
    archs = [space.smallest(), space.largest()]
    cut = count_params(space.smallest()) + 1
    cons = Constraints((0, cut), {"a": 100.0, "b": 100.0}, {"a": Recording(), "b": Recording()})
    priced = cons.price(archs)
    assert list(cons.legal(priced)) == [True, False]
    assert np.isinf(priced["a"][1]) and seen == [space.smallest()] * 2
    full = cons.price(archs, lazy=False)
    assert np.isfinite(full["a"]).all() and full["b"][1] > full["b"][0]


def test_mutation_and_crossover_children_stay_in_the_monotonic_space():
    import random

    from autovit.nas.search import crossover, mutate, repair_monotonic

    space = load_space("xxs")
    rng = random.Random(0)
    parents = [space.sample(rng) for _ in range(10)]
    kids = [mutate(rng.choice(parents), space, rng, 0.2, 0.4) for _ in range(300)]
    kids += [crossover(*rng.sample(parents, 2), rng, space) for _ in range(300)]
    assert sum(bool(space.problems(k)) for k in kids) <= 6  # only a width with no large-enough option
    assert all(repair_monotonic(p, space) == p for p in parents)  # members are left alone


def test_evolution_spends_its_whole_budget_instead_of_stalling():
    # Similar parents cross into architectures already seen; mutation must make up for it
    # (a generation that alternated on the child count stalled short of its budget).
    for seed in range(3):
        res = make_searcher(seed).evolution(EvolutionSettings(population=10, generations=100, parents=3),
                                            evaluations=60)
        assert res.evaluations == 60


def test_pareto_front_keeps_only_strict_improvements_fastest_first():
    from autovit.latmodel.plots import pareto_front

    lat = [3.0, 1.0, 2.0, 2.5, 0.5, 4.0]
    acc = [90.0, 80.0, 85.0, 85.0, 70.0, 89.0]
    assert list(pareto_front(lat, acc)) == [4, 1, 2, 0]
