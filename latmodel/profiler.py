"""Measure blocks on this machine and fill a lookup table (resumable, Ctrl-C safe)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.lut import Lut
from autovit.latmodel.measure import Measurement, TimingPolicy, check_backend, cuda_event_timer, time_callable
from autovit.latmodel.modules import BlockSpec


def measure_block(block: BlockSpec, backend: str, threads: int, policy: TimingPolicy) -> Measurement:
    """Latency (ms) of one block at batch 1 with `backend` on `threads` threads."""
    import numpy as np
    import torch

    check_backend(backend)
    module = block.build()
    shape = block.input_shape()
    if backend == "onnxruntime":
        import onnxruntime as ort

        from autovit.nas.export import export_onnx_bytes

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(export_onnx_bytes(module, shape), opts, providers=["CPUExecutionProvider"])
        feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return time_callable(lambda: sess.run(None, feed), policy)
    if backend in ("torch", "torch-cuda"):
        cuda = backend == "torch-cuda"
        if not cuda:
            torch.set_num_threads(threads)
        device = "cuda" if cuda else "cpu"
        module = module.to(device)
        x = torch.randn(shape, device=device)

        def run() -> None:
            with torch.inference_mode():
                module(x)
        return time_callable(run, policy, timed=cuda_event_timer(torch) if cuda else None)
    raise AutoVitError(f"backend '{backend}' cannot measure here")  # coreml: check_backend already refused off macOS


def profile_blocks(blocks: list[BlockSpec], lut: Lut, path: str | Path, backend: str, threads: int,
                   mode: str, policy: TimingPolicy,
                   on_progress: Callable[[BlockSpec, Measurement | None, str | None], None] | None = None
                   ) -> tuple[int, list[tuple[str, str]]]:
    """Measure every block not yet in `lut`, saving after each. Returns (measured, failures)."""
    if mode != "isolated":
        raise AutoVitError("--mode ablation is not implemented yet; use --mode isolated")
    measured, failures = 0, []
    for block in blocks:
        if lut.has(mode, block):
            continue
        try:
            m = measure_block(block, backend, threads, policy)
        except AutoVitError:
            raise
        except Exception as e:  # a block the backend cannot run: report it, go on with the rest
            failures.append((block.key, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
            if on_progress:
                on_progress(block, None, failures[-1][1])
            continue
        lut.add(mode, block, m.to_dict())
        lut.save(path)
        measured += 1
        if on_progress:
            on_progress(block, m, None)
    return measured, failures
