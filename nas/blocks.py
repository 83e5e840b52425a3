"""AutoViT's blocks: what a lookup table (LUT) measures of an AutoViT network, as data.

A BlockSpec holds every setting that changes a block's shape; its `key` names a LUT entry. It
implements latmodel.blocks.Block and registers its five kinds when `autovit.nas` is imported.
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

from autovit.latmodel.blocks import register_block_kind
from autovit.latmodel.checks import check_keys, did_you_mean, number
from autovit.latmodel.errors import AutoVitError
from autovit.nas import builder as b
from autovit.nas.arch import LOCAL_CONVS, arch_block_fields
from autovit.nas.space import load_space

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
    def from_dict(cls, d: Any, where: str = "block") -> "BlockSpec":
        """The one place a block description from a file (LUT, --blocks) is checked: known keys,
        every field of its type and in the range a real block has."""
        if not isinstance(d, dict):
            raise AutoVitError(f"{where}: a block description is a JSON object like "
                               f'{{"kind": "conv", "hw": 64, "cin": 3, "cout": 16}}, got {d!r:.60}')
        check_keys(d, [f.name for f in fields(cls)], where)
        kind = d.get("kind")
        if kind not in KINDS:
            raise AutoVitError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r:.40}"
                               f"{did_you_mean(str(kind), KINDS)}")
        for name in ("hw", "cin", "cout"):
            if name not in d:
                raise AutoVitError(f"{where}: missing field '{name}'")
        values: dict[str, Any] = {}
        if kind == "mvit_convs" and "fusion_kernel" not in d:
            d = {**d, "fusion_kernel": d.get("kernel", 3)}  # written before the field: v1's n x n fusion
        if "local_conv" in d:
            if d["local_conv"] not in LOCAL_CONVS:
                raise AutoVitError(f"{where}: field 'local_conv' must be one of {', '.join(LOCAL_CONVS)}, "
                                   f"got {d['local_conv']!r:.40}")
            values["local_conv"] = d["local_conv"]
        for name, (lo, hi, lo_open) in _FIELD_RANGES.items():
            if name in d:
                is_int = name not in ("expansion", "mlp_ratio")
                v = number(d[name], f"{where}: field '{name}'", lo, hi, lo_open, integer=is_int)
                values[name] = v if is_int else float(v)
        spec = cls(kind, **values)
        spec._check_kind(where)
        return spec

    def _check_kind(self, where: str) -> None:
        widest = max(self.cin, self.cout) * max(self.expansion, self.mlp_ratio, 1.0)
        weights = max(self.cin, self.cout) * max(widest, self.heads * max(self.head_dim, 1))
        if self.hw * self.hw * widest > MAX_BLOCK_ELEMS or weights > MAX_BLOCK_ELEMS:
            raise AutoVitError(f"{where}: {self.key} is beyond any real block (a tensor of more than "
                               f"{MAX_BLOCK_ELEMS:,} elements); check its hw, channels and ratios")
        if self.kind != "transformer" and (self.kernel % 2 == 0 or self.fusion_kernel % 2 == 0):
            # 'same' padding keeps the side only for odd kernels: an even one measured another shape
            raise AutoVitError(f"{where}: kernels must be odd, got kernel {self.kernel}"
                               + (f", fusion_kernel {self.fusion_kernel}" if self.kind == "mvit_convs" else ""))
        if self.kind in ("mvit_convs", "transformer") and self.patch > self.hw:
            raise AutoVitError(f"{where}: patch {self.patch} is larger than the {self.hw} px feature map")
        if self.kind == "transformer" and not (self.heads and self.head_dim and self.mlp_ratio):
            raise AutoVitError(f"{where}: a transformer block needs heads, head_dim and mlp_ratio > 0")
        if self.kind == "head" and self.num_classes < 1:
            raise AutoVitError(f"{where}: a head block needs num_classes >= 1")

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        if self.kind == "transformer":
            n = (self.hw // self.patch) ** 2
            return (batch * self.patch * self.patch, n, self.cin)
        return (batch, self.cin, self.hw, self.hw)

    def build(self):
        """The torch module for this block (eval mode)."""
        if self.kind == "conv":
            m = b.ConvBNAct(self.cin, self.cout, self.kernel, self.stride)
        elif self.kind == "mbconv":
            m = b.MBConv(self.cin, self.cout, self.stride, self.kernel, self.expansion)
        elif self.kind == "mvit_convs":
            m = b.MobileViTBlock(self.cin, self.cout, (), max(self.head_dim, 1), self.patch, self.kernel,
                                 self.local_conv, self.fusion_kernel)
        elif self.kind == "transformer":
            m = b.TransformerBlock(self.cin, b.TransformerLayer(self.heads, self.mlp_ratio), self.head_dim)
        elif self.kind == "head":
            m = _Head(self.cin, self.cout, self.num_classes)
        else:  # pragma: no cover - from_dict rejects unknown kinds
            raise AutoVitError(f"unknown block kind {self.kind}")
        return m.eval()


# Largest activation (hw x hw x widest channels) or weight tensor of a block: real ones have at
# most ~16 M elements (an early ImageNet stage at 512 px); twice that is refused rather than built.
MAX_BLOCK_ELEMS = 2**25

# (lo, hi, lo excluded) of every numeric field: what any real block of a vision network has
# (px, channels, heads, ...); a block beyond them would take minutes and gigabytes to build.
_FIELD_RANGES = {
    "hw": (1, 4096, False), "cin": (1, 8192, False), "cout": (1, 8192, False), "kernel": (1, 15, False),
    "stride": (1, 8, False), "expansion": (0, 16, True), "heads": (0, 256, False), "mlp_ratio": (0, 16, False),
    "head_dim": (0, 1024, False), "patch": (1, 16, False), "num_classes": (0, 100_000, False),
    "fusion_kernel": (1, 15, False),
}

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
        self.conv = b.ConvBNAct(cin, feats, 1)
        self.fc = nn.Linear(feats, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


# ---- module sets --------------------------------------------------------------------------
def paper46(resolution: int = 256) -> list[BlockSpec]:
    """The paper's 46 LUT modules (docs/METHOD.md §4), each at the feature-map size where the XXS
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


# Whole networks `profile --preset calib50` times in the same rounds as its blocks, which
# calibrate fits together with them: AutoViT's three presets, and five timm models picked for
# what they are made of, each from a family in none of the sets validate is scored on
# (docs/BENCHMARKS.md): depthwise-separable convolutions (MobileNetV1), inverted residuals
# found by NAS (SPNASNet), dense 1x1 and depthwise convolutions with concatenation (VoVNet-19
# dw), a pyramid transformer with spatial-reduction attention and convolutional MLPs (PVTv2-b0)
# and an isotropic vision transformer (ConViT-tiny).
CALIB50_NETWORKS = ("autovit:xxs", "autovit:xs", "autovit:s", "timm:mobilenetv1_100", "timm:spnasnet_100",
                    "timm:ese_vovnet19b_dw", "timm:pvt_v2_b0", "timm:convit_tiny")


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


def fields_block(f: tuple | BlockSpec) -> BlockSpec:
    """The BlockSpec of an arch_block_fields tuple (the oracles' `block_of`; a BlockSpec is its own)."""
    return f if isinstance(f, BlockSpec) else BlockSpec(*f)


# What the oracles need to price AutoViT architectures (latmodel/oracle.py): the fast walk to
# field tuples, and how a tuple becomes a block.
DECOMPOSITION = {"decompose": arch_block_fields, "block_of": fields_block}

for _kind in KINDS:
    register_block_kind(_kind, BlockSpec)
