"""Lookup tables of measured block latencies: the file format, loading and saving.

A LUT is JSON: schema version, device (the hardware profile it belongs to), backend, the
environment it was measured in, the timing policy, entries keyed by "mode|block key", and
whole networks timed in the same run (`networks`, keyed by the source that names them, e.g.
"timm:resnet18"): blocks alone cannot tell what a network pays that its blocks timed one by
one do not, and calibrate fits both. It is rewritten atomically after every new entry, so an
interrupted `profile` leaves a valid file that the next run resumes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autovit.latmodel.checks import check_keys, dumps, number, read_json
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.io import atomic_write_text
from autovit.latmodel.measure import BACKENDS
from autovit.latmodel.blocks import Block, block_from_dict

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
    # Whole networks timed beside the blocks: source -> a measurement (the fields of an entry
    # without mode and block).
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def entry_key(mode: str, block: Block) -> str:
        return f"{mode}|{block.key}"

    def add(self, mode: str, block: Block, measurement: dict[str, Any]) -> None:
        self.entries[self.entry_key(mode, block)] = {"mode": mode, "block": block.to_dict(), **measurement}

    def median_ms(self, mode: str, block: Block) -> float | None:
        e = self.entries.get(self.entry_key(mode, block))
        return e["median_ms"] if e else None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": LUT_SCHEMA, "device": self.device, "backend": self.backend, "created": self.created,
                "updated": _now(), "environment": self.environment, "policy": self.policy,
                "reference": self.reference, "entries": self.entries,
                **({"networks": self.networks} if self.networks else {})}

    def save(self, path: str | Path) -> None:
        # NaN-free: a burst too short for a confidence interval has ci_pct inf, written as null.
        atomic_write_text(Path(path), dumps(self.to_dict(), indent=1) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Keys of a LUT file and of one entry (a Measurement's statistics, the rounds behind it).
_LUT_KEYS = ("schema", "device", "backend", "created", "updated", "environment", "policy", "reference", "entries",
             "networks")
_ENTRY_KEYS = ("mode", "block", "median_ms", "iqr_ms", "q1_ms", "q3_ms", "repeats", "outliers", "ci_pct", "converged",
               "round_medians", "with_round_ms", "without_round_ms", "round_reference_ms", "below_noise",
               "with_ms", "without_ms", "std_ms", "op_ms", "op_rounds")
_NETWORK_KEYS = ("median_ms", "iqr_ms", "q1_ms", "q3_ms", "repeats", "outliers", "ci_pct", "converged",
                 "round_medians", "round_reference_ms", "std_ms")
# Longest latency a LUT may hold (about 3 hours) and most entries and rounds (every block of
# every space is a few hundred entries).
MAX_MS = 1e7
MAX_ENTRIES = 100_000
MAX_ROUNDS = 10_000
MAX_NETWORKS = 1_000
# A network's key names a registered source (`kind:name`), never a file: calibrate builds what a
# LUT names, and a LUT may come from elsewhere.
NETWORK_KEY = re.compile(r"[a-z][a-z0-9-]{0,31}:[A-Za-z0-9_.-]{1,160}")
_FIX = "re-run `autovit-lat profile`"


def _probe_table(env: dict, field: str, keys: tuple[str, ...], unit: str, lo: float, p) -> None:
    """A LUT environment's probe table `field`, if present: exactly `keys`, each a number in `unit`
    from `lo` to 1e6."""
    table = env.get(field)
    if table is None:
        return
    if not isinstance(table, dict) or sorted(table) != sorted(keys):
        shape = ", ".join(f'"{k}": {unit}' for k in keys)
        raise AutoVitError(f"{p}: LUT field 'environment.{field}' must be {{{shape}}}, got {table!r:.60}; {_FIX}")
    for k, v in table.items():
        number(v, f"{p}: LUT field 'environment.{field}.{k}' ({unit})", lo, 1e6)


def load_lut(path: str | Path, device: str | None = None) -> Lut:
    """Read and check a LUT; `device` (a profile name) must match the one it was measured on."""
    p = Path(path)
    d = read_json(p, "lookup table", _FIX)
    if not isinstance(d, dict) or "schema" not in d:
        raise AutoVitError(f"{p}: not an AutoViT lookup table (no 'schema' field)")
    if d["schema"] != LUT_SCHEMA:
        raise AutoVitError(f"{p}: LUT schema {d['schema']!r:.40}, this version reads {LUT_SCHEMA!r}; {_FIX}")
    check_keys(d, _LUT_KEYS, str(p))
    for k in ("device", "backend", "entries"):
        if k not in d:
            raise AutoVitError(f"{p}: LUT is missing field '{k}'")
    if not isinstance(d["device"], str) or not 0 < len(d["device"]) <= 4096:
        raise AutoVitError(f"{p}: LUT field 'device' must be a profile name, got {d['device']!r:.40}")
    if d["backend"] not in BACKENDS:
        raise AutoVitError(f"{p}: LUT field 'backend' must be one of {', '.join(BACKENDS)}, got {d['backend']!r:.40}")
    if device is not None and not same_device(d["device"], device):
        raise AutoVitError(f"{p}: LUT was measured on '{d['device']}', not '{device}'; profile this device or pass its LUT")
    for k in ("environment", "policy", "reference", "entries", "networks"):
        if not isinstance(d.get(k, {}), dict):
            raise AutoVitError(f"{p}: LUT field '{k}' must be an object, got {d[k]!r:.40}")
    threads = (d.get("environment") or {}).get("threads")
    # calibrate models this many cores (hardware.threads_override): a count, never a flag or text.
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096):
        raise AutoVitError(f"{p}: LUT field 'environment.threads' must be an integer 1..4096 (the threads it was "
                           f"measured with), got {threads!r:.40}; {_FIX}")
    probe = (d.get("environment") or {}).get("sgemm_gflops")
    if probe is not None:  # calibrate raises the profile's clock to it (hardware.clock_override)
        number(probe, f"{p}: LUT field 'environment.sgemm_gflops' (GFLOP/s)", 1e-3, 1e9)
    env = d.get("environment") or {}
    # calibrate sets the profile's cache rates to the streaming probes (hardware.stream_override)
    # and its cross-core rate from the handoff probe's chains (runner.handoff_gbps)
    _probe_table(env, "stream_gbps", ("private", "shared"), "GB/s", 0.1, p)
    _probe_table(env, "handoff_ms", ("alternating", "sigmoid", "relu"), "ms", 1e-6, p)
    for k in ("created", "updated"):
        if not isinstance(d.get(k, ""), str):
            raise AutoVitError(f"{p}: LUT field '{k}' must be a date string, got {d[k]!r:.40}")
    if len(d["entries"]) > MAX_ENTRIES:
        raise AutoVitError(f"{p}: {len(d['entries']):,} entries, more than any LUT ({MAX_ENTRIES:,})")
    for key, e in d["entries"].items():
        _check_entry(key, e, f"{p}: entry '{key:.80}'")
    networks = d.get("networks") or {}
    if len(networks) > MAX_NETWORKS:
        raise AutoVitError(f"{p}: {len(networks):,} networks, more than any LUT ({MAX_NETWORKS:,})")
    for key, e in networks.items():
        if not NETWORK_KEY.fullmatch(key):
            raise AutoVitError(f"{p}: network {key!r:.60} is not a model name such as 'timm:resnet18' "
                               f"(a LUT names networks by source, never by file); {_FIX}")
        _check_network(e, f"{p}: network '{key}'")
    ref = d.get("reference") or {}
    check_keys(ref, ("model", "ref_ms"), f"{p}: LUT field 'reference'")
    if ref:
        _ms(ref.get("ref_ms"), f"{p}: field 'reference.ref_ms'")
        if not isinstance(ref.get("model", ""), str):
            raise AutoVitError(f"{p}: field 'reference.model' must be a model name, got {ref['model']!r:.40}")
    return Lut(d["device"], d["backend"], d.get("environment", {}), d.get("policy", {}), d["entries"],
               d.get("created", _now()), ref, networks)


def _ms(v: Any, what: str, positive: bool = True) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_MS
    if not ok or (positive and v <= 0):
        raise AutoVitError(f"{what} is {v!r:.40}; latencies must be finite and {'> 0' if positive else 'real'} "
                           f"(at most {MAX_MS:g} ms); {_FIX}")


def _check_op_ms(op_ms: Any, w: str) -> None:
    """Kernel ms per op class (ort_profile.class_times): known classes, finite ms >= 0."""
    from autovit.latmodel.costs import CATEGORIES

    if not isinstance(op_ms, dict):
        raise AutoVitError(f"{w} op_ms must be an object of op class -> ms, got {op_ms!r:.40}; {_FIX}")
    for c, v in op_ms.items():
        if c not in CATEGORIES:
            raise AutoVitError(f"{w} op_ms: unknown op class {c!r:.40} (known: {', '.join(CATEGORIES)}); {_FIX}")
        _ms(v, f"{w} op_ms.{c}", positive=False)
        if v < 0:
            raise AutoVitError(f"{w} op_ms.{c} is {v!r:.40}; kernel times must be >= 0; {_FIX}")


def _check_entry(key: str, e: Any, w: str) -> None:
    """One entry: known fields, a valid block whose key is the entry's, finite positive latencies."""
    if not isinstance(e, dict):
        raise AutoVitError(f"{w} must be an object, got {e!r:.40}")
    check_keys(e, _ENTRY_KEYS, w)
    if e.get("mode") not in MODES:
        raise AutoVitError(f"{w}: 'mode' must be one of {', '.join(MODES)}, got {e.get('mode')!r:.40}")
    block = block_from_dict(e.get("block"), f"{w} block")
    if key != Lut.entry_key(e["mode"], block):
        raise AutoVitError(f"{w} does not match its block (its key would be '{Lut.entry_key(e['mode'], block)}'); {_FIX}")
    _check_measurement(e, w, e["mode"])


def _check_network(e: Any, w: str) -> None:
    """A whole network's measurement: an entry's fields without mode, block or op classes."""
    if not isinstance(e, dict):
        raise AutoVitError(f"{w} must be an object, got {e!r:.40}")
    check_keys(e, _NETWORK_KEYS, w)
    _check_measurement(e, w, "isolated")


def _check_measurement(e: dict, w: str, mode: str) -> None:
    """A measurement's values: finite positive latencies, rounds that agree in number."""
    _ms(e.get("median_ms"), f"{w} median_ms")
    for k in ("with_ms", "without_ms"):
        if k in e:
            _ms(e[k], f"{w} {k}")
    if "op_ms" in e:
        _check_op_ms(e["op_ms"], w)
    if "op_rounds" in e:
        if "op_ms" not in e:
            # profile would skip such an entry for good and it would never give op-class points
            raise AutoVitError(f"{w} has op_rounds but no op_ms; {_FIX}")
        number(e["op_rounds"], f"{w} op_rounds", 1, MAX_ROUNDS, integer=True)
    lengths = set()
    for k in ("round_medians", "with_round_ms", "without_round_ms", "round_reference_ms"):
        if k not in e:
            continue
        if not isinstance(e[k], list) or not 0 < len(e[k]) <= MAX_ROUNDS:
            raise AutoVitError(f"{w} {k} must be a list of 1 to {MAX_ROUNDS} latencies")
        for v in e[k]:
            # An ablation round is a difference of two latencies: it may come out <= 0.
            _ms(v, f"{w} {k}", positive=not (k == "round_medians" and mode == "ablation"))
        if k != "round_reference_ms":
            lengths.add(len(e[k]))
    if len(lengths) > 1 or (mode == "ablation" and "round_medians" in e
                            and not {"with_round_ms", "without_round_ms"} <= set(e)):
        raise AutoVitError(f"{w}: its rounds disagree in number; {_FIX}")
    for k in ("iqr_ms", "q1_ms", "q3_ms", "std_ms", "ci_pct", "repeats", "outliers"):
        v = e.get(k)
        if v is not None:
            number(v, f"{w} {k}", 0, MAX_MS, integer=k in ("repeats", "outliers"))
    for k in ("converged", "below_noise"):
        if not isinstance(e.get(k, False), bool):
            raise AutoVitError(f"{w} {k} must be true or false")


def same_device(a: str, b: str) -> bool:
    """'local-cpu@calibrated', 'local-cpu' and a path to local-cpu.toml are the same device."""
    return Path(a).stem.split("@")[0] == Path(b).stem.split("@")[0]
