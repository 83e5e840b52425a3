"""The building blocks a lookup table (LUT) measures, as data.

A BlockSpec holds every setting that changes a block's shape; its `key` names a LUT entry.
Blocks are built from the same layers as the full network (nas/builder.py), at the feature-map
size where they occur, so a measured block is the block the network runs.

Kinds:
- conv:        the stem, 3 -> width, k x k, stride 2
- mbconv:      one inverted residual, cin -> cout
- mvit_convs:  a MobileViT block without its transformer layers (local conv, 1x1 in/out,
               unfold/fold, fusion conv): cin = its conv channels C, cout = its transformer
               width d; `local_conv` (depthwise or dense) and `fusion_kernel` are its internals
- transformer: one transformer layer on P = patch^2 sequences of N tokens
- head:        MBPool (1x1 conv, pool, classifier)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from autovit.latmodel.errors import AutoVitError

KINDS = ("conv", "mbconv", "mvit_convs", "transformer", "head")


@dataclass(frozen=True, order=True)
class BlockSpec:
    kind: str
    hw: int  # input feature-map side (px)
    cin: int
    cout: int
    kernel: int = 3
    stride: int = 1
    expansion: float = 1.0
    heads: int = 0
    mlp_ratio: float = 0.0
    head_dim: int = 0
    patch: int = 2
    num_classes: int = 0
    # mvit_convs only. The defaults are MobileViT v1's, what LUTs written before these fields meant.
    local_conv: str = "dense"
    fusion_kernel: int = 3

    @property
    def key(self) -> str:
        """Stable, human-readable LUT key with only the fields that matter for this kind (the
        internals only where they differ from v1's, so older LUT keys stay valid)."""
        fields_ = _KEY_FIELDS[self.kind]
        if self.kind == "mvit_convs" and (self.local_conv, self.fusion_kernel) != ("dense", self.kernel):
            fields_ += ("local_conv", "fusion_kernel")
        parts = {k: v for k, v in self.to_dict().items() if k in fields_}
        return self.kind + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in parts.items())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BlockSpec":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or d.get("kind") not in KINDS or not known >= set(d):
            raise AutoVitError(f"not a block description: {d!r}")
        if d["kind"] == "mvit_convs" and "fusion_kernel" not in d:
            d = {**d, "fusion_kernel": d.get("kernel", 3)}  # written before the field: v1's n x n fusion
        return cls(**d)

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        if self.kind == "transformer":
            n = (self.hw // self.patch) ** 2
            return (batch * self.patch * self.patch, n, self.cin)
        return (batch, self.cin, self.hw, self.hw)

    def build(self):
        """The torch module for this block (eval mode)."""
        from autovit.nas import builder as b
        from autovit.nas.arch import TransformerLayer

        if self.kind == "conv":
            m = b.ConvBNAct(self.cin, self.cout, self.kernel, self.stride)
        elif self.kind == "mbconv":
            m = b.MBConv(self.cin, self.cout, self.stride, self.kernel, self.expansion)
        elif self.kind == "mvit_convs":
            m = b.MobileViTBlock(self.cin, self.cout, (), max(self.head_dim, 1), self.patch, self.kernel,
                                 self.local_conv, self.fusion_kernel)
        elif self.kind == "transformer":
            m = b.TransformerBlock(self.cin, TransformerLayer(self.heads, self.mlp_ratio), self.head_dim)
        elif self.kind == "head":
            m = _Head(self.cin, self.cout, self.num_classes)
        else:  # pragma: no cover - from_dict rejects unknown kinds
            raise AutoVitError(f"unknown block kind {self.kind}")
        return m.eval()


_KEY_FIELDS = {
    "conv": ("hw", "cin", "cout", "kernel", "stride"),
    "mbconv": ("hw", "cin", "cout", "kernel", "stride", "expansion"),
    "mvit_convs": ("hw", "cin", "cout", "kernel", "patch"),
    "transformer": ("hw", "cin", "heads", "mlp_ratio", "head_dim", "patch"),
    "head": ("hw", "cin", "cout", "num_classes"),
}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class _Head(nn.Module):
    """MBPool as a standalone block: 1x1 conv to `feats`, global average pool, classifier."""

    def __init__(self, cin: int, feats: int, classes: int) -> None:
        super().__init__()
        from autovit.nas.builder import ConvBNAct

        self.conv = ConvBNAct(cin, feats, 1)
        self.fc = nn.Linear(feats, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


# ---- module sets --------------------------------------------------------------------------
def paper46(resolution: int = 256) -> list[BlockSpec]:
    """The paper's 46 LUT modules (SPEC.md section 4), each at the feature-map size where the XXS
    space first uses that width: Conv {16, 24}, MBConv {16, 24, 32, 48}, transformer layers
    {48, 64, 80, 96, 112} x heads {2, 3, 4, 5} x MLP ratio {1.5, 2}."""
    from autovit.nas.space import load_space

    sp = load_space("xxs")
    out = [BlockSpec("conv", resolution, 3, w, sp.stem_kernel, sp.stem_stride) for w in (16, 24)]
    side = resolution // sp.stem_stride
    first_mb: dict[int, int] = {}
    for st in sp.mbconv:
        side //= st.stride
        for w in st.widths:
            first_mb.setdefault(w, side)
    out += [BlockSpec("mbconv", first_mb[w], w, w, 3, 1, 1.0) for w in (16, 24, 32, 48)]
    first_tr: dict[int, int] = {}
    for st in sp.transformer:
        side //= st.stride
        for w in st.widths:
            first_tr.setdefault(w, side)
    for w in (48, 64, 80, 96, 112):
        for h in (2, 3, 4, 5):
            for r in (1.5, 2.0):
                out.append(BlockSpec("transformer", first_tr[w], w, w, heads=h, mlp_ratio=r,
                                     head_dim=sp.head_dim, patch=sp.patch))
    return out


# Blocks per kind in the calibration design: the kinds the networks spend their time in get more.
_CALIB_QUOTA = {"conv": 3, "mbconv": 15, "mvit_convs": 10, "transformer": 18, "head": 4}


def calib50(spaces: tuple[str, ...] = ("xxs", "xs", "s")) -> list[BlockSpec]:
    """A 50-block calibration design covering every kind of block the spaces use (paper46 has no
    MobileViT unfold/fold and no head, so a fit on it cannot see their terms). Per kind, blocks
    are spread evenly over the range of sizes (sorted by input elements x output channels), so
    small, dispatch-bound blocks and large, compute-bound ones are both present. Deterministic."""
    from autovit.nas.space import load_space

    pool: set[BlockSpec] = set()
    for name in spaces:
        pool |= set(space_blocks(load_space(name)))
    out = []
    for kind, quota in _CALIB_QUOTA.items():
        blocks = sorted((b for b in pool if b.kind == kind),
                        key=lambda b: (b.hw * b.hw * b.cin * max(b.cout, 1) * (b.expansion or 1) * (b.mlp_ratio or 1), b))
        if len(blocks) <= quota:
            out += blocks
            continue
        idx = sorted({round(i * (len(blocks) - 1) / (quota - 1)) for i in range(quota)})
        out += [blocks[i] for i in idx]
    return out


_NOT_MVIT = ("dense", 3)  # the internals fields of every block that is not mvit_convs


def arch_block_fields(arch) -> list[tuple]:
    """The blocks an AutoViT architecture runs, in order, as BlockSpec field tuples (kind, hw,
    cin, cout, kernel, stride, expansion, heads, mlp_ratio, head_dim, patch, num_classes,
    local_conv, fusion_kernel). Tuples hash and compare in C: the search's oracle looks up ~10^5
    of them per second."""
    side = arch.resolution
    hd, p = arch.head_dim, arch.patch
    out = [("conv", side, 3, arch.stem_width, arch.stem_kernel, arch.stem_stride, 1.0, 0, 0.0, 0, 2, 0, *_NOT_MVIT)]
    side = -(-side // arch.stem_stride)
    c = arch.stem_width
    for st in arch.mbconv:
        for i in range(st.depth):
            stride = st.stride if i == 0 else 1
            out.append(("mbconv", side, c, st.width, st.kernel, stride, st.expansion, 0, 0.0, 0, 2, 0, *_NOT_MVIT))
            side = -(-side // stride)
            c = st.width
    for st in arch.transformer:
        cw = arch.channels(st.width)
        out.append(("mbconv", side, c, cw, arch.conv_kernel, st.stride, arch.downsample_expansion, 0, 0.0, 0, 2, 0,
                    *_NOT_MVIT))
        side = -(-side // st.stride)
        c = cw
        out.append(("mvit_convs", side, c, st.width, arch.conv_kernel, 1, 1.0, 0, 0.0, hd, p, 0,
                    arch.local_conv, arch.fusion_kernel))
        tokens_side = -(-side // p) * p
        for layer in st.layers:
            out.append(("transformer", tokens_side, st.width, st.width, 3, 1, 1.0, layer.heads, layer.mlp_ratio, hd, p, 0,
                        *_NOT_MVIT))
    out.append(("head", side, c, c * arch.head_expansion, 3, 1, 1.0, 0, 0.0, 0, 2, arch.num_classes, *_NOT_MVIT))
    return out


def arch_blocks(arch) -> list[BlockSpec]:
    """An AutoViT architecture as the sequence of blocks it runs (for LUT sums and profiling)."""
    return [BlockSpec(*f) for f in arch_block_fields(arch)]


def space_blocks(space) -> list[BlockSpec]:
    """Every distinct block the space can produce (sorted). Walks the choices stage by stage, so
    it is exact without enumerating the ~1e10 architectures."""
    out: set[BlockSpec] = set()
    for res in space.resolutions:
        side = -(-res // space.stem_stride)
        ins = set()
        for w in space.stem_widths:
            out.add(BlockSpec("conv", res, 3, w, space.stem_kernel, space.stem_stride))
            ins.add(w)
        for st in space.mbconv:
            next_side = -(-side // st.stride)
            outs = set()
            for cin in ins:
                for w in st.widths:
                    for k in st.kernels:
                        for e in st.expansions:
                            out.add(BlockSpec("mbconv", side, cin, w, k, st.stride, e))
                            if max(st.depths) > 1:
                                out.add(BlockSpec("mbconv", next_side, w, w, k, 1, e))
                    outs.add(w)
            ins, side = outs, next_side
        for i, st in enumerate(space.transformer[:max(space.num_transformer_stages)]):
            next_side = -(-side // st.stride)
            channels = {w: space.channels(w) for w in st.widths}
            for cin in ins:
                for w in st.widths:
                    out.add(BlockSpec("mbconv", side, cin, channels[w], space.conv_kernel, st.stride,
                                      space.downsample_expansion))
            tokens_side = -(-next_side // space.patch) * space.patch
            for w in st.widths:
                out.add(BlockSpec("mvit_convs", next_side, channels[w], w, space.conv_kernel, patch=space.patch,
                                  head_dim=space.head_dim, local_conv=space.local_conv,
                                  fusion_kernel=space.fusion_kernel))
                for h in st.heads:
                    for r in st.mlp_ratios:
                        out.add(BlockSpec("transformer", tokens_side, w, w, heads=h, mlp_ratio=r,
                                          head_dim=space.head_dim, patch=space.patch))
                if i + 1 in space.num_transformer_stages:
                    out.add(BlockSpec("head", next_side, channels[w], channels[w] * space.head_expansion,
                                      num_classes=space.num_classes))
            ins, side = set(channels.values()), next_side
    return sorted(out)
