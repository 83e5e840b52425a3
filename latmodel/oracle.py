"""Latency oracles for the search: many AutoViT architectures in, an array of ms out.

A search prices thousands of candidates, so an oracle never exports a network: it splits an
architecture into the blocks it runs (modules.arch_blocks) and adds per-block costs that are
computed once and cached.

- AnalyticalOracle: each block priced by the analytical model, for any profile, data-sheet or
  calibrated. Two constructions: "blocks" (default) prices every block as the LUT measures it,
  alone, with its own call overhead and layout conversions, and sums them: the paper's
  assumption that a network costs the sum of its measured blocks, which holds here (LUT sums of
  measured blocks: 6.2 % MAPE on 100 subnets, docs/BENCHMARKS.md), and the one that keeps LUT
  entries and analytical fill-ins on one scale inside LutOracle. "network" prices each block
  as a part of the exported network (edges from its neighbours, one call overhead), which
  equals the model of the whole graph (tests/test_oracle_validate.py).
- LutOracle: the paper's method, the sum of measured LUT entries when every block of the
  architecture is in the LUT; the analytical oracle for the rest. `coverage` counts both.
- ProxyOracle: FLOPs or parameters times a constant, the proxies latency-aware search replaces.
  The constant (ms per FLOP, ms per parameter) is fitted on architectures of the searched
  space priced by the device's profile, so a proxy answers in ms and takes the same budget.
- MeasuredOracle: each architecture built, exported and timed with onnxruntime on this machine
  (seconds each), cached on disk by architecture.
"""
from __future__ import annotations

import json
from dataclasses import astuple
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.lut import Lut, same_device
from autovit.latmodel.modules import BlockSpec, arch_block_fields

# Blocks whose last kernel is a convolution hand on the runtime's blocked layout; blocks that
# start with a convolution take it.
_ENDS_CONV = frozenset({"conv", "mbconv", "mvit_convs"})
_STARTS_CONV = frozenset({"mbconv", "mvit_convs", "head"})


@lru_cache(maxsize=None)
def cached_block_model(f: tuple):
    """The latency model of the block with fields `f`, built once per process (an export and a
    graph walk, ~0.1 s): every oracle and counter shares them."""
    from autovit.latmodel.fit import block_model

    return block_model(BlockSpec(*f))


class AnalyticalOracle:
    """latency_ms(archs) -> ms per architecture (batch 1) from cached per-block estimates on `profile`."""

    def __init__(self, profile: HardwareProfile, construction: str = "blocks"):
        if construction not in ("blocks", "network"):
            raise AutoVitError(f"unknown construction '{construction}': use blocks or network")
        self.profile = profile
        self.construction = construction
        self.name = f"analytical:{profile.name}"
        self._block_ms: dict[tuple, float] = {}

    def block_ms(self, block: BlockSpec | tuple, in_blocked: bool = False, out_blocked: bool = False) -> float:
        """ms of one block (a BlockSpec or its field tuple) inside a network."""
        f = block if isinstance(block, tuple) else astuple(block)
        key = (f, in_blocked, out_blocked)
        ms = self._block_ms.get(key)
        if ms is None:
            model = cached_block_model(f)
            # Each block at its graph's own batch: one image (a transformer block's batch is its patches).
            if self.construction == "blocks":
                ms = model.estimate(self.profile).latency_ms
            else:
                ms = model.estimate(self.profile, edges=(in_blocked, out_blocked), per_run=False).latency_ms
            self._block_ms[key] = ms
        return ms

    def blocks_ms(self, blocks: Sequence[BlockSpec | tuple]) -> float:
        fs = [b if isinstance(b, tuple) else astuple(b) for b in blocks]
        network = self.construction == "network"
        total = self.profile.run_us * 1e-3 if network else 0.0
        n = len(fs)
        for i, f in enumerate(fs):
            in_blocked = network and i > 0 and fs[i - 1][0] in _ENDS_CONV and f[0] in _STARTS_CONV
            out_blocked = network and i + 1 < n and f[0] in _ENDS_CONV and fs[i + 1][0] in _STARTS_CONV
            key = (f, in_blocked, out_blocked)
            ms = self._block_ms.get(key)
            total += ms if ms is not None else self.block_ms(f, in_blocked, out_blocked)
        return total

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        return np.array([self.blocks_ms(arch_block_fields(a)) for a in archs], float)


class LutOracle:
    """The sum of LUT entries (mode `mode`) for architectures whose blocks are all measured,
    the analytical oracle on `profile` (best: the profile calibrated on this LUT) otherwise."""

    def __init__(self, lut: Lut, profile: HardwareProfile, mode: str = "isolated"):
        if not same_device(lut.device, profile.name):
            raise AutoVitError(f"LUT was measured on '{lut.device}', the profile is '{profile.name}'; "
                               "use the LUT of the device you search for")
        self.lut = lut
        self.mode = mode
        self.name = f"lut:{lut.device}"
        self.fallback = AnalyticalOracle(profile)
        self._entries: dict[tuple, float] = {}
        for e in lut.entries.values():
            if e.get("mode") == mode:
                self._entries[astuple(BlockSpec.from_dict(e["block"]))] = float(e["median_ms"])
        if not self._entries:
            raise AutoVitError(f"the LUT has no '{mode}' entries; profile with --mode {mode}")
        self.coverage = {"lut": 0, "analytical": 0}

    def lut_sum(self, blocks: Sequence[BlockSpec | tuple]) -> float | None:
        """The paper's estimate, or None when a block is not in the LUT."""
        total = 0.0
        for b in blocks:
            ms = self._entries.get(b if isinstance(b, tuple) else astuple(b))
            if ms is None:
                return None
            total += ms
        return total

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        out = []
        for a in archs:
            blocks = arch_block_fields(a)
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
    latency model counted once and cached), the same units a block-level fit uses."""

    def __init__(self) -> None:
        self._counts: dict[tuple, tuple[float, int]] = {}

    def block(self, f: tuple) -> tuple[float, int]:
        c = self._counts.get(f)
        if c is None:
            model = cached_block_model(f)
            c = self._counts[f] = (float(sum(k.flops for k in model.costs.values())), int(model.graph.params))
        return c

    def flops(self, archs: Iterable) -> np.ndarray:
        """FLOPs (multiply-add = 2) per architecture at batch 1."""
        return np.array([sum(self.block(f)[0] for f in arch_block_fields(a)) for a in archs], float)

    def params(self, archs: Iterable) -> np.ndarray:
        return np.array([sum(self.block(f)[1] for f in arch_block_fields(a)) for a in archs], float)


class ProxyOracle:
    """ms = k x FLOPs (kind 'flops') or k x parameters (kind 'params'). k is fitted on log
    scale over `reference` architectures (a sample of the searched space) priced by the
    analytical model of `profile`: a proxy budget then means the same ms on average as a
    latency budget, and the two disagree only where the proxy misranks architectures."""

    def __init__(self, kind: str, profile: HardwareProfile, reference: Sequence):
        if kind not in ("flops", "params"):
            raise AutoVitError(f"unknown proxy '{kind}': use flops or params")
        from autovit.latmodel.validate import proportional_factor

        self.kind, self.profile, self.name = kind, profile, f"{kind}:{profile.name}"
        self.counts = BlockCounts()
        reference = list(reference)
        self.factor = proportional_factor(self.units(reference), AnalyticalOracle(profile).latency_ms(reference))

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

    def __init__(self, cache_path: str | Path | None = None, threads: int | None = None, policy=None,
                 on_measure: Callable[[int, int], None] | None = None):
        """`on_measure(done, total)` follows each new measurement of a batch (progress bars)."""
        from autovit.latmodel.measure import TimingPolicy, physical_cores

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
        from autovit.latmodel.profiler import prepare
        from autovit.nas.builder import build_model

        run, _ = prepare(build_model(arch), (1, 3, arch.resolution, arch.resolution), "onnxruntime", self.threads)
        return time_callable(run, self.policy).median_ms

    def latency_ms(self, archs: Iterable) -> np.ndarray:
        archs = list(archs)
        keys = [a.key() for a in archs]
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
