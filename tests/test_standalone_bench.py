"""benchmarks/standalone.py and ranking.py helpers: a stand-alone run trained in parts is the
run trained at once, recipe values name the run folder, and partial rankings spread over the
range."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def tiny():
    from autovit.nas.data import open_data
    from autovit.nas.train import TrainConfig, supernet_space

    cfg = TrainConfig(space="xxs", data="mnist5k", batch_size=16, steps_per_epoch=2, val_images=32, bn_batches=1)
    return cfg, supernet_space(cfg, open_data("mnist5k")).smallest()


def test_run_in_parts_equals_run_at_once(tmp_path):
    from standalone import standalone

    from autovit.nas.checkpoint import load_checkpoint

    cfg, arch = tiny()
    first = standalone(cfg, arch, 0, 2, tmp_path / "parts", stop_after=1)
    assert first["top1"] is None and first["epochs"] == 1 and first["parts"] == 1
    parts = standalone(cfg, arch, 0, 2, tmp_path / "parts")
    whole = standalone(cfg, arch, 0, 2, tmp_path / "whole")
    assert (parts["parts"], whole["parts"], parts["timed_epochs"], parts["epochs"]) == (2, 1, 2, 2)
    assert parts["top1"] == whole["top1"]
    a, b = (load_checkpoint(Path(r["folder"]) / "last.ckpt") for r in (parts, whole))
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert parts["cpu_s"] > first["cpu_s"] > 0
    again = standalone(cfg, arch, 0, 2, tmp_path / "parts")
    assert again["reused"] and again["top1"] == parts["top1"]


def test_recipe_values_name_the_run_folder(tmp_path):
    from standalone import recipe_config, run_folder

    cfg, arch = tiny()
    same = recipe_config(cfg, {"lr": None, "batch_size": 16})
    other = recipe_config(cfg, {"lr": 1e-3})
    assert other.lr == 1e-3 and same.lr is None
    assert run_folder(tmp_path, cfg, arch, 0, 2) == run_folder(tmp_path, same, arch, 0, 2)
    assert run_folder(tmp_path, cfg, arch, 0, 2) != run_folder(tmp_path, other, arch, 0, 2)
    assert run_folder(tmp_path, cfg, arch, 0, 2) != run_folder(tmp_path, cfg, arch, 1, 2)


def test_spread_order_takes_the_ends_then_fills_the_widest_gap():
    from ranking import spread_order

    assert spread_order(12)[:4] == [0, 11, 5, 8]
    for n in (1, 2, 3, 12):
        assert sorted(spread_order(n)) == list(range(n))


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    from autovit.nas.data import open_data
    from autovit.nas.supernet import Supernet
    from autovit.nas.train import TrainConfig, supernet_space

    space = supernet_space(TrainConfig(space="xxs", data="mnist5k"), open_data("mnist5k"))
    net = Supernet(space)
    net.zero_init_residual()
    net.set_active_subnet(space.largest())
    tokens = torch.randn(2, 5, max(space.transformer[0].widths))
    for layer in net.mobilevit[0].transformer:
        assert torch.equal(layer(tokens), tokens)
    x = torch.randn(2, max(space.mbconv[0].widths), 8, 8)
    net.eval()
    assert torch.allclose(net.mbconv[0][1](x), x)
    assert net.mbconv[0][0].project[1].weight.abs().sum() > 0  # no skip connection there: left as it was
    assert net(torch.randn(2, 3, 32, 32)).abs().sum() > 0


def test_separation_leaves_the_seed_target_undecided_with_one_seed():
    from task_separation import summarise

    from autovit.nas.data import open_data
    from autovit.nas.train import TrainConfig, supernet_space

    space = supernet_space(TrainConfig(space="xxs", data="mnist5k"), open_data("mnist5k"))
    archs = {"smallest": space.smallest(), "largest": space.largest()}

    def run(name, seed, top1):
        return {"subnet": name, "seed": seed, "top1": top1, "wall_s": 1.0, "cpu_s": 1.0}

    one = summarise(archs, [run("smallest", 0, 70.0), run("largest", 0, 80.0)])
    assert one["targets"]["seed std <= 1 point"] is None and one["targets"]["separation >= 5 points"]
    two = summarise(archs, [run("smallest", 0, 70.0), run("largest", 0, 80.0), run("smallest", 1, 73.0),
                            run("largest", 1, 80.0)])
    assert two["targets"]["seed std <= 1 point"] is False and two["largest_minus_smallest"] == 8.5


def test_separation_subnets_flag_takes_known_names_and_rejects_others(capsys):
    from task_separation import chosen_subnets

    assert chosen_subnets("smallest, largest") == ["smallest", "largest"]
    for bad, named in (("smallest,biggest", "unknown subnet 'biggest'"), (",", "no subnet named")):
        with pytest.raises(SystemExit) as exit_:
            chosen_subnets(bad)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and named in err and "smallest, median, largest" in err


def test_ranking_replot_draws_the_png_from_a_results_file_and_refuses_another_file(tmp_path):
    import json
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ranking.py"
    rows = [{"params": p * 1e6, "inherited_top1": inh, "standalone_top1": sum(s) / 2,
             "standalone_runs": [{"top1": s[0]}, {"top1": s[1]}]}
            for p, inh, s in ((0.3, 40.0, (80.0, 82.0)), (0.9, 55.0, (84.0, 85.0)), (1.5, 60.0, (86.0, 86.5)))]
    results, png = tmp_path / "ranking.json", tmp_path / "ranking.png"
    results.write_text(json.dumps({"subnet_results": rows}))
    done = subprocess.run([sys.executable, str(script), "--replot", "--out", str(results), "--plot", str(png)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"runs": []}))
    before = png.read_bytes()
    bad = subprocess.run([sys.executable, str(script), "--replot", "--out", str(other), "--plot", str(png)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "--out" in bad.stderr
    assert png.read_bytes() == before


@pytest.mark.parametrize("script", ["ranking.py", "search_strategies.py", "latency_vs_flops.py"])
def test_a_search_benchmark_given_a_missing_checkpoint_says_so_in_one_line(tmp_path, script):
    import subprocess

    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    done = subprocess.run([sys.executable, str(path), "--supernet", str(tmp_path / "none.ckpt"),
                           "--out", str(tmp_path / "out.json")], capture_output=True, text=True,
                          env={**os.environ, "AUTOVIT_HOME": str(tmp_path / "home")})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert not (tmp_path / "out.json").exists()


def test_ranking_summary_reports_how_far_the_seeds_agree():
    from ranking import ranking_summary

    seeds = [(80.0, 81.0), (82.0, 80.0), (84.0, 86.0), (86.0, 85.0)]
    rows = [{"params": i, "flops": i, "inherited_top1": 50.0 + i, "standalone_top1": sum(s) / 2,
             "standalone_runs": [{"top1": s[0]}, {"top1": s[1]}]} for i, s in enumerate(seeds)]
    out = ranking_summary(rows)
    assert out["seed_std_pooled"] == pytest.approx((sum((a - b) ** 2 / 2 for a, b in seeds) / 4) ** 0.5)
    # seed 0 ranks 0<1<2<3, seed 1 ranks 1<0<3<2: two discordant pairs of six
    assert out["seed_agreement_kendall_tau"] == pytest.approx((4 - 2) / 6)
    assert out["vs_standalone"]["inherited"]["kendall_tau"] == pytest.approx(1.0)
    one_seed = [{**r, "standalone_runs": r["standalone_runs"][:1]} for r in rows]
    assert "seed_agreement_kendall_tau" not in ranking_summary(one_seed)
