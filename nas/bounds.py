"""Bounds on every number the NAS commands take, from flags or from a saved run configuration.

Each bound says why it is where it is, so that `--resolutions 100000` or `--population 1e8` is
refused in one line before any memory is allocated or any loop starts, and a checkpoint whose
saved configuration holds `epochs: "abc"` names that field instead of failing later.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autovit.latmodel.checks import number
from autovit.latmodel.errors import AutoVitError, UsageError

if TYPE_CHECKING:
    from autovit.nas.train import TrainConfig


@dataclass(frozen=True)
class Bound:
    """A number in [lo, hi] (lo excluded when lo_open); `why` is said when hi is exceeded."""

    lo: float | None
    hi: float | None
    why: str = ""
    integer: bool = False
    lo_open: bool = False
    optional: bool = False  # None allowed (a default decided later)

    def check(self, value: Any, where: str, error: type[AutoVitError] = UsageError) -> Any:
        if value is None and self.optional:
            return None
        try:
            if (isinstance(value, (int, float)) and not isinstance(value, bool) and self.hi is not None
                    and math.isfinite(value) and value > self.hi):
                why = f" ({self.why})" if self.why else ""
                raise AutoVitError(f"{where} must be <= {self.hi:g}, got {_show(value)}{why}")
            return number(value, where, self.lo, self.hi, self.lo_open, self.integer)
        except AutoVitError as e:
            raise error(str(e)) from None


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 24 else f"{text[:21]}..."


SEED = Bound(0, 2**32 - 1, "seeds are 32-bit numbers", integer=True)
PROBABILITY = Bound(0, 1)
RESOLUTION = Bound(16, 1024, "larger inputs exhaust memory: a 1,024 px image already takes ~1 GB of "
                   "activations per subnet", integer=True)
MAX_RESOLUTIONS = 16
MAX_TEXT = 4096  # characters of a path or a name

TRAIN_BOUNDS: dict[str, Bound] = {
    "epochs": Bound(1, 100_000, "longer than any training schedule", integer=True),
    "batch_size": Bound(2, 4096, "per process; larger batches exhaust memory", integer=True, optional=True),
    "lr": Bound(0, 10, "a peak learning rate above 10 diverges at once", lo_open=True, optional=True),
    "weight_decay": Bound(0, 10, "decay above 10 zeroes the weights", optional=True),
    "warmup_epochs": Bound(0, 100_000, "longer than any training schedule", optional=True),
    "min_lr": Bound(0, 10, optional=True),
    "smoothing": Bound(0, 1, optional=True),
    "mixup": Bound(0, 100, optional=True),
    "cutmix": Bound(0, 100, optional=True),
    "reprob": Bound(0, 1, optional=True),
    "hflip": Bound(0, 1, optional=True),
    "clip_grad": Bound(0, 1e6, "a norm that large never clips; give 'none'", optional=True),  # 0: off
    "ema_decay": Bound(0, 1),
    "sandwich_random": Bound(0, 16, "each adds a forward and backward pass to every step", integer=True),
    "kd_alpha": PROBABILITY,
    "kd_tau": Bound(0, 100, "softer targets than that are uniform", lo_open=True),
    "eval_random": Bound(0, 64, "each is evaluated after every epoch", integer=True),
    "bn_batches": Bound(1, 10_000, "recalibration needs a few batches", integer=True),
    "eval_every": Bound(1, 100_000, integer=True),
    "steps_per_epoch": Bound(1, 10**7, "more steps than any data set has batches", integer=True, optional=True),
    "val_images": Bound(1, 10**8, "more images than any validation set", integer=True, optional=True),
    "workers": Bound(0, 64, "each is a process; more than the cores only slows loading", integer=True),
    "seed": SEED,
}
SEARCH_BOUNDS: dict[str, Bound] = {
    "population": Bound(1, 10_000, "each generation evaluates up to this many subnets", integer=True),
    "generations": Bound(1, 10_000, "each generation evaluates up to --population subnets", integer=True),
    "parents": Bound(1, 10_000, integer=True),
    "evaluations": Bound(1, 100_000, "each takes a fraction of a second or more, and the random strategy "
                         "draws them all in one batch", integer=True, optional=True),
    # 10,000 XXS candidates (the default) raised peak memory by ~0.2 GB while priced in one batch
    "coarse": Bound(1, 100_000, "the coarse stage holds every candidate in memory at once", integer=True),
    "val_images": Bound(1, 10**8, "more images than any validation set", integer=True),
}
CHOICES = {"recipe": ("deit", "small"), "sampling": ("uniform", "sandwich"), "kd": ("none", "soft", "hard"),
           "amp": ("auto", "on", "off")}
TEXTS = ("space", "data", "teacher", "teacher_ckpt", "randaug")
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")
RANDAUG = re.compile(r"rand(-(mstd|mmax|inc|m|n|p|w|t)[0-9.]{1,8})*")


def check_device(device: Any, where: str = "--device", error: type[AutoVitError] = UsageError) -> str:
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise error(f"{where} must be auto, cpu, cuda or cuda:N, got {_show(device)}")
    return device


def check_resolutions(values: Any, where: str = "--resolutions", error: type[AutoVitError] = UsageError) -> None:
    if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= MAX_RESOLUTIONS:
        raise error(f"{where} must list 1 to {MAX_RESOLUTIONS} input sides, got {_show(values)}")
    for v in values:
        RESOLUTION.check(v, where, error)


def check_train_config(cfg: "TrainConfig", saved: bool = False) -> None:
    """Every field of a run configuration: type, finiteness, range. Flags (saved=False) fail
    with a UsageError naming the flag; a saved configuration names the field."""
    error = AutoVitError if saved else UsageError

    def where(name: str) -> str:
        return f"field 'config.{name}'" if saved else f"--{name.replace('_', '-')}"

    for name, bound in TRAIN_BOUNDS.items():
        bound.check(getattr(cfg, name), where(name), error)
    for name, options in CHOICES.items():
        if getattr(cfg, name) not in options:
            raise error(f"{where(name)} must be one of {', '.join(options)}, got {_show(getattr(cfg, name))}")
    for name in TEXTS:
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, str) or len(v) > MAX_TEXT or "\0" in v):
            raise error(f"{where(name)} must be a name or path of at most {MAX_TEXT} characters, got {_show(v)}")
    for name in ("tensorboard", "ema", "zero_init_residual"):
        v = getattr(cfg, name)
        if not isinstance(v, bool) and not (name == "ema" and v is None):
            raise error(f"{where(name)} must be true or false, got {_show(v)}")
    check_device(cfg.device, where("device"), error)
    if cfg.resolutions is not None:
        check_resolutions(cfg.resolutions, where("resolutions"), error)
    if cfg.crop_scale is not None:
        lo_hi = cfg.crop_scale
        if (not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in lo_hi)
                or not 0 < lo_hi[0] <= lo_hi[1] <= 1):
            raise error(f"{where('crop_scale')} must be two numbers 0 < low <= high <= 1, got {_show(lo_hi)}")
    if cfg.arch is not None:
        from autovit.nas.arch import arch_from_dict

        try:
            arch_from_dict(cfg.arch)
        except AutoVitError as e:
            raise error(f"{where('arch')}: {e}") from None
    if cfg.randaug is not None and not RANDAUG.fullmatch(cfg.randaug):
        raise error(f"{where('randaug')} must be a timm RandAugment string such as rand-m9-mstd0.5-inc1, "
                    f"got {_show(cfg.randaug)}")
