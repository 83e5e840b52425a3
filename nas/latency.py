"""AutoViT's wiring into the latency toolkit (latmodel), which knows no model family: the
`autovit:` and architecture-file sources, the drift monitor's reference model, random subnets
for `validate`, and the oracles a search prices AutoViT architectures with.

Registered on `import autovit.nas`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from autovit.latmodel.errors import UsageError
from autovit.latmodel.graph import OpGraph
from autovit.latmodel.sources import module_graph, register_source
from autovit.latmodel.validate import Candidate
from autovit.nas.arch import ArchConfig, load_arch
from autovit.nas.blocks import DECOMPOSITION, arch_block_fields
from autovit.nas.builder import build_model
from autovit.nas.presets import load_preset
from autovit.nas.space import SearchSpace, load_space

# The drift monitor's reference model: the XXS preset, a mix of convolutions, attention and
# layout ops (what the measured blocks are made of).
REFERENCE_MODEL = "autovit:xxs"
# Blocks that end with a convolution hand the runtime's blocked layout on; blocks that start
# with one take it (AnalyticalOracle's "network" construction).
CONV_EDGES = {"ends_conv": ("conv", "mbconv", "mvit_convs"), "starts_conv": ("mbconv", "mvit_convs", "head")}
# How the search's analytical pricing composes blocks: each block as a part of the exported
# network, which is what a budget is about (latmodel/oracle.py; the model's blocks alone summed to
# 3-14 % above its network price on this project's VM, docs/BENCHMARKS.md §3.16).
IN_NETWORK = {"construction": "network", **CONV_EDGES}


def input_shape(arch: ArchConfig, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, 3, arch.resolution, arch.resolution)


def arch_graph(arch: ArchConfig, source: str = "") -> OpGraph:
    """Op graph of an AutoViT ArchConfig at batch 1."""
    return module_graph(build_model(arch), input_shape(arch), source=source or arch.name or "arch")


def _arch_file_graph(source: str, _shape) -> OpGraph:
    arch = load_arch(Path(source))
    if arch.space:
        load_space(arch.space).check(arch)
    return arch_graph(arch, source)


register_source("autovit-arch", lambda s: Path(s).suffix.lower() == ".json", _arch_file_graph, "an architecture .json")
register_source("autovit", lambda s: s.startswith("autovit:"), lambda s, _shape: arch_graph(load_preset(s), s),
                "autovit:xxs|xs|s", lambda s: (build_model(load_preset(s)), input_shape(load_preset(s))))


def reference_model():
    """(module, input shape, name) of the drift monitor's reference (latmodel.runner.drift_monitor)."""
    arch = load_preset(REFERENCE_MODEL)
    return build_model(arch), input_shape(arch), REFERENCE_MODEL


def random_candidates(n: int, spaces: list[str], seed: int) -> list[Candidate]:
    """n subnets for `validate`, spread round-robin over `spaces`, each drawn uniformly (seeded)."""
    loaded = [load_space(s) for s in spaces]
    out = []
    for i in range(n):
        sp = loaded[i % len(loaded)]
        arch = sp.sample(seed * 100_003 + i)
        out.append(Candidate(f"{sp.name}#{i}", "random", (lambda a=arch: build_model(a)), input_shape(arch), arch,
                             blocks=arch_block_fields(arch)))
    return out


ORACLES = "analytical, lut:PATH, measured, flops or params"
PROXY_REFERENCE = 256  # architectures the proxies' ms-per-unit constant is fitted on


def check_oracle_spec(spec: str, devices: list[str]) -> None:
    """The --latency-oracle value, before anything is loaded or written."""
    if spec not in ("analytical", "measured", "flops", "params") and not (spec.startswith("lut:") and len(spec) > 4):
        raise UsageError(f"--latency-oracle '{spec[:60]}': use {ORACLES}")
    if spec == "measured" and any(d.split("@")[0] != "local-cpu" for d in devices):
        other = next(d for d in devices if d.split("@")[0] != "local-cpu")
        raise UsageError(f"--latency-oracle measured times this machine; it cannot price {other[:60]}: "
                         "use it with --hw local-cpu, or analytical/lut:PATH for other devices")


def make_oracle(spec: str, device: str, space: SearchSpace | None = None, cache_dir=None,
                on_measure: Callable[[int, int], None] | None = None):
    """The latency oracle `spec` for `device` over AutoViT architectures (latmodel/oracle.py):
    - analytical: the device's profile (data-sheet or calibrated);
    - lut:PATH: the LUT sum, analytical fallback (the LUT must have been measured on `device`);
    - measured: onnxruntime on this machine (device local-cpu), cached in cache_dir/measured_ms.json;
    - flops, params: the proxies, in ms through a constant fitted on PROXY_REFERENCE
      architectures of `space` (seeded) priced by the device's profile."""
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.oracle import AnalyticalOracle, LutOracle, MeasuredOracle, ProxyOracle

    check_oracle_spec(spec, [device])
    if spec == "measured":
        return MeasuredOracle(build_model, lambda a: a.key(), input_shape,
                              Path(cache_dir) / "measured_ms.json" if cache_dir else None, on_measure=on_measure)
    profile = load_profile(device)
    if spec == "analytical":
        return AnalyticalOracle(profile, **DECOMPOSITION, **IN_NETWORK)
    if spec in ("flops", "params"):
        if space is None:
            raise ValueError("a proxy oracle is fitted on the searched space: pass it")
        rng = random.Random(0)
        return ProxyOracle(spec, profile, [space.sample(rng) for _ in range(PROXY_REFERENCE)], **DECOMPOSITION,
                           **IN_NETWORK)
    from autovit.latmodel.lut import load_lut

    return LutOracle(load_lut(spec.removeprefix("lut:")), profile, **DECOMPOSITION, **IN_NETWORK)
