"""Measure blocks on this machine and fill a lookup table (resumable, Ctrl-C safe).

Each block is measured in `policy.rounds` bursts, one pass over all blocks per round, so a
block's bursts are spread over the whole run. Shared and virtual machines slow some bursts down
(this project's 2-vCPU VM: 1.6-1.8x, in phases of seconds to minutes and for small blocks from one
burst to the next), so an entry is the fast state of its rounds (measure.fast_state_ms: the median
of those within 25 % of the fastest). With a drift monitor (the default of `autovit-lat profile`),
a reference model is timed before every few bursts and the fast state of its bursts is the LUT's
reference speed (`reference.ref_ms`), to which a later validation run is scaled
(measure.DriftMonitor). Every round's raw median is stored.

Modes:
- isolated: the block alone, from its own input to its own output, one runtime call.
- ablation: the paper's way, a difference of two models: latency(lead-in + block) minus
  latency(lead-in). The lead-in (a 1x1 convolution, or a linear layer for token blocks) hands
  the block its input the way a preceding layer would, so the per-call cost of the runtime and
  the layout conversions at the model's edges cancel out of the difference.

Whole networks (`NetworkItem`, any source that can build its model: `timm:NAME`, `autovit:xxs`)
can be timed in the same rounds as the blocks, into the LUT's `networks`: measured in the same
run, they tell calibrate what a network costs beyond its blocks timed one by one on this
machine as it runs today (a relation that moved by ~10 % from one day to the next on this
project's VMs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from autovit.latmodel.blocks import Block
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.lut import Lut
from autovit.latmodel.measure import DriftMonitor, Measurement, TimingPolicy, fast_state_ms
from autovit.latmodel.runner import Runner, drift_monitor, measure_rounds, prepare  # noqa: F401 - drift_monitor re-exported


def lead_in(block: Block):
    """The layer that feeds `block` in ablation mode: it keeps the block's input shape. A block
    may bring its own (a `lead_in()` method); otherwise a 1x1 convolution + BatchNorm + SiLU for
    an image input (N, C, H, W), a linear layer for tokens (..., C)."""
    from torch import nn

    if hasattr(block, "lead_in"):
        return block.lead_in()
    shape = block.input_shape()
    if len(shape) != 4:
        return nn.Linear(shape[-1], shape[-1])
    c = shape[1]
    return nn.Sequential(nn.Conv2d(c, c, 1, 1, 0, bias=False), nn.BatchNorm2d(c), nn.SiLU())


@dataclass(frozen=True)
class NetworkItem:
    """A whole network to time beside the blocks, named by a registered source."""

    source: str

    @property
    def key(self) -> str:
        return "network|" + self.source


Item = Union[Block, NetworkItem]


def block_runners(block: Item, mode: str, backend: str, threads: int) -> list[Runner]:
    """[block] for isolated mode, [lead-in + block, lead-in] for ablation; [network] for a
    whole network in either mode (it is timed whole)."""
    from torch import nn

    if isinstance(block, NetworkItem):
        from autovit.latmodel.sources import network_module

        return [prepare(*network_module(block.source), backend, threads)]
    shape = block.input_shape()
    if mode == "isolated":
        return [prepare(block.build(), shape, backend, threads)]
    return [prepare(nn.Sequential(lead_in(block), block.build()), shape, backend, threads),
            prepare(lead_in(block), shape, backend, threads)]


def _add_round(entry: dict | None, mode: str, bursts: list[Measurement], reference_ms: float | None) -> dict:
    """One round's burst(s) appended to a LUT entry's raw lists (values are set by _settle)."""
    e = {k: v for k, v in (entry or {}).items() if k not in ("mode", "block")}
    e.setdefault("round_medians", [])
    if mode == "ablation":
        e.setdefault("with_round_ms", []).append(bursts[0].median_ms)
        e.setdefault("without_round_ms", []).append(bursts[1].median_ms)
        e["round_medians"].append(bursts[0].median_ms - bursts[1].median_ms)
    else:
        e["round_medians"].append(bursts[0].median_ms)
    if reference_ms is not None:
        e.setdefault("round_reference_ms", []).append(reference_ms)
    m = bursts[0]
    e.update(iqr_ms=m.iqr_ms, repeats=m.repeats, outliers=m.outliers, ci_pct=m.ci_pct, converged=m.converged)
    return e


def _settle(e: dict, mode: str) -> None:
    """Set an entry's median_ms: the fast state of its rounds (measure.fast_state_ms)."""
    if mode == "ablation":
        with_ms = fast_state_ms(e["with_round_ms"])
        without_ms = fast_state_ms(e["without_round_ms"])
        diff = with_ms - without_ms
        # A block cheaper than the noise of the difference still gets a positive entry (LUT
        # entries must be > 0), flagged so that nobody mistakes it for a measurement.
        floor = 0.01 * with_ms
        e.update(median_ms=max(diff, floor), below_noise=diff < floor, with_ms=with_ms, without_ms=without_ms)
    else:
        e["median_ms"] = fast_state_ms(e["round_medians"])


def settle_lut(lut: Lut, monitor: DriftMonitor | None) -> None:
    """Set every entry from its rounds, and the LUT's reference speed `ref_ms` (the fast state of
    every reference burst its entries hold; this run's bursts if none do): what a later
    validation run is scaled to. Entries are not rescaled between runs: a LUT filled over runs
    at different machine speeds mixes them (`run_speed_change` tells the caller)."""
    refs = [r for e in (*lut.entries.values(), *lut.networks.values()) for r in e.get("round_reference_ms", [])]
    if not refs and monitor is not None:
        refs = list(monitor.history)
    if refs:
        model = monitor.model if monitor is not None else lut.reference.get("model", "")
        lut.reference = {"model": model, "ref_ms": fast_state_ms(refs)}
    for e in lut.entries.values():
        if "round_medians" in e:
            _settle(e, e["mode"])
    for e in lut.networks.values():
        _settle(e, "isolated")


def run_speed_change(ref_ms_before: float | None, monitor: DriftMonitor | None) -> float | None:
    """This run's reference speed over the LUT's before it (1.2: this run was 20 % slower), or
    None when either is unknown."""
    if not ref_ms_before or monitor is None or monitor.run_ms is None:
        return None
    return monitor.run_ms / ref_ms_before


def rounds_done(lut: Lut, mode: str, block: Item) -> int:
    if isinstance(block, NetworkItem):
        return len(lut.networks.get(block.source, {}).get("round_medians", []))
    e = lut.entries.get(Lut.entry_key(mode, block))
    if e is None:
        return 0
    return len(e.get("round_medians", [])) or 1  # entries written before rounds existed count as one


def profile_blocks(blocks: list[Item], lut: Lut, path: str | Path, backend: str, threads: int,
                   mode: str, policy: TimingPolicy,
                   on_progress: Callable[[Item, Measurement | None, str | None], None] | None = None,
                   monitor: DriftMonitor | None = None,
                   after_round: Callable[[int], None] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Measure every block (or whole network) of `blocks` until it has `policy.rounds` rounds in
    `lut`, one pass over them per round (runner.measure_rounds), saving after each burst. With a
    drift monitor, the LUT records its reference speed (settle_lut); `after_round(round)`
    follows every pass (runner.measure_rounds). Returns (items completed, failures)."""
    if mode not in ("isolated", "ablation"):
        raise AutoVitError(f"unknown mode '{mode}': use isolated or ablation")
    completed = set()

    def record(block: Item, bursts: list[Measurement], reference_ms: float | None) -> None:
        if isinstance(block, NetworkItem):
            lut.networks[block.source] = _add_round(lut.networks.get(block.source), "isolated", bursts, reference_ms)
        else:
            key = Lut.entry_key(mode, block)
            lut.add(mode, block, _add_round(lut.entries.get(key), mode, bursts, reference_ms))
        settle_lut(lut, monitor)
        lut.save(path)
        if rounds_done(lut, mode, block) >= policy.rounds:
            completed.add(block.key)

    failures = measure_rounds(blocks, policy.rounds, policy, key=lambda b: b.key,
                              runners=lambda b: block_runners(b, mode, backend, threads), record=record,
                              done=lambda b, r: rounds_done(lut, mode, b) > r, monitor=monitor, on_step=on_progress,
                              after_round=after_round)
    return len(completed), list(failures.items())
