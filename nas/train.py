"""Supernet training (docs/METHOD.md §3, Algorithm 1) with the recipe pieces timm already has.

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

import contextlib
import copy
import csv
import io
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autovit.latmodel.errors import AutoVitError, UsageError
from autovit.latmodel.checks import dumps
from autovit.latmodel.io import FolderLock, atomic_write_text
from autovit.nas.arch import ArchConfig
from autovit.nas.bounds import check_train_config
from autovit.nas.checkpoint import (checkpoint_space, load_checkpoint, remove_stale_temporaries, rng_state,
                                    save_checkpoint, set_rng_state, shorten)
from autovit.nas.data import BUILTIN_DATA, DataSource, collate_skipping, open_data
from autovit.nas.space import SearchSpace, anchored_ident, load_space, space_to_saved, with_resolutions
from autovit.nas.supernet import Supernet, recalibrate_bn

# Recipe presets. "deit" is the paper's (docs/METHOD.md §3, DeiT's hyper-parameters);
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
    zero_init_residual: bool = False  # residual branches start at zero (Supernet.zero_init_residual)
    recipe_values: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's values filled in where the user gave none; checked (flags
        out of range, or contradicting each other, are a UsageError naming the flag)."""
        check_train_config(self)
        if self.kd != "none" and not self.teacher:
            raise UsageError(f"--kd {self.kd} needs --teacher (timm:NAME with --teacher-ckpt, a model file, "
                             f"or {SUPERNET_TEACHER})")
        if self.kd == "none" and self.teacher:
            raise UsageError(f"--teacher {self.teacher} is given but --kd is none, so it would be ignored: "
                             "add --kd soft or --kd hard, or drop --teacher")
        if self.warmup_epochs is not None and self.epochs is not None and self.warmup_epochs > self.epochs:
            raise UsageError(f"--warmup-epochs {self.warmup_epochs:g} is longer than the run (--epochs {self.epochs}): "
                             "the learning rate would never reach its peak; shorten the warm-up")
        if self.teacher_ckpt and not (self.teacher or "").startswith("timm:"):
            raise UsageError("--teacher-ckpt holds the weights of a --teacher timm:NAME; drop it or name a timm model")
        filled = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in RECIPES[self.recipe].items()}
        out = replace(self, **filled)
        out.recipe_values = filled
        return out

    def to_saved(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "TrainConfig":
        """The configuration a checkpoint holds, every field checked (keys this version does
        not know are left out, as an older file may have them)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("crop_scale", "resolutions"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        if not isinstance(d.get("recipe_values", {}), dict):
            raise AutoVitError("field 'config.recipe_values' must be a table")
        cfg = cls(**d)
        check_train_config(cfg, saved=True)
        return cfg


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
        try:
            world, rank, local = (int(os.environ.get(k, d)) for k, d in
                                  (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")))
        except ValueError:
            raise AutoVitError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); "
                               "unset them to run one process") from None
        # cuda:N picks a device for one process; under torchrun each rank takes its local one
        index = int(device.split(":")[1]) if device.startswith("cuda:") and world == 1 else local
        if use_cuda and index >= torch.cuda.device_count():
            raise AutoVitError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device(f"cuda:{index}" if use_cuda else "cpu")
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


def leave_process_group() -> None:
    """Every rank leaves the torchrun process group together, for a command that is done with it:
    a rank that exits while rank 0 is still writing its results or still in a collective can make
    gloo abort the other (seen once in the two-rank search test). Only on the success path, since
    after a failure on one rank it would wait for that rank; and not inside `train`, whose caller
    may go on using the group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
        # a batch of one image (the tail of a small set, or what skipped images leave) has no
        # batch statistics: BatchNorm in training mode refuses it
        recalibrate_bn(model, (resize(x.to(device), arch.resolution) for x, y, _ in bn_loader if len(y) > 1))
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
    """soft: tau^2 KL(psi(Zs/tau) || psi(Zt/tau)); hard: CE(Zs, argmax Zt) (docs/METHOD.md §3)."""
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
RUN_FILES = ("config.json", "last.ckpt", "best.ckpt", "metrics.csv")


class ProgressBar(Protocol):
    def update(self, info: str = "") -> None: ...

    def close(self) -> None: ...


# progress(description, total steps) -> a bar that takes one update per step (a free-text info
# field: loss, lr, img/s) and is closed at the end of the epoch; the CLI passes a rich bar.
ProgressFactory = Callable[[str, int | None], ProgressBar]


def train(cfg: TrainConfig, out: Path, resume: Path | None = None, progress: ProgressFactory | None = None,
          log: Callable[[str], None] = print, stop_after_epochs: int | None = None, force: bool = False,
          trust_teacher_code: bool = False, explicit: Iterable[str] | None = None) -> dict[str, Any]:
    """Train a supernet; returns a summary (history per epoch, best, paths, per-step losses).

    `out` must be empty, or the folder of `resume`; `force` lets a fresh run replace what it
    holds (its run files are removed first). Rank 0 holds a FolderLock on `out` while it
    writes. A TorchScript teacher runs code, so it is refused unless `trust_teacher_code`.
    `explicit`: the fields the user set (None: all); see run_config. `progress` (ProgressFactory)
    shows each epoch's steps, None shows nothing. `stop_after_epochs` ends
    the run early as an interruption would (tests and time budgets); the schedule still spans
    `cfg.epochs`.
    """
    out = Path(out)
    ck = load_checkpoint(resume) if resume is not None else None
    cfg = run_config(cfg, ck, resume, explicit).resolved()
    claim_out(out, resume, force)  # every rank, before any writes: rank 0 cannot write before all join
    run = _setup(cfg, trust_teacher_code)
    start = _restore(run, ck, resume) if ck is not None else (0, 0, [], None)
    with FolderLock(out, "training run folder") if run.ctx.main else contextlib.nullcontext():
        if run.ctx.main:
            claim_out(out, resume, force, clear=True)
            remove_stale_temporaries(out)
            atomic_write_text(out / "config.json", dumps(cfg.to_saved(), indent=2) + "\n")
        return _epochs(run, out, *start, progress=progress, log=log, stop_after_epochs=stop_after_epochs)


RESUME_CHANGES = ("epochs", "workers", "device", "teacher", "teacher_ckpt")  # what a resumed run may set anew


def run_config(cfg: TrainConfig, ck: dict[str, Any] | None, resume: Path | None,
               explicit: Iterable[str] | None = None) -> TrainConfig:
    """The configuration to run: `cfg` for a fresh run; for a resumed one, the checkpoint's,
    with the epochs (None: the checkpoint's), workers, device and teacher given now. Any other
    field in `explicit` (None: every field, as for a library caller) must equal the
    checkpoint's: a flag silently ignored would mislead. A teacher named inside a checkpoint is
    never loaded: a file could run code, so the user names it again."""
    # a data folder or space file is saved by its absolute path: eval, export and search read
    # the checkpoint from other folders than the one training ran in
    cfg = replace(cfg, data=_absolute(cfg.data, BUILTIN_DATA),
                  space=anchored_ident(cfg.space, Path.cwd()) if isinstance(cfg.space, str) else cfg.space)
    if ck is None:
        return replace(cfg, epochs=10 if cfg.epochs is None else cfg.epochs)
    given = {f.name for f in fields(TrainConfig)} if explicit is None else set(explicit)
    checkpoint_space(ck, cfg.space if "space" in given else None, resume)
    saved = TrainConfig.from_saved(ck["config"])
    if explicit is not None:
        for name in sorted(given - set(RESUME_CHANGES) - {"space", "recipe_values"}):
            if getattr(cfg, name) != getattr(saved, name):
                flag = "--arch" if name == "arch" else f"--{name.replace('_', '-')}"
                raise UsageError(f"{flag} differs from the run in {resume} ({repr(getattr(saved, name))[:40]} there): "
                                 f"a resumed run keeps its configuration; drop {flag}, or start a new run")
    if saved.kd != "none" and saved.teacher != SUPERNET_TEACHER and not cfg.teacher:
        again = f"--teacher {saved.teacher}" + (f" --teacher-ckpt {saved.teacher_ckpt}" if saved.teacher_ckpt else "")
        raise UsageError(f"{resume} was trained with --kd {saved.kd} from a teacher file; a resumed run never loads "
                         f"a file named inside a checkpoint: name the teacher again ({again[:300]})")
    teacher = (cfg.teacher, cfg.teacher_ckpt) if cfg.teacher else (saved.teacher, None)
    return replace(saved, epochs=saved.epochs if cfg.epochs is None else cfg.epochs, workers=cfg.workers,
                   device=cfg.device, teacher=teacher[0], teacher_ckpt=teacher[1])


def _absolute(value: Any, builtin: tuple[str, ...]) -> Any:
    """An existing path as an absolute one; a built-in name (or anything else) as it is."""
    if not isinstance(value, str) or value.lower() in builtin or len(value) > 4096 or not Path(value).exists():
        return value
    return str(Path(value).resolve())


def claim_out(out: Path, resume: Path | None, force: bool, clear: bool = False) -> None:
    """Refuse an `out` that holds anything (but its lock) unless it is the folder of `resume`
    or `force` is given; with `clear`, a forced fresh run removes the old run's files so that
    the folder never mixes two runs."""
    if out.exists() and not out.is_dir():
        raise AutoVitError(f"--out {out} is a file, not a folder; choose a folder")
    held = sorted(p.name for p in out.iterdir() if p.name != ".lock") if out.is_dir() else []
    if not held or (resume is not None and Path(resume).resolve().parent == out.resolve()):
        return
    if not force:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        hint = f"continue its run with --resume {out / 'last.ckpt'}, " if "last.ckpt" in held else ""
        raise AutoVitError(f"--out {out} is not empty ({shown}): nothing is overwritten without --force; "
                           f"{hint}choose another --out, or pass --force to replace it")
    if clear and resume is None:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


@dataclass
class _Run:
    """Everything a training run builds before its first epoch."""

    cfg: TrainConfig
    ctx: DistContext
    data: DataSource
    space: SearchSpace
    loaders: Loaders
    steps: int
    supernet: Supernet
    model: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    ema: Any
    mixup_fn: Any
    criterion: nn.Module
    teacher: nn.Module | None
    fixed: ArchConfig | None  # the one subnet of a stand-alone run
    followed: dict[str, ArchConfig]  # the subnets evaluated after each epoch


def _setup(cfg: TrainConfig, trust_teacher_code: bool) -> _Run:
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    ctx = DistContext.setup(cfg.device)
    if cfg.amp == "on" and ctx.device.type != "cuda":
        raise UsageError("--amp on needs a CUDA device (mixed precision is off on CPU); drop --amp")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = open_data(cfg.data, cfg.seed)
    space = supernet_space(cfg, data)
    loaders = make_loaders(cfg, data, max(space.resolutions), ctx)
    steps = len(loaders.train) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(loaders.train))
    supernet = Supernet(space)
    if cfg.zero_init_residual:
        supernet.zero_init_residual()
    supernet = supernet.to(ctx.device)
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
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.device.type == "cuda" and cfg.amp != "off")
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(supernet, decay=cfg.ema_decay)
    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                         num_classes=data.num_classes)
    teacher = None
    if cfg.kd != "none" and cfg.teacher != SUPERNET_TEACHER:
        from autovit.nas.teacher import load_teacher

        teacher = load_teacher(cfg.teacher, cfg.teacher_ckpt, data.num_classes,
                               trust_code=trust_teacher_code).to(ctx.device).eval()
    fixed = fixed_arch(cfg, space)
    followed = {"arch": fixed} if fixed is not None else eval_archs(space, cfg.eval_random, cfg.seed)
    return _Run(cfg, ctx, data, space, loaders, steps, supernet, model, optimizer, scheduler, scaler, ema, mixup_fn,
                label_criterion(cfg), teacher, fixed, followed)


def _restore(run: _Run, ck: dict[str, Any], resume: Path) -> tuple[int, int, list, dict | None]:
    """Load a checkpoint's states into the run; returns (epoch, step, history, best). The
    scheduler is rebuilt from the configuration and the step, never read: every value it holds
    follows from them."""
    saved_space = checkpoint_space(ck).name
    if saved_space != run.space.name:
        raise AutoVitError(f"{resume} holds a supernet of space '{saved_space}', not '{run.space.name}'")
    parts = [("model weights", lambda: run.supernet.load_state_dict(ck["model"])),
             ("optimizer state", lambda: _load_optimizer(run.optimizer, ck["optimizer"])),
             ("AMP scaler state", lambda: run.scaler.load_state_dict(ck["scaler"])),
             ("RNG state", lambda: set_rng_state(ck["rng"]))]
    if run.ema is not None and ck.get("ema") is not None:
        parts.append(("EMA weights", lambda: run.ema.module.load_state_dict(ck["ema"])))
    for what, load in parts:
        try:
            load()
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
            raise AutoVitError(f"checkpoint {resume}: its {what} does not fit this run ({shorten(str(e))}); "
                               "it is not a checkpoint this version wrote") from None
    start_epoch, step = ck["epoch"], ck["step"]
    if start_epoch >= run.cfg.epochs:
        raise UsageError(f"{resume} already finished {start_epoch} epochs; pass --epochs N > {start_epoch}")
    run.scheduler.step_update(step)
    return start_epoch, step, list(ck["history"]), ck["best"]


def _load_optimizer(optimizer, state: dict[str, Any]) -> None:
    """The saved per-parameter state (moments, step counts), shape-checked; hyper-parameters
    stay those of the configuration (a saved NaN learning rate would poison the first step)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, fresh):
        group.update(own)
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != p.shape):
                raise ValueError(f"'{k}' of a parameter of shape {tuple(p.shape)} is {_shape(v)}")
            if not torch.isfinite(v).all():
                raise ValueError(f"'{k}' holds non-finite values")


def _shape(v: Any) -> str:
    return f"of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__


def _epochs(run: _Run, out: Path, start_epoch: int, step: int, history: list[dict[str, Any]], best: dict | None,
            progress: ProgressFactory | None, log: Callable[[str], None], stop_after_epochs: int | None) -> dict[str, Any]:
    """The epoch loop: train, evaluate the followed subnets, write the checkpoints (rank 0)."""
    cfg, ctx = run.cfg, run.ctx
    writer = _tensorboard(out) if cfg.tensorboard and ctx.main else None
    fixed, followed = run.fixed, run.followed
    step_losses: list[float] = []
    t_run = time.perf_counter()
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch_start = time.perf_counter()
        row, step = _train_epoch(run, epoch, step, fixed, step_losses, progress)
        if ctx.main:
            best = _end_epoch(run, out, row, epoch, step, followed, history, best, t_epoch_start)
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
            "step_losses": step_losses, "wall_s": time.perf_counter() - t_run, "space": run.space.name,
            "world_size": ctx.world, "rank": ctx.rank, "final_state": run.supernet.state_dict()}


def _train_epoch(run: _Run, epoch: int, step: int, fixed: ArchConfig | None, step_losses: list[float],
                 progress: ProgressFactory | None) -> tuple[dict[str, Any], int]:
    """One epoch of steps; returns its metrics row (without evaluations) and the step count."""
    cfg, ctx, loaders, optimizer = run.cfg, run.ctx, run.loaders, run.optimizer
    use_amp = run.scaler.is_enabled()
    loaders.sampler.set_epoch(epoch)
    if hasattr(loaders.train_set, "set_epoch"):
        loaders.train_set.set_epoch(epoch)
    run.model.train()
    t0 = time.perf_counter()
    loss_sum, seen, skipped = 0.0, 0, 0
    bar = progress(f"epoch {epoch + 1}/{cfg.epochs}", run.steps) if progress and ctx.main else None
    for i, (x, y, n_skip) in enumerate(loaders.train):
        if i >= run.steps:
            break
        skipped += n_skip
        if run.mixup_fn is not None and len(y) % 2:
            x, y = x[:-1], y[:-1]  # timm's Mixup pairs images: it needs an even batch
        if len(y) < 2:
            continue
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        x, targets = run.mixup_fn(x, y) if run.mixup_fn is not None else (x, y)
        loss = _train_step(cfg, run.space, run.supernet, run.model, run.criterion, x, targets, run.teacher,
                           run.scaler, use_amp, step, epoch, fixed)
        if cfg.clip_grad:
            run.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(run.supernet.parameters(), cfg.clip_grad)
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        run.scheduler.step_update(step)
        if run.ema is not None:
            run.ema.update(run.supernet, step=step)
        step_losses.append(loss)
        loss_sum += loss * len(y)
        seen += len(y)
        if bar is not None:
            el = time.perf_counter() - t0
            bar.update(f"loss {loss_sum / seen:.3f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                       f"{seen * ctx.world / el:.0f} img/s")
    if bar is not None:
        bar.close()
    ctx.sync_buffers(run.supernet)
    epoch_s = time.perf_counter() - t0
    return {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"], "img_per_s": seen * ctx.world / epoch_s, "epoch_s": epoch_s,
            "skipped_images": skipped}, step


def _end_epoch(run: _Run, out: Path, row: dict[str, Any], epoch: int, step: int, followed: dict[str, ArchConfig],
               history: list[dict[str, Any]], best: dict | None, t_epoch_start: float) -> dict | None:
    """Evaluate the followed subnets (when due), append the row and write last.ckpt (and
    best.ckpt) and metrics.csv; returns the best epoch so far."""
    cfg = run.cfg
    evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    eval_model = run.supernet if run.ema is None else run.ema.module
    for name, arch in followed.items():
        row[f"top1_{name}"] = (evaluate_subnet(eval_model, arch, run.loaders.bn, run.loaders.val,
                                               run.ctx.device)["top1"] if evaluated else None)
    run.supernet.train()
    score = float(np.mean([row[f"top1_{n}"] for n in followed])) if evaluated else None
    row["top1_mean"] = score
    # wall time of the whole run so far (training and evaluation), across resumes
    row["elapsed_s"] = (history[-1].get("elapsed_s", 0.0) if history else 0.0) + time.perf_counter() - t_epoch_start
    history.append(row)
    is_best = evaluated and (best is None or score > best["top1_mean"])
    if is_best:
        best = {"epoch": epoch + 1, "top1_mean": score}
    state = {
        "space": space_to_saved(run.space), "config": cfg.to_saved(), "model": run.supernet.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(), "ema": run.ema.module.state_dict() if run.ema is not None else None,
        "rng": rng_state(), "epoch": epoch + 1, "step": step, "history": history, "best": best,
    }
    save_checkpoint(out / "last.ckpt", state)
    if is_best:
        save_checkpoint(out / "best.ckpt", state)
    _write_csv(out / "metrics.csv", history)
    return best


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
