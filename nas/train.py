"""Supernet training (SPEC.md section 3, Algorithm 1) with the recipe pieces timm already has.

Each step samples one subnet uniformly (the paper) or, with `sampling="sandwich"` (beyond the
paper, after BigNAS), the largest, the smallest and k random subnets, the others distilled in
place from the largest. Subnets are drawn from a step-seeded generator, so every DDP rank draws
the same one without communicating. Parameters outside the active subnet get no gradient; DDP
runs with find_unused_parameters for them.

Checkpoints are written at epoch ends by rank 0 only, atomically; a resumed run continues the
loss curve of an uninterrupted one exactly (sampler order, clutter rendering and subnet draws
are functions of (seed, epoch, step); the global RNG states are saved).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autovit.cli.common import progress_bar
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.io import atomic_write_text
from autovit.nas.arch import ArchConfig
from autovit.nas.checkpoint import (checkpoint_space, load_checkpoint, remove_stale_temporaries, rng_state,
                                    save_checkpoint, set_rng_state)
from autovit.nas.data import DataSource, collate_skipping, open_data
from autovit.nas.space import SearchSpace, load_space, space_to_saved, with_resolutions
from autovit.nas.supernet import Supernet, recalibrate_bn

# Recipe presets. "deit" is the paper's (SPEC.md section 3, DeiT's hyper-parameters);
# "small" suits a few thousand small images on a CPU: no Mixup/CutMix/RandAugment, which
# slow convergence more than they help at this scale, and no flips (digits are not symmetric).
RECIPES: dict[str, dict[str, Any]] = {
    "deit": dict(batch_size=128, lr=5e-4, weight_decay=0.05, warmup_epochs=5, min_lr=1e-5, smoothing=0.1,
                 mixup=0.8, cutmix=1.0, randaug="rand-m9-mstd0.5-inc1", reprob=0.25, hflip=0.5,
                 crop_scale=(0.08, 1.0), clip_grad=None, ema=False),
    "small": dict(batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=1, min_lr=1e-5, smoothing=0.1,
                  mixup=0.0, cutmix=0.0, randaug=None, reprob=0.0, hflip=0.0,
                  crop_scale=(0.9, 1.0), clip_grad=5.0, ema=False),
}
SAMPLING = ("uniform", "sandwich")
KD_KINDS = ("none", "soft", "hard")
SUPERNET_TEACHER = "supernet-max"


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint. None = the recipe's value."""

    space: str = "xxs"
    data: str = "mnist5k"
    epochs: int = 10
    recipe: str = "small"
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    min_lr: float | None = None
    smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    randaug: str | None = None
    reprob: float | None = None
    hflip: float | None = None
    crop_scale: tuple[float, float] | None = None
    clip_grad: float | None = None
    ema: bool | None = None
    ema_decay: float = 0.998
    sampling: str = "uniform"
    sandwich_random: int = 2
    kd: str = "none"
    kd_alpha: float = 0.5
    kd_tau: float = 1.0
    teacher: str | None = None
    teacher_ckpt: str | None = None
    resolutions: tuple[int, ...] | None = None  # None: the data's native size for built-in sets, else the space's
    eval_random: int = 3        # fixed random subnets evaluated each epoch, besides max and min
    bn_batches: int = 8         # batches for BatchNorm recalibration before each evaluation
    eval_every: int = 1         # evaluate the followed subnets every N epochs (and after the last)
    steps_per_epoch: int | None = None  # cap (smoke tests, quick budgets); None: the whole training set
    val_images: int | None = None       # cap on validation images (quick runs); None: all
    workers: int = 0
    seed: int = 0
    amp: str = "auto"           # auto: fp16 on CUDA, off on CPU
    device: str = "auto"
    tensorboard: bool = False
    arch: dict[str, Any] | None = None  # train this one subnet alone (stand-alone baseline), as a dict
    recipe_values: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's values filled in where the user gave none; checked."""
        if self.recipe not in RECIPES:
            raise AutoVitError(f"unknown --recipe '{self.recipe}': use one of {', '.join(RECIPES)}")
        if self.sampling not in SAMPLING:
            raise AutoVitError(f"unknown --sampling '{self.sampling}': use one of {', '.join(SAMPLING)}")
        if self.kd not in KD_KINDS:
            raise AutoVitError(f"unknown --kd '{self.kd}': use one of {', '.join(KD_KINDS)}")
        if self.kd != "none" and not self.teacher:
            raise AutoVitError(f"--kd {self.kd} needs --teacher (timm:NAME with --teacher-ckpt, a checkpoint file, "
                               f"or {SUPERNET_TEACHER})")
        if self.epochs < 1:
            raise AutoVitError(f"--epochs must be >= 1, got {self.epochs}")
        if self.eval_every < 1:
            raise AutoVitError(f"--eval-every must be >= 1, got {self.eval_every}")
        if not 0 <= self.kd_alpha <= 1 or self.kd_tau <= 0:
            raise AutoVitError("--kd-alpha must lie in [0, 1] and --kd-tau be > 0")
        filled = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in RECIPES[self.recipe].items()}
        out = replace(self, **filled)
        if out.batch_size < 2 or out.lr <= 0:
            raise AutoVitError("--batch-size must be >= 2 and --lr > 0")
        out.recipe_values = filled
        return out

    def to_saved(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("crop_scale", "resolutions"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


class TrainingDiverged(AutoVitError):
    pass


# ---- distributed -------------------------------------------------------------------------------
@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str = "auto") -> "DistContext":
        """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
        use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise AutoVitError("--device cuda: no CUDA device is visible; use --device cpu")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
        if world > 1:
            import torch.distributed as dist

            if use_cuda:
                torch.cuda.set_device(dev)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(rank, world, local, dev)

    def sync_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's BatchNorm statistics. DDP broadcasts them before each
        forward, so after the last step each rank holds its own batch's update."""
        if self.world > 1:
            import torch.distributed as dist

            for b in module.buffers():
                dist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


# ---- data ----------------------------------------------------------------------------------------
def supernet_space(cfg: TrainConfig, data: DataSource) -> SearchSpace:
    """The space file with the data's class count and the training resolutions (a space of its
    own when they differ from the file's: 'xxs@32px')."""
    space = load_space(cfg.space)
    res = cfg.resolutions or ((data.native_size,) if data.native_size else space.resolutions)
    if min(res) < 16:
        raise AutoVitError(f"--resolutions must be >= 16 px, got {list(res)}")
    return with_resolutions(replace(space, num_classes=data.num_classes), res)


def transforms(cfg: TrainConfig, data: DataSource, size: int):
    from timm.data import create_transform

    common = dict(input_size=(3, size, size), interpolation="bilinear", mean=data.mean, std=data.std)
    train_tf = create_transform(
        is_training=True, scale=cfg.crop_scale, ratio=(0.9, 1.1) if data.native_size else (3 / 4, 4 / 3),
        hflip=cfg.hflip, vflip=0.0, color_jitter=None if data.native_size else 0.4, auto_augment=cfg.randaug,
        re_prob=cfg.reprob, re_mode="pixel", **common)
    eval_tf = create_transform(is_training=False, crop_pct=1.0 if data.native_size else 0.875, **common)
    return train_tf, eval_tf


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    sampler: torch.utils.data.distributed.DistributedSampler
    bn: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    train_set: Any


def make_loaders(cfg: TrainConfig, data: DataSource, size: int, ctx: DistContext) -> Loaders:
    from torch.utils.data import DataLoader, Subset
    from torch.utils.data.distributed import DistributedSampler

    train_tf, eval_tf = transforms(cfg, data, size)
    train_set = copy.copy(data.train)
    train_set.transform = train_tf
    bn_set, val_set = copy.copy(data.train), copy.copy(data.val)
    bn_set.transform, val_set.transform = eval_tf, eval_tf
    if len(train_set) < cfg.batch_size * ctx.world:
        raise AutoVitError(f"the training set has {len(train_set)} images, fewer than one batch "
                           f"({cfg.batch_size} x {ctx.world} processes); lower --batch-size")
    # Shuffle order is a function of (seed, epoch): identical on resume, disjoint across ranks.
    sampler = DistributedSampler(train_set, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    kw = dict(num_workers=cfg.workers, collate_fn=collate_skipping, pin_memory=ctx.device.type == "cuda")
    train = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, **kw)
    n_bn = min(len(bn_set), cfg.bn_batches * cfg.batch_size)
    bn_idx = np.random.default_rng(cfg.seed + 1).permutation(len(bn_set))[:n_bn].tolist()
    bn = DataLoader(Subset(bn_set, bn_idx), batch_size=cfg.batch_size, shuffle=False, **kw)
    if cfg.val_images is not None:
        val_set = Subset(val_set, list(range(min(cfg.val_images, len(val_set)))))
    val = DataLoader(val_set, batch_size=cfg.batch_size * 2, shuffle=False, **kw)
    return Loaders(train, sampler, bn, val, train_set)


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


# ---- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: nn.Module, loader, resolution: int, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 (%) of `model` (eval mode) on `loader`, inputs resized to `resolution`."""
    model.eval()
    n = c1 = c5 = 0
    for x, y, _ in loader:
        if len(y) == 0:
            continue
        logits = model(resize(x.to(device), resolution))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices.cpu()
        c1 += (top[:, 0] == y).sum().item()
        c5 += (top == y[:, None]).any(dim=1).sum().item()
        n += len(y)
    if n == 0:
        raise AutoVitError("the validation set holds no readable image")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "images": n}


def inherited_model(supernet: Supernet, arch: ArchConfig, bn_loader, device: torch.device,
                    recalibrate: bool = True) -> nn.Module:
    """The static model of `arch` copied out of the supernet (left untouched), its BatchNorm
    statistics recalibrated on `bn_loader`'s training batches unless told otherwise; eval mode."""
    supernet.set_active_subnet(arch)
    model = supernet.get_active_subnet().to(device)
    if recalibrate:
        recalibrate_bn(model, (resize(x.to(device), arch.resolution) for x, y, _ in bn_loader if len(y)))
    return model.eval()


def evaluate_subnet(supernet: Supernet, arch: ArchConfig, bn_loader, val_loader, device: torch.device) -> dict[str, Any]:
    """Inherited-weight accuracy of `arch` (BatchNorm recalibrated): top-1/top-5 (%)."""
    return accuracy(inherited_model(supernet, arch, bn_loader, device), val_loader, arch.resolution, device)


def fixed_arch(cfg: TrainConfig, space: SearchSpace) -> ArchConfig | None:
    """The one subnet of a stand-alone run (cfg.arch), checked against the space."""
    if cfg.arch is None:
        return None
    from autovit.nas.arch import arch_from_dict

    arch = replace(arch_from_dict(cfg.arch), num_classes=space.num_classes)
    problems = space.problems(arch)
    if problems:
        raise AutoVitError(f"--arch is outside space '{space.name}': {problems[0]}")
    return arch


def eval_archs(space: SearchSpace, n_random: int, seed: int) -> dict[str, ArchConfig]:
    """The subnets followed during training: max, min and a fixed random set."""
    rng = random.Random(seed + 7919)
    out = {"max": space.largest(), "min": space.smallest()}
    out.update({f"rand{i}": space.sample(rng) for i in range(n_random)})
    return out


# ---- losses ------------------------------------------------------------------------------------
def distill_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """soft: tau^2 KL(psi(Zs/tau) || psi(Zt/tau)); hard: CE(Zs, argmax Zt) (SPEC.md section 3)."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    return F.kl_div(F.log_softmax(student / tau, dim=-1), F.log_softmax(teacher / tau, dim=-1),
                    reduction="batchmean", log_target=True) * tau * tau


def label_criterion(cfg: TrainConfig) -> nn.Module:
    """The loss on labels: soft targets under Mixup/CutMix (which smooth them), else smoothed CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup > 0 or cfg.cutmix > 0:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(cfg.smoothing)
    return nn.CrossEntropyLoss()


# ---- the loop ----------------------------------------------------------------------------------
def train(cfg: TrainConfig, out: Path, resume: Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train a supernet; returns a summary (history per epoch, best, paths, per-step losses).

    `stop_after_epochs` ends the run early as an interruption would (tests and time budgets);
    the schedule still spans `cfg.epochs`.
    """
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    out = Path(out)
    ck = None
    if resume is not None:
        ck = load_checkpoint(resume)
        saved_space = checkpoint_space(ck, cfg.space, resume).name
        saved = TrainConfig.from_saved(ck["config"])
        cfg = replace(saved, epochs=cfg.epochs, workers=cfg.workers, device=cfg.device)
    cfg = cfg.resolved()
    ctx = DistContext.setup(cfg.device)
    if cfg.amp == "on" and ctx.device.type != "cuda":
        raise AutoVitError("--amp on needs a CUDA device (mixed precision is off on CPU); drop --amp")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = open_data(cfg.data, cfg.seed)
    space = supernet_space(cfg, data)
    if ck is not None and saved_space != space.name:
        raise AutoVitError(f"{resume} holds a supernet of space '{saved_space}', not '{space.name}'")
    loaders = make_loaders(cfg, data, max(space.resolutions), ctx)
    steps = len(loaders.train) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(loaders.train))

    supernet = Supernet(space).to(ctx.device)
    model: nn.Module = supernet
    if ctx.world > 1:
        import warnings

        from torch.nn.parallel import DistributedDataParallel as DDP

        # 1x1 convolutions' weight gradients come back with permuted strides on CPU; DDP copies
        # them into its buckets correctly and warns on every step.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        model = DDP(supernet, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                    find_unused_parameters=True)
    optimizer = create_optimizer_v2(supernet, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs,
                                       warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01, min_lr=cfg.min_lr,
                                       step_on_epochs=False, updates_per_epoch=steps)
    use_amp = ctx.device.type == "cuda" and cfg.amp != "off"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(supernet, decay=cfg.ema_decay)
    mixup_fn = None
    criterion = label_criterion(cfg)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                         num_classes=data.num_classes)
    teacher = None
    if cfg.kd != "none" and cfg.teacher != SUPERNET_TEACHER:
        from autovit.nas.teacher import load_teacher

        teacher = load_teacher(cfg.teacher, cfg.teacher_ckpt, data.num_classes).to(ctx.device).eval()

    start_epoch, step, history, best = 0, 0, [], None
    if ck is not None:
        supernet.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ck["config"]["epochs"] == cfg.epochs:
            scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.module.load_state_dict(ck["ema"])
        set_rng_state(ck["rng"])
        start_epoch, step, history, best = ck["epoch"], ck["step"], ck["history"], ck["best"]
        if start_epoch >= cfg.epochs:
            raise AutoVitError(f"{resume} already finished {start_epoch} epochs; pass --epochs N > {start_epoch}")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_saved(), indent=2, default=list) + "\n")
    writer = _tensorboard(out) if cfg.tensorboard and ctx.main else None

    fixed = fixed_arch(cfg, space)
    followed = {"arch": fixed} if fixed is not None else eval_archs(space, cfg.eval_random, cfg.seed)
    step_losses: list[float] = []
    t_run = time.perf_counter()
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch_start = time.perf_counter()
        loaders.sampler.set_epoch(epoch)
        if hasattr(loaders.train_set, "set_epoch"):
            loaders.train_set.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum, seen, skipped = 0.0, 0, 0
        bar = progress_bar(progress and ctx.main, f"epoch {epoch + 1}/{cfg.epochs}", steps)
        for i, (x, y, n_skip) in enumerate(loaders.train):
            if i >= steps:
                break
            skipped += n_skip
            if mixup_fn is not None and len(y) % 2:
                x, y = x[:-1], y[:-1]  # timm's Mixup pairs images: it needs an even batch
            if len(y) < 2:
                continue
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            x, targets = mixup_fn(x, y) if mixup_fn is not None else (x, y)
            loss = _train_step(cfg, space, supernet, model, criterion, x, targets, teacher, scaler, use_amp,
                               step, epoch, fixed)
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(supernet.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(supernet, step=step)
            step_losses.append(loss)
            loss_sum += loss * len(y)
            seen += len(y)
            if bar is not None:
                el = time.perf_counter() - t0
                bar.update(f"loss {loss_sum / seen:.3f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                           f"{seen * ctx.world / el:.0f} img/s")
        if bar is not None:
            bar.close()
        ctx.sync_buffers(supernet)
        epoch_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"], "img_per_s": seen * ctx.world / epoch_s, "epoch_s": epoch_s,
            "skipped_images": skipped,
        }
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if ctx.main:
            eval_model = supernet if ema is None else ema.module
            for name, arch in followed.items():
                row[f"top1_{name}"] = (evaluate_subnet(eval_model, arch, loaders.bn, loaders.val, ctx.device)["top1"]
                                       if evaluated else None)
            supernet.train()
            score = float(np.mean([row[f"top1_{n}"] for n in followed])) if evaluated else None
            row["top1_mean"] = score
            # wall time of the whole run so far (training and evaluation), across resumes
            row["elapsed_s"] = (history[-1].get("elapsed_s", 0.0) if history else 0.0) + time.perf_counter() - t_epoch_start
            history.append(row)
            is_best = evaluated and (best is None or score > best["top1_mean"])
            if is_best:
                best = {"epoch": epoch + 1, "top1_mean": score}
            state = {
                "space": space_to_saved(space), "config": cfg.to_saved(), "model": supernet.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                "rng": rng_state(), "epoch": epoch + 1, "step": step, "history": history, "best": best,
            }
            save_checkpoint(out / "last.ckpt", state)
            if is_best:
                save_checkpoint(out / "best.ckpt", state)
            _write_csv(out / "metrics.csv", history)
            if writer is not None:
                for k, v in row.items():
                    writer.add_scalar(k, v, epoch + 1)
            log(_epoch_line(row, followed))
        ctx.barrier()
        if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs:
            break
    if writer is not None:
        writer.close()
    return {"out": str(out), "epochs_done": epoch + 1, "history": history, "best": best,
            "step_losses": step_losses, "wall_s": time.perf_counter() - t_run, "space": space.name,
            "world_size": ctx.world, "rank": ctx.rank, "final_state": supernet.state_dict()}


def _train_step(cfg: TrainConfig, space: SearchSpace, supernet: Supernet, model: nn.Module, criterion: nn.Module,
                x: torch.Tensor, targets: torch.Tensor, teacher: nn.Module | None, scaler, use_amp: bool,
                step: int, epoch: int, fixed: ArchConfig | None = None) -> float:
    """Forward and backward of this step's subnet(s); returns the mean loss. Raises
    TrainingDiverged on a non-finite loss before any weight is updated."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    if fixed is not None:
        archs = [fixed]
    elif cfg.sampling == "sandwich":
        archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(cfg.sandwich_random)]
    else:
        archs = [space.sample(rng)]
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=use_amp)
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad(), amp:
            teacher_logits = teacher(x).float()
        if teacher_logits.shape[-1] != supernet.space.num_classes:
            raise AutoVitError(f"the teacher predicts {teacher_logits.shape[-1]} classes, the data has "
                               f"{supernet.space.num_classes}; give a teacher trained on these classes")
    elif cfg.kd != "none" and cfg.sampling != "sandwich":
        supernet.set_active_subnet(space.largest())
        with torch.no_grad(), amp:
            teacher_logits = supernet(resize(x, space.largest().resolution)).float()
    total = 0.0
    for j, arch in enumerate(archs):
        model_arch = supernet.set_active_subnet(arch)
        with amp:
            logits = model(resize(x, model_arch.resolution)).float()
        loss = criterion(logits, targets)
        if cfg.sampling == "sandwich" and j > 0:
            # In-place distillation: smaller subnets follow the largest one's predictions.
            loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * distill_loss(
                "soft" if cfg.kd == "none" else cfg.kd, logits, teacher_logits, cfg.kd_tau)
        elif teacher_logits is not None:
            loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * distill_loss(cfg.kd, logits, teacher_logits, cfg.kd_tau)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged: the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                "the last checkpoint of a finished epoch is kept; lower --lr or set --clip-grad")
        scaler.scale(loss / len(archs)).backward()
        if cfg.sampling == "sandwich" and j == 0 and teacher is None:
            teacher_logits = logits.detach()
        total += loss.item()
    return total / len(archs)


# ---- output ------------------------------------------------------------------------------------
def _epoch_line(row: dict[str, Any], followed: dict[str, ArchConfig]) -> str:
    if row["top1_mean"] is None:
        accs = "(not evaluated this epoch)"
    else:
        accs = "  ".join(f"{n} {row[f'top1_{n}']:.1f}" for n in followed)
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.3f}  {row['img_per_s']:.0f} img/s  "
            f"{row['epoch_s']:.0f} s  val top-1 {accs}")


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    cols = list(history[0])
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AutoVitError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))
