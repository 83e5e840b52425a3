"""Search spaces as data: load a space file, validate an architecture against it, count it,
and draw architectures uniformly from it.

The monotonic-width rule (docs/METHOD.md §2: "widths never decrease") is applied to every
width of the transformer part, read in network order: the stage width, each layer's attention
width (heads x head_dim) and each layer's MLP hidden width. Uniform sampling under that rule
is exact: a dynamic programme counts the completions of every partial choice and each choice
is drawn in proportion to them, so no rejection loop is needed and none can spin forever.
"""
from __future__ import annotations

import random
import re
import tomllib
from bisect import bisect_right
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from itertools import accumulate
from pathlib import Path
from typing import Any

from autovit.latmodel.checks import check_keys, integer
from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import (
    LOCAL_CONVS,
    ArchConfig,
    MBConvStage,
    TransformerLayer,
    TransformerStage,
    conv_channels,
    legacy_internals,
    mlp_hidden,
)
from autovit.nas.limits import LIMITS

BUILTIN_SPACES = ("xxs", "xs", "s")
MAX_SPACE_BYTES = 2**20  # a space file is a few kB


@dataclass(frozen=True)
class MBConvChoices:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    stride: int


@dataclass(frozen=True)
class TransformerChoices:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    stride: int


@dataclass(frozen=True)
class SearchSpace:
    name: str
    resolutions: tuple[int, ...]
    stem_widths: tuple[int, ...]
    stem_kernel: int
    stem_stride: int
    mbconv: tuple[MBConvChoices, ...]
    transformer: tuple[TransformerChoices, ...]
    num_transformer_stages: tuple[int, ...]
    head_dim: int
    patch: int
    conv_kernel: int
    downsample_expansion: float
    head_expansion: int
    num_classes: int
    monotonic_widths: bool
    local_conv: str = "depthwise"
    fusion_kernel: int = 1
    conv_ratio: float = 1.0
    params_range_m: tuple[float, float] | None = None
    source: str = ""

    def channels(self, width: int) -> int:
        """Conv channels of a transformer stage of `width`."""
        return conv_channels(width, self.conv_ratio)

    @property
    def ident(self) -> str:
        """What architecture files record as their space, and what load_space reads back: a
        built-in name ('xxs'), a space file's absolute path, either with '@RESpx' when the
        resolutions were overridden (a supernet trained on built-in data: 'xxs@32px')."""
        if self.source.startswith("builtin:"):
            return self.source.removeprefix("builtin:")
        return self.source or self.name

    # ---- counting -------------------------------------------------------------------------
    def count(self, monotonic: bool | None = None) -> int:
        """Number of distinct architectures (exact integer)."""
        mono = self.monotonic_widths if monotonic is None else monotonic
        fixed = len(self.resolutions) * len(self.stem_widths)
        for st in self.mbconv:
            fixed *= len(st.widths) * len(st.depths) * len(st.kernels) * len(st.expansions)
        counter = _counter(self, mono)
        return fixed * sum(counter.total(n) for n in self.num_transformer_stages)

    # ---- sampling -------------------------------------------------------------------------
    def sample(self, rng: random.Random | int | None = None) -> ArchConfig:
        """One architecture drawn uniformly from the space (monotonic rule included)."""
        r = rng if isinstance(rng, random.Random) else random.Random(rng)
        counter = _counter(self, self.monotonic_widths)
        cum = counter.stage_count_cumulative(self.num_transformer_stages)
        n = self.num_transformer_stages[bisect_right(cum, _below(r, cum[-1]))]
        mb = tuple(
            MBConvStage(
                width=_pick(r, st.widths), depth=_pick(r, st.depths), kernel=_pick(r, st.kernels),
                expansion=_pick(r, st.expansions), stride=st.stride,
            )
            for st in self.mbconv
        )
        return self._arch(_pick(r, self.resolutions), _pick(r, self.stem_widths), mb, counter.draw(n, r))

    def largest(self) -> ArchConfig:
        return self._extreme(max)

    def smallest(self) -> ArchConfig:
        return self._extreme(min)

    def _extreme(self, pick) -> ArchConfig:
        mb = tuple(
            MBConvStage(width=pick(s.widths), depth=pick(s.depths), kernel=pick(s.kernels),
                        expansion=pick(s.expansions), stride=s.stride)
            for s in self.mbconv
        )
        n = pick(self.num_transformer_stages)
        tr = tuple(
            TransformerStage(
                width=pick(s.widths),
                layers=tuple(TransformerLayer(pick(s.heads), pick(s.mlp_ratios)) for _ in range(pick(s.depths))),
                stride=s.stride,
            )
            for s in self.transformer[:n]
        )
        return self._arch(pick(self.resolutions), pick(self.stem_widths), mb, tr)

    def _arch(self, resolution: int, stem: int, mb: tuple[MBConvStage, ...],
              tr: tuple[TransformerStage, ...]) -> ArchConfig:
        return ArchConfig(
            resolution=resolution, stem_width=stem, mbconv=mb, transformer=tr,
            head_dim=self.head_dim, patch=self.patch, conv_kernel=self.conv_kernel,
            downsample_expansion=self.downsample_expansion, head_expansion=self.head_expansion,
            num_classes=self.num_classes, stem_kernel=self.stem_kernel, stem_stride=self.stem_stride,
            local_conv=self.local_conv, fusion_kernel=self.fusion_kernel, conv_ratio=self.conv_ratio,
            space=self.ident,
        )

    # ---- validation -----------------------------------------------------------------------
    def problems(self, arch: ArchConfig) -> list[str]:
        """Every way `arch` falls outside this space, each naming the field and the allowed values."""
        out: list[str] = []

        def need(field: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                out.append(f"{field} = {_fmt(value)} not in {{{', '.join(_fmt(a) for a in allowed)}}}")

        def same(field: str, value: Any, expected: Any) -> None:
            if value != expected:
                out.append(f"{field} = {_fmt(value)} but space '{self.name}' fixes it to {_fmt(expected)}")

        need("resolution", arch.resolution, self.resolutions)
        need("stem_width", arch.stem_width, self.stem_widths)
        for f in ("head_dim", "patch", "conv_kernel", "downsample_expansion", "head_expansion",
                  "stem_kernel", "stem_stride", "local_conv", "fusion_kernel", "conv_ratio"):
            same(f, getattr(arch, f), getattr(self, f))
        if len(arch.mbconv) != len(self.mbconv):
            out.append(f"mbconv has {len(arch.mbconv)} stages, space '{self.name}' has {len(self.mbconv)}")
        for i, (st, ch) in enumerate(zip(arch.mbconv, self.mbconv)):
            need(f"mbconv[{i}].width", st.width, ch.widths)
            need(f"mbconv[{i}].depth", st.depth, ch.depths)
            need(f"mbconv[{i}].kernel", st.kernel, ch.kernels)
            need(f"mbconv[{i}].expansion", st.expansion, ch.expansions)
            same(f"mbconv[{i}].stride", st.stride, ch.stride)
        need("number of transformer stages", len(arch.transformer), self.num_transformer_stages)
        for i, (st, ch) in enumerate(zip(arch.transformer, self.transformer)):
            need(f"transformer[{i}].width", st.width, ch.widths)
            need(f"transformer[{i}].depth", st.depth, ch.depths)
            same(f"transformer[{i}].stride", st.stride, ch.stride)
            for j, layer in enumerate(st.layers):
                need(f"transformer[{i}].layers[{j}].heads", layer.heads, ch.heads)
                need(f"transformer[{i}].layers[{j}].mlp_ratio", layer.mlp_ratio, ch.mlp_ratios)
        if self.monotonic_widths:
            out.extend(monotonic_problems(arch))
        return out

    def check(self, arch: ArchConfig) -> ArchConfig:
        """Raise AutoVitError naming the first problems if `arch` is outside the space."""
        probs = self.problems(arch)
        if probs:
            more = f" (and {len(probs) - 3} more)" if len(probs) > 3 else ""
            raise AutoVitError(f"architecture outside space '{self.name}': " + "; ".join(probs[:3]) + more)
        return arch


def monotonic_problems(arch: ArchConfig) -> list[str]:
    """Where a width of the transformer part shrinks with depth."""
    out = []
    prev_w, prev_a, prev_m = 0, 0, 0
    for i, st in enumerate(arch.transformer):
        if st.width < prev_w:
            out.append(f"transformer[{i}].width = {st.width} < {prev_w} before it (monotonic-width rule)")
        prev_w = st.width
        for j, layer in enumerate(st.layers):
            a, m = layer.heads * arch.head_dim, mlp_hidden(st.width, layer.mlp_ratio)
            if a < prev_a:
                out.append(f"transformer[{i}].layers[{j}] attention width {a} < {prev_a} before it (monotonic-width rule)")
            if m < prev_m:
                out.append(f"transformer[{i}].layers[{j}] MLP width {m} < {prev_m} before it (monotonic-width rule)")
            prev_a, prev_m = max(prev_a, a), max(prev_m, m)
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _below(r: random.Random, n: int) -> int:
    """A uniform integer in [0, n). random() is one C call, randrange a dozen Python ones: this
    makes sampling ~2x faster. For n beyond 2**53 the draw is uniform to float precision."""
    return min(int(r.random() * n), n - 1)


def _pick(r: random.Random, options: tuple | list) -> Any:
    return options[_below(r, len(options))]


@lru_cache(maxsize=32)
def _counter(space: "SearchSpace", monotonic: bool) -> "_TransformerCounter":
    """One counter per space: its memoised counts make every later sample cheap."""
    return _TransformerCounter(space, monotonic)


class _TransformerCounter:
    """Counts and samples the transformer part under the monotonic-width rule.

    State after a layer: (stage, layers left in it, stage width, attention width, MLP width).
    """

    def __init__(self, space: SearchSpace, monotonic: bool) -> None:
        self.space = space
        self.mono = monotonic
        self._count = lru_cache(maxsize=None)(self._count_uncached)
        # The options and their weights depend only on small integers: memoised, a draw is a
        # few bisections (the coarse search stage samples ~10,000 per second).
        self._layer_options = lru_cache(maxsize=None)(self._layer_options)
        self._stage_options = lru_cache(maxsize=None)(self._stage_options)
        self._stage_choice = lru_cache(maxsize=None)(self._stage_choice)
        self._layer_choice = lru_cache(maxsize=None)(self._layer_choice)

    def _layer_options(self, s: int, w: int, a: int, m: int) -> list[tuple[int, float, int, int]]:
        hd = self.space.head_dim
        ch = self.space.transformer[s]
        opts = []
        for h in ch.heads:
            for r in ch.mlp_ratios:
                na, nm = h * hd, mlp_hidden(w, r)
                if not self.mono or (na >= a and nm >= m):
                    opts.append((h, r, max(a, na), max(m, nm)))
        return opts

    def _stage_options(self, s: int, prev_w: int) -> list[tuple[int, int]]:
        ch = self.space.transformer[s]
        return [(w, d) for w in ch.widths if not self.mono or w >= prev_w for d in ch.depths]

    def _count_uncached(self, n: int, s: int, k: int, w: int, a: int, m: int) -> int:
        if k == 0:
            if s == n - 1:
                return 1
            return sum(self._count(n, s + 1, d, w2, a, m) for w2, d in self._stage_options(s + 1, w))
        return sum(self._count(n, s, k - 1, w, na, nm) for _, _, na, nm in self._layer_options(s, w, a, m))

    @lru_cache(maxsize=None)
    def stage_count_cumulative(self, ns: tuple[int, ...]) -> list[int]:
        """Cumulative numbers of transformer parts with each stage count in `ns` (weights of a uniform draw)."""
        return list(accumulate(self.total(n) for n in ns))

    def total(self, n: int) -> int:
        if n > len(self.space.transformer):
            return 0
        return sum(self._count(n, 0, d, w, 0, 0) for w, d in self._stage_options(0, 0))

    def _stage_choice(self, n: int, s: int, prev_w: int, a: int, m: int) -> tuple[list, list[int]]:
        """(options (width, depth) for stage s, cumulative counts of what follows each)."""
        opts = self._stage_options(s, prev_w)
        return opts, list(accumulate(self._count(n, s, d, w, a, m) for w, d in opts))

    def _layer_choice(self, n: int, s: int, k: int, w: int, a: int, m: int) -> tuple[list, list[int]]:
        lopts = self._layer_options(s, w, a, m)
        return lopts, list(accumulate(self._count(n, s, k - 1, w, na, nm) for _, _, na, nm in lopts))

    def draw(self, n: int, r: random.Random) -> tuple[TransformerStage, ...]:
        """Uniform over the n-stage transformer parts: each choice weighted by the number of
        completions it leaves (one uniform number and a bisection per choice)."""
        stages: list[TransformerStage] = []
        a = m = 0
        prev_w = 0
        for s in range(n):
            opts, cum = self._stage_choice(n, s, prev_w, a, m)
            w, d = opts[bisect_right(cum, _below(r, cum[-1]))]
            layers = []
            for k in range(d, 0, -1):
                lopts, cum = self._layer_choice(n, s, k, w, a, m)
                h, ratio, a, m = lopts[bisect_right(cum, _below(r, cum[-1]))]
                layers.append(TransformerLayer(heads=h, mlp_ratio=ratio))
            stages.append(TransformerStage(width=w, layers=tuple(layers), stride=self.space.transformer[s].stride))
            prev_w = w
        return tuple(stages)


# ---- loading ---------------------------------------------------------------------------------
def _ints(d: dict, key: str, where: str, positive: bool = True) -> tuple[int, ...]:
    v = _field(d, key, where)
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise AutoVitError(f"space {where}: '{key}' must be a non-empty list of integers, got {v!r}")
    if positive and min(v) <= 0:
        raise AutoVitError(f"space {where}: '{key}' values must be > 0, got {v!r}")
    if len(set(v)) != len(v):
        raise AutoVitError(f"space {where}: '{key}' has repeated values {v!r}")
    return tuple(v)


def _floats(d: dict, key: str, where: str) -> tuple[float, ...]:
    v = _field(d, key, where)
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise AutoVitError(f"space {where}: '{key}' must be a non-empty list of numbers, got {v!r}")
    if not all(0 < x < float("inf") for x in v):
        raise AutoVitError(f"space {where}: '{key}' values must be finite and > 0, got {v!r}")
    return tuple(float(x) for x in v)


def _int(d: dict, key: str, where: str, default: int | None = None) -> int:
    v = d.get(key, default) if default is not None else _field(d, key, where)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise AutoVitError(f"space {where}: '{key}' must be a positive integer, got {v!r}")
    return v


def _field(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise AutoVitError(f"space {where}: missing field '{key}'")
    return d[key]


# The keys a space file may hold: a misspelt one ('localconv') would be silently ignored.
_SPACE_KEYS = ("name", "resolutions", "num_classes", "params_range_m", "head_dim", "patch", "conv_kernel",
               "downsample_expansion", "head_expansion", "local_conv", "fusion_kernel", "conv_ratio",
               "num_transformer_stages", "monotonic_widths", "stem", "mbconv", "transformer")
_PART_KEYS = {"stem": ("widths", "kernel", "stride"),
              "mbconv": ("widths", "depths", "kernels", "expansions", "stride"),
              "transformer": ("widths", "depths", "heads", "mlp_ratios", "stride")}


def _check_space_keys(d: dict[str, Any], where: str) -> None:
    check_keys(d, _SPACE_KEYS, f"space {where}")
    for part, known in _PART_KEYS.items():
        tables = d.get(part) if isinstance(d.get(part), list) else [d.get(part)]
        for i, t in enumerate(tables):
            if isinstance(t, dict):
                check_keys(t, known, f"space {where} {part}" + (f"[{i}]" if part != "stem" else ""))


def space_from_dict(d: dict[str, Any], source: str = "") -> SearchSpace:
    where = source or "file"
    _check_space_keys(d, where)
    name = _field(d, "name", where)
    if not isinstance(name, str) or not name:
        raise AutoVitError(f"space {where}: 'name' must be a non-empty string")
    stem = _field(d, "stem", where)
    mb, tr = _stage_choices(d, stem, where)
    nstages = _ints(d, "num_transformer_stages", where)
    if max(nstages) > len(tr):
        raise AutoVitError(
            f"space {where}: 'num_transformer_stages' allows {max(nstages)} but only {len(tr)} [[transformer]] stages are listed")
    settings = _space_settings(d, where)
    space = SearchSpace(
        name=name, resolutions=_ints(d, "resolutions", where), stem_widths=_ints(stem, "widths", f"{where} stem"),
        stem_kernel=_int(stem, "kernel", f"{where} stem", 3), stem_stride=_int(stem, "stride", f"{where} stem", 2),
        mbconv=mb, transformer=tr, num_transformer_stages=nstages, **settings, source=source,
    )
    from autovit.nas.limits import check_space_limits

    check_space_limits(space)
    if space.count() == 0:
        raise AutoVitError(f"space {where}: no architecture satisfies the monotonic-width rule; widen the choices")
    return space


def _stage_choices(d: dict[str, Any], stem: Any,
                   where: str) -> tuple[tuple[MBConvChoices, ...], tuple[TransformerChoices, ...]]:
    """The [[mbconv]] and [[transformer]] lists of a space file, each entry checked."""
    mbs, trs = _field(d, "mbconv", where), _field(d, "transformer", where)
    if not isinstance(stem, dict) or not isinstance(mbs, list) or not isinstance(trs, list) or not trs:
        raise AutoVitError(f"space {where}: needs a [stem] table and [[mbconv]], [[transformer]] lists")
    if not all(isinstance(s, dict) for s in [*mbs, *trs]):
        raise AutoVitError(f"space {where}: every [[mbconv]] and [[transformer]] entry must be a table")
    mb = tuple(
        MBConvChoices(
            widths=_ints(s, "widths", f"{where} mbconv[{i}]"), depths=_ints(s, "depths", f"{where} mbconv[{i}]"),
            kernels=_ints(s, "kernels", f"{where} mbconv[{i}]"),
            expansions=_floats(s, "expansions", f"{where} mbconv[{i}]"), stride=_int(s, "stride", f"{where} mbconv[{i}]"),
        )
        for i, s in enumerate(mbs)
    )
    tr = tuple(
        TransformerChoices(
            widths=_ints(s, "widths", f"{where} transformer[{i}]"), depths=_ints(s, "depths", f"{where} transformer[{i}]"),
            heads=_ints(s, "heads", f"{where} transformer[{i}]"),
            mlp_ratios=_floats(s, "mlp_ratios", f"{where} transformer[{i}]"),
            stride=_int(s, "stride", f"{where} transformer[{i}]"),
        )
        for i, s in enumerate(trs)
    )
    for k in (x for s in mb for x in s.kernels):
        if k % 2 == 0:
            raise AutoVitError(f"space {where}: MBConv kernels must be odd, got {k}")
    return mb, tr


def _space_settings(d: dict[str, Any], where: str) -> dict[str, Any]:
    """The space's scalar settings (block internals, head, classes, parameter range), checked."""
    prange = d.get("params_range_m")
    if prange is not None and (not isinstance(prange, list) or len(prange) != 2
                               or not all(isinstance(x, (int, float)) and 0 <= x < float("inf") for x in prange)):
        raise AutoVitError(f"space {where}: 'params_range_m' must be two numbers [low, high] (M parameters)")
    mono = d.get("monotonic_widths", True)
    if not isinstance(mono, bool):
        raise AutoVitError(f"space {where}: 'monotonic_widths' must be true or false")
    dexp = d.get("downsample_expansion", 2)
    if not isinstance(dexp, (int, float)) or isinstance(dexp, bool) or dexp <= 0:
        raise AutoVitError(f"space {where}: 'downsample_expansion' must be a positive number")
    local_conv = d.get("local_conv", "depthwise")
    if local_conv not in LOCAL_CONVS:
        raise AutoVitError(f"space {where}: 'local_conv' must be one of {', '.join(LOCAL_CONVS)}, got {local_conv!r}")
    ratio = d.get("conv_ratio", 1.0)
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        raise AutoVitError(f"space {where}: 'conv_ratio' must be a number in (0, 1], got {ratio!r}")
    fusion_kernel = _int(d, "fusion_kernel", where, 1)
    if fusion_kernel % 2 == 0:
        raise AutoVitError(f"space {where}: 'fusion_kernel' must be odd, got {fusion_kernel}")
    return dict(head_dim=_int(d, "head_dim", where), patch=_int(d, "patch", where, 2),
                conv_kernel=_int(d, "conv_kernel", where, 3), downsample_expansion=float(dexp),
                head_expansion=_int(d, "head_expansion", where, 6), num_classes=_int(d, "num_classes", where, 1000),
                monotonic_widths=mono, local_conv=local_conv, fusion_kernel=fusion_kernel, conv_ratio=float(ratio),
                params_range_m=tuple(prange) if prange else None)


# ASCII digits only: \d also matches other scripts' digits, which would then name one space
# by several strings; 1-4 digits per side (the sane bound is 1,024 px).
_OVERRIDE = re.compile(r"^(?P<base>.+)@(?P<res>[0-9]{1,4}(?:,[0-9]{1,4})*)px$")
# What an override looks like even when malformed ('xxs@-1px', 'xxs@32px@64px', 'xxs@٣٢px').
_LOOKS_OVERRIDDEN = re.compile(r"@[^/\\]*px$")


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name ('xxs', 'xs', 's') or a TOML file by path; either may end in
    '@RESpx' (e.g. 'xxs@32px', 'my.toml@48,64px'): that space at those resolutions."""
    key = str(name_or_path)
    if len(key) > LIMITS["text"]:
        raise AutoVitError(f"space name of {len(key):,} characters, longer than any name or path")
    m = _OVERRIDE.match(key)
    malformed = _OVERRIDE.match(m["base"]) if m else _LOOKS_OVERRIDDEN.search(key)
    if malformed and not Path(key).is_file():
        raise AutoVitError(f"space '{key}': a resolution override is one '@' and the sides in ASCII digits, "
                           "comma-separated, then 'px' (e.g. xxs@32px or xxs@32,64px)")
    if m:
        return with_resolutions(load_space(m["base"]), [int(r) for r in m["res"].split(",")])
    if key.lower() in BUILTIN_SPACES:
        ref = resources.files("autovit.nas") / "spaces" / f"{key.lower()}.toml"
        return space_from_dict(tomllib.loads(ref.read_text()), source=f"builtin:{key.lower()}")
    p = Path(key)
    if not p.is_file():
        raise AutoVitError(
            f"unknown space '{key}': use one of {', '.join(BUILTIN_SPACES)} or the path of a space TOML file")
    if p.stat().st_size > MAX_SPACE_BYTES:
        raise AutoVitError(f"space {p}: {p.stat().st_size:,} bytes, far more than a space file holds")
    try:
        d = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: an integer of thousands of digits; RecursionError: arrays nested thousands deep
        raise AutoVitError(f"space {p}: not valid TOML ({str(e).splitlines()[0][:100] or type(e).__name__})") from None
    # The absolute path is the space's identity: architecture files record it (ident).
    return replace(space_from_dict(d, source=str(p)), source=str(p.resolve()))


def with_resolutions(space: SearchSpace, resolutions) -> SearchSpace:
    """`space` with other input resolutions, under a name and identity that say so
    ('xxs@32px'); the same space when they are its own."""
    res = tuple(sorted(set(resolutions)))
    for r in res:  # the bounds a space file's resolutions meet (a side of 0 px crashed onnxruntime)
        integer(r, f"space {space.name}: resolution", lo=1, hi=int(LIMITS["resolution"]))
    if res == space.resolutions:
        return space
    return _suffixed(replace(space, resolutions=res))


def _suffixed(space: SearchSpace) -> SearchSpace:
    """`space` named after its base space and its resolutions."""
    suffix = "@" + ",".join(map(str, space.resolutions)) + "px"
    base_source = _base(space.source)
    return replace(space, name=_base(space.name) + suffix, source=base_source + suffix if base_source else "")


def _base(name: str) -> str:
    m = _OVERRIDE.match(name)
    return m["base"] if m else name


def anchored_ident(ident: str, folder: Path) -> str:
    """A space identity read from a file in `folder` (or named on the command line: `folder` is
    the working one): a relative space-file path (with or without an '@RESpx' override) made
    absolute against that folder; built-in names stay as they are."""
    base = _base(ident)
    if base.lower() in BUILTIN_SPACES or Path(base).is_absolute() or len(ident) > LIMITS["text"]:
        return ident
    return str((folder / base).resolve()) + ident[len(base):]


def same_space(given: str, space: SearchSpace) -> bool:
    """Whether a space the user named (--space) is `space`: its name or identity, or the space
    it was derived from by a resolution override; a space file when it lists the same choices
    (its name, path or resolutions aside): a file edited since, or another file of the same
    name, is not the space a supernet was trained on."""
    base = _base(given)
    if base.lower() not in BUILTIN_SPACES and Path(base).is_file():
        return _choices(load_space(given)) == _choices(space)
    names = {n.lower() for n in (space.name, space.ident, _base(space.name), _base(space.ident))}
    return given.lower() in names


def _choices(space: SearchSpace) -> SearchSpace:
    """`space` without what names it or what training on a data set sets (classes, sides)."""
    return replace(space, name="", source="", resolutions=(), num_classes=0, params_range_m=None)


def space_to_saved(space: SearchSpace) -> dict[str, Any]:
    """Plain data (lists, numbers, strings) that `space_from_saved` turns back into `space`;
    checkpoints carry it so that a supernet needs no space file to be reloaded."""
    from dataclasses import asdict

    return asdict(space)


def space_from_saved(d: Any) -> SearchSpace:
    """The space `space_to_saved` wrote, through the same checks as a space file (a checkpoint
    is input like any other)."""
    if not isinstance(d, dict):
        raise AutoVitError(f"saved search space must be a table, got {type(d).__name__}")
    # Saved before the block-internal fields existed: MobileViT v1's internals (its weights have their shapes).
    d = {**legacy_internals(d.get("conv_kernel", 3)), **_as_lists(d)}
    stem = {k: d.pop(f"stem_{k}") for k in ("widths", "kernel", "stride") if f"stem_{k}" in d}
    source = _saved_source(d.pop("source", ""))
    if d.get("params_range_m", 0) is None:
        del d["params_range_m"]
    space = space_from_dict({**d, "stem": stem}, source=_base(source))
    builtin = space.source.removeprefix("builtin:")
    # The identity's '@RESpx' is written anew from the saved resolutions: a forged 'xxs@0px'
    # would otherwise reach every architecture file sampled or exported from this supernet.
    if source != space.source or (space.source.startswith("builtin:")
                                  and space.resolutions != load_space(builtin).resolutions):
        space = _suffixed(space)  # (also: saved before derived spaces were named)
    return space


def _saved_source(source: Any) -> str:
    """A saved space's `source`: '', 'builtin:NAME' or an absolute file path, either with an
    '@RESpx' override (it becomes an identity recorded in architecture files)."""
    if not isinstance(source, str) or len(source) > LIMITS["text"]:
        raise AutoVitError(f"saved search space: 'source' must be a name or path of at most {LIMITS['text']:g} "
                           f"characters, got {repr(source)[:40]}")
    base = _base(source)
    if base and not (base.startswith("builtin:") and base.removeprefix("builtin:") in BUILTIN_SPACES
                     or Path(base).is_absolute()):
        raise AutoVitError(f"saved search space: 'source' must be 'builtin:{'|'.join(BUILTIN_SPACES)}' or an "
                           f"absolute space-file path, got {source[:60]!r}")
    return source


def _as_lists(v: Any, depth: int = 4) -> Any:
    """Tuples as lists, as a TOML file has them, down to the depth a saved space has (deeper
    input is left for the checks to refuse, never recursed into)."""
    if depth and isinstance(v, (list, tuple)):
        return [_as_lists(x, depth - 1) for x in v]
    if depth and isinstance(v, dict):
        return {k: _as_lists(x, depth - 1) for k, x in v.items()}
    return v
