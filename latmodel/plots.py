"""Pictures of estimates: latency breakdown bars and kernel rooflines (PNG)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autovit.latmodel.costs import CATEGORIES  # noqa: E402
from autovit.latmodel.estimate import Estimate  # noqa: E402
from autovit.latmodel.hardware import HardwareProfile  # noqa: E402
from autovit.latmodel.io import atomic_write_bytes  # noqa: E402

_COLORS = dict(zip(CATEGORIES, plt.get_cmap("tab10").colors))


def _save(fig, path: str | Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def breakdown_png(estimates: list[Estimate], path: str | Path) -> Path:
    """One stacked bar per estimate: ms per op category (the paper's latency-breakdown figure)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(estimates) + 3), 4.2))
    labels = [f"{e.source}\n{e.hw} b{e.batch} {e.dtype}" for e in estimates]
    bottoms = [0.0] * len(estimates)
    for cat in CATEGORIES:
        vals = [e.breakdown.get(cat, 0.0) for e in estimates]
        if sum(vals) <= 0:
            continue
        ax.bar(labels, vals, bottom=bottoms, label=cat, color=_COLORS[cat], width=0.6)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    for i, e in enumerate(estimates):
        ax.text(i, bottoms[i], f"{e.latency_ms:.3g} ms", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title("Predicted latency by op category")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", labelsize=7)
    if len(estimates) > 4:
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
    return _save(fig, path)


def roofline_png(est: Estimate, profile: HardwareProfile, path: str | Path) -> Path:
    """Kernels on the device roofline: arithmetic intensity (FLOP/byte) vs achieved FLOP/s."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    peak = profile.matrix_tflops[est.dtype] * 1e12
    vpeak = profile.vector_tflops[est.dtype] * 1e12
    bw = profile.dram_gbps * 1e9
    xs = [10 ** (i / 10) for i in range(-20, 41)]
    ax.plot(xs, [min(peak, x * bw) for x in xs], "k-", lw=1, label="matrix peak / DRAM")
    ax.plot(xs, [min(vpeak, x * bw) for x in xs], "k--", lw=1, label="vector peak / DRAM")
    for cat in CATEGORIES:
        pts = [(t.flops / t.bytes, t.flops / (t.device_ms * 1e-3), t.ms) for t in est.kernels
               if t.kernel.category == cat and t.bytes > 0 and t.flops > 0 and t.device_ms > 0]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[8 + 400 * p[2] / est.latency_ms for p in pts],
                       alpha=0.6, color=_COLORS[cat], label=cat)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"{est.source} on {est.hw} (b{est.batch}, {est.dtype}); marker size = share of latency")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def pareto_front(latency_ms, top1) -> "np.ndarray":
    """Indices of the candidates strictly more accurate than every faster one, fastest first."""
    import numpy as np

    lat, acc = np.asarray(latency_ms, float), np.asarray(top1, float)
    order = np.argsort(lat, kind="stable")
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], acc[order][:-1]]))
    return order[acc[order] > best_before]


def pareto_png(latency_ms, top1, budget_ms: float | None, best: int, device: str, path: str | Path) -> Path:
    """Accuracy vs. latency of every evaluated candidate, the budget line and the winner."""
    import numpy as np

    lat, acc = np.asarray(latency_ms, float), np.asarray(top1, float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(lat, acc, s=12, alpha=0.6, label="evaluated")
    front = pareto_front(lat, acc)
    # a step: between two front points the faster one is the best available
    ax.step(lat[front], acc[front], where="post", color="C1", label="Pareto front")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="C3", ls="--", label=f"budget {budget_ms:g} ms")
    ax.scatter([lat[best]], [acc[best]], marker="*", s=160, color="C2", zorder=3, label="winner")
    ax.set_xlabel(f"latency on {device} (ms, the search's oracle)")
    ax.set_ylabel("validation top-1 (%)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def best_so_far_png(curves: dict[str, list[list[float]]], path: str | Path, ylabel: str = "best validation top-1 (%)",
                    reference: float | None = None) -> Path:
    """Best-so-far against evaluations, one line per strategy (mean over seeds) with a band from
    the worst to the best seed; `curves[strategy]` holds one curve per seed."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, runs) in enumerate(curves.items()):
        n = min(len(r) for r in runs)
        arr = np.array([r[:n] for r in runs], float)
        x = np.arange(1, n + 1)
        ax.plot(x, arr.mean(axis=0), color=f"C{i}", label=f"{name} (mean of {len(runs)} seeds)")
        ax.fill_between(x, arr.min(axis=0), arr.max(axis=0), color=f"C{i}", alpha=0.18, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1)
    ax.set_xlabel("accuracy evaluations")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
