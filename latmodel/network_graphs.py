"""Graphs of measured networks: timm rows exported once and cached, ONNX and arch-JSON rows read.

A timm row is built with random weights, re-parameterised (`timm.utils.reparameterize_model`:
MobileOne, FastViT, RepViT, ... as deployed) and exported to ONNX in a worker process (a failing
export can print whole IR graphs and must not reach stdout, where --json goes). The op graph is
cached as a pickle under CACHE/graphs-v{GRAPH_CACHE_VERSION}/KEY.pkl: the cache is this tool's
own output, never a file someone else gave you (unpickling runs code).
"""
from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from autovit.latmodel.errors import AutoVitError

# Bump when what an export puts in the graph changes (v2: BatchNorm kept, not folded; v3: the exp
# bands of constants added to activations, graph.exp_bands).
GRAPH_CACHE_VERSION = 3
# Above this share of ops with unresolved output shapes, a graph's price is guesswork: skipped.
MAX_UNRESOLVED = 0.1
# What timm.utils.reparameterize_model calls on a module.
REPARAM_METHODS = ("reparameterize", "fuse", "switch_to_deploy")


def default_cache() -> Path:
    """$AUTOVIT_HOME/cache (default ~/.autovit/cache)."""
    return Path(os.environ.get("AUTOVIT_HOME", Path.home() / ".autovit")) / "cache"


def graph_path(cache: Path, key: str) -> Path:
    return Path(cache) / f"graphs-v{GRAPH_CACHE_VERSION}" / f"{key.replace('/', '_')}.pkl"


def failed_exports(cache: Path, keys) -> dict[str, str]:
    """Why each of `keys` could not be exported, as an earlier run recorded it (a `.skip` file beside
    where its graph would be): a failed export is not tried again, which takes minutes for the large
    models the exporter rejects. Delete the file to try again (e.g. after upgrading timm or torch)."""
    out = {}
    for k in keys:
        marker = graph_path(cache, k).with_suffix(".skip")
        if marker.exists():
            out[k] = marker.read_text().strip()
    return out


def record_failures(cache: Path, status: dict[str, str]) -> None:
    """Write the `.skip` marker of each export in `status` that failed (not one whose worker crashed)."""
    from autovit.latmodel.io import atomic_write_text

    for k, st in status.items():
        if st.startswith("skip:") and "worker failed" not in st:
            atomic_write_text(graph_path(cache, k).with_suffix(".skip"), st + "\n")


def quiet_worker() -> None:
    """The TorchScript exporter prints whole IR graphs on failure: keep stdout for our JSON."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def split_head_attention(model) -> int:
    """Make every timm `Attention` of `model` compute head by head from slices of the last axis,
    as Apple's Core ML converter (apple/ml-cvnets `cvnets-convert`) does: same result, no rank-5
    tensor. Returns how many it changed; a model without timm attention is left as it is."""
    import types

    import torch
    from timm.layers.attention import Attention

    def forward(self, x, attn_mask=None, is_causal=False):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = zip(*(t.chunk(self.num_heads, dim=-1) for t in (q * self.scale, k, v)))
        out = [torch.matmul(torch.matmul(qh, kh.transpose(-1, -2)).softmax(dim=-1), vh) for qh, kh, vh in heads]
        return self.proj(torch.cat(out, dim=-1))

    plain = [m for m in model.modules() if isinstance(m, Attention) and getattr(m, "gate", None) is None
             and all(isinstance(getattr(m, n), torch.nn.Identity) for n in ("q_norm", "k_norm", "norm"))]
    for m in plain:
        m.forward = types.MethodType(forward, m)
    return len(plain)


def export_timm(model: str, size: int, out: str, reparam: bool = False, form: str = "timm") -> str:
    """Worker: timm model at `size` px -> OpGraph pickle at `out`. Returns 'ok' or 'skip: why'.
    `reparam`: fuse the training-time branches first; `form` "cvnets": split_head_attention."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from autovit.latmodel.io import atomic_write_bytes
    from autovit.latmodel.sources import module_graph, timm_model

    try:
        m, _ = timm_model(model, size)
        if reparam:
            from timm.utils import reparameterize_model

            plain = Path(out).with_name(Path(out).name.replace("timm-rep__", "timm__", 1))
            if plain.exists() and not any(hasattr(x, a) for x in m.modules() for a in REPARAM_METHODS):
                atomic_write_bytes(Path(out), plain.read_bytes())  # nothing to fuse: the plain export is it
                return "ok"
            m = reparameterize_model(m)
        if form == "cvnets":
            split_head_attention(m)
        g = module_graph(m, (1, 3, size, size), source=f"timm:{model}@{size}" + ("" if form == "timm" else f" ({form})"))
    except AutoVitError as e:
        return f"skip: {str(e).split(';')[0]}"
    except Exception as e:  # a model our exporter or onnx cannot handle: counted, not fatal
        return f"skip: export failed ({type(e).__name__})"
    atomic_write_bytes(Path(out), pickle.dumps(g))
    return "ok"


def run_exports(jobs: list[tuple], workers: int, label: str) -> dict[str, str]:
    """Run export jobs (fn, key, args...) in worker processes with a progress bar on stderr;
    returns key -> the job's answer ('ok' or 'skip: why')."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    status: dict[str, str] = {}
    if not jobs:
        return status
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), transient=False, console=Console(stderr=True)) as prog:
        task = prog.add_task(label, total=len(jobs))
        with ProcessPoolExecutor(max_workers=workers, initializer=quiet_worker) as pool:
            futs = {pool.submit(fn, *args): key for fn, key, *args in jobs}
            for f in as_completed(futs):
                try:
                    status[futs[f]] = f.result()
                except Exception as e:  # a crashed worker skips one model, not the run
                    status[futs[f]] = f"skip: worker failed ({type(e).__name__})"
                prog.advance(task)
    return status


def unresolved_share(g) -> float:
    """Share of ops whose output shape ONNX inference could not resolve (priced blind)."""
    unknown = sum(1 for n in g.order if any(g.tensors[o].shape is None for o in g.op(n).outputs))
    return unknown / max(len(g), 1)


def build_models(rows: list, cache: Path, workers: int = 1,
                 label: str = "export timm models") -> tuple[dict[str, Any], dict[str, str]]:
    """LatencyModel per graph key of `rows` (each with graph_key, timm_name, resolution, form and
    optionally path), and the reason for each key that could not be built."""
    from autovit.latmodel.estimate import LatencyModel

    keys = {r.graph_key: r for r in rows}
    todo = [(export_timm, k, r.timm_name, r.resolution, str(graph_path(cache, k)), True, r.form)
            for k, r in keys.items() if _is_timm(r) and not graph_path(cache, k).exists()]
    if todo:
        graph_path(cache, "x").parent.mkdir(parents=True, exist_ok=True)
    status = run_exports(todo, workers, label)
    models, skip = {}, {}
    for k in sorted(keys):
        g, why = _graph(keys[k], cache, status)
        if g is None:
            skip[k] = why
        elif unresolved_share(g) > MAX_UNRESOLVED:
            skip[k] = "shapes not inferable"
        else:
            models[k] = LatencyModel(g)
    return models, skip


def _is_timm(row) -> bool:
    return getattr(row, "path", None) is None and bool(row.timm_name)


def _graph(row, cache: Path, status: dict[str, str]):
    """(graph, None) or (None, why not)."""
    path = getattr(row, "path", None)
    if path is not None:
        return _file_graph(Path(path))
    if not row.timm_name:
        return None, "no path and no timm_name: nothing to build"
    gp = graph_path(cache, row.graph_key)
    if not gp.exists():
        return None, status.get(row.graph_key, "skip: export failed").removeprefix("skip: ")
    return pickle.loads(gp.read_bytes()), None


def _file_graph(path: Path):
    from autovit.latmodel.sources import graph_for

    if not path.is_file():
        return None, f"{path.name}: no such file"
    try:
        return graph_for(str(path)), None
    except AutoVitError as e:
        return None, " ".join(str(e).split())[:200]


def coreml_profile(profile, fmt: str):
    """`profile` for a model in Core ML format `fmt`; a profile without a Neural Engine as it is."""
    from autovit.latmodel.neural_engine import for_format

    return profile if profile.ane is None else for_format(profile, fmt)
