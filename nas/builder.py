"""One builder: ArchConfig -> a static torch.nn.Module.

Layout (docs/ARCHITECTURES.md): conv stem -> MBConv stages -> per transformer stage a stride-s
MBConv to the stage's conv channels followed by a MobileViT block whose transformer runs at the
stage width -> MBPool head (1x1 conv to head_expansion x the last conv channels, global average
pool, linear classifier). Activations are SiLU, as in MobileViT.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autovit.nas.arch import ArchConfig, TransformerLayer, arch_block_fields, expanded, mlp_hidden


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional SiLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.SiLU() if act else nn.Identity(),
        )


class MBConv(nn.Module):
    """MobileNetV2 inverted residual; expansion 1 has no expand conv."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, expansion: float):
        super().__init__()
        hidden = expanded(cin, expansion)
        self.expand = ConvBNAct(cin, hidden, 1) if expansion != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class Attention(nn.Module):
    """Multi-head self-attention with q/k/v width = heads x head_dim (may differ from `dim`)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, dim: int, layer: TransformerLayer, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, layer.heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden(dim, layer.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def unfold_patches(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, C, H, W] -> [B * P, N, C]: P = patch^2 sequences of N = HW / P tokens.

    H and W must be multiples of `patch` (the block resizes first when they are not).
    """
    b, c, h, w = x.shape
    nh, nw = h // patch, w // patch
    x = x.reshape(b, c, nh, patch, nw, patch).permute(0, 3, 5, 2, 4, 1)
    return x.reshape(b * patch * patch, nh * nw, c), (nh, nw)


def fold_patches(x: torch.Tensor, batch: int, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Inverse of unfold_patches: [B * P, N, C] -> [B, C, H, W]."""
    nh, nw = grid
    c = x.shape[-1]
    x = x.reshape(batch, patch, patch, nh, nw, c).permute(0, 5, 3, 1, 4, 2)
    return x.reshape(batch, c, nh * patch, nw * patch)


class MobileViTBlock(nn.Module):
    """Local n x n conv (dense as MobileViT v1, or depthwise as v3) -> 1x1 to d -> unfold ->
    L transformer layers -> fold -> 1x1 back -> concat with the input -> fusion conv
    (n x n as v1, or 1 x 1 as v3)."""

    def __init__(self, channels: int, dim: int, layers: tuple[TransformerLayer, ...], head_dim: int,
                 patch: int, kernel: int, local_conv: str = "dense", fusion_kernel: int | None = None):
        super().__init__()
        self.patch = patch
        self.local = ConvBNAct(channels, channels, kernel, groups=channels if local_conv == "depthwise" else 1)
        self.to_tokens = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*[TransformerBlock(dim, layer, head_dim) for layer in layers])
        self.norm = nn.LayerNorm(dim)
        self.from_tokens = ConvBNAct(dim, channels, 1)
        self.fuse = ConvBNAct(2 * channels, channels, kernel if fusion_kernel is None else fusion_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = on_patches(self.to_tokens(self.local(x)), self.patch, lambda t: self.norm(self.transformer(t)))
        return self.fuse(torch.cat([x, self.from_tokens(y)], dim=1))


def on_patches(y: torch.Tensor, patch: int, fn) -> torch.Tensor:
    """Apply `fn` ([B * P, N, C] -> same) to the patch sequences of the map y [B, C, H, W].

    A map whose sides are not multiples of `patch` is resized up first and back after, as
    MobileViT does; the supernet's blocks call this too, so both builds run the same maths.
    """
    h, w = y.shape[-2:]
    ph, pw = math.ceil(h / patch) * patch, math.ceil(w / patch) * patch
    resized = (ph, pw) != (h, w)
    if resized:
        y = F.interpolate(y, size=(ph, pw), mode="bilinear", align_corners=False)
    tokens, grid = unfold_patches(y, patch)
    y = fold_patches(fn(tokens), y.shape[0], grid, patch)
    if resized:
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return y


class AutoViT(nn.Module):
    """A static AutoViT network built from an ArchConfig (timm-style surface)."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        walk = arch_block_fields(arch)  # stem, the stages' blocks, head (nas/arch.py)
        _, _, _, stem_width, stem_kernel, stem_stride, *_ = walk[0]
        self.stem = ConvBNAct(3, stem_width, stem_kernel, stem_stride)
        self.stages = nn.Sequential(*_stage_modules(walk[1:-1]))
        _, _, c, self.num_features, *_, num_classes, _, _ = walk[-1]
        self.head_conv = ConvBNAct(c, self.num_features, 1)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes)


def _stage_modules(walk: list[tuple]) -> list[nn.Module]:
    """The modules of the walk's blocks between stem and head, built in network order: an
    MBConv per "mbconv"; a MobileViT block per "mvit_convs" with the "transformer" layers that
    follow it."""
    out: list[nn.Module] = []
    mvit = None  # the MobileViT block being gathered: its arguments and its layers so far
    for f in [*walk, None]:
        if mvit is not None and (f is None or f[0] != "transformer"):
            args, layers = mvit
            out.append(MobileViTBlock(*args[:2], tuple(layers), *args[2:]))
            mvit = None
        if f is None:
            break
        kind, _, cin, cout, kernel, stride, expansion, heads, mlp_ratio, head_dim, patch, _, local_conv, fusion = f
        if kind == "mbconv":
            out.append(MBConv(cin, cout, stride, kernel, expansion))
        elif kind == "mvit_convs":
            mvit = ((cin, cout, head_dim, patch, kernel, local_conv, fusion), [])
        elif kind == "transformer" and mvit is not None:
            mvit[1].append(TransformerLayer(heads, mlp_ratio))
        else:
            raise ValueError(f"block {kind} cannot stand between an AutoViT stem and head here")
    return out


def build_model(arch: ArchConfig) -> AutoViT:
    """The static network for `arch` (random initialisation, train mode)."""
    return AutoViT(arch)
