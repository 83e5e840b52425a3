"""Supernet checkpoints: atomic writes, and loads that fail with one line, never a traceback.

A checkpoint holds the search space (as data), the training configuration, the model and every
state needed to resume (optimizer, scheduler, AMP scaler, EMA, RNG states, epoch and step), so
`eval`, `export` and search need nothing else. It is a plain torch.save file readable with
`weights_only=True` (numpy RNG state is stored as lists for that reason).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise AutoVitError(f"checkpoint not found: {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a file that is not ours
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise AutoVitError(f"{p} is not a readable AutoViT supernet checkpoint (truncated or another "
                           f"format: {why}); use a last.ckpt/best.ckpt written by 'autovit-nas train'") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise AutoVitError(f"{p} is a torch file but not an AutoViT supernet checkpoint "
                           f"(format {ck.get('format') if isinstance(ck, dict) else type(ck).__name__!r}); "
                           "use a last.ckpt/best.ckpt written by 'autovit-nas train'")
    return ck


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
