"""benchmarks/search_strategies.py helpers: the on-disk accuracy cache survives a restart and
belongs to one checkpoint and subset; --merge joins runs of the same settings and refuses
others."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

HEAD = {"benchmark": "search_strategies", "supernet": "s.ckpt", "hw": "iphone13", "budget_ms": 0.5,
        "param_window": [0, 10], "evaluations": 4, "val_images": 8}


class Arch:
    def __init__(self, name: str):
        self.name = name

    def key(self) -> str:
        return self.name


def test_accuracy_cache_is_reused_only_for_the_same_checkpoint_and_subset(tmp_path):
    from search_strategies import AccuracyCache

    ckpt = tmp_path / "s.ckpt"
    ckpt.write_bytes(b"weights")
    calls = []

    def evaluate(arch):
        calls.append(arch.name)
        return float(len(calls))

    first = AccuracyCache(tmp_path / "cache", ckpt, 8)
    assert [first.get(Arch(n), evaluate) for n in ("a", "b", "a")] == [1.0, 2.0, 1.0]
    again = AccuracyCache(tmp_path / "cache", ckpt, 8)  # a new process: nothing evaluated twice
    assert again.get(Arch("b"), evaluate) == 2.0 and calls == ["a", "b"]
    assert AccuracyCache(tmp_path / "cache", ckpt, 16).top1 == {}
    ckpt.write_bytes(b"other weights")
    assert AccuracyCache(tmp_path / "cache", ckpt, 8).top1 == {}


def results(tmp_path, name: str, seeds, **change) -> str:
    runs = [{"strategy": s, "seed": seed, "best_top1": best, "evaluations": 4, "curve": curve,
             "wall_s": 1.0, "cpu_s": 1.0}
            for seed in seeds
            for s, best, curve in (("random", 50.0, [40, 45, 50, 50]), ("evolution", 60.0, [40, 55, 60, 60]),
                                   ("coarse_to_fine", 62.0 + seed, [58, 60, 61, 62 + seed]))]
    path = tmp_path / name
    path.write_text(json.dumps({**HEAD, **change, "runs": runs}))
    return str(path)


def test_merge_summarises_the_runs_of_all_files(tmp_path):
    from search_strategies import merge

    files = [results(tmp_path, "a.json", [0]), results(tmp_path, "b.json", [1, 2, 3, 4])]
    out = merge(files, tmp_path / "all.json")
    assert [(r["seed"], r["strategy"]) for r in out["runs"][:3]] == [(0, "random"), (0, "evolution"),
                                                                     (0, "coarse_to_fine")]
    assert out["c2f_evaluations_to_reach_evolution_best"] == [2] * 5 and out["seeds_c2f_within_half"] == 5
    assert out["summary"]["coarse_to_fine"]["best_mean"] == 64.0
    assert all(out["targets"].values())
    assert json.loads((tmp_path / "all.json").read_text())["merged_from"] == files


def test_merge_leaves_out_a_seed_some_strategy_did_not_finish(tmp_path):
    from search_strategies import merge

    cut = results(tmp_path, "b.json", [1, 2])
    data = json.loads(Path(cut).read_text())
    Path(cut).write_text(json.dumps({**data, "runs": data["runs"][:-1]}))  # seed 2's coarse-to-fine is missing
    out = merge([results(tmp_path, "a.json", [0]), cut], tmp_path / "all.json")
    assert out["seeds"] == [0, 1] and out["incomplete_seeds_left_out"] == [2]
    assert {r["seed"] for r in out["runs"]} == {0, 1} and out["c2f_evaluations_to_reach_evolution_best"] == [2, 2]


@pytest.mark.parametrize("second, message", [
    ({"seeds": [0]}, "coarse_to_fine seed 0 is in more than one file"),
    ({"seeds": [1], "val_images": 16}, "differs from"),
])
def test_merge_refuses_overlapping_seeds_and_other_settings(tmp_path, second, message):
    from search_strategies import merge

    seeds = second.pop("seeds")
    files = [results(tmp_path, "a.json", [0]), results(tmp_path, "b.json", seeds, **second)]
    with pytest.raises(SystemExit, match=message):
        merge(files, tmp_path / "all.json")
    assert not (tmp_path / "all.json").exists()
