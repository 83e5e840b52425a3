"""Teachers for knowledge distillation, loaded from local files only (nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autovit.latmodel.errors import AutoVitError


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from autovit.nas.checkpoint import load_torch_file

    obj = load_torch_file(path, "torch checkpoint for --teacher-ckpt", "give the teacher's weights as a state dict "
                          "saved with torch.save")
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AutoVitError(f"--teacher-ckpt {path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_teacher(spec: str, ckpt: str | None, num_classes: int, trust_code: bool = False) -> nn.Module:
    """`timm:NAME` + a local checkpoint, or a model file exported by `autovit-nas export`
    (`.pt`), or TorchScript when `trust_code` (loading TorchScript runs the code inside it).
    Raises AutoVitError naming what does not match."""
    if spec.startswith("timm:"):
        import timm

        name = spec.removeprefix("timm:")
        if not ckpt:
            raise AutoVitError(f"--teacher {spec} needs --teacher-ckpt FILE: pretrained weights cannot be "
                               "downloaded here")
        if name not in timm.list_models():
            raise AutoVitError(f"--teacher {spec}: timm has no model '{name}'")
        p = Path(ckpt)
        if not p.is_file():
            raise AutoVitError(f"--teacher-ckpt {ckpt}: file not found")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        sd = _state_dict(p)
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
        if missing or unexpected or wrong:
            parts = [f"{len(v)} {what} (e.g. '{v[0]}')" for v, what in
                     ((missing, "missing keys"), (unexpected, "unexpected keys"), (wrong, "shape mismatches")) if v]
            raise AutoVitError(f"--teacher-ckpt {ckpt} does not match {spec} with {num_classes} classes: "
                               + ", ".join(parts))
        model.load_state_dict(sd)
        return model
    p = Path(spec)
    if not p.is_file():
        raise AutoVitError(f"--teacher {spec}: not timm:NAME, supernet-max, or an existing model file")
    from autovit.nas.export import load_model_file

    return load_model_file(p, trust_code=trust_code)
