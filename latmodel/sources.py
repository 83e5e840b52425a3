"""Turn what a user names into an op graph, through a registry of sources.

Built in: ONNX files and `timm:NAME`. Other packages register their own (`import autovit.nas`
adds `autovit:PRESET` and architecture .json files); `graph_for` is the one place a model name
is parsed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.graph import OpGraph, build_graph, graph_from_onnx_file


@dataclass(frozen=True)
class Source:
    """A kind of model name: `matches(name)` says whether it is one, `resolve(name, input_shape)`
    returns its op graph (input_shape: a fixed shape asked for on the command line, or None);
    `hint` is how error messages name it; `build(name)`, where the source has one, returns the
    model itself, (torch module, input shape at batch 1), for timing it on this machine."""

    name: str
    matches: Callable[[str], bool]
    resolve: Callable[[str, tuple[int, ...] | None], OpGraph]
    hint: str
    build: Callable[[str], tuple[Any, tuple[int, ...]]] | None = None


_SOURCES: dict[str, Source] = {}


def register_source(name: str, matches: Callable[[str], bool],
                    resolve: Callable[[str, tuple[int, ...] | None], OpGraph], hint: str = "",
                    build: Callable[[str], tuple[Any, tuple[int, ...]]] | None = None) -> None:
    """Add (or replace) a source. Sources registered later are tried first, so a package can
    claim names the built-in ones would otherwise take."""
    _SOURCES.pop(name, None)
    _SOURCES[name] = Source(name, matches, resolve, hint or name, build)


def _source_of(source: str) -> Source | None:
    """The registered source that reads `source` (the latest registered first), None if none."""
    return next((s for s in reversed(_SOURCES.values()) if s.matches(source)), None)


def source_kind(source: str) -> str | None:
    """The name of the registered source that reads `source` (timm, onnx, ...), None if none."""
    s = _source_of(source)
    return s.name if s else None


def network_module(source: str):
    """(torch module, input shape at batch 1) of a network named by a source that can build it
    (`timm:NAME`; `autovit:PRESET` once autovit.nas is imported), to time it here."""
    s = _source_of(source)
    if s is None or s.build is None:
        can = [x.hint for x in _SOURCES.values() if x.build is not None]
        raise AutoVitError(f"'{source[:60]}' cannot be built to time it here; give {' or '.join(can)}")
    return s.build(source)


def timm_model(name: str, img_size: int | None = None):
    """A timm model with random weights (nothing is downloaded) and its input side (px)."""
    import timm

    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise AutoVitError(f"unknown timm model '{name}'{hint}; see timm.list_models()")
    model = None
    if img_size is not None:
        try:  # models with a fixed token grid (ViTs) must be built for the size they will see
            model = timm.create_model(name, pretrained=False, img_size=img_size)
        except TypeError:
            model = None
    if model is None:
        model = timm.create_model(name, pretrained=False)
    side = img_size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return model.eval(), side


def module_graph(model, input_shape: tuple[int, ...], source: str = "") -> OpGraph:
    """Op graph of a torch module at a fixed input shape, exported as a latency model wants it:
    without weight values (parameters stay shaped graph inputs) and with BatchNorm kept as its
    own op (whether it fuses is the hardware profile's call)."""
    from autovit.latmodel.convert import export_onnx_bytes

    data = export_onnx_bytes(model, input_shape, with_weights=False, fold_batchnorm=False)
    return build_graph(onnx.load_from_string(data), source=source)


def graph_for(source: str, input_shape: tuple[int, ...] | None = None) -> OpGraph:
    """The op graph at batch 1 (or the ONNX file's own batch) for any registered source."""
    s = _source_of(source)
    if s is not None:
        return s.resolve(source, input_shape)
    hints = [s.hint for s in _SOURCES.values()]
    raise AutoVitError(f"model '{source}' not found: give {', '.join(hints[:-1])} or {hints[-1]}")


def _timm_module(source: str):
    model, side = timm_model(source[5:])
    return model, (1, 3, side, side)


def _timm_graph(source: str, _shape: tuple[int, ...] | None) -> OpGraph:
    return module_graph(*_timm_module(source), source=source)


def _is_onnx(source: str) -> bool:
    # An existing file of any other suffix is read as ONNX too (its parser names what is wrong).
    p = Path(source)
    return p.suffix.lower() == ".onnx" or p.exists()


register_source("onnx", _is_onnx, lambda s, shape: graph_from_onnx_file(Path(s), shape), "an .onnx file")
register_source("timm", lambda s: s.startswith("timm:"), _timm_graph, "timm:NAME", _timm_module)
