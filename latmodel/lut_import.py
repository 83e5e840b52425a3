"""A LUT from block times measured elsewhere: the manifest `profile --export` wrote + a times CSV.

Times CSV: one row per block, naming it by `file` (as in the manifest) or `key`, with
`latency_ms` (the median, ms, finite and > 0) and optionally `std_ms` (>= 0). Unknown blocks,
blocks timed twice, blocks of the manifest without a time (all listed) and bad numbers are
refused in one line: a LUT with a hole or a guess in it would calibrate quietly wrong.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autovit.latmodel.block_export import BACKEND, MANIFEST_SCHEMA, SUFFIX, block_key
from autovit.latmodel.blocks import block_from_dict
from autovit.latmodel.checks import check_keys, did_you_mean, read_json
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.lut import Lut
from autovit.latmodel.measurements import duplicates, positive_ms, read_csv

_MANIFEST_KEYS = ("schema", "format", "hw", "mode", "blocks")
_ENTRY_KEYS = ("key", "kind", "input_shape", "file", "block")
MAX_BLOCKS = 10_000
_FIX = "export the blocks again with `autovit-lat profile --export DIR --format ...`"
TIMES_FIX = "columns: file or key, latency_ms [, std_ms], one row per block of the manifest"


def read_manifest(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(format, entries with their checked block under "spec") of a manifest.json."""
    p = Path(path)
    d = read_json(p, "block manifest", _FIX)
    if not isinstance(d, dict) or d.get("schema") != MANIFEST_SCHEMA:
        raise AutoVitError(f"{p}: not a block manifest (schema {MANIFEST_SCHEMA!r}); {_FIX}")
    check_keys(d, _MANIFEST_KEYS, str(p))
    if d.get("format") not in SUFFIX:
        raise AutoVitError(f"{p}: 'format' must be one of {', '.join(SUFFIX)}, got {d.get('format')!r:.40}")
    if d.get("mode", "isolated") != "isolated":
        raise AutoVitError(f"{p}: 'mode' must be isolated (exported blocks are timed alone), got {d.get('mode')!r:.40}")
    blocks = d.get("blocks")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= MAX_BLOCKS:
        raise AutoVitError(f"{p}: 'blocks' must be a list of 1 to {MAX_BLOCKS:,} entries; {_FIX}")
    entries = [_entry(e, f"{p}: block #{i + 1}") for i, e in enumerate(blocks)]
    for field in ("key", "file"):
        duplicates([(i + 1, e[field]) for i, e in enumerate(entries)], field, f"{p}: blocks")
    return d["format"], entries


def _entry(e: Any, where: str) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise AutoVitError(f"{where} must be an object with {', '.join(_ENTRY_KEYS)}")
    check_keys(e, _ENTRY_KEYS, where)
    missing = [k for k in _ENTRY_KEYS if k not in e]
    if missing:
        raise AutoVitError(f"{where}: missing '{missing[0]}'; {_FIX}")
    spec = block_from_dict(e["block"], f"{where} block")
    if e["key"] != block_key(spec) or e["kind"] != spec.kind:
        raise AutoVitError(f"{where}: key {str(e['key'])[:60]!r} / kind {str(e['kind'])[:20]!r} do not match its block "
                           f"({block_key(spec)}); {_FIX}")
    if e["input_shape"] != list(spec.input_shape()):
        raise AutoVitError(f"{where}: input_shape {str(e['input_shape'])[:40]} is not its block's "
                           f"{list(spec.input_shape())}; {_FIX}")
    f = e["file"]
    if not isinstance(f, str) or not f or Path(f).name != f or f.startswith(".") or "\\" in f:
        raise AutoVitError(f"{where}: file {str(f)[:60]!r} must be a plain file name inside the manifest's folder")
    return {**e, "spec": spec}


def read_times(path: str | Path, entries: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """block key -> (median ms, std ms or None), one per manifest entry."""
    p = Path(path)
    rows = read_csv(p, "times CSV", [("file", "key"), ("latency_ms",)], TIMES_FIX)
    by_name = {**{e["file"]: e["key"] for e in entries}, **{e["key"]: e["key"] for e in entries}}
    named = []
    for line, r in rows:
        where = f"{p}, line {line}"
        name = r.get("key") or r.get("file", "")
        if name not in by_name:
            raise AutoVitError(f"{where}: {'key' if r.get('key') else 'file'} '{name[:80]}' is not in the manifest"
                               f"{did_you_mean(name, by_name)}")
        named.append((line, by_name[name], positive_ms(r["latency_ms"], where), _std(r.get("std_ms", ""), where)))
    duplicates([(line, key) for line, key, _, _ in named], "block", str(p))
    times = {key: (ms, std) for _, key, ms, std in named}
    missing = [e["file"] for e in entries if e["key"] not in times]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise AutoVitError(f"{p}: {len(missing)} blocks of the manifest have no time: {', '.join(missing[:5])}{more}; "
                           "time them or drop them from the manifest")
    return times


def _std(text: str, where: str) -> float | None:
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise AutoVitError(f"{where}: std_ms {text[:40]!r} must be a finite number >= 0 (or empty)")
    return v


def import_lut(manifest: str | Path, times: str | Path, device: str) -> Lut:
    """The LUT of `device` (a profile name) holding the times of every manifest block."""
    fmt, entries = read_manifest(manifest)
    measured = read_times(times, entries)
    env = {"imported": True, "manifest": str(Path(manifest).resolve()), "times": str(Path(times).resolve()),
           "format": fmt}
    lut = Lut(device, BACKEND[fmt], env, {})
    for e in entries:
        ms, std = measured[e["key"]]
        lut.add("isolated", e["spec"], {"median_ms": ms, **({"std_ms": std} if std is not None else {})})
    return lut
