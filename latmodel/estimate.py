"""The analytical latency model's front door: graph + hardware profile -> Estimate."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autovit.latmodel.costs import CATEGORIES, OpCost, price_graph
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.graph import OpGraph
from autovit.latmodel.hardware import HardwareProfile
from autovit.latmodel.kernels import Kernel, form_kernels
from autovit.latmodel.timing import KernelTime, network_time


@dataclass
class Estimate:
    source: str
    hw: str
    batch: int
    dtype: str
    latency_ms: float
    params: int
    flops: float
    bytes: float
    breakdown: dict[str, float]
    kernels: list[KernelTime]
    warnings: list[str] = field(default_factory=list)

    @property
    def throughput_per_s(self) -> float:
        """Images per second at this batch size."""
        return self.batch / (self.latency_ms * 1e-3) if self.latency_ms > 0 else float("inf")

    def slowest(self, n: int = 10) -> list[KernelTime]:
        return sorted(self.kernels, key=lambda t: t.ms, reverse=True)[:n]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        ks = self.slowest(top) if top else [t for t in self.kernels if t.kernel.klass != "view"]
        return {
            "source": self.source, "hw": self.hw, "batch": self.batch, "dtype": self.dtype,
            "latency_ms": self.latency_ms, "throughput_per_s": self.throughput_per_s,
            "params": self.params, "flops": self.flops, "bytes": self.bytes,
            "breakdown": self.breakdown,
            "kernels": [
                {"name": t.kernel.name, "op_types": t.kernel.op_types, "category": t.kernel.category,
                 "ms": t.ms, "bound": t.bound, "compute_ms": t.compute_ms, "memory_ms": t.memory_ms,
                 "flops": t.flops, "bytes": t.bytes, "engine": t.engine}
                for t in ks
            ],
            "warnings": self.warnings,
        }


class LatencyModel:
    """Prices one graph on any profile; kernels are formed once per profile and reused for
    every batch size and dtype (that is what makes a 1,000-op estimate take milliseconds)."""

    def __init__(self, graph: OpGraph):
        self.graph = graph
        self.costs: dict[str, OpCost] = price_graph(graph)
        self._kernels: dict[tuple, list[Kernel]] = {}
        unknown = sorted({c.op_type for c in self.costs.values() if not c.known})
        self.warnings = list(graph.warnings)
        if unknown:
            self.warnings.append(f"ops without a cost rule, priced as memory copies: {', '.join(unknown)}")

    def kernels(self, profile: HardwareProfile) -> list[Kernel]:
        # Kernels depend only on the profile's fusion and layout rules, so profiles that differ
        # in numbers alone (a calibration's trial values) share them.
        fb = profile.fallback.unsupported_ops if profile.fallback else None
        key = (profile.fusion, profile.elided, profile.strided_readers, fb,
               profile.ane.mechanisms if profile.ane else None, profile.mechanisms)
        if key not in self._kernels:
            self._kernels[key] = form_kernels(self.graph, self.costs, profile)
        return self._kernels[key]

    def estimate(self, profile: HardwareProfile, batch: int | None = None, dtype: str | None = None,
                 edges: tuple[bool, bool] = (False, False), per_run: bool = True) -> Estimate:
        """Latency of the graph on `profile` at `batch` (default: the graph's) in `dtype`;
        `edges` and `per_run` price it as a part of a larger network (timing.network_time)."""
        b = self.graph.batch if batch is None else batch
        if not isinstance(b, int) or b <= 0:
            raise AutoVitError(f"batch must be a positive integer, got {batch!r}")
        dt = profile.check_dtype(dtype or profile.default_dtype)
        scale = b / self.graph.batch
        total, times = network_time(self.kernels(profile), profile, dt, scale, edges, per_run)
        breakdown = {c: 0.0 for c in CATEGORIES}
        for t in times:
            breakdown[t.kernel.category] += t.ms
        warnings = list(self.warnings)
        fallback = sorted({ot for t in times if t.kernel.unsupported for ot in t.kernel.op_types})
        if fallback and profile.fallback:
            warnings.append(f"{profile.name}: {', '.join(fallback)} run on {profile.fallback.name} (fallback)")
        if total <= 0:
            warnings.append(f"{profile.name} runs no kernel for this graph (every op is a view it elides): 0 ms, "
                            "so no throughput")
        return Estimate(
            source=self.graph.source, hw=profile.name, batch=b, dtype=dt, latency_ms=total,
            params=self.graph.params, flops=sum(c.flops for c in self.costs.values()) * scale,
            bytes=sum(t.bytes for t in times), breakdown=breakdown, kernels=times, warnings=warnings,
        )


def estimate(graph: OpGraph, profile: HardwareProfile, batch: int | None = None,
             dtype: str | None = None) -> Estimate:
    return LatencyModel(graph).estimate(profile, batch, dtype)
