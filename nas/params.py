"""Parameter count of an architecture from its configuration alone (no model is built).

Kept independent of builder.py on purpose: the property test compares the two, so a slip in
either shows. Search uses this to filter by a parameter budget at ~microseconds per candidate.
"""
from __future__ import annotations

from functools import lru_cache

from autovit.nas.arch import ArchConfig, TransformerStage, conv_channels, expanded, mlp_hidden


def _conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def _conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return _conv(cin, cout, k, groups) + 2 * cout


def _mbconv(cin: int, cout: int, k: int, e: float) -> int:
    hidden = expanded(cin, e)
    n = _conv_bn(cin, hidden, 1) if e != 1 else 0
    return n + _conv_bn(hidden, hidden, k, groups=hidden) + _conv_bn(hidden, cout, 1)


def _linear(i: int, o: int) -> int:
    return i * o + o


def _transformer_layer(d: int, heads: int, head_dim: int, ratio: float) -> int:
    a = heads * head_dim
    m = mlp_hidden(d, ratio)
    return 2 * d + _linear(d, 3 * a) + _linear(a, d) + 2 * d + _linear(d, m) + _linear(m, d)


@lru_cache(maxsize=65536)
def _mbconv_stage(cin: int, width: int, depth: int, kernel: int, e: float) -> int:
    if depth == 0:
        return 0
    return _mbconv(cin, width, kernel, e) + (depth - 1) * _mbconv(width, width, kernel, e)


@lru_cache(maxsize=65536)
def _transformer_stage(cin: int, st: TransformerStage, arch_internals: tuple) -> int:
    head_dim, k, down_e, local_conv, fusion_k, ratio = arch_internals
    d = st.width
    c = conv_channels(d, ratio)
    n = _mbconv(cin, c, k, down_e) + _conv_bn(c, c, k, groups=c if local_conv == "depthwise" else 1) + _conv(c, d, 1)
    n += sum(_transformer_layer(d, layer.heads, head_dim, layer.mlp_ratio) for layer in st.layers)
    return n + 2 * d + _conv_bn(d, c, 1) + _conv_bn(2 * c, c, fusion_k)


def count_params(arch: ArchConfig) -> int:
    """Trainable parameters of build_model(arch) (BatchNorm running statistics are buffers).
    Stages are memoised: a search counts ~10,000 candidates a second."""
    n = _conv_bn(3, arch.stem_width, arch.stem_kernel)
    c = arch.stem_width
    for st in arch.mbconv:
        n += _mbconv_stage(c, st.width, st.depth, st.kernel, st.expansion)
        c = st.width if st.depth else c
    internals = (arch.head_dim, arch.conv_kernel, arch.downsample_expansion, arch.local_conv, arch.fusion_kernel,
                 arch.conv_ratio)
    for st in arch.transformer:
        n += _transformer_stage(c, st, internals)
        c = conv_channels(st.width, arch.conv_ratio)
    feats = c * arch.head_expansion
    return n + _conv_bn(c, feats, 1) + _linear(feats, arch.num_classes)
