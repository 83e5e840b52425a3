"""Supernet checkpoints: atomic writes, and loads that fail with one line, never a traceback.

A checkpoint holds the search space (as data), the training configuration, the model and every
state needed to resume (optimizer, scheduler, AMP scaler, EMA, RNG states, epoch and step), so
`eval`, `export` and search need nothing else. It is a plain torch.save file readable with
`weights_only=True` (numpy RNG state is stored as lists for that reason).
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from autovit.latmodel.checks import check_keys, integer, number
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.io import atomic_write_bytes
from autovit.nas.space import SearchSpace, same_space, space_from_saved, space_to_saved

CKPT_FORMAT = "autovit-supernet/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialize to memory first, then write-and-rename: a crash or Ctrl-C leaves the previous
    file intact."""
    buf = io.BytesIO()
    torch.save({"format": CKPT_FORMAT, **state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def _zip_members(path: str | Path) -> list | None:
    """The zip members of `path` (ZipInfo: names, sizes), or None when it is not a zip archive."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            return z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def is_torchscript(path: str | Path) -> bool:
    """Whether `path` is a TorchScript archive, read from its zip member names only: loading
    TorchScript runs the code inside it."""
    names = [i.filename.split("/", 1)[-1] for i in _zip_members(path) or []]
    return any(n == "constants.pkl" or n.startswith("code/") for n in names)


_UNSAFE = "it holds Python objects"


def load_reason(e: BaseException) -> str:
    """Why torch.load failed, in a short clause: the weights-only refusal named as such, any
    other message cut at its first sentence or a word boundary, never mid-word."""
    text = str(e)
    if "Weights only load failed" in text:
        detail = next((line for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        found = re.search(r"GLOBAL ([\w.]+)", detail)
        what = f" ({found.group(1)})" if found else ""
        return f"{_UNSAFE}{what} beyond tensors and plain data, refused because unpickling them could run code"
    return shorten(text.strip().splitlines()[0] if text.strip() else type(e).__name__)


def shorten(text: str, limit: int = 120) -> str:
    """`text` up to its first sentence end, or cut at a word boundary within `limit` characters."""
    text = " ".join(text.split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."


def load_torch_file(path: str | Path, what: str, fix: str, hint: str = "") -> Any:
    """torch.load with weights_only=True, refusing TorchScript before torch sees it; every
    failure is one AutoVitError naming `path`, `what` it should be and the `fix`."""
    import warnings

    p = Path(path)
    if not p.is_file():
        raise AutoVitError(f"{what} not found: {p}" if not p.exists() else f"{what} {p} is not a file")
    if is_torchscript(p):
        raise AutoVitError(f"{p} is a TorchScript archive, not a {what} (loading it would run the code inside); {fix}")
    # torch.save stores its members uncompressed, but torch.load inflates compressed ones: a
    # 100 MB zip bomb would ask for 100 GB
    expanded, size = sum(i.file_size for i in _zip_members(p) or []), p.stat().st_size
    if expanded > 2 * size + 2**20:
        raise AutoVitError(f"{p}: its zip members inflate to {expanded / 2**20:,.0f} MiB from {size / 2**20:,.1f} MiB, "
                           f"which torch.save never writes; not a {what}; {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a file that is not ours
        reason = load_reason(e)
        hint = "" if reason.startswith(_UNSAFE) else hint  # the file may be whole: it is refused, not broken
        raise AutoVitError(f"{p} is not a readable {what} ({hint}{reason}); {fix}") from None


_CKPT_FIX = "use a last.ckpt/best.ckpt written by 'autovit-nas train'"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A supernet checkpoint, every field it holds checked (check_checkpoint)."""
    p = Path(path)
    ck = load_torch_file(p, "AutoViT supernet checkpoint", _CKPT_FIX, hint="truncated or another format: ")
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        shown = repr(ck.get("format"))[:40] if isinstance(ck, dict) else type(ck).__name__
        raise AutoVitError(f"{p} is a torch file but not an AutoViT supernet checkpoint (format {shown}); {_CKPT_FIX}")
    return check_checkpoint(ck, p)


def check_checkpoint(ck: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Check the type (and range) of every field a checkpoint's readers use, so that a corrupt or
    forged file is one line naming the field, never a traceback later on."""
    from autovit.nas.train import TrainConfig

    try:
        space_from_saved(_need(ck, "space", dict))
        TrainConfig.from_saved(_need(ck, "config", dict))
        for key in ("model", "ema"):
            _tensors(ck.get(key) if key == "ema" else _need(ck, key, dict), key, optional=key == "ema")
        _need(ck, "optimizer", dict)
        opt = ck["optimizer"]
        if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
            raise AutoVitError("field 'optimizer' must hold 'state' and 'param_groups'")
        _need(ck, "scheduler", dict)  # rebuilt from the configuration on resume, never read
        _scaler(_need(ck, "scaler", dict))
        check_rng_state(_need(ck, "rng", dict))
        epoch = integer(_need(ck, "epoch", int), "field 'epoch'", 0, 100_000)
        integer(_need(ck, "step", int), "field 'step'", 0, 10**12)
        _history(_need(ck, "history", list), epoch)
        best = ck.get("best")
        if best is not None:
            if not isinstance(best, dict):
                raise AutoVitError(f"field 'best' must be a table, got {type(best).__name__}")
            integer(best.get("epoch"), "field 'best.epoch'", 1, epoch)
            number(best.get("top1_mean"), "field 'best.top1_mean'", 0, 100)
    except AutoVitError as e:
        raise AutoVitError(f"checkpoint {path}: {e}; it is not a checkpoint this version wrote ({_CKPT_FIX})") from None
    return ck


def _need(ck: dict[str, Any], key: str, kind: type) -> Any:
    if key not in ck:
        raise AutoVitError(f"field '{key}' is missing")
    if isinstance(ck[key], bool) or not isinstance(ck[key], kind):
        kind_name = {dict: "a table", list: "a list", int: "an integer"}[kind]
        raise AutoVitError(f"field '{key}' must be {kind_name}, got {repr(ck[key])[:40]}")
    return ck[key]


def _tensors(d: Any, key: str, optional: bool = False) -> None:
    if d is None and optional:
        return
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()):
        raise AutoVitError(f"field '{key}' must map parameter names to tensors")


def _scaler(d: dict[str, Any]) -> None:
    """torch.amp.GradScaler's state: empty when it was disabled (CPU), else five positive numbers."""
    check_keys(d, ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"), "field 'scaler'")
    for k, v in d.items():
        number(v, f"field 'scaler.{k}'", 0, lo_open=k != "_growth_tracker")


def _history(rows: list, epoch: int) -> None:
    """One row per finished epoch, each a table of numbers (None where not evaluated)."""
    if len(rows) != epoch:
        raise AutoVitError(f"field 'history' has {len(rows)} rows for {epoch} finished epochs")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise AutoVitError(f"field 'history[{i}]' must be a table, got {repr(row)[:40]}")
        for k, v in row.items():
            if not isinstance(k, str) or len(k) > 100:
                raise AutoVitError(f"field 'history[{i}]' has a key that is not a short name: {repr(k)[:40]}")
            if v is not None:
                number(v, f"field 'history[{i}].{k}'")


def checkpoint_space(ck: dict[str, Any], expected: str | None = None, path: str | Path = "") -> SearchSpace:
    """The space a checkpoint was trained on; `expected` (a space name the user gave) must match."""
    space = space_from_saved(ck["space"])
    if expected is not None and not same_space(expected, space):
        raise AutoVitError(f"{path or 'checkpoint'} holds a supernet of space '{space.name}', not '{expected}'; "
                           f"drop --space or pass --space {space.name}")
    return space


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": list(py_state), "python_version": py_version, "python_gauss": py_gauss,
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rng_state(state: dict[str, Any]) -> None:
    """The shape rng_state() writes: Mersenne Twister words for Python and numpy, byte tensors
    for torch (a forged state would otherwise fail deep inside random.setstate)."""
    def words(v: Any, n: int, where: str) -> None:
        if not isinstance(v, (list, tuple)) or len(v) != n or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32 for x in v):
            raise AutoVitError(f"field 'rng.{where}' must be {n} integers in [0, 2^32)")

    words(state.get("python"), 625, "python")
    integer(state.get("python_version"), "field 'rng.python_version'", 3, 3)
    if state.get("python_gauss") is not None:
        number(state["python_gauss"], "field 'rng.python_gauss'")
    n = state.get("numpy")
    if not isinstance(n, dict) or n.get("kind") != "MT19937":
        raise AutoVitError("field 'rng.numpy' must be a table of kind MT19937")
    words(n.get("keys"), 624, "numpy.keys")
    integer(n.get("pos"), "field 'rng.numpy.pos'", 0, 624)
    integer(n.get("has_gauss"), "field 'rng.numpy.has_gauss'", 0, 1)
    number(n.get("gauss"), "field 'rng.numpy.gauss'")
    for t in [state.get("torch"), *(state.get("cuda") or [])]:
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
            raise AutoVitError("field 'rng.torch' (and 'rng.cuda') must hold 1-D byte tensors")


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temporaries(folder: Path) -> None:
    """Temporaries left by a killed writer (never a finished checkpoint)."""
    for p in Path(folder).glob(".*.ckpt.*.tmp"):
        try:
            os.unlink(p)
        except OSError:
            pass
