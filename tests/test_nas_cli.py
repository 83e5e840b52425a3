"""`autovit-nas train / eval / export`: the commands, their outputs and every bad input of issue 4."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autovit.cli import lat, nas
from autovit.nas.checkpoint import load_checkpoint
from autovit.nas.train import train
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_train import TINY, quiet


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(replace(TINY, epochs=1), out, progress=False, log=quiet)
    return out / "last.ckpt"


def test_train_cli_json_summary(tmp_path, capsys):
    code, out, _ = run_cli(nas, ["train", "--space", "xxs", "--data", "mnist5k", "--epochs", "1",
                                 "--steps-per-epoch", "2", "--batch-size", "16", "--eval-random", "0",
                                 "--val-images", "32", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["epochs_done"] == 1 and res["space"] == "xxs@32px"
    assert {"top1_max", "top1_min"} <= set(res["history"][0])
    assert (tmp_path / "last.ckpt").exists() and (tmp_path / "best.ckpt").exists()
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "config.json").exists()


def test_eval_json(ckpt, capsys):
    code, out, _ = run_cli(nas, ["eval", "--supernet", str(ckpt), "--arch", "min", "--bn-batches", "1",
                                 "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert 0 <= res["top1"] <= res["top5"] <= 100 and res["images"] == 1000 and res["resolution"] == 32


def test_export_every_format_and_estimate_the_onnx(ckpt, tmp_path, capsys):
    code, out, err = run_cli(nas, ["export", "--supernet", str(ckpt), "--arch", "min", "--format", "pt",
                                   "--format", "onnx", "--format", "torchscript", "--format", "coreml",
                                   "--bn-batches", "1", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    res = {r["format"]: r for r in json.loads(out)}
    assert set(res) == {"pt", "onnx", "torchscript", "coreml"}
    for f in ("pt", "onnx", "torchscript"):
        assert res[f]["max_rel_diff"] <= 1e-4
    assert res["coreml"]["outputs"] == ["logits"] and (tmp_path / "min.mlpackage").is_dir()
    from autovit.nas.export import load_pt

    model = load_pt(tmp_path / "min.pt")
    assert model.arch.num_classes == 10
    code, out, _ = run_cli(lat, ["estimate", str(tmp_path / "min.onnx"), "--hw", "iphone13", "--json"], capsys)
    assert code == 0 and json.loads(out)["latency_ms"] > 0
    # an exported model (pt, or TorchScript when its code is trusted) can teach the next supernet
    for teacher, trust in (("min.pt", []), ("min.torchscript.pt", ["--trust-teacher-code"])):
        code, out, err = run_cli(nas, ["train", "--data", "mnist5k", "--epochs", "1", "--steps-per-epoch", "1",
                                       "--batch-size", "16", "--eval-random", "0", "--val-images", "16",
                                       "--kd", "soft", "--teacher", str(tmp_path / teacher), *trust,
                                       "--out", str(tmp_path / f"kd-{teacher}"), "--json"], capsys)
        assert code == 0, err
        assert ("warning" in err) == bool(trust)


@pytest.mark.parametrize("content, needle", [
    (b"PK\x03\x04 truncated zip", "not a readable AutoViT supernet checkpoint"),
    (b"hello", "not a readable AutoViT supernet checkpoint"),
])
def test_eval_refuses_broken_checkpoints(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.ckpt"
    p.write_bytes(content)
    code, _, err = run_cli(nas, ["eval", "--supernet", str(p)], capsys)
    assert_one_line_error(code, err, needle)


def test_eval_refuses_a_truncated_real_checkpoint(ckpt, tmp_path, capsys):
    p = tmp_path / "cut.ckpt"
    p.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code, _, err = run_cli(nas, ["eval", "--supernet", str(p)], capsys)
    assert_one_line_error(code, err, "truncated")


def test_eval_refuses_a_torch_file_that_is_not_a_checkpoint(tmp_path, capsys):
    import torch

    p = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(2)}, p)
    code, _, err = run_cli(nas, ["eval", "--supernet", str(p)], capsys)
    assert_one_line_error(code, err, "not an AutoViT supernet checkpoint")


def test_eval_refuses_another_space(ckpt, capsys):
    code, _, err = run_cli(nas, ["eval", "--supernet", str(ckpt), "--space", "s"], capsys)
    assert_one_line_error(code, err, "space 'xxs@32px', not 's'")


def test_arch_outside_the_checkpoint_space(ckpt, tmp_path, capsys):
    code, _, err = run_cli(nas, ["spaces", "--sample", "1", "--space", "xs", "--out", str(tmp_path)], capsys)
    assert code == 0
    code, _, err = run_cli(nas, ["eval", "--supernet", str(ckpt), "--arch", str(tmp_path / "arch_000.json")], capsys)
    assert_one_line_error(code, err, "outside the supernet's space 'xxs@32px'")
    code, _, err = run_cli(nas, ["export", "--supernet", str(ckpt), "--arch", "autovit:xxs", "--out", str(tmp_path)],
                           capsys)
    assert_one_line_error(code, err, "outside the supernet's space")


@pytest.mark.parametrize("args, needle", [
    (["--data", "/no/such/folder"], "no such folder"),
    (["--kd", "soft"], "needs --teacher"),
    (["--kd", "hard", "--teacher", "timm:resnet18"], "needs --teacher-ckpt"),
    (["--resume", "/no/such.ckpt"], "checkpoint not found"),
    (["--kd", "soft", "--teacher", "/no/teacher.pt"], "not timm:NAME, supernet-max, or an existing model file"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--resolutions", "a,b"], "comma-separated integers"),
    (["--amp", "on", "--device", "cpu"], "--amp on needs a CUDA device"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--eval-every", "0"], "--eval-every must be >= 1"),
    (["--kd-alpha", "2", "--kd", "soft", "--teacher", "supernet-max"], "--kd-alpha must be <= 1"),
    (["--resolutions", "8"], "--resolutions must be >= 16"),
])
def test_train_bad_input(tmp_path, capsys, args, needle):
    code, _, err = run_cli(nas, ["train", "--out", str(tmp_path / "r"), *args], capsys)
    assert_one_line_error(code, err, needle)


def test_ctrl_c_keeps_the_last_checkpoint_valid(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autovit.cli.nas", "train", "--data", "mnist5k", "--epochs", "500",
         "--steps-per-epoch", "1", "--batch-size", "16", "--eval-random", "0", "--val-images", "16",
         "--out", str(out), "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (out / "last.ckpt").exists(), "no checkpoint appeared"
        time.sleep(1.0)  # land the signal mid-epoch or mid-write
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], err
    ck = load_checkpoint(out / "last.ckpt")
    assert ck["epoch"] >= 1
    assert not list(out.glob(".*.tmp"))


def test_search_writes_the_results_folder(ckpt, tmp_path, capsys):
    code, out, err = run_cli(nas, ["search", "--supernet", str(ckpt), "--hw", "iphone13", "--latency-budget", "100ms",
                                   "--population", "4", "--generations", "2", "--parents", "2", "--coarse", "200",
                                   "--val-images", "16", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["best"]["latency_ms"]["iphone13"] <= 100 and res["evaluations"] >= 4
    for name in ("search.json", "best_arch.json", "progress.csv", "pareto.png"):
        assert (tmp_path / name).exists()
    code, _, err = run_cli(nas, ["eval", "--supernet", str(ckpt), "--arch", str(tmp_path / "best_arch.json"),
                                 "--bn-batches", "1", "--json"], capsys)
    assert code == 0, err


def test_every_command_accepts_a_searched_architecture(ckpt, tmp_path, capsys):
    """A supernet trained on built-in data (32 px, 10 classes) is its own space, 'xxs@32px': the
    search's best_arch.json names it, and estimate, export, eval and spaces --check accept it."""
    code, out, err = run_cli(nas, ["search", "--supernet", str(ckpt), "--hw", "v100", "--latency-budget", "100ms",
                                   "--population", "4", "--generations", "1", "--parents", "2", "--coarse", "100",
                                   "--val-images", "16", "--out", str(tmp_path / "s"), "--json"], capsys)
    assert code == 0, err
    best = tmp_path / "s" / "best_arch.json"
    assert json.loads(best.read_text())["space"] == "xxs@32px"
    code, out, err = run_cli(lat, ["estimate", str(best), "--hw", "v100", "--json"], capsys)
    assert code == 0 and json.loads(out)["latency_ms"] > 0, err
    code, out, err = run_cli(nas, ["export", "--supernet", str(ckpt), "--arch", str(best), "--format", "onnx",
                                   "--bn-batches", "1", "--out", str(tmp_path / "x"), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(lat, ["estimate", str(tmp_path / "x" / "best_arch.onnx"), "--hw", "v100", "--json"], capsys)
    assert code == 0, err
    for space in ("xxs", "xxs@32px"):
        code, _, err = run_cli(nas, ["eval", "--supernet", str(ckpt), "--space", space, "--arch", str(best),
                                     "--bn-batches", "1", "--json"], capsys)
        assert code == 0, err
    code, out, err = run_cli(nas, ["spaces", "--check", str(best), "--space", "xxs@32px", "--json"], capsys)
    assert code == 0 and json.loads(out)["valid"], err
    # the base space still refuses it, naming the resolution
    code, _, err = run_cli(nas, ["spaces", "--check", str(best), "--space", "xxs"], capsys)
    assert_one_line_error(code, err, "resolution = 32 not in {224, 256}")


@pytest.mark.parametrize("args, needle", [
    (["--hw", "v100", "--latency-budget", "fast"], "not a positive time"),
    (["--hw", "v100", "--hw", "v100", "--latency-budget", "2ms"], "given twice"),
    (["--hw", "v100", "--latency-budget", "2ms", "--param-budget", "2M:1M"], "reversed"),
    (["--hw", "v100", "--latency-budget", "0.000001ms"], "no architecture meets the budgets"),
    (["--hw", "v100", "--latency-budget", "2ms", "--latency-oracle", "guess"], "use analytical, lut:PATH, measured"),
    (["--hw", "v100", "--latency-budget", "2ms", "--parents", "99"], "parents <= population"),
    (["--hw", "v100", "--latency-budget", "2ms", "--evaluations", "0"], "--evaluations must be >= 1"),
    (["--hw", "v100", "--latency-budget", "2ms", "--coarse", "0"], "--coarse must be >= 1"),
    (["--hw", "v100", "--latency-budget", "2ms", "--val-images", "-3"], "--val-images must be >= 1"),
    (["--hw", "v100", "--latency-budget", "2ms", "--p-depth", "1.5"], "--p-depth is a probability"),
    (["--hw", "v100", "--latency-budget", "2ms", "--p-layer", "-1"], "--p-layer is a probability"),
    (["--hw", "v100", "--latency-budget", "2ms", "--latency-oracle", "measured"], "measured times this machine"),
])
def test_search_bad_input(ckpt, tmp_path, capsys, args, needle):
    # the case's own flags come last, so they win over these defaults
    code, _, err = run_cli(nas, ["search", "--supernet", str(ckpt), "--coarse", "100", "--val-images", "16",
                                 "--out", str(tmp_path), *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "state.json").exists()


def test_search_resume_refuses_other_settings_and_reuses_results(ckpt, tmp_path, capsys):
    base = ["search", "--supernet", str(ckpt), "--hw", "iphone13", "--latency-budget", "100ms", "--population", "4",
            "--generations", "2", "--parents", "2", "--coarse", "200", "--val-images", "16"]
    code, out, err = run_cli(nas, [*base, "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    first = json.loads(out)
    code, _, err = run_cli(nas, [*base, "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "already holds a search")
    code, _, err = run_cli(nas, [*base, "--seed", "5", "--resume", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "different settings", "seed")
    code, out, err = run_cli(nas, [*base, "--resume", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    again = json.loads(out)
    assert again["best"]["arch"] == first["best"]["arch"] and again["evaluations"] == first["evaluations"]


def test_search_resume_of_a_missing_or_corrupt_state(ckpt, tmp_path, capsys):
    base = ["search", "--supernet", str(ckpt), "--hw", "iphone13", "--latency-budget", "100ms"]
    code, _, err = run_cli(nas, [*base, "--resume", str(tmp_path / "none")], capsys)
    assert_one_line_error(code, err, "no search state there")
    (tmp_path / "state.json").write_text("{ half written")
    code, _, err = run_cli(nas, [*base, "--resume", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "not valid JSON")
    assert (tmp_path / "state.json").read_text() == "{ half written"  # nothing overwritten


SEARCH = ["--hw", "iphone13", "--latency-budget", "100ms", "--population", "6", "--generations", "3", "--parents", "3",
          "--coarse", "200"]


def _candidates(folder: Path) -> list[tuple]:
    rows = json.loads((folder / "search.json").read_text())["candidates"]
    return [(json.dumps(r["arch"], sort_keys=True), r["top1"], r["generation"]) for r in rows]


def test_torchrun_ranks_split_the_search_and_match_one_process(ckpt, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["search", "--supernet", str(ckpt), *SEARCH, "--val-images", "64", "--json"]
    one = subprocess.run([sys.executable, "-m", "autovit.cli.nas", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "autovit.cli.nas", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout)["world"] == 2  # printed once, by rank 0
    assert _candidates(tmp_path / "two") == _candidates(tmp_path / "one")


def test_ctrl_c_during_search_loses_nothing_and_resume_finishes_it(ckpt, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["search", "--supernet", str(ckpt), *SEARCH, "--val-images", "1000"]
    proc = subprocess.Popen([sys.executable, "-m", "autovit.cli.nas", *args, "--out", str(out), "--json"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    state = out / "state.json"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (state.exists() and len(json.loads(state.read_text())["results"]) >= 2):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and f"--resume {out}" in lines[0], err
    saved = json.loads(state.read_text())["results"]
    assert 2 <= len(saved) < 18 and not (out / "search.json").exists()
    code, _, err = run_cli(nas, [*args, "--resume", str(out), "--json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(nas, [*args, "--out", str(tmp_path / "whole"), "--json"], capsys)
    assert code == 0, err
    assert _candidates(out) == _candidates(tmp_path / "whole")
    resumed = {a: top1 for a, top1, _ in _candidates(out)}
    assert all(resumed[key] == top1 for key, top1 in saved.items())  # what was saved is what the result holds


def test_train_resume_without_epochs_finishes_the_checkpoints_run(tmp_path, capsys):
    train(replace(TINY, epochs=2, steps_per_epoch=1), tmp_path, progress=False, log=quiet, stop_after_epochs=1)
    code, out, err = run_cli(nas, ["train", "--resume", str(tmp_path / "last.ckpt"), "--out", str(tmp_path),
                                   "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["epochs_done"] == 2


def test_search_refuses_a_truncated_checkpoint_or_another_space(ckpt, tmp_path, capsys):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    args = ["--hw", "iphone13", "--latency-budget", "100ms", "--out", str(tmp_path / "s")]
    code, _, err = run_cli(nas, ["search", "--supernet", str(cut), *args], capsys)
    assert_one_line_error(code, err, "truncated")
    code, _, err = run_cli(nas, ["search", "--supernet", str(ckpt), "--space", "s", *args], capsys)
    assert_one_line_error(code, err, "'xxs@32px'")
    assert not (tmp_path / "s" / "state.json").exists()
