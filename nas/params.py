"""Parameter count of an architecture from its configuration alone (no model is built).

Kept independent of builder.py on purpose: the property test compares the two, so a slip in
either shows. Search uses this to filter by a parameter budget at ~microseconds per candidate.
"""
from __future__ import annotations

from autovit.nas.arch import ArchConfig, expanded, mlp_hidden


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


def count_params(arch: ArchConfig) -> int:
    """Trainable parameters of build_model(arch) (BatchNorm running statistics are buffers)."""
    n = _conv_bn(3, arch.stem_width, arch.stem_kernel)
    c = arch.stem_width
    for st in arch.mbconv:
        for _ in range(st.depth):
            n += _mbconv(c, st.width, st.kernel, st.expansion)
            c = st.width
    k = arch.conv_kernel
    for st in arch.transformer:
        n += _mbconv(c, st.width, k, arch.downsample_expansion)
        c = d = st.width
        n += _conv_bn(c, c, k) + _conv(c, d, 1)
        n += sum(_transformer_layer(d, layer.heads, arch.head_dim, layer.mlp_ratio) for layer in st.layers)
        n += 2 * d + _conv_bn(d, c, 1) + _conv_bn(2 * c, c, k)
    feats = c * arch.head_expansion
    return n + _conv_bn(c, feats, 1) + _linear(feats, arch.num_classes)
