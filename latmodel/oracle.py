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
"""
from __future__ import annotations

from dataclasses import astuple
from typing import Iterable, Sequence

import numpy as np

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.lut import Lut, same_device
from autovit.latmodel.modules import BlockSpec, arch_block_fields

# Blocks whose last kernel is a convolution hand on the runtime's blocked layout; blocks that
# start with a convolution take it.
_ENDS_CONV = frozenset({"conv", "mbconv", "mvit_convs"})
_STARTS_CONV = frozenset({"mbconv", "mvit_convs", "head"})


class AnalyticalOracle:
    """latency_ms(archs) -> ms per architecture (batch 1) from cached per-block estimates on `profile`."""

    def __init__(self, profile: HardwareProfile, construction: str = "blocks"):
        if construction not in ("blocks", "network"):
            raise AutoVitError(f"unknown construction '{construction}': use blocks or network")
        self.profile = profile
        self.construction = construction
        self.name = f"analytical:{profile.name}"
        self._block_ms: dict[tuple, float] = {}
        self._models: dict[tuple, object] = {}

    def block_ms(self, block: BlockSpec | tuple, in_blocked: bool = False, out_blocked: bool = False) -> float:
        """ms of one block (a BlockSpec or its field tuple) inside a network."""
        f = block if isinstance(block, tuple) else astuple(block)
        key = (f, in_blocked, out_blocked)
        ms = self._block_ms.get(key)
        if ms is None:
            from autovit.latmodel.fit import block_model

            model = self._models.get(f)
            if model is None:
                model = self._models[f] = block_model(BlockSpec(*f))
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
