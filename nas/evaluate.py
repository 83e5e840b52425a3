"""Subnets out of a trained supernet: pick one, recalibrate its BatchNorm, measure or export it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import ArchConfig, load_arch
from autovit.nas.checkpoint import checkpoint_space, load_checkpoint
from autovit.nas.data import open_data
from autovit.nas.space import SearchSpace
from autovit.nas.supernet import Supernet
from autovit.nas.train import DistContext, TrainConfig, accuracy, evaluate_subnet, inherited_model, make_loaders


def supernet_from_checkpoint(path: str | Path, space: str | None = None,
                             ema: bool = False) -> tuple[Supernet, TrainConfig, dict[str, Any]]:
    """(supernet with the checkpoint's weights, its training configuration, the raw checkpoint)."""
    ck = load_checkpoint(path)
    sp = checkpoint_space(ck, space, path)
    net = Supernet(sp)
    weights = ck["ema"] if ema and ck.get("ema") is not None else ck["model"]
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        from autovit.nas.checkpoint import shorten

        raise AutoVitError(f"{path}: weights do not fit the saved space ({shorten(str(e), 160)})") from None
    return net.eval(), TrainConfig.from_saved(ck["config"]), ck


def resolve_arch(spec: str, space: SearchSpace) -> ArchConfig:
    """`max`, `min`, `autovit:NAME` (a preset) or an architecture JSON file; checked against
    the supernet's space (the class count follows the supernet)."""
    if spec == "max":
        arch = space.largest()
    elif spec == "min":
        arch = space.smallest()
    elif spec.startswith("autovit:"):
        from autovit.nas.presets import load_preset

        arch = load_preset(spec)
    else:
        arch = load_arch(spec)
    arch = replace(arch, num_classes=space.num_classes)
    problems = space.problems(arch)
    if problems:
        raise AutoVitError(f"--arch {spec} is outside the supernet's space '{space.name}': {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return arch


def _eval_config(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """The training configuration as evaluation uses it: this process, the CPU, no teacher
    (evaluation never distils, so a teacher named in a checkpoint is never touched); checked."""
    return replace(cfg, workers=0, device="cpu", kd="none", teacher=None, teacher_ckpt=None, **changes).resolved()


def inherited_subnet(supernet: Supernet, arch: ArchConfig, cfg: TrainConfig, data: str | None = None,
                     bn_batches: int | None = None, batch_size: int | None = None,
                     recalibrate: bool = True) -> tuple[torch.nn.Module, Any]:
    """The static model of `arch` with inherited weights and, by default, BatchNorm statistics
    recalibrated on training images (the paper's evaluation protocol). Returns (model, loaders)."""
    cfg = _eval_config(cfg, data=data or cfg.data, val_images=None,
                       bn_batches=cfg.bn_batches if bn_batches is None else bn_batches,
                       batch_size=cfg.batch_size if batch_size is None else batch_size)
    ds = open_data(cfg.data, cfg.seed)
    if ds.num_classes != supernet.space.num_classes:
        raise AutoVitError(f"--data {cfg.data} has {ds.num_classes} classes, the supernet was trained on "
                           f"{supernet.space.num_classes}")
    loaders = make_loaders(cfg, ds, max(supernet.space.resolutions), DistContext())
    return inherited_model(supernet, arch, loaders.bn, torch.device("cpu"), recalibrate), loaders


def evaluate(supernet: Supernet, arch: ArchConfig, cfg: TrainConfig, **kw) -> dict[str, Any]:
    """Top-1/top-5 (%) on the validation set of the inherited, recalibrated subnet."""
    from autovit.nas.params import count_params

    model, loaders = inherited_subnet(supernet, arch, cfg, **kw)
    acc = accuracy(model, loaders.val, arch.resolution, torch.device("cpu"))
    return {**acc, "params": count_params(arch), "resolution": arch.resolution}


class AccuracyEvaluator:
    """arch -> top-1 (%) with inherited weights on a fixed validation subset, BatchNorm
    recalibrated; data loaders are built once (the search calls this hundreds of times)."""

    def __init__(self, supernet: Supernet, cfg: TrainConfig, val_images: int | None = 500,
                 bn_batches: int | None = None):
        self.supernet = supernet
        cfg = _eval_config(cfg, val_images=val_images, bn_batches=cfg.bn_batches if bn_batches is None else bn_batches)
        self.loaders = make_loaders(cfg, open_data(cfg.data, cfg.seed), max(supernet.space.resolutions),
                                    DistContext())

    def __call__(self, arch: ArchConfig) -> float:
        return evaluate_subnet(self.supernet, arch, self.loaders.bn, self.loaders.val, torch.device("cpu"))["top1"]
