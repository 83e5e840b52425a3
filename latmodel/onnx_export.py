"""ONNX export of any torch module at one fixed input shape: what the latency model reads and
what onnxruntime times."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from autovit.latmodel.io import atomic_write_bytes

ONNX_OPSET = 17


def export_onnx_bytes(model: torch.nn.Module, input_shape: tuple[int, ...], opset: int = ONNX_OPSET,
                      with_weights: bool = True, fold_batchnorm: bool = True) -> bytes:
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
            do_constant_folding=True, input_names=["input"], output_names=["logits"],
            export_params=with_weights, keep_initializers_as_inputs=not with_weights,
            training=torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE,
        )
    return buf.getvalue()


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path,
                opset: int = ONNX_OPSET) -> Path:
    """Write the ONNX file atomically; returns its path."""
    p = Path(path)
    atomic_write_bytes(p, export_onnx_bytes(model, input_shape, opset))
    return p
