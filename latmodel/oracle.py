"""Latency oracles for a search: many architectures in, an array of ms out.

A search prices thousands of candidates, so an oracle never exports a network: it splits an
architecture into the blocks it runs with `decompose(arch)` and adds per-block costs that are
computed once and cached. The oracles know nothing of any model family: `decompose` yields
hashable items, either Blocks (latmodel/blocks.py) or cheaper stand-ins such as field tuples,
and `block_of(item)` turns an item into its Block (identity by default). Items are cache keys:
AutoViT's decomposition (nas/blocks.py DECOMPOSITION) yields tuples, which hash and compare in
C, so a search prices ~10^5 architectures per second.

- AnalyticalOracle: each block priced by the analytical model, for any profile, data-sheet or
  calibrated. Two constructions: "blocks" (default) prices every block as the LUT measures it,
  alone, with its own call overhead and layout conversions, and sums them: the paper's
  assumption that a network costs the sum of its measured blocks. "network" prices each block
  as a part of the exported network (edges from its neighbours, one call overhead), which on
  the CPU profiles equals the model of the whole graph to 2 % (tests/test_oracle_validate.py;
  on the CUDA profiles the two constructions agree, both a few % above it). A search should use "network":
  it prices what the exported model runs. On this project's VM the model's blocks alone summed
  to 3-14 % (run medians 5-7 %) above its network price, and that price is the one measured
  networks bear out (docs/BENCHMARKS.md §3.16).
- LutOracle: the paper's method, the sum of measured LUT entries when every block of the
  architecture is in the LUT; the analytical oracle (in the construction given) for the rest.
  `coverage` counts both. Entries are summed as measured: on the same VM, measured blocks
  alone summed to a median 1.3 % above their measured networks (§3.16), so the model's larger
  difference between a block alone and in its network is not subtracted from them. Covered and
  uncovered architectures then sit a few % apart (there: 1.013 and 0.985 of measured).
- ProxyOracle: FLOPs or parameters times a constant, the proxies latency-aware search replaces.
  The constant (ms per FLOP, ms per parameter) is fitted on architectures of the searched
  space priced by the device's profile, so a proxy answers in ms and takes the same budget.
- MeasuredOracle: each architecture built, exported and timed with onnxruntime on this machine
  (seconds each), cached on disk by architecture key.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from autovit.latmodel.blocks import Block
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.lut import Lut, same_device

Decompose = Callable[[Any], Sequence[Hashable]]
BlockOf = Callable[[Hashable], Block]


_UNSEEN = object()


def _identity(item: Hashable) -> Any:
    return item


@lru_cache(maxsize=None)
def cached_block_model(block: Block):
    """The latency model of `block`, built once per process (an export and a graph walk,
    ~0.1 s): every oracle and counter shares them."""
    from autovit.latmodel.fit import block_model

    return block_model(block)


def _kind(item: Hashable) -> str:
    """A decomposition item's block kind: a tuple's first field, else the Block's `kind`."""
    return item[0] if isinstance(item, tuple) else item.kind


class AnalyticalOracle:
    """latency_ms(archs) -> ms per architecture (batch 1) from cached per-block estimates on `profile`.

    `decompose(arch)` -> the architecture's blocks in order (items, see the module doc);
    `block_of(item)` -> its Block; `construction` "blocks" or "network" (module doc). In the
    network construction a block hands the runtime's blocked layout to the next one when it
    ends with a convolution (kind in `ends_conv`) and the next starts with one (`starts_conv`)."""

    def __init__(self, profile: HardwareProfile, decompose: Decompose, construction: str = "blocks", *,
                 block_of: BlockOf = _identity, ends_conv: Iterable[str] = (), starts_conv: Iterable[str] = ()):
        if construction not in ("blocks", "network"):
            raise AutoVitError(f"unknown construction '{construction}': use blocks or network")
        self.profile = profile
        self.decompose, self.block_of = decompose, block_of
        self.construction = construction
        self.ends_conv, self.starts_conv = frozenset(ends_conv), frozenset(starts_conv)
        self.name = f"analytical:{profile.name}"
        self._block_ms: dict[tuple, float] = {}

    def block_ms(self, item: Hashable, in_blocked: bool = False, out_blocked: bool = False) -> float:
        """ms of one block (a decomposition item) inside a network."""
        key = (item, in_blocked, out_blocked)
        ms = self._block_ms.get(key)
        if ms is None:
            model = cached_block_model(self.block_of(item))
            # Each block at its graph's own batch: one image (a transformer block's batch is its patches).
            if self.construction == "blocks":
                ms = model.estimate(self.profile).latency_ms
            else:
                ms = model.estimate(self.profile, edges=(in_blocked, out_blocked), per_run=False).latency_ms
            self._block_ms[key] = ms
        return ms

    def blocks_ms(self, items: Sequence[Hashable]) -> float:
        """ms of a network made of these decomposition items, in order."""
        network = self.construction == "network"
        total = self.profile.run_us * 1e-3 if network else 0.0
        n = len(items)
        for i, f in enumerate(items):
            in_blocked = network and i > 0 and self._handover(items[i - 1], f)
            out_blocked = network and i + 1 < n and self._handover(f, items[i + 1])
            key = (f, in_blocked, out_blocked)
            ms = self._block_ms.get(key)
            total += ms if ms is not None else self.block_ms(f, in_blocked, out_blocked)
        return total

    def _handover(self, a: Hashable, b: Hashable) -> bool:
        return _kind(a) in self.ends_conv and _kind(b) in self.starts_conv

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        return np.array([self.blocks_ms(self.decompose(a)) for a in archs], float)


class LutOracle:
    """The sum of LUT entries (mode `mode`) for architectures whose blocks are all measured,
    the analytical oracle on `profile` (best: the profile calibrated on this LUT) otherwise.
    `decompose`, `block_of`, `construction`, `ends_conv` and `starts_conv` as AnalyticalOracle's
    (the fallback's); an item matches the LUT entry of its Block's key."""

    def __init__(self, lut: Lut, profile: HardwareProfile, decompose: Decompose, mode: str = "isolated", *,
                 block_of: BlockOf = _identity, construction: str = "blocks", ends_conv: Iterable[str] = (),
                 starts_conv: Iterable[str] = ()):
        if not same_device(lut.device, profile.name):
            raise AutoVitError(f"LUT was measured on '{lut.device}', the profile is '{profile.name}'; "
                               "use the LUT of the device you search for")
        self.lut = lut
        self.mode = mode
        self.decompose, self.block_of = decompose, block_of
        self.name = f"lut:{lut.device}"
        self.fallback = AnalyticalOracle(profile, decompose, construction, block_of=block_of,
                                         ends_conv=ends_conv, starts_conv=starts_conv)
        # Entry keys are "mode|block key" (lut.py), checked against their blocks when read.
        self._by_key = {k.split("|", 1)[1]: float(e["median_ms"]) for k, e in lut.entries.items()
                        if e.get("mode") == mode}
        if not self._by_key:
            raise AutoVitError(f"the LUT has no '{mode}' entries; profile with --mode {mode}")
        self._item_ms: dict[Hashable, float | None] = {}
        self.coverage = {"lut": 0, "analytical": 0}

    def lut_sum(self, items: Sequence[Hashable]) -> float | None:
        """The paper's estimate (ms), or None when a block is not in the LUT."""
        total = 0.0
        for b in items:
            ms = self._item_ms.get(b, _UNSEEN)
            if ms is _UNSEEN:  # first time: look its Block's key up once
                ms = self._item_ms[b] = self._by_key.get(self.block_of(b).key)
            if ms is None:
                return None
            total += ms
        return total

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        out = []
        for a in archs:
            blocks = self.decompose(a)
            ms = self.lut_sum(blocks)
            if ms is None:
                self.coverage["analytical"] += 1
                ms = self.fallback.blocks_ms(blocks)
            else:
                self.coverage["lut"] += 1
            out.append(ms)
        return np.array(out, float)


class BlockCounts:
    """FLOPs and parameters of an architecture as the sum over its blocks (each block's
    latency model counted once and cached), the same units a block-level fit uses.
    `decompose` and `block_of` as AnalyticalOracle's (`block` alone needs neither)."""

    def __init__(self, decompose: Decompose | None = None, *, block_of: BlockOf = _identity) -> None:
        self.decompose, self.block_of = decompose, block_of
        self._counts: dict[Hashable, tuple[float, int]] = {}

    def block(self, item: Hashable) -> tuple[float, int]:
        """(FLOPs, parameters) of one block."""
        c = self._counts.get(item)
        if c is None:
            model = cached_block_model(self.block_of(item))
            c = self._counts[item] = (float(sum(k.flops for k in model.costs.values())), int(model.graph.params))
        return c

    def flops(self, archs: Iterable) -> np.ndarray:
        """FLOPs (multiply-add = 2) per architecture at batch 1."""
        return np.array([sum(self.block(f)[0] for f in self.decompose(a)) for a in archs], float)

    def params(self, archs: Iterable) -> np.ndarray:
        return np.array([sum(self.block(f)[1] for f in self.decompose(a)) for a in archs], float)


class ProxyOracle:
    """ms = k x FLOPs (kind 'flops') or k x parameters (kind 'params'). k is fitted on log
    scale over `reference` architectures (a sample of the searched space) priced by the
    analytical model of `profile`: a proxy budget then means the same ms on average as a
    latency budget, and the two disagree only where the proxy misranks architectures.
    `decompose`, `block_of`, `construction`, `ends_conv` and `starts_conv` as AnalyticalOracle's
    (the reference pricing's)."""

    def __init__(self, kind: str, profile: HardwareProfile, reference: Sequence, decompose: Decompose, *,
                 block_of: BlockOf = _identity, construction: str = "blocks", ends_conv: Iterable[str] = (),
                 starts_conv: Iterable[str] = ()):
        if kind not in ("flops", "params"):
            raise AutoVitError(f"unknown proxy '{kind}': use flops or params")
        from autovit.latmodel.metrics import proportional_factor

        self.kind, self.profile, self.name = kind, profile, f"{kind}:{profile.name}"
        self.counts = BlockCounts(decompose, block_of=block_of)
        reference = list(reference)
        analytical = AnalyticalOracle(profile, decompose, construction, block_of=block_of,
                                      ends_conv=ends_conv, starts_conv=starts_conv)
        self.factor = proportional_factor(self.units(reference), analytical.latency_ms(reference))

    def units(self, archs: Sequence) -> np.ndarray:
        """FLOPs or parameters per architecture."""
        return self.counts.flops(archs) if self.kind == "flops" else self.counts.params(archs)

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        return self.factor * self.units(list(archs))


MEASURED_FORMAT = "autovit-measured/1"


class MeasuredOracle:
    """ms per architecture measured here: the built network (random weights; latency does not
    depend on them) exported to ONNX and timed with onnxruntime at batch 1 (median of a burst,
    measure.time_callable). Every new measurement is added to the cache file at once (atomic
    rewrite), so an interrupted search keeps what it measured; a cache is tied to its thread count."""

    def __init__(self, build: Callable[[Any], Any], key: Callable[[Any], str],
                 input_shape: Callable[[Any], tuple[int, ...]], cache_path: str | Path | None = None,
                 threads: int | None = None, policy=None, on_measure: Callable[[int, int], None] | None = None):
        """`build(arch)` -> the torch module, `key(arch)` -> the string it is cached under,
        `input_shape(arch)` -> its input at batch 1; `on_measure(done, total)` follows each new
        measurement of a batch (progress bars)."""
        from autovit.latmodel.measure import TimingPolicy, physical_cores

        self.build, self.key, self.input_shape = build, key, input_shape

        self.threads = threads or physical_cores()
        self.policy = policy or TimingPolicy(warmup=5, min_repeats=20, max_repeats=200, max_seconds=5.0)
        self.name = f"measured:onnxruntime:{self.threads}t"
        self.cache_path = Path(cache_path) if cache_path else None
        self.on_measure = on_measure
        self.ms: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.exists():
            try:
                saved = json.loads(self.cache_path.read_text())
                ms = {str(k): float(v) for k, v in saved["ms"].items()}
                ok = saved["format"] == MEASURED_FORMAT and "threads" in saved
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError, ValueError):
                ok = False
            if not ok:
                raise AutoVitError(f"{self.cache_path} is not a measurement cache; delete it or choose another folder")
            if saved["threads"] != self.threads:
                raise AutoVitError(f"{self.cache_path} was measured with {saved['threads']} threads, "
                                   f"this run uses {self.threads}; use another folder")
            self.ms = ms

    def measure(self, arch) -> float:
        from autovit.latmodel.measure import time_callable
        from autovit.latmodel.runner import prepare

        run, _ = prepare(self.build(arch), self.input_shape(arch), "onnxruntime", self.threads)
        return time_callable(run, self.policy).median_ms

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        archs = list(archs)
        keys = [self.key(a) for a in archs]
        todo = {k: a for k, a in zip(keys, archs) if k not in self.ms}
        for i, (k, a) in enumerate(todo.items()):
            self.ms[k] = self.measure(a)
            self._save()
            if self.on_measure is not None:
                self.on_measure(i + 1, len(todo))
        return np.array([self.ms[k] for k in keys], float)

    def _save(self) -> None:
        if self.cache_path is None:
            return
        from autovit.latmodel.io import atomic_write_text

        atomic_write_text(self.cache_path, json.dumps({"format": MEASURED_FORMAT, "backend": "onnxruntime",
                                                       "threads": self.threads, "ms": self.ms}) + "\n")
