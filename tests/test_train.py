"""Supernet training: resume, sampling modes, distillation, divergence, data, teachers, DDP."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autovit.latmodel.errors import AutoVitError
from autovit.nas.checkpoint import load_checkpoint
from autovit.nas.data import CANVAS, N_TRAIN, mnist5k_split, open_data
from autovit.nas.space import load_space
from autovit.nas.supernet import Supernet
from autovit.nas.train import TrainConfig, TrainingDiverged, train

# A run small enough for a unit test: 32 px digits, 3 steps of 16 images, 64 validation images.
TINY = TrainConfig(space="xxs", data="mnist5k", epochs=2, batch_size=16, steps_per_epoch=3, eval_random=0,
                   bn_batches=1, val_images=64, seed=0)


def quiet(_msg: str) -> None:
    pass


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    full = train(TINY, tmp_path / "full", progress=False, log=quiet)
    first = train(TINY, tmp_path / "split", progress=False, log=quiet, stop_after_epochs=1)
    assert first["epochs_done"] == 1
    rest = train(TINY, tmp_path / "split", resume=tmp_path / "split" / "last.ckpt", progress=False, log=quiet)
    assert len(full["step_losses"]) == 6
    np.testing.assert_allclose(first["step_losses"] + rest["step_losses"], full["step_losses"], rtol=1e-6)
    a = load_checkpoint(tmp_path / "full" / "last.ckpt")
    b = load_checkpoint(tmp_path / "split" / "last.ckpt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    header = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert header[0].startswith("epoch,step,train_loss") and len(header) == 3


def test_checkpoint_records_space_and_config(tmp_path):
    train(replace(TINY, epochs=1), tmp_path, progress=False, log=quiet)
    ck = load_checkpoint(tmp_path / "best.ckpt")
    assert ck["space"]["name"] == "xxs@32px" and ck["space"]["num_classes"] == 10
    assert ck["space"]["resolutions"] == [32] or tuple(ck["space"]["resolutions"]) == (32,)
    assert ck["config"]["data"] == "mnist5k" and ck["config"]["lr"] == 2e-3  # the recipe's value, resolved
    assert set(ck) >= {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "step"}


@pytest.mark.parametrize("kw", [
    dict(sampling="sandwich", sandwich_random=1, resolutions=(24, 32)),  # elastic input resolution too
    dict(kd="hard", teacher="supernet-max"),
    dict(kd="soft", teacher="supernet-max", ema=True, recipe="deit", batch_size=16),
])
def test_sampling_and_distillation_modes_train(tmp_path, kw):
    res = train(replace(TINY, epochs=1, steps_per_epoch=2, **kw), tmp_path, progress=False, log=quiet)
    assert len(res["step_losses"]) == 2 and all(np.isfinite(res["step_losses"]))


def test_stand_alone_arch_trains_only_that_subnet(tmp_path):
    import json

    sp = tiny_space()
    arch = sp.smallest()

    res = train(replace(TINY, epochs=1, steps_per_epoch=2, arch=json.loads(arch.to_json())), tmp_path,
                progress=False, log=quiet)
    assert "top1_arch" in res["history"][0] and "top1_max" not in res["history"][0]
    ck = load_checkpoint(tmp_path / "last.ckpt")
    fresh = _initial_weights(sp, TINY.seed)
    # The fourth transformer stage is not in the smallest subnet (3 stages): it never gets a gradient.
    untouched = [k for k in ck["model"] if k.startswith("mobilevit.3.") and k.endswith("weight")]
    assert untouched and all(torch.equal(ck["model"][k], fresh[k]) for k in untouched)


def tiny_space():
    return replace(load_space("xxs"), num_classes=10, resolutions=(32,))


def _initial_weights(space, seed):
    torch.manual_seed(seed)
    return Supernet(space).state_dict()


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    train(replace(TINY, epochs=3), tmp_path, progress=False, log=quiet, stop_after_epochs=1)
    digest = hashlib.sha256((tmp_path / "last.ckpt").read_bytes()).hexdigest()
    real = Supernet.forward
    monkeypatch.setattr(Supernet, "forward", lambda self, x: real(self, x) * float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged.*lower --lr"):
        train(replace(TINY, epochs=3), tmp_path, resume=tmp_path / "last.ckpt", progress=False, log=quiet)
    assert hashlib.sha256((tmp_path / "last.ckpt").read_bytes()).hexdigest() == digest


def test_cuda_device_without_cuda_is_a_clear_error(monkeypatch):
    from autovit.nas.train import DistContext

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AutoVitError, match="no CUDA device"):
        DistContext.setup("cuda")


def test_resume_refuses_another_space(tmp_path):
    train(replace(TINY, epochs=2), tmp_path, progress=False, log=quiet, stop_after_epochs=1)
    with pytest.raises(AutoVitError, match="space 'xxs@32px', not 's'"):
        train(replace(TINY, space="s"), tmp_path, resume=tmp_path / "last.ckpt", progress=False, log=quiet)


# ---- data ----------------------------------------------------------------------------------------
def test_mnist5k_split_is_fixed_and_disjoint():
    a, b = mnist5k_split(), mnist5k_split()
    assert len(a["train"][1]) == N_TRAIN and len(a["val"][1]) == 5000 - N_TRAIN
    assert np.array_equal(a["val"][0], b["val"][0])
    assert set(np.unique(a["train"][1])) == set(range(10))


def test_clutter_is_deterministic_and_rerendered_each_epoch():
    ds = open_data("mnist5k-clutter")
    img0 = np.asarray(ds.train.image(5))
    assert img0.shape == (CANVAS, CANVAS, 3)
    assert np.array_equal(img0, np.asarray(open_data("mnist5k-clutter").train.image(5)))
    ds.train.set_epoch(1)
    assert not np.array_equal(img0, np.asarray(ds.train.image(5)))
    ds.val.set_epoch(3)  # validation canvases do not depend on the epoch counter of another set
    assert np.array_equal(np.asarray(ds.val.image(0)), np.asarray(open_data("mnist5k-clutter").val.image(0)))


def test_pairs_labels_canvases_and_validation_size():
    from autovit.nas.data import PAIR_CANVAS, PAIR_CLASS, PAIR_VAL_PER_DIGIT, DigitPairs

    ds = open_data("mnist5k-pairs")
    assert ds.num_classes == 55 == len(ds.train.classes) and ds.native_size == PAIR_CANVAS
    assert len(ds.train) == N_TRAIN and len(ds.val) == (5000 - N_TRAIN) * PAIR_VAL_PER_DIGIT
    # every unordered pair has its own class, whichever digit is on the left
    assert sorted(PAIR_CLASS[a][b] for a in range(10) for b in range(a, 10)) == list(range(55))
    img, label = ds.train.render(7)
    assert img.shape == (PAIR_CANVAS, PAIR_CANVAS) and 0 <= label < 55
    assert str(ds.train.labels[7]) in ds.train.classes[label]  # the class names both digits
    # the left digit of canvas i is digit i mod N; the validation set repeats each with new partners
    n_val = 5000 - N_TRAIN
    firsts = {ds.val.render(j)[1] for j in (3, 3 + n_val, 3 + 2 * n_val)}
    digit = str(ds.val.labels[3])
    assert all(digit in ds.val.classes[c] for c in firsts)
    # deterministic, re-rendered every epoch for training, fixed for validation
    again = open_data("mnist5k-pairs")
    assert np.array_equal(img, again.train.render(7)[0])
    ds.train.set_epoch(1)
    assert not np.array_equal(img, ds.train.render(7)[0])
    ds.val.set_epoch(2)
    assert np.array_equal(ds.val.render(5)[0], again.val.render(5)[0])
    assert isinstance(ds.train, DigitPairs)


def _image_tree(root: Path, classes=("cat", "dog"), per_class=4, broken: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    for i in range(broken):
        (root / "train" / classes[0] / f"broken{i}.png").write_bytes(b"not a png at all")
    return root


def test_image_folder_skips_and_counts_undecodable_images(tmp_path):
    root = _image_tree(tmp_path / "data", broken=2)
    cfg = replace(TINY, data=str(root), epochs=1, batch_size=10, steps_per_epoch=None, resolutions=(32,))
    res = train(cfg, tmp_path / "run", progress=False, log=quiet)
    row = res["history"][0]
    assert row["skipped_images"] == 2 or row["skipped_images"] == 1  # one batch of 10 from 10 files (drop_last)
    assert res["step_losses"]


@pytest.mark.parametrize("layout, needle", [
    ("missing", "no such folder"),
    ("no_val", "missing val/"),
    ("mismatch", "different class folders"),
])
def test_bad_data_folders(tmp_path, layout, needle):
    root = tmp_path / "d"
    if layout != "missing":
        _image_tree(root)
        if layout == "no_val":
            import shutil

            shutil.rmtree(root / "val")
        else:
            (root / "val" / "emu").mkdir()
            Image.new("RGB", (8, 8)).save(root / "val" / "emu" / "x.png")
    with pytest.raises(AutoVitError, match=needle):
        open_data(str(root))


# ---- teachers ------------------------------------------------------------------------------------
def test_timm_teacher_needs_a_local_checkpoint():
    from autovit.nas.teacher import load_teacher

    with pytest.raises(AutoVitError, match="needs --teacher-ckpt"):
        load_teacher("timm:resnet18", None, 10)


def test_timm_teacher_checkpoint_must_match(tmp_path):
    import timm

    from autovit.nas.teacher import load_teacher

    good = tmp_path / "good.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), good)
    assert load_teacher("timm:resnet10t", str(good), 10) is not None
    with pytest.raises(AutoVitError, match="does not match timm:resnet18"):
        load_teacher("timm:resnet18", str(good), 10)
    with pytest.raises(AutoVitError, match="shape mismatches"):
        load_teacher("timm:resnet10t", str(good), 7)


# ---- distributed ---------------------------------------------------------------------------------
DDP_SCRIPT = """
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

import tests.test_train as t
from autovit.nas.train import train

out = Path(sys.argv[1])
res = train(replace(t.TINY, epochs=1, steps_per_epoch=3), out / "run", progress=False, log=lambda m: None)
torch.save(res["final_state"], out / f"rank{dist.get_rank()}.pt")  # what each rank holds after training
dist.destroy_process_group()
"""


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ck["step"] == 3 and not list((tmp_path / "run").glob("*.tmp"))
    assert any(not torch.equal(a[k], _initial_weights_for_tiny()[k]) for k in a)


def _initial_weights_for_tiny():
    return _initial_weights(tiny_space(), TINY.seed)
