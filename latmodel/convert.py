"""Convert a torch module with a fixed input shape to ONNX, TorchScript or Core ML (on any OS).

ONNX is what the latency model reads (sources.py) and what onnxruntime times (runner.py); all
three serve the network export (nas/export.py) and the block export (block_export.py).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.io import atomic_write_bytes

ONNX_OPSET = 17


def export_onnx_bytes(model: torch.nn.Module, input_shape: tuple[int, ...], opset: int = ONNX_OPSET,
                      with_weights: bool = True, fold_batchnorm: bool = True, output_name: str = "logits") -> bytes:
    """Serialized ONNX of `model` in eval mode for one fixed input shape (N, C, H, W).

    with_weights=False leaves the parameter values out (they become shaped graph inputs after
    'input'): enough for latency estimation and several times faster for large models.
    fold_batchnorm=False keeps inference-mode BatchNormalization nodes instead of folding them
    into the convolutions, so that a latency profile can decide whether its backend fuses them.
    """
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo, but it is several times
        # faster for fixed shapes and folds constants; both produce standard ONNX.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(input_shape),), buf, opset_version=opset, dynamo=False,
            do_constant_folding=True, input_names=["input"], output_names=[output_name],
            export_params=with_weights, keep_initializers_as_inputs=not with_weights,
            training=torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE,
        )
    return buf.getvalue()


def torchscript_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """A TorchScript trace of `model` on `example`, serialized."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        traced = torch.jit.trace(model.eval(), example)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def export_coreml(model: torch.nn.Module, example: torch.Tensor, path: Path, output_name: str = "logits") -> dict:
    """Core ML ML Program (.mlpackage, a folder) through torch.export, written atomically and
    re-read (its spec loaded back, inputs and outputs checked; Core ML cannot run on Linux).

    Converting a TorchScript trace fails under numpy 2 in coremltools 9: shapes read in
    forward become `aten::Int` casts of 1-element arrays, which numpy 2 refuses to turn into
    Python ints. torch.export specialises those shapes to constants for the fixed input, so
    no such cast reaches the converter.
    """
    import contextlib
    import logging
    import os
    import shutil
    import tempfile

    # coremltools says on import that Core ML cannot run here, and draws a tqdm bar per pass
    # pipeline while converting: both on stderr, over our own progress bar.
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        import coremltools as ct

        logging.getLogger("coremltools").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), (example,)).run_decompositions({})
        mlmodel = ct.convert(program, inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
                             outputs=[ct.TensorType(name=output_name)], convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = tmp / "model.mlpackage"  # coremltools insists on the suffix
        mlmodel.save(str(staged))
        spec = ct.utils.load_spec(str(staged))
        inputs = [i.name for i in spec.description.input]
        outputs = [o.name for o in spec.description.output]
        if inputs != ["input"] or outputs != [output_name]:
            raise AutoVitError(f"Core ML package has inputs {inputs} / outputs {outputs}, expected input / {output_name}")
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ops = sum(len(b.operations) for f in spec.mlProgram.functions.values() for b in f.block_specializations.values())
    return {"check": "converted and re-read (Core ML cannot run on Linux)", "mil_ops": ops,
            "inputs": inputs, "outputs": outputs}


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path,
                opset: int = ONNX_OPSET, output_name: str = "logits") -> Path:
    """Write the ONNX file atomically; returns its path."""
    p = Path(path)
    atomic_write_bytes(p, export_onnx_bytes(model, input_shape, opset, output_name=output_name))
    return p
