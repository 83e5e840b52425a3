"""Checks every input reader shares: JSON that cannot hurt, numbers that are finite and in range,
unknown keys named with the closest known one.

Each input kind (ONNX, profile TOML, LUT, arch JSON, checkpoint, search state, CSV, flags) has
its own reader; this module holds only what they have in common, so that a 5,000-digit integer,
`NaN` or 100,000 nesting levels get the same one-line answer wherever they arrive.
"""
from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Iterable

from autovit.latmodel.errors import AutoVitError

# Largest JSON file any reader accepts (a LUT of every block of three spaces is ~1 MB; a search
# state of 10,000 evaluations ~5 MB).
MAX_JSON_BYTES = 64 * 2**20
# Deepest nesting of a JSON document: ours are at most 6 levels; Python's parser recurses.
MAX_JSON_DEPTH = 64
# Longest integer literal: 2**63 has 19 digits; anything longer is not a size or a count.
MAX_INT_DIGITS = 20


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(d: dict, known: Iterable[str], where: str) -> None:
    """Refuse keys that no reader uses: a misspelt key would otherwise be silently ignored."""
    known = list(known)
    for k in d:
        if k not in known:
            raise AutoVitError(f"{where}: unknown key '{k}'{did_you_mean(k, known)}; "
                               f"known keys: {', '.join(sorted(known))}")


def number(v: Any, where: str, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, integer: bool = False) -> float | int:
    """`v` as a finite number within [lo, hi] (lo excluded when `lo_open`); booleans are not numbers."""
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise AutoVitError(f"{where} must be {kind}, got {_show(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise AutoVitError(f"{where} must be a finite number, got {v}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise AutoVitError(f"{where} must be {'>' if lo_open else '>='} {lo:g}, got {_show(v)}")
    if hi is not None and v > hi:
        raise AutoVitError(f"{where} must be <= {hi:g}, got {_show(v)}")
    return v


def integer(v: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    return int(number(v, where, lo, hi, integer=True))


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _depth_ok(text: str) -> bool:
    """Nesting depth of a JSON text, counted outside strings, without recursion."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return True
    depth = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is beyond the range of a number")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def parse_json(text: str, where: str, fix: str = "") -> Any:
    """Parse JSON text strictly: no NaN/Infinity, no integers beyond 20 digits, no nesting beyond
    64 levels. Errors are one line naming `where` (and `fix`, the way out)."""
    hint = f"; {fix}" if fix else ""
    if len(text) > MAX_JSON_BYTES:
        raise AutoVitError(f"{where}: {len(text):,} characters, more than any file of this kind{hint}")
    if not _depth_ok(text):
        raise AutoVitError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep, not a file of this kind{hint}")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise AutoVitError(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}){hint}") from None
    except (ValueError, RecursionError) as e:
        raise AutoVitError(f"{where}: not valid JSON here ({str(e).splitlines()[0][:80]}){hint}") from None


def read_text(path: str | Path, what: str, fix: str = "", max_bytes: int = MAX_JSON_BYTES, encoding: str = "utf-8") -> str:
    """A text file's contents; a missing, unreadable, too large or non-UTF-8 file is one line."""
    p = Path(path)
    hint = f"; {fix}" if fix else ""
    if not p.is_file():
        raise AutoVitError(f"{what} not found: {p}" if not p.exists() else f"{what} {p} is not a file")
    if p.stat().st_size > max_bytes:
        raise AutoVitError(f"{p}: {p.stat().st_size:,} bytes, more than any {what} should be{hint}")
    try:
        return p.read_bytes().decode(encoding)
    except UnicodeDecodeError:
        raise AutoVitError(f"{p}: not UTF-8 text, so not a {what}{hint}") from None


def read_json(path: str | Path, what: str, fix: str = "") -> Any:
    """Read a JSON file as `parse_json` does; a missing, unreadable or non-UTF-8 file is one line too."""
    return parse_json(read_text(path, what, fix), str(Path(path)), fix)


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None, so that the output is valid JSON
    (the standard forbids NaN and Infinity, and strict readers reject them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return json_safe(obj.item())
        except (TypeError, ValueError):
            return obj
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """json.dumps that never writes NaN or Infinity (they become null)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)
