"""Hostile input to `autovit-nas train / eval / export / spaces` and to architecture files (issue 15):
no input file runs code, nothing hangs or exhausts memory (bounds are checked by refusal), nothing
already written is lost, and every bad input is one line on stderr with exit 2 for usage errors."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from autovit.cli import lat, nas
from autovit.latmodel.io import FolderLock
from tests.test_cli import assert_one_line_error, run_cli

QUICK = ["--data", "mnist5k", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "16", "--eval-random", "0",
         "--val-images", "16"]


class FileWritingTeacher(nn.Module):
    """A TorchScript 'teacher' whose forward creates and overwrites the file at `path`."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        t.fill_(65)
        return torch.zeros(x.shape[0], 10) + t.float().sum() * 0  # uses t, so the compiler keeps it


@pytest.fixture
def scripted_teacher(tmp_path) -> tuple[Path, Path]:
    """(a TorchScript file that writes a marker file when run, that marker's path)."""
    import warnings

    marker = tmp_path / "written_by_teacher_code"
    path = tmp_path / "teacher_ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; it still makes the archive
        torch.jit.script(FileWritingTeacher(str(marker))).save(str(path))
    return path, marker


class _MakesFolder:
    """A pickle payload: unpickling it would create a folder (the harmless stand-in for os.system)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


@pytest.fixture
def pickle_payload(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "made_by_unpickling"
    path = tmp_path / "payload.pt"
    torch.save({"format": "autovit-supernet/1", "model": _MakesFolder(marker)}, path)
    return path, marker


def forge(ckpt: Path, folder: Path, change) -> Path:
    """A copy of `ckpt` in `folder` (created) with `change(dict)` applied to its contents."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(ck)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ck, folder / "last.ckpt")
    return folder / "last.ckpt"


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- 1. no input file runs code --------------------------------------------------------------------
def test_torchscript_teacher_runs_only_with_the_opt_in_flag(scripted_teacher, tmp_path, capsys):
    ts, marker = scripted_teacher
    out = tmp_path / "run"
    code, _, err = run_cli(nas, ["train", *QUICK, "--kd", "soft", "--teacher", str(ts), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "is TorchScript", "--trust-teacher-code")
    assert not marker.exists() and not out.exists()
    # the same file with the flag: the warning is printed and the code does run (the test can fail)
    code, _, err = run_cli(nas, ["train", *QUICK, "--kd", "soft", "--teacher", str(ts), "--trust-teacher-code",
                                 "--out", str(out), "--json"], capsys)
    assert code == 0, err
    assert "warning" in err and "--trust-teacher-code" in err
    assert marker.read_bytes() == b"AAAA"


def test_resume_never_loads_a_teacher_named_in_the_checkpoint(tiny_ckpt, scripted_teacher, tmp_path, capsys):
    ts, marker = scripted_teacher

    def distilled_from_the_file(ck):
        ck["config"].update(kd="soft", teacher=str(ts))

    forged = forge(tiny_ckpt, tmp_path / "run", distilled_from_the_file)
    before = digest(forged.parent)
    code, _, err = run_cli(nas, ["train", "--resume", str(forged), "--epochs", "2", "--out", str(forged.parent)],
                           capsys)
    assert_one_line_error(code, err, "never loads a file named inside a checkpoint", f"--teacher {ts}")
    assert code == 2 and not marker.exists() and digest(forged.parent) == before
    # named again on the command line, the TorchScript rule applies as for a fresh run
    code, _, err = run_cli(nas, ["train", "--resume", str(forged), "--epochs", "2", "--teacher", str(ts),
                                 "--out", str(forged.parent)], capsys)
    assert_one_line_error(code, err, "is TorchScript")
    assert not marker.exists() and digest(forged.parent) == before


def test_torchscript_is_never_loaded_as_a_checkpoint_or_weights(tiny_ckpt, scripted_teacher, tmp_path, capsys):
    ts, marker = scripted_teacher
    cases = [
        ["eval", "--supernet", str(ts)],
        ["export", "--supernet", str(ts), "--out", str(tmp_path / "x")],
        ["train", "--resume", str(ts), "--out", str(tmp_path / "r")],
        ["train", *QUICK, "--kd", "hard", "--teacher", "timm:resnet10t", "--teacher-ckpt", str(ts),
         "--out", str(tmp_path / "t")],
    ]
    for args in cases:
        code, _, err = run_cli(nas, args, capsys)
        assert_one_line_error(code, err, "TorchScript archive", "would run the code inside")
    assert not marker.exists()


@pytest.mark.parametrize("args", [
    ["eval", "--supernet", "{p}"],
    ["export", "--supernet", "{p}", "--out", "{tmp}/x"],
    ["search", "--supernet", "{p}", "--hw", "v100", "--latency-budget", "2ms", "--out", "{tmp}/s"],
    ["train", "--resume", "{p}", "--out", "{tmp}/r"],
    ["train", *QUICK, "--kd", "soft", "--teacher", "{p}", "--out", "{tmp}/t"],
    ["train", *QUICK, "--kd", "hard", "--teacher", "timm:resnet10t", "--teacher-ckpt", "{p}", "--out", "{tmp}/t"],
])
def test_pickle_payloads_are_refused_on_every_load_path(pickle_payload, tmp_path, capsys, args):
    path, marker = pickle_payload
    code, _, err = run_cli(nas, [a.format(p=path, tmp=tmp_path) for a in args], capsys)
    # the weights-only refusal is said whole, not cut mid-word
    assert_one_line_error(code, err, "beyond tensors and plain data, refused because unpickling them could run code")
    assert not marker.exists()


@pytest.fixture
def zip_bomb(tmp_path) -> Path:
    """A torch file whose members are deflated: 8 kB on disk, 8 MB once torch.load inflates them
    (the same file at 100 MB would ask for 100 GB)."""
    import zipfile

    plain, bomb = tmp_path / "plain.pt", tmp_path / "bomb.pt"
    torch.save({"format": "autovit-supernet/1", "model": {"w": torch.zeros(2_000_000)}}, plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return bomb


@pytest.mark.parametrize("args", [
    ["eval", "--supernet", "{p}"],
    ["train", "--resume", "{p}", "--out", "{tmp}/r"],
    ["train", *QUICK, "--kd", "soft", "--teacher", "{p}", "--out", "{tmp}/t"],
    ["train", *QUICK, "--kd", "hard", "--teacher", "timm:resnet10t", "--teacher-ckpt", "{p}", "--out", "{tmp}/t"],
])
def test_a_zip_bomb_is_refused_before_torch_inflates_it(zip_bomb, tmp_path, capsys, args):
    code, _, err = run_cli(nas, [a.format(p=zip_bomb, tmp=tmp_path) for a in args], capsys)
    assert_one_line_error(code, err, "its zip members inflate to 8 MiB", "which torch.save never writes")


def test_kd_none_with_a_teacher_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_cli(nas, ["train", *QUICK, "--teacher", "supernet-max", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--kd is none", "ignored")
    assert code == 2 and not (tmp_path / "r").exists()


# ---- 3. nothing written is lost ------------------------------------------------------------------
def test_train_over_a_finished_run_is_refused_unless_forced(tiny_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    forge(tiny_ckpt, run, lambda ck: None)
    (run / "metrics.csv").write_text("epoch\n1\n")
    before = digest(run)
    code, _, err = run_cli(nas, ["train", *QUICK, "--out", str(run)], capsys)
    assert_one_line_error(code, err, "is not empty", "--resume", "--force")
    assert digest(run) == before
    # a resume that writes into another run's folder is refused the same way
    code, _, err = run_cli(nas, ["train", "--resume", str(tiny_ckpt), "--epochs", "2", "--out", str(run)], capsys)
    assert_one_line_error(code, err, "is not empty")
    assert digest(run) == before
    code, out, err = run_cli(nas, ["train", *QUICK, "--out", str(run), "--force", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["epochs_done"] == 1 and digest(run)["last.ckpt"] != before["last.ckpt"]


def test_a_locked_run_folder_refuses_a_second_writer(tiny_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    with FolderLock(run):
        code, _, err = run_cli(nas, ["train", *QUICK, "--out", str(run)], capsys)
        assert_one_line_error(code, err, "another process", str(run))
        code, _, err = run_cli(nas, ["export", "--supernet", str(tiny_ckpt), "--arch", "min", "--no-recalibrate",
                                     "--format", "pt", "--out", str(run)], capsys)
        assert_one_line_error(code, err, "another process")
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_export_never_overwrites_without_force(tiny_ckpt, tmp_path, capsys):
    args = ["export", "--supernet", str(tiny_ckpt), "--arch", "min", "--no-recalibrate", "--format", "pt",
            "--out", str(tmp_path), "--json"]
    code, _, err = run_cli(nas, args, capsys)
    assert code == 0, err
    (tmp_path / "min.pt").write_bytes(b"an earlier export")
    code, _, err = run_cli(nas, args, capsys)
    assert_one_line_error(code, err, "already holds min.pt", "--force")
    assert (tmp_path / "min.pt").read_bytes() == b"an earlier export"
    code, _, err = run_cli(nas, [*args, "--force"], capsys)
    assert code == 0, err
    assert (tmp_path / "min.pt").read_bytes() != b"an earlier export"


def test_spaces_sample_never_overwrites_architecture_files(tmp_path, capsys):
    args = ["spaces", "--sample", "2", "--space", "xxs", "--out", str(tmp_path), "--json"]
    code, _, err = run_cli(nas, args, capsys)
    assert code == 0, err
    before = digest(tmp_path)
    code, _, err = run_cli(nas, [*args, "--seed", "1"], capsys)
    assert_one_line_error(code, err, "already holds arch_000.json", "nothing is overwritten")
    assert digest(tmp_path) == before


# ---- 4. upper bounds, checked by refusal ---------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--resolutions", "100000"], "--resolutions must be <= 1024"),
    (["--resolutions", ",".join(["32"] * 40)], "up to 16 comma-separated"),
    (["--resolutions", "9" * 5000], "comma-separated integers"),
    (["--resolutions", "32,\u00b2"], "comma-separated integers"),  # a digit to str.isdigit, not to int()
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "1e9"], "--lr must be <= 10"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--workers", "100000"], "--workers must be <= 64"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch must be >= 1"),
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    (["--clip-grad", "-1"], "--clip-grad must be > 0 (or 'none'"),
    (["--clip-grad", "nan"], "--clip-grad must be > 0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--seed", "9" * 30], "--seed must be <= 4.29497e+09"),
    (["--epochs", "1000000000"], "--epochs must be <= 100000"),
    (["--batch-size", "10000000"], "--batch-size must be <= 4096"),
    (["--kd", "soft", "--teacher", "supernet-max", "--kd-tau", "inf"], "--kd-tau must be a finite number"),
    (["--eval-random", "100000"], "--eval-random must be <= 64"),
    (["--sandwich-random", "1000"], "--sandwich-random must be <= 16"),
    (["--weight-decay", "-inf"], "--weight-decay must be a finite number"),
    (["--teacher-ckpt", "w.pth"], "--teacher-ckpt holds the weights of a --teacher timm:NAME"),
    (["--trust-teacher-code"], "--trust-teacher-code only applies to a --teacher FILE"),
    (["--warmup-epochs", "5"], "--warmup-epochs 5 is longer than the run (--epochs 1)"),
])
def test_train_flags_out_of_bounds_are_usage_errors(tmp_path, capsys, args, needle):
    code, _, err = run_cli(nas, ["train", *QUICK, "--out", str(tmp_path / "r"), *args], capsys)
    assert_one_line_error(code, err, needle)
    assert code == 2 and not (tmp_path / "r").exists()


def test_a_file_as_out_or_an_absent_cuda_device_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    code, _, err = run_cli(nas, ["train", *QUICK, "--out", str(f)], capsys)
    assert_one_line_error(code, err, "is a file")
    assert f.read_text() == "keep me"
    if not torch.cuda.is_available():
        code, _, err = run_cli(nas, ["train", *QUICK, "--device", "cuda:3", "--out", str(tmp_path / "r")], capsys)
        assert_one_line_error(code, err, "no CUDA device")


def test_spaces_sample_is_bounded(capsys):
    code, _, err = run_cli(nas, ["spaces", "--sample", "100000000", "--space", "xxs"], capsys)
    assert_one_line_error(code, err, "--sample must be <= 10000")
    assert code == 2


def test_eval_bounds_and_no_silent_defaults(tiny_ckpt, capsys):
    for args, needle in ((["--bn-batches", "0"], "--bn-batches must be >= 1"),
                         (["--bn-batches", "99999999"], "--bn-batches must be <= 10000"),
                         (["--batch-size", "0"], "--batch-size must be >= 2")):
        code, _, err = run_cli(nas, ["eval", "--supernet", str(tiny_ckpt), *args], capsys)
        assert_one_line_error(code, err, needle)
        assert code == 2


def test_export_name_cannot_leave_the_out_folder(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    for name in ("../escaped", "/tmp/abs", ".hidden", "a" * 300):
        code, _, err = run_cli(nas, ["export", "--supernet", str(tiny_ckpt), "--arch", "min", "--format", "pt",
                                     "--name", name, "--out", str(out)], capsys)
        assert_one_line_error(code, err, "--name must be a plain file stem")
        assert code == 2
    assert not (tmp_path / "escaped.pt").exists() and not out.exists()


# ---- architecture files: bounds without a space, strict JSON, known keys -------------------------
def _arch(tmp_path: Path, change=None, text: str | None = None) -> Path:
    from autovit.nas.space import load_space

    d = load_space("xxs").smallest().to_dict()
    d["space"] = ""  # no space: only the absolute bounds apply
    if change:
        change(d)
    p = tmp_path / "arch.json"
    p.write_text(text if text is not None else json.dumps(d))
    return p


def _set(path: str, value):
    def change(d):
        *keys, last = path.split(".")
        for k in keys:
            d = d[int(k)] if k.isdigit() else d[k]
        d[last] = value
    return change


@pytest.mark.parametrize("change, needle", [
    (_set("mbconv.0.depth", 10**9), "'mbconv[0].depth' is 1e+09, beyond the sane bound 64"),
    (_set("head_dim", 10**6), "'head_dim' is 1e+06, beyond the sane bound 1024"),
    (_set("resolution", 100000), "'resolution' is 100000, beyond the sane bound 1024"),
    (_set("transformer.0.layers", [{"heads": 2, "mlp_ratio": 2.0}] * 100), "number of transformer[0].layers"),
    (lambda d: d["transformer"][0].update(width=4096, layers=[{"heads": 2, "mlp_ratio": 16.0}] * 64),
     "parameters, beyond the sane bound"),
    (lambda d: d.update(resolution=1024, stem_stride=1, head_dim=1024, patch=1,
                        mbconv=[{**s, "stride": 1} for s in d["mbconv"]]), "largest activation"),
    (_set("name", "x" * 5000), "'name (characters)' is 5000"),
    (_set("mbconv.0.wdth", 16), "unknown key 'wdth' (did you mean 'width'?)"),
    (_set("stem_widht", 16), "unknown key 'stem_widht' (did you mean 'stem_width'?)"),
    (_set("transformer.0.layers.0.mlp_ratio", "2"), "must be int or float"),
    (_set("transformer", "x"), "must be list"),
    (_set("conv_kernel", 4), "'conv_kernel' is 4; kernels must be odd"),  # a torch traceback in estimate before
    (_set("stem_kernel", 2), "'stem_kernel' is 2; kernels must be odd"),
])
def test_arch_file_bounds_without_a_space(tmp_path, capsys, change, needle):
    p = _arch(tmp_path, change)
    code, _, err = run_cli(lat, ["estimate", str(p), "--hw", "v100"], capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("text, needle", [
    ('{"resolution": 224, "mlp_ratio": Infinity}', "not a number JSON allows"),
    ('{"resolution": NaN}', "not a number JSON allows"),
    ('{"resolution": 1' + "0" * 5000 + "}", "an integer of 5001 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),
    ('{"resolution": 1e999}', "beyond the range of a number"),
    ("\xff\xfe not utf-8", "not UTF-8"),
])
def test_arch_file_strict_json(tmp_path, capsys, text, needle):
    p = tmp_path / "arch.json"
    p.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    for cli, args in ((lat, ["estimate", str(p), "--hw", "v100"]),
                      (nas, ["spaces", "--check", str(p), "--space", "xxs"])):
        code, _, err = run_cli(cli, args, capsys)
        assert_one_line_error(code, err, needle)


def test_nan_expansion_is_refused_even_from_python():
    from autovit.latmodel.errors import AutoVitError
    from autovit.nas.arch import arch_from_dict
    from autovit.nas.space import load_space

    d = json.loads(load_space("xxs").smallest().to_json())
    d["mbconv"][0]["expansion"] = float("nan")
    with pytest.raises(AutoVitError, match="must be a finite number"):
        arch_from_dict(d)


def test_arch_space_path_is_resolved_against_the_arch_file(tmp_path, capsys, monkeypatch):
    from importlib import resources

    from autovit.nas.space import load_space

    folder = tmp_path / "archs"
    folder.mkdir()
    (folder / "mine.toml").write_text((resources.files("autovit.nas") / "spaces" / "xxs.toml").read_text())
    d = load_space(str(folder / "mine.toml")).smallest().to_dict()
    d["space"] = "mine.toml"  # relative: to the arch file's folder, not to where the command runs
    (folder / "arch.json").write_text(json.dumps(d))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(lat, ["estimate", str(folder / "arch.json"), "--hw", "v100", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["latency_ms"] > 0


# ---- checkpoints: every field checked, one line naming it ---------------------------------------
def _drop(key):
    return lambda ck: ck.pop(key)


@pytest.mark.parametrize("change, needle", [
    (_drop("space"), "field 'space' is missing"),
    (lambda ck: ck["config"].update(epochs="abc"), "field 'config.epochs' must be an integer, got 'abc'"),
    (lambda ck: ck.update(epoch="abc"), "field 'epoch' must be an integer, got 'abc'"),
    (lambda ck: ck.update(history="x"), "field 'history' must be a list"),
    (lambda ck: ck.update(history=[{"epoch": "one"}]), "field 'history[0].epoch' must be a number"),
    (lambda ck: ck.update(epoch=-3), "field 'epoch' must be >= 0"),
    (lambda ck: ck.update(best="x"), "field 'best' must be a table"),
    (lambda ck: ck["rng"].update(python=[1, 2, 3]), "field 'rng.python' must be 625 integers"),
    (lambda ck: ck["rng"].update(torch="x"), "'rng.torch' (and 'rng.cuda') must hold 1-D byte tensors"),
    (lambda ck: ck.update(optimizer={"state": 1}), "field 'optimizer' must hold 'state' and 'param_groups'"),
    (lambda ck: ck.update(model={"stem": "not a tensor"}), "field 'model' must map parameter names to tensors"),
    (lambda ck: ck["space"].update(resolutions=[100000]), "'resolutions' is 100000, beyond the sane bound"),
    (lambda ck: ck["space"].update(transformer=ck["space"]["transformer"] * 5), "stages listed"),
    (lambda ck: ck["space"].update(head_dim=10**6), "'head_dim' is 1e+06"),
    (lambda ck: ck["config"].update(lr=float("nan")), "field 'config.lr' must be a finite number"),
    (lambda ck: ck["config"].update(randaug="rand-zz9"), "field 'config.randaug' must be a timm RandAugment"),
    (lambda ck: ck["config"].update(device="tpu"), "field 'config.device' must be auto, cpu"),
    (lambda ck: ck["config"].update(arch={"resolution": 1}), "field 'config.arch'"),
    (lambda ck: ck.update(config=[]), "field 'config' must be a table"),
    (lambda ck: ck.update(scaler={"scale": "x"}), "field 'scaler.scale' must be a number"),
    (lambda ck: ck.update(scaler={"scael": 1.0}), "unknown key 'scael' (did you mean 'scale'?)"),
])
def test_corrupt_checkpoint_fields_are_one_line(tiny_ckpt, tmp_path, capsys, change, needle):
    forged = forge(tiny_ckpt, tmp_path / "run", change)
    for args in (["eval", "--supernet", str(forged)],
                 ["train", "--resume", str(forged), "--epochs", "2", "--out", str(forged.parent)]):
        code, _, err = run_cli(nas, args, capsys)
        assert_one_line_error(code, err, f"checkpoint {forged}", needle, "not a checkpoint this version wrote")


def _wrong_moment_shape(ck):
    first = next(iter(ck["optimizer"]["state"].values()))
    first["exp_avg"] = torch.zeros(7, 7, 7)


def _nan_moment(ck):
    first = next(iter(ck["optimizer"]["state"].values()))
    first["exp_avg_sq"] = torch.full_like(first["exp_avg_sq"], float("nan"))


@pytest.mark.parametrize("change, needle", [
    (_wrong_moment_shape, "its optimizer state does not fit this run"),
    (_nan_moment, "holds non-finite values"),
    (lambda ck: ck["optimizer"].update(param_groups=[]), "its optimizer state does not fit this run"),
    (lambda ck: ck.update(model={"stem.conv.weight": torch.zeros(1)}), "its model weights do not fit"),
])
def test_bad_optimizer_or_weights_on_resume_are_one_line(tiny_ckpt, tmp_path, capsys, change, needle):
    forged = forge(tiny_ckpt, tmp_path / "run", change)
    before = digest(forged.parent)
    code, _, err = run_cli(nas, ["train", "--resume", str(forged), "--epochs", "2", "--out", str(forged.parent)],
                           capsys)
    assert_one_line_error(code, err, needle.replace("do not fit", "does not fit"))
    assert digest(forged.parent) == before


def test_resume_refuses_flags_it_would_ignore(tiny_ckpt, tmp_path, capsys):
    run = forge(tiny_ckpt, tmp_path / "run", lambda ck: None).parent
    before = digest(run)
    for args, needle in ((["--lr", "0.1"], "--lr differs from the run in"),
                         (["--recipe", "deit"], "--recipe differs"),
                         (["--sampling", "sandwich"], "--sampling differs")):
        code, _, err = run_cli(nas, ["train", "--resume", str(run / "last.ckpt"), "--epochs", "2", *args,
                                     "--out", str(run)], capsys)
        assert_one_line_error(code, err, needle, "a resumed run keeps its configuration")
        assert code == 2
    assert digest(run) == before


def test_eval_with_ema_weights_that_do_not_fit(tiny_ckpt, tmp_path, capsys):
    forged = forge(tiny_ckpt, tmp_path / "run", lambda ck: ck.update(ema={"stem.0.weight": torch.zeros(1)}))
    code, _, err = run_cli(nas, ["eval", "--supernet", str(forged), "--ema"], capsys)
    assert_one_line_error(code, err, "weights do not fit the saved space", "Missing key(s)")


def test_a_stale_lock_file_left_by_a_killed_writer_does_not_block(tmp_path, capsys):
    (tmp_path / ".lock").write_text("12345")  # as kill -9 leaves it: the kernel has released the flock
    code, _, err = run_cli(nas, ["spaces", "--sample", "1", "--space", "xxs", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "arch_000.json").exists()


def test_a_forged_nan_learning_rate_in_the_optimizer_is_not_used(tiny_ckpt, tmp_path, capsys):
    def poisoned(ck):
        for g in ck["optimizer"]["param_groups"]:
            g["lr"] = float("nan")
            g["betas"] = (float("nan"), 0.9)

    forged = forge(tiny_ckpt, tmp_path / "run", poisoned)
    code, out, err = run_cli(nas, ["train", "--resume", str(forged), "--epochs", "2", "--out", str(forged.parent),
                                   "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["epochs_done"] == 2


def test_a_forged_model_file_teacher_is_bounded(tmp_path, capsys):
    from autovit.nas.space import load_space

    d = load_space("xxs").smallest().to_dict()
    d["mbconv"][0]["depth"] = 10**9
    p = tmp_path / "model.pt"
    torch.save({"format": "autovit-model/1", "arch": json.dumps(d), "state_dict": {}}, p)
    code, _, err = run_cli(nas, ["train", *QUICK, "--kd", "soft", "--teacher", str(p), "--out", str(tmp_path / "r")],
                           capsys)
    assert_one_line_error(code, err, "not a model file this version wrote", "beyond the sane bound")


def test_a_small_image_folder_with_a_decompression_bomb_trains(tmp_path):
    """A training set whose BatchNorm-recalibration tail is one image (10 = 3 x 3 + 1), and a
    20,000 x 20,000 PNG of 48 kB (400 M pixels once decoded) among the validation images: the
    one-image batch is left out of recalibration (BatchNorm refuses it in training mode), the
    bomb is skipped unread."""
    from dataclasses import replace

    from PIL import Image

    from autovit.nas.train import train
    from tests.test_train import TINY, _image_tree, quiet

    root = _image_tree(tmp_path / "data", per_class=5)
    Image.new("1", (20_000, 20_000)).save(root / "val" / "cat" / "bomb.png")
    cfg = replace(TINY, data=str(root), epochs=1, batch_size=3, bn_batches=8, steps_per_epoch=None, resolutions=(32,),
                  val_images=None)
    res = train(cfg, tmp_path / "run", progress=False, log=quiet)
    assert res["history"][0]["top1_max"] is not None


def test_a_garbled_torchrun_environment_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    code, _, err = run_cli(nas, ["train", *QUICK, "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "WORLD_SIZE, RANK and LOCAL_RANK must be integers")
    assert not (tmp_path / "r").exists()


# ---- break-it pass 15: space identities with a resolution override ---------------------------------
@pytest.mark.parametrize("ident, needle", [
    ("xxs@0px", "resolution must be >= 1, got 0"),  # profile --space xxs@0px died of SIGFPE in onnxruntime
    ("xxs@2048px", "resolution must be <= 1024"),
    ("xxs@99999999px", "a resolution override is one '@'"),  # profile tried 94 blocks of ~1e17 bytes before
    ("xxs@" + "9" * 5000 + "px", "longer than any name or path"),  # int() of 5,000 digits: traceback
    ("xxs" + "@32px" * 3000, "longer than any name or path"),  # RecursionError before
    ("xxs@32px@64px", "a resolution override is one '@'"),
    ("xxs@-1px", "a resolution override is one '@'"),
    ("xxs@\u0663\u0662px", "ASCII digits"),  # Arabic-Indic 32: \d matched it
    ("@32px", "a resolution override is one '@'"),
])
def test_malformed_or_out_of_bounds_space_overrides_are_one_line(tmp_path, capsys, ident, needle):
    code, _, err = run_cli(nas, ["spaces", "--sample", "1", "--space", ident, "--out", str(tmp_path / "a")], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "a").exists()
    code, _, err = run_cli(lat, ["profile", "--hw", "local-cpu", "--space", ident, "--out", str(tmp_path / "l.json")],
                           capsys)
    assert_one_line_error(code, err, needle)


def test_sampled_overridden_archs_are_read_back_from_any_folder(tmp_path, capsys, monkeypatch):
    from importlib import resources

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my.toml").write_text((resources.files("autovit.nas") / "spaces" / "xxs.toml").read_text())
    monkeypatch.chdir(tmp_path)
    for ident, recorded in (("xxs@32px", "xxs@32px"), ("sub/my.toml@32px", f"{tmp_path / 'sub' / 'my.toml'}@32px")):
        out = tmp_path / ident.replace("/", "_")
        code, _, err = run_cli(nas, ["spaces", "--sample", "1", "--space", ident, "--out", str(out)], capsys)
        assert code == 0, err
        # it recorded the space as '<cwd>/xxs@32px' before, which nothing could load
        assert json.loads((out / "arch_000.json").read_text())["space"] == recorded
        monkeypatch.chdir(tmp_path / "sub")
        code, _, err = run_cli(lat, ["estimate", str(out / "arch_000.json"), "--hw", "v100", "--json"], capsys)
        assert code == 0, err
        monkeypatch.chdir(tmp_path)


def test_a_relative_space_file_with_an_override_is_saved_absolute(tmp_path, monkeypatch):
    from autovit.nas.train import TrainConfig, run_config

    monkeypatch.chdir(tmp_path)
    cfg = run_config(TrainConfig(space="sub/my.toml@32px", data="mnist5k"), None, None)
    assert cfg.space == f"{tmp_path.resolve() / 'sub' / 'my.toml'}@32px"
    assert run_config(TrainConfig(space="xxs@32px", data="mnist5k"), None, None).space == "xxs@32px"


def _space_file(tmp_path: Path, old: str, new: str) -> Path:
    from importlib import resources

    text = (resources.files("autovit.nas") / "spaces" / "xxs.toml").read_text()
    assert old in text
    p = tmp_path / "space.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize("old, new, needles", [
    # the supernet's fusion conv was built before any bound: a 1e9 kernel overflowed torch (traceback)
    ("fusion_kernel = 1 ", "fusion_kernel = 1000000001 ", ["'fusion_kernel' is 1e+09, beyond the sane bound 15"]),
    ("fusion_kernel = 1 ", "fusion_kernel = 17 ", ["'fusion_kernel' is 17"]),
    ("local_conv = ", "localconv = ", ["unknown key 'localconv'", "did you mean 'local_conv'"]),  # was ignored
    ("kernel = 3\nstride = 2", "kernal = 3\nstride = 2", ["space", "stem: unknown key 'kernal'"]),
    ("heads = [2, 3, 4]", "head = [2, 3, 4]", ["transformer[0]: unknown key 'head'", "did you mean 'heads'"]),
    ('local_conv = "depthwise"', 'local_conv = "Dense"', ["'local_conv' must be one of depthwise, dense"]),
    ("conv_kernel = 3 ", "conv_kernel = 4 ", ["'conv_kernel' is 4; kernels must be odd"]),  # traceback in train
    ("kernel = 3\nstride = 2", "kernel = 4\nstride = 2", ["'stem_kernel' is 4; kernels must be odd"]),
])
def test_space_file_block_internals_and_keys(tmp_path, capsys, old, new, needles):
    p = _space_file(tmp_path, old, new)
    code, _, err = run_cli(nas, ["spaces", "--check", str(p)], capsys)
    assert_one_line_error(code, err, *needles)
    code, _, err = run_cli(nas, ["train", *QUICK, "--space", str(p), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()


def test_space_given_as_a_file_must_list_the_checkpoints_choices(tiny_ckpt, tmp_path, capsys):
    from autovit.nas.checkpoint import checkpoint_space, load_checkpoint

    ck = load_checkpoint(tiny_ckpt)
    same = _space_file(tmp_path, "# AutoViT", "# a copy of the XXS space")
    assert checkpoint_space(ck, str(same)).name == "xxs@32px"
    assert checkpoint_space(ck, f"{same}@32px").name == "xxs@32px"
    edited = _space_file(tmp_path / "edited", "widths = [48, 64]", "widths = [56, 72]")
    # matched by its file name alone before: a missing or edited 'xxs.toml' passed for the XXS space
    for given in (str(edited), str(tmp_path / "nowhere" / "xxs.toml")):
        code, _, err = run_cli(nas, ["eval", "--supernet", str(tiny_ckpt), "--arch", "max", "--space", given], capsys)
        assert_one_line_error(code, err, "holds a supernet of space 'xxs@32px', not")


@pytest.mark.parametrize("source, needle", [
    ("x" * 5000, "'source' must be a name or path of at most 1024"),  # export wrote an unloadable min.pt
    ("builtin:../../s.toml", "'source' must be 'builtin:xxs|xs|s' or an absolute"),
    ("relative/s.toml@32px", "'source' must be 'builtin:xxs|xs|s' or an absolute"),
])
def test_a_forged_space_source_in_a_checkpoint_is_refused(tiny_ckpt, tmp_path, capsys, source, needle):
    ck = forge(tiny_ckpt, tmp_path / "f", lambda c: c["space"].update(source=source))
    code, _, err = run_cli(nas, ["export", "--supernet", str(ck), "--arch", "min", "--format", "pt",
                                 "--no-recalibrate", "--out", str(tmp_path / "ex")], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "ex" / "min.pt").exists()


def test_a_checkpoints_space_identity_is_derived_from_its_resolutions(tiny_ckpt, tmp_path):
    from autovit.nas.checkpoint import checkpoint_space, load_checkpoint

    ck = forge(tiny_ckpt, tmp_path / "f", lambda c: c["space"].update(source="builtin:xxs@0px"))
    space = checkpoint_space(load_checkpoint(ck))
    # 'xxs@0px' reached every sampled or exported architecture file before, which nothing could read back
    assert (space.ident, space.sample(0).space) == ("xxs@32px", "xxs@32px")
