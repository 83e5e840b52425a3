"""An AutoViT architecture as data: a frozen dataclass that round-trips to JSON.

A configuration is standalone: it carries every structural setting the builder needs
(strides, head dimension, patch size, ...), so a preset or a user's file can be built
without naming the search space it came from.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autovit.latmodel.checks import check_keys, number, read_json
from autovit.latmodel.errors import AutoVitError

ARCH_FORMAT = "autovit-arch/2"
# Format 1 files predate the block-internal fields; read without them, they mean MobileViT v1's
# internals (dense local conv, fusion conv of conv_kernel, conv channels = transformer width).
LEGACY_FORMATS = ("autovit-arch/1",)
LOCAL_CONVS = ("depthwise", "dense")


@dataclass(frozen=True)
class MBConvStage:
    """`depth` MobileNetV2 inverted residuals; the first has `stride`."""

    width: int
    depth: int
    kernel: int = 3
    expansion: float = 1.0
    stride: int = 1


@dataclass(frozen=True)
class TransformerLayer:
    """One pre-norm transformer layer: `heads` x head_dim attention, MLP of `mlp_ratio` x width."""

    heads: int
    mlp_ratio: float


@dataclass(frozen=True)
class TransformerStage:
    """A stride-`stride` MBConv to `width` channels, then a MobileViT block of `len(layers)` layers."""

    width: int
    layers: tuple[TransformerLayer, ...]
    stride: int = 2

    @property
    def depth(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class ArchConfig:
    """A whole network: stem -> MBConv stages -> transformer stages -> MBPool head."""

    resolution: int
    stem_width: int
    mbconv: tuple[MBConvStage, ...]
    transformer: tuple[TransformerStage, ...]
    head_dim: int = 16
    patch: int = 2
    conv_kernel: int = 3
    downsample_expansion: float = 2.0
    head_expansion: int = 6
    num_classes: int = 1000
    stem_kernel: int = 3
    stem_stride: int = 2
    # MobileViT block internals (docs/ARCHITECTURES.md): the local n x n conv is depthwise or dense,
    # the fusion conv is fusion_kernel x fusion_kernel, and the block's conv channels are
    # conv_channels(width, conv_ratio) (the transformer runs at the stage width).
    local_conv: str = "depthwise"
    fusion_kernel: int = 1
    conv_ratio: float = 1.0
    name: str = field(default="", compare=False)
    space: str = field(default="", compare=False)  # the space it was drawn from, checked on load

    @property
    def num_transformer_stages(self) -> int:
        return len(self.transformer)

    def channels(self, width: int) -> int:
        """Conv channels of a transformer stage of `width`."""
        return conv_channels(width, self.conv_ratio)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = ARCH_FORMAT
        return d

    def key(self) -> str:
        """A canonical string of every setting: equal architectures, equal keys (caches, saved state)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from autovit.latmodel.io import atomic_write_text

            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchConfig":
        return arch_from_dict(d)

    def with_num_classes(self, num_classes: int) -> "ArchConfig":
        from dataclasses import replace

        return replace(self, num_classes=num_classes)


def _take(d: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise AutoVitError(f"architecture: missing field '{where}{key}'")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise AutoVitError(f"architecture: field '{where}{key}' must be {_kind_name(kind)}, got {repr(v)[:40]}")
    return v


def _ratio(d: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    """A float field (ratio, expansion): a finite number; JSON readers already refuse NaN."""
    v = _take(d, key, where, (int, float)) if default is None or key in d else default
    return float(number(v, f"architecture: field '{where}{key}'"))


def _opt(d: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any) -> Any:
    return _take(d, key, where, kind) if key in d else default


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _known_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    check_keys(d, sorted(allowed), f"architecture: {where[:-1] or 'top level'}")


def arch_from_dict(d: dict[str, Any]) -> ArchConfig:
    """Parse and type-check a JSON dict; raises AutoVitError naming the bad field."""
    if not isinstance(d, dict):
        raise AutoVitError("architecture: expected a JSON object")
    top = {f.name for f in fields(ArchConfig)} | {"format"}
    _known_keys(d, top, "")
    fmt = d.get("format", ARCH_FORMAT)
    if fmt != ARCH_FORMAT and fmt not in LEGACY_FORMATS:
        raise AutoVitError(f"architecture: format {fmt!r} is not {ARCH_FORMAT!r}")
    mb = [_mbconv_stage(s, f"mbconv[{i}].")
          for i, s in enumerate(_count(_take(d, "mbconv", "", list), "mbconv stages", "stages"))]
    tr = [_transformer_stage(s, f"transformer[{i}].")
          for i, s in enumerate(_count(_take(d, "transformer", "", list), "transformer stages", "stages"))]
    scalars = _scalars(d)
    if fmt in LEGACY_FORMATS:
        scalars = {**legacy_internals(scalars.get("conv_kernel", 3)), **scalars}
    for required in ("resolution", "stem_width"):
        if required not in scalars:
            raise AutoVitError(f"architecture: missing field '{required}'")
    arch = ArchConfig(mbconv=tuple(mb), transformer=tuple(tr), **scalars)
    check_structure(arch)
    return arch


def _object(s: Any, w: str, known: set[str]) -> dict[str, Any]:
    """A JSON object at `w` with only `known` keys."""
    if not isinstance(s, dict):
        raise AutoVitError(f"architecture: '{w[:-1]}' must be an object")
    _known_keys(s, known, w)
    return s


def _mbconv_stage(s: Any, w: str) -> MBConvStage:
    s = _object(s, w, {f.name for f in fields(MBConvStage)})
    return MBConvStage(width=_take(s, "width", w, int), depth=_take(s, "depth", w, int),
                       kernel=_opt(s, "kernel", w, int, 3), expansion=_ratio(s, "expansion", w, 1.0),
                       stride=_opt(s, "stride", w, int, 1))


def _transformer_stage(s: Any, w: str) -> TransformerStage:
    s = _object(s, w, {"width", "layers", "stride"})
    layers = []
    for j, layer in enumerate(_count(_take(s, "layers", w, list), f"{w}layers", "depth")):
        lw = f"{w}layers[{j}]."
        layer = _object(layer, lw, {"heads", "mlp_ratio"})
        layers.append(TransformerLayer(heads=_take(layer, "heads", lw, int), mlp_ratio=_ratio(layer, "mlp_ratio", lw)))
    return TransformerStage(width=_take(s, "width", w, int), layers=tuple(layers), stride=_opt(s, "stride", w, int, 2))


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields other than the stages, each of its type."""
    scalars: dict[str, Any] = {}
    for f in fields(ArchConfig):
        if f.name in ("mbconv", "transformer") or f.name not in d:
            continue
        if f.name in ("downsample_expansion", "conv_ratio"):
            scalars[f.name] = _ratio(d, f.name, "")
        else:
            scalars[f.name] = _take(d, f.name, "", str if f.name in ("name", "space", "local_conv") else int)
    return scalars


def _count(items: Any, where: str, kind: str) -> list:
    """A JSON list, refused before it is walked when it has more entries than any network."""
    from autovit.nas.limits import check_field

    if isinstance(items, list):
        check_field(f"number of {where}", len(items), kind)
    return items


def check_structure(arch: ArchConfig) -> None:
    """Checks that make any configuration buildable, whatever space it belongs to."""
    positive = {
        "resolution": arch.resolution, "stem_width": arch.stem_width, "head_dim": arch.head_dim,
        "patch": arch.patch, "conv_kernel": arch.conv_kernel, "head_expansion": arch.head_expansion,
        "num_classes": arch.num_classes, "stem_kernel": arch.stem_kernel, "stem_stride": arch.stem_stride,
    }
    for k, v in positive.items():
        if v <= 0:
            raise AutoVitError(f"architecture: '{k}' must be > 0, got {v}")
    if arch.downsample_expansion <= 0:
        raise AutoVitError("architecture: 'downsample_expansion' must be > 0")
    if arch.local_conv not in LOCAL_CONVS:
        raise AutoVitError(f"architecture: 'local_conv' must be one of {', '.join(LOCAL_CONVS)}, got {arch.local_conv!r}")
    if arch.fusion_kernel <= 0 or arch.fusion_kernel % 2 == 0:
        raise AutoVitError(f"architecture: 'fusion_kernel' must be odd and > 0, got {arch.fusion_kernel}")
    if not 0 < arch.conv_ratio <= 1:
        raise AutoVitError(f"architecture: 'conv_ratio' must be in (0, 1], got {arch.conv_ratio}")
    if not arch.transformer:
        raise AutoVitError("architecture: needs at least one transformer stage")
    for i, s in enumerate(arch.mbconv):
        for k in ("width", "depth", "kernel", "stride"):
            if getattr(s, k) <= 0:
                raise AutoVitError(f"architecture: 'mbconv[{i}].{k}' must be > 0, got {getattr(s, k)}")
        if s.kernel % 2 == 0:
            raise AutoVitError(f"architecture: 'mbconv[{i}].kernel' must be odd, got {s.kernel}")
        if s.expansion <= 0:
            raise AutoVitError(f"architecture: 'mbconv[{i}].expansion' must be > 0")
    for i, s in enumerate(arch.transformer):
        if s.width <= 0 or s.stride <= 0 or not s.layers:
            raise AutoVitError(f"architecture: 'transformer[{i}]' needs width > 0, stride > 0 and >= 1 layer")
        for j, layer in enumerate(s.layers):
            if layer.heads <= 0 or layer.mlp_ratio <= 0:
                raise AutoVitError(f"architecture: 'transformer[{i}].layers[{j}]' needs heads > 0 and mlp_ratio > 0")
    from autovit.nas.limits import check_arch_limits

    check_arch_limits(arch)


def load_arch(path: str | Path) -> ArchConfig:
    """Read an architecture JSON file (strict JSON, every field checked); errors name the file
    and the problem. A relative `space` path is resolved against the file's folder."""
    p = Path(path)
    d = read_json(p, "architecture file", "write one with 'autovit-nas spaces --sample N --space xxs --out DIR'")
    try:
        arch = arch_from_dict(d)
    except AutoVitError as e:
        raise AutoVitError(f"{p}: {e}") from None
    if arch.space:
        from dataclasses import replace

        from autovit.nas.space import anchored_ident

        arch = replace(arch, space=anchored_ident(arch.space, p.parent))
    return arch


def mlp_hidden(width: int, ratio: float) -> int:
    """MLP hidden units for a layer of `width` channels (rounded to an integer)."""
    return int(round(width * ratio))


def legacy_internals(conv_kernel: int) -> dict[str, Any]:
    """MobileViT v1's block internals, which files written before these fields existed mean."""
    return {"local_conv": "dense", "fusion_kernel": conv_kernel, "conv_ratio": 1.0}


def conv_channels(width: int, ratio: float) -> int:
    """Conv channels of a transformer stage of `width` (its transformer width) and `conv_ratio`:
    a multiple of 8 (at least 8) unless the ratio is 1."""
    return width if ratio == 1 else max(8, int(width * ratio / 8 + 0.5) * 8)


def expanded(width: int, ratio: float) -> int:
    """Hidden channels of an MBConv with input `width` and expansion `ratio`."""
    return int(round(width * ratio))


_NOT_MVIT = ("dense", 3)  # the internals fields of every block that is not mvit_convs


def arch_block_fields(arch: ArchConfig) -> list[tuple]:
    """The one walk of an architecture: the blocks it runs, in order, with their feature-map
    sides, as nas.blocks.BlockSpec field tuples (kind, hw, cin, cout, kernel, stride,
    expansion, heads, mlp_ratio, head_dim, patch, num_classes, local_conv, fusion_kernel).
    The builder builds the network from it and the latency oracles decompose with it; a
    MobileViT block is its "mvit_convs" tuple followed by one "transformer" tuple per layer.
    Tuples hash and compare in C: the search's oracle looks up ~10^5 of them per second."""
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

