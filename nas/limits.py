"""Absolute sanity bounds on any architecture or space, whatever file it came from.

Each bound is far above every network of the built-in spaces (the S space's largest has
resolution 256, width 240, depth 5, 9 heads, MLP ratio 2) and far below what exhausts memory,
so that a hostile or mistyped file (depth 1e9, head_dim 1e6) is refused in one line before any
layer is allocated. Per-field bounds alone still multiply up (64 heads at 1,024 px with stride
1 is a terabyte of attention), so the parameter count and the largest activation of one image
are bounded too.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from autovit.latmodel.errors import AutoVitError

if TYPE_CHECKING:
    from autovit.nas.arch import ArchConfig
    from autovit.nas.space import SearchSpace

# field -> largest value accepted
LIMITS: dict[str, float] = {
    "resolution": 1024,      # px; ImageNet models use 224-512
    "width": 4096,           # channels of any stem, MBConv or transformer stage
    "depth": 64,             # blocks or layers in one stage
    "stages": 16,            # MBConv or transformer stages in one network
    "heads": 64,
    "head_dim": 1024,
    "mlp_ratio": 16.0,
    "expansion": 16.0,       # MBConv and downsample expansion
    "kernel": 15,            # px; every kernel is odd
    "stride": 8,
    "patch": 32,
    "head_expansion": 16,
    "num_classes": 100_000,  # ImageNet-21k has 21,841
    "text": 1024,            # characters of a name or a space path
    "options": 64,           # values in one choice list of a space
}
# Trainable parameters of one network: ViT-L has 3e8; 1e9 float32 weights are 4 GB before any
# gradient or optimizer state.
MAX_PARAMS = 1_000_000_000
# Elements of the largest activation of one image (2**29 float32 = 2 GiB): a training batch
# multiplies it by the batch size.
MAX_ACTIVATION = 2**29


_WHY = {"options": "no space needs more, and its exact count grows with every value",
        "text": "longer than any name or path"}


def check_field(what: str, value: float, kind: str, owner: str = "architecture") -> None:
    """Refuse `value` of field `what` beyond LIMITS[kind], in one line naming the bound."""
    if value > LIMITS[kind]:
        why = _WHY.get(kind, "no real network comes near it, and building one would exhaust memory")
        raise AutoVitError(f"{owner}: '{what}' is {value:g}, beyond the sane bound {LIMITS[kind]:g} ({why})")
    if kind == "kernel" and value % 2 == 0:  # 'same' padding (k // 2) keeps a side only for odd k
        raise AutoVitError(f"{owner}: '{what}' is {value:g}; kernels must be odd (an even one changes the "
                           "feature-map side and the block's branches no longer fit together)")


def check_arch_limits(arch: "ArchConfig") -> None:
    """Refuse `arch` if any field, its parameter count or its largest activation is beyond the
    sane bounds above. Cheap: arithmetic on the configuration, nothing is built."""
    from autovit.nas.params import count_params

    for name, kind in (("resolution", "resolution"), ("stem_width", "width"), ("head_dim", "head_dim"),
                       ("patch", "patch"), ("conv_kernel", "kernel"), ("downsample_expansion", "expansion"),
                       ("head_expansion", "head_expansion"), ("num_classes", "num_classes"),
                       ("stem_kernel", "kernel"), ("stem_stride", "stride"), ("fusion_kernel", "kernel")):
        check_field(name, getattr(arch, name), kind)
    for name in ("mbconv", "transformer"):
        check_field(f"number of {name} stages", len(getattr(arch, name)), "stages")
    for i, s in enumerate(arch.mbconv):
        for name, kind in (("width", "width"), ("depth", "depth"), ("kernel", "kernel"),
                           ("expansion", "expansion"), ("stride", "stride")):
            check_field(f"mbconv[{i}].{name}", getattr(s, name), kind)
    for i, s in enumerate(arch.transformer):
        check_field(f"transformer[{i}].width", s.width, "width")
        check_field(f"transformer[{i}].depth", s.depth, "depth")
        check_field(f"transformer[{i}].stride", s.stride, "stride")
        for j, layer in enumerate(s.layers):
            check_field(f"transformer[{i}].layers[{j}].heads", layer.heads, "heads")
            check_field(f"transformer[{i}].layers[{j}].mlp_ratio", layer.mlp_ratio, "mlp_ratio")
    for name in ("name", "space"):
        check_field(f"{name} (characters)", len(getattr(arch, name)), "text")
    params = count_params(arch)
    if params > MAX_PARAMS:
        raise AutoVitError(f"architecture: {params:.3g} parameters, beyond the sane bound {MAX_PARAMS:.0e} "
                           "(4 GB of weights before any gradient); make it smaller")
    act = largest_activation(arch)
    if act > MAX_ACTIVATION:
        raise AutoVitError(f"architecture: its largest activation holds {act:.3g} values per image "
                           f"({act * 4 / 2**30:.3g} GiB), beyond the sane bound {MAX_ACTIVATION * 4 / 2**30:g} GiB; "
                           "lower the resolution, widths or heads, or downsample earlier")


def largest_activation(arch: "ArchConfig") -> int:
    """Elements of the largest tensor one image creates in build_model(arch): feature maps
    (expanded MBConv maps included), MLP hidden maps and attention matrices (heads x patch^2
    sequences of N x N, N the patches per sequence)."""
    from autovit.nas.arch import expanded, mlp_hidden

    side = math.ceil(arch.resolution / arch.stem_stride)
    c = arch.stem_width
    biggest = max(3 * arch.resolution ** 2, c * side * side)
    for st in arch.mbconv:
        biggest = max(biggest, expanded(c, st.expansion) * side * side)
        side, c = math.ceil(side / st.stride), st.width
        biggest = max(biggest, expanded(c, st.expansion) * side * side)
    for st in arch.transformer:
        biggest = max(biggest, expanded(c, arch.downsample_expansion) * side * side)
        side, c = math.ceil(side / st.stride), st.width
        tokens = math.ceil(side / arch.patch) ** 2
        for layer in st.layers:
            attn = layer.heads * arch.patch ** 2 * tokens * tokens
            qkv = 3 * layer.heads * arch.head_dim * side * side
            biggest = max(biggest, attn, qkv, mlp_hidden(c, layer.mlp_ratio) * side * side, 2 * c * side * side)
    return max(biggest, c * arch.head_expansion * side * side)


def check_space_limits(space: "SearchSpace") -> None:
    """A space's every choice list within LIMITS["options"] values, and its envelope (every
    listed stage at its largest choices, as the supernet allocates it) within the arch bounds."""
    from autovit.nas.arch import ArchConfig, MBConvStage, TransformerLayer, TransformerStage

    owner = f"space {space.name[:LIMITS['text']]}"
    check_field("name (characters)", len(space.name), "text", owner)
    # where -> (values, the LIMITS kind of each value)
    lists = {"resolutions": (space.resolutions, "resolution"), "stem widths": (space.stem_widths, "width"),
             "num_transformer_stages": (space.num_transformer_stages, "stages")}
    kinds = {"widths": "width", "depths": "depth", "kernels": "kernel", "expansions": "expansion", "heads": "heads",
             "mlp_ratios": "mlp_ratio"}
    for part in ("mbconv", "transformer"):
        check_field(f"{part} stages listed", len(getattr(space, part)), "stages", owner)
        for i, s in enumerate(getattr(space, part)):
            lists.update({f"{part}[{i}].{k}": (getattr(s, k), kind) for k, kind in kinds.items() if hasattr(s, k)})
    # every value before the envelope is built: a depth of 1e9 would be a tuple of 1e9 layers
    for where, (values, kind) in lists.items():
        check_field(f"{where} (values listed)", len(values), "options", owner)
        check_field(where, max(values), kind, owner)
    envelope = ArchConfig(
        resolution=max(space.resolutions), stem_width=max(space.stem_widths),
        mbconv=tuple(MBConvStage(max(s.widths), max(s.depths), max(s.kernels), max(s.expansions), s.stride)
                     for s in space.mbconv),
        transformer=tuple(TransformerStage(max(s.widths), (TransformerLayer(max(s.heads), max(s.mlp_ratios)),)
                                           * max(s.depths), s.stride) for s in space.transformer),
        head_dim=space.head_dim, patch=space.patch, conv_kernel=space.conv_kernel,
        downsample_expansion=space.downsample_expansion, head_expansion=space.head_expansion,
        num_classes=space.num_classes, stem_kernel=space.stem_kernel, stem_stride=space.stem_stride,
        local_conv=space.local_conv, fusion_kernel=space.fusion_kernel, conv_ratio=space.conv_ratio)
    try:
        check_arch_limits(envelope)
    except AutoVitError as e:
        raise AutoVitError(f"{owner}: its largest choices make an {e}") from None
    work = counting_work(space)
    if work > MAX_COUNT_WORK:
        raise AutoVitError(f"{owner}: counting and sampling it exactly would take ~{work:.2g} steps (bound "
                           f"{MAX_COUNT_WORK:.0e}: minutes of work and gigabytes of memo); list fewer widths, "
                           "heads, MLP ratios or depths")


# Steps of the exact counter of the monotonic-width rule (space.py), as counting_work bounds
# them: the built-in spaces need ~1.4e4; on a 2-core machine 1.3e7 took 1.3 s and 1.1e8 took 11 s.
MAX_COUNT_WORK = 20_000_000


def counting_work(space: "SearchSpace") -> int:
    """An upper bound on the counter's work: the (stage, layers left, width, attention width,
    MLP width) states it may memoise, per stage its depth x widths x the attention and MLP
    widths reachable so far, each state trying every (heads, MLP ratio) pair."""
    from autovit.nas.arch import mlp_hidden

    attn, mlp, total = {0}, {0}, 0
    for s in space.transformer:
        attn |= {h * space.head_dim for h in s.heads}
        mlp |= {mlp_hidden(w, r) for w in s.widths for r in s.mlp_ratios}
        total += max(s.depths) * len(s.widths) * len(attn) * len(mlp) * len(s.heads) * len(s.mlp_ratios)
    return total * len(space.num_transformer_stages)
