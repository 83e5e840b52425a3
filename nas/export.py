"""Export AutoViT subnets (pt, ONNX, TorchScript, Core ML) and read them back; the conversions of
any torch module are latmodel/convert.py."""
from __future__ import annotations

from pathlib import Path

import torch

# The conversions live in latmodel (the block export uses them too); their names stay importable here.
from autovit.latmodel.convert import (ONNX_OPSET, export_coreml, export_onnx, export_onnx_bytes,  # noqa: F401
                                      torchscript_bytes)
from autovit.latmodel.io import atomic_write_bytes

# ---- standalone subnets ------------------------------------------------------------------------
MODEL_FORMAT = "autovit-model/1"
EXPORT_FORMATS = ("pt", "onnx", "torchscript", "coreml")
SUFFIX = {"pt": ".pt", "onnx": ".onnx", "torchscript": ".torchscript.pt", "coreml": ".mlpackage"}


def save_pt(model: torch.nn.Module, path: str | Path) -> Path:
    """State dict + architecture JSON in one torch file; `load_pt` rebuilds the model in one call."""
    import io as _io

    buf = _io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "arch": model.arch.to_json(), "state_dict": model.state_dict()}, buf)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p


def load_pt(path: str | Path) -> torch.nn.Module:
    """The AutoViT model saved by `save_pt` (eval mode); weights only, its architecture checked."""
    from autovit.latmodel.checks import parse_json
    from autovit.latmodel.errors import AutoVitError
    from autovit.nas.arch import arch_from_dict
    from autovit.nas.builder import build_model
    from autovit.nas.checkpoint import load_torch_file, shorten

    fix = "export one with 'autovit-nas export --format pt'"
    obj = load_torch_file(path, "AutoViT model file", fix)
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT or not isinstance(obj.get("arch"), str):
        raise AutoVitError(f"{path}: not an AutoViT model file ({fix})")
    try:
        model = build_model(arch_from_dict(parse_json(obj["arch"], f"{path}: architecture")))
        model.load_state_dict(obj["state_dict"])
    except (AutoVitError, RuntimeError, TypeError, AttributeError) as e:
        raise AutoVitError(f"{path}: not a model file this version wrote ({shorten(str(e))}); {fix}") from None
    return model.eval()


def load_model_file(path: str | Path, trust_code: bool = False) -> torch.nn.Module:
    """An AutoViT `.pt` export, or TorchScript when `trust_code`: TorchScript is recognised by
    its archive's member names, never by loading it, because loading it runs its code."""
    from autovit.latmodel.errors import AutoVitError
    from autovit.nas.checkpoint import is_torchscript, shorten

    if is_torchscript(path):
        if not trust_code:
            raise AutoVitError(f"{path} is TorchScript, which runs its own code when loaded (it could read or write "
                               "any file); pass --trust-teacher-code only if you made it or trust who did, or "
                               "export the teacher with 'autovit-nas export --format pt'")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - a broken archive fails in many ways
            raise AutoVitError(f"{path}: not a loadable TorchScript file ({shorten(str(e))})") from None
    return load_pt(path)


def _max_rel_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def export_model(model: torch.nn.Module, fmt: str, path: str | Path, resolution: int,
                 tolerance: float = 1e-4) -> dict:
    """Write `model` (an AutoViT static model) in `fmt`; check what can be run here.

    Returns {"path", "format", "check": ..., "max_rel_diff": ...}. ONNX is run with
    onnxruntime and TorchScript with torch, both compared with the eager model on one random
    input (max |diff| / max |logit| <= tolerance). Core ML cannot run on Linux: the package is
    converted, saved and re-read, its input and output checked.
    """
    from autovit.latmodel.errors import AutoVitError

    if fmt not in EXPORT_FORMATS:
        raise AutoVitError(f"unknown --format '{fmt}': use one of {', '.join(EXPORT_FORMATS)}")
    model = model.eval()
    p = Path(path)
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    out = {"path": str(p), "format": fmt}
    if fmt == "pt":
        save_pt(model, p)
        with torch.no_grad():
            out["max_rel_diff"] = _max_rel_diff(load_pt(p)(x).numpy(), ref)
        out["check"] = "reloaded with autovit.nas.export.load_pt"
    elif fmt == "onnx":
        import onnxruntime as ort

        export_onnx(model, tuple(x.shape), p)
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        out["max_rel_diff"] = _max_rel_diff(sess.run(None, {"input": x.numpy()})[0], ref)
        out["check"] = "onnxruntime CPU output vs torch"
    elif fmt == "torchscript":
        import io as _io

        data = torchscript_bytes(model, x)
        atomic_write_bytes(p, data)
        with torch.no_grad():  # the bytes written, from memory: nothing is loaded from a path
            out["max_rel_diff"] = _max_rel_diff(torch.jit.load(_io.BytesIO(data))(x).numpy(), ref)
        out["check"] = "torch.jit.load output vs eager"
    else:
        out.update(export_coreml(model, x, p))
    if "max_rel_diff" in out and not out["max_rel_diff"] <= tolerance:
        raise AutoVitError(f"{fmt} export of {p} does not reproduce the model: max relative difference "
                           f"{out['max_rel_diff']:.2e} > {tolerance:g}")
    return out
