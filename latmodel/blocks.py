"""What a lookup table measures: a Block, described as data, and the registry of block kinds.

A block is a piece of a network small enough to measure alone and regular enough to recur:
AutoViT's are registered by `import autovit.nas` (nas/blocks.py); any other model family
registers its own kinds the same way (examples/ofa_mbv3_oracle.py). LUT files store
`block.to_dict()` and read it back with `block_from_dict`, so `profile`, `calibrate`, the
oracles and the drift monitor work on every registered kind.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from autovit.latmodel.checks import did_you_mean, read_json
from autovit.latmodel.errors import AutoVitError

# Most blocks a --blocks file may list (every block of the three AutoViT spaces is a few hundred).
MAX_BLOCKS = 10_000


@runtime_checkable
class Block(Protocol):
    """One measurable block. Implementations are hashable value objects (frozen dataclasses):
    oracles and LUTs cache by them.

    - `kind`: the registry name (a class attribute; a class may serve several kinds, then it is
      the instance's field);
    - `key`: stable, human-readable LUT key (the same block always has the same key);
    - `input_shape(batch)`: the shape of its one input tensor;
    - `build()`: the torch module (eval mode) that runs it;
    - `to_dict()`: JSON-ready fields, "kind" included; `from_dict(d, where)` checks every
      field and raises a one-line AutoVitError naming `where`.
    """

    kind: ClassVar[str]

    @property
    def key(self) -> str: ...

    def input_shape(self, batch: int = 1) -> tuple[int, ...]: ...

    def build(self) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: Any, where: str = "block") -> "Block": ...


_KINDS: dict[str, type] = {}


def register_block_kind(kind: str, cls: type) -> None:
    """Make `kind` readable from LUT files and --blocks files (re-registering replaces)."""
    if not isinstance(kind, str) or not kind or "|" in kind:
        raise ValueError(f"a block kind is a non-empty name without '|', got {kind!r}")
    _KINDS[kind] = cls


def registered_kinds() -> list[str]:
    return sorted(_KINDS)


def block_from_dict(d: Any, where: str = "block") -> Block:
    """The block a dict describes, through the class registered for d["kind"]."""
    if not isinstance(d, dict):
        raise AutoVitError(f"{where}: a block description is a JSON object like "
                           f'{{"kind": "conv", "hw": 64, "cin": 3, "cout": 16}}, got {d!r:.60}')
    kind = d.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = registered_kinds()
        raise AutoVitError(f"{where}: 'kind' must be one of {', '.join(known) or '(none registered)'}, got "
                           f"{kind!r:.40}{did_you_mean(str(kind), known)}; a kind from another package is known "
                           "once that package is imported (AutoViT's: `import autovit.nas`)")
    return cls.from_dict(d, where)


def load_blocks(path: str) -> list[Block]:
    """A --blocks file: a JSON list of block descriptions, each checked, duplicates dropped."""
    items = read_json(path, "--blocks file", 'expected a JSON list like [{"kind": "conv", "hw": 64, "cin": 3, "cout": 16}]')
    if not isinstance(items, list) or not 0 < len(items) <= MAX_BLOCKS:
        raise AutoVitError(f"--blocks {path}: expected a JSON list of 1 to {MAX_BLOCKS:,} block descriptions, "
                           f"got {type(items).__name__ if not isinstance(items, list) else 'an empty list'}")
    blocks = [block_from_dict(d, f"--blocks {path}: block #{i + 1}") for i, d in enumerate(items)]
    return list(dict.fromkeys(blocks))
