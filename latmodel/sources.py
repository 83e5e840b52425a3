"""Turn what a user names into an op graph: an ONNX file, `timm:NAME`, `autovit:PRESET`, or an
architecture JSON file."""
from __future__ import annotations

from pathlib import Path

import onnx

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.graph import OpGraph, build_graph, graph_from_onnx_file


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
    from autovit.nas.export import export_onnx_bytes

    data = export_onnx_bytes(model, input_shape, with_weights=False, fold_batchnorm=False)
    return build_graph(onnx.load_from_string(data), source=source)


def arch_graph(arch, source: str = "") -> OpGraph:
    """Op graph of an AutoViT ArchConfig at batch 1."""
    from autovit.nas.builder import build_model

    side = arch.resolution
    return module_graph(build_model(arch), (1, 3, side, side), source=source or arch.name or "arch")


def graph_for(source: str, input_shape: tuple[int, ...] | None = None) -> OpGraph:
    """The op graph at batch 1 (or the ONNX file's own batch) for any supported source."""
    if source.startswith("timm:"):
        model, side = timm_model(source[5:])
        return module_graph(model, (1, 3, side, side), source=source)
    if source.startswith("autovit:"):
        from autovit.nas.presets import load_preset

        return arch_graph(load_preset(source), source)
    p = Path(source)
    if p.suffix.lower() == ".json":
        from autovit.nas.arch import load_arch
        from autovit.nas.space import load_space

        arch = load_arch(p)
        if arch.space:
            load_space(arch.space).check(arch)
        return arch_graph(arch, source)
    if not p.exists() and p.suffix.lower() != ".onnx":
        raise AutoVitError(
            f"model '{source}' not found: give an .onnx file, an architecture .json, timm:NAME or autovit:xxs|xs|s")
    return graph_from_onnx_file(p, input_shape)
