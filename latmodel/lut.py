"""Lookup tables of measured block latencies: the file format, loading and saving.

A LUT is JSON: schema version, device (the hardware profile it belongs to), backend, the
environment it was measured in, the timing policy, and entries keyed by "mode|block key".
It is rewritten atomically after every new entry, so an interrupted `profile` leaves a valid
file that the next run resumes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.io import atomic_write_text
from autovit.latmodel.modules import BlockSpec

LUT_SCHEMA = "autovit-lut/1"
MODES = ("isolated", "ablation")


@dataclass
class Lut:
    device: str
    backend: str
    environment: dict[str, Any]
    policy: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _now())
    # The drift monitor's reference model and speed (measure.DriftMonitor): {"model", "ref_ms"}.
    reference: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def entry_key(mode: str, block: BlockSpec) -> str:
        return f"{mode}|{block.key}"

    def has(self, mode: str, block: BlockSpec) -> bool:
        return self.entry_key(mode, block) in self.entries

    def add(self, mode: str, block: BlockSpec, measurement: dict[str, Any]) -> None:
        self.entries[self.entry_key(mode, block)] = {"mode": mode, "block": block.to_dict(), **measurement}

    def median_ms(self, mode: str, block: BlockSpec) -> float | None:
        e = self.entries.get(self.entry_key(mode, block))
        return e["median_ms"] if e else None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": LUT_SCHEMA, "device": self.device, "backend": self.backend, "created": self.created,
                "updated": _now(), "environment": self.environment, "policy": self.policy,
                "reference": self.reference, "entries": self.entries}

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_lut(path: str | Path, device: str | None = None) -> Lut:
    """Read and check a LUT; `device` (a profile name) must match the one it was measured on."""
    p = Path(path)
    if not p.is_file():
        raise AutoVitError(f"lookup table not found: {p}")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AutoVitError(f"{p}: not a readable LUT (corrupted or truncated JSON); re-run `autovit-lat profile`") from None
    if not isinstance(d, dict) or "schema" not in d:
        raise AutoVitError(f"{p}: not an AutoViT lookup table (no 'schema' field)")
    if d["schema"] != LUT_SCHEMA:
        raise AutoVitError(f"{p}: LUT schema {d['schema']!r}, this version reads {LUT_SCHEMA!r}; re-run `autovit-lat profile`")
    for k in ("device", "backend", "entries"):
        if k not in d:
            raise AutoVitError(f"{p}: LUT is missing field '{k}'")
    if device is not None and not same_device(d["device"], device):
        raise AutoVitError(f"{p}: LUT was measured on '{d['device']}', not '{device}'; profile this device or pass its LUT")
    if not isinstance(d["entries"], dict):
        raise AutoVitError(f"{p}: LUT field 'entries' must be an object")
    for key, e in d["entries"].items():
        v = e.get("median_ms") if isinstance(e, dict) else None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise AutoVitError(f"{p}: entry '{key}' has median_ms {v!r}; latencies must be finite and > 0")
        try:
            BlockSpec.from_dict(e["block"])
        except (KeyError, TypeError, AutoVitError):
            raise AutoVitError(f"{p}: entry '{key}' has no valid block description") from None
    ref = d.get("reference") or {}
    if ref and not (isinstance(ref.get("ref_ms"), (int, float)) and math.isfinite(ref["ref_ms"]) and ref["ref_ms"] > 0):
        raise AutoVitError(f"{p}: field 'reference.ref_ms' must be a positive number; re-run `autovit-lat profile`")
    return Lut(d["device"], d["backend"], d.get("environment", {}), d.get("policy", {}), d["entries"],
               d.get("created", _now()), ref)


def same_device(a: str, b: str) -> bool:
    """'local-cpu@calibrated', 'local-cpu' and a path to local-cpu.toml are the same device."""
    return Path(a).stem.split("@")[0] == Path(b).stem.split("@")[0]
