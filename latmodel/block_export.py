"""Blocks as model files, to be timed on a device this tool cannot run on (an iPhone).

`export_blocks` writes every block (random weights, eval mode, batch 1 at its own input
shape, as `profile` times it in isolated mode) as a Core ML package, an ONNX file or a
TorchScript file, and `manifest.json`:

    {"schema": "autovit-block-manifest/1", "format": "coreml", "hw": "iphone13" | null,
     "mode": "isolated",
     "blocks": [{"key", "kind", "input_shape", "file", "block": {the block's description}}]}

`lut_import.py` reads it back with the measured times. Written against the duck-typed block
interface (kind, key, input_shape(), build(), to_dict()); `block_key` is the one place that
names the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from autovit.latmodel.checks import dumps
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.io import atomic_write_text

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "autovit-block-manifest/1"
# --format -> file suffix, and the LUT backend that stands for the runtime that times it.
SUFFIX = {"coreml": ".mlpackage", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
BACKEND = {"coreml": "coreml", "onnx": "onnxruntime", "torchscript": "torch"}
# The block's output tensor in every exported file (the input is "input").
OUTPUT_NAME = "output"


def block_key(block) -> str:
    """The key a LUT entry of `block` is stored under (without the mode)."""
    return block.key


def block_file(index: int, block, fmt: str) -> str:
    """A short, portable file name: the key's ':' ',' '=' are left to the manifest."""
    return f"{index:03d}-{block.kind}{SUFFIX[fmt]}"


def export_block(block, fmt: str, path: Path) -> dict[str, Any]:
    """Write one block in `fmt` at `path` (atomically); Core ML packages are re-read."""
    import torch

    from autovit.latmodel.convert import export_coreml, export_onnx, torchscript_bytes
    from autovit.latmodel.io import atomic_write_bytes

    module, shape = block.build(), tuple(block.input_shape())
    if fmt == "onnx":
        export_onnx(module, shape, path, output_name=OUTPUT_NAME)
        return {}
    example = torch.zeros(shape)
    if fmt == "torchscript":
        atomic_write_bytes(path, torchscript_bytes(module, example))
        return {}
    return export_coreml(module, example, path, OUTPUT_NAME)


def export_blocks(blocks: list, fmt: str, folder: Path, hw: str | None = None,
                  step: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Export every block into `folder` and write its manifest (last, so a folder with a
    manifest is complete); returns the manifest."""
    if fmt not in SUFFIX:
        raise AutoVitError(f"unknown export format '{fmt}': use one of {', '.join(SUFFIX)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, b in enumerate(dict.fromkeys(blocks)):
        name = block_file(i, b, fmt)
        try:
            export_block(b, fmt, folder / name)
        except AutoVitError:
            raise
        except Exception as e:  # the converter refuses a block: say which, keep the rest on disk
            raise AutoVitError(f"block {block_key(b)}: {fmt} export failed ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:120] if str(e) else ''}); drop it from the block set") from None
        entries.append({"key": block_key(b), "kind": b.kind, "input_shape": list(b.input_shape()), "file": name,
                        "block": b.to_dict()})
        if step:
            step(b)
    manifest = {"schema": MANIFEST_SCHEMA, "format": fmt, "hw": hw, "mode": "isolated", "blocks": entries}
    atomic_write_text(folder / MANIFEST, dumps(manifest, indent=1) + "\n")
    return manifest
