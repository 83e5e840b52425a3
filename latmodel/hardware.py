"""Hardware profiles: load and check `hw_profiles/*.toml`.

Every number about a device lives in its TOML file with a source comment; this module only
knows the schema. A profile may start from another with `base = "NAME"` (tables are merged
key by key), so a concrete CPU can reuse the generic x86 one and change its core count.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autovit.latmodel.errors import AutoVitError

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


@dataclass(frozen=True)
class FusionRule:
    """Ops that one backend runs as one kernel.

    `head` starts a kernel; up to `max_tail` following ops whose type is in `tail` join it while
    each consumes the previous one's output and that output has no other reader. `pattern` is
    an exact chain instead ("?" marks an optional step, "|" alternatives). `prologue` op types
    feeding the kernel with no other reader are absorbed at no cost (e.g. a transposed operand
    that a GEMM reads in place). `unary` op types may join the tail as a whole subgraph that is a
    function of the previous op's output alone (GELU's erf form, SiLU as x * sigmoid(x),
    HardSwish as x * hardsigmoid(x)), up to `max_unary` ops: hardware that applies an activation
    to a result as it leaves the multiply array (the Neural Engine's post-processing stage) runs
    any such function in the same kernel. Selectors are op types or "@category".
    """

    name: str
    head: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    max_tail: int = 0
    pattern: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    category: str | None = None
    unary: tuple[str, ...] = ()
    max_unary: int = 0


@dataclass(frozen=True)
class Fallback:
    """Where ops the main engine cannot run go (e.g. the A15 GPU for the Neural Engine)."""

    name: str
    unsupported_ops: tuple[str, ...]
    matrix_tflops: dict[str, float]
    vector_tflops: dict[str, float]
    units: int
    launch_us: float
    switch_us: float
    transfer_gbps: float


# ---- Neural Engine (kind = "npu") --------------------------------------------------------------
# The mechanisms latmodel/neural_engine.py prices, each a switch (the ablation in docs/BENCHMARKS.md
# turns them off one at a time): unary activations run in the multiply array's output stage
# (epilogue); activations stay in the engine's buffer when a task's working set fits (l2) or in the
# system-level cache (slc); a fixed cost per task (layer); a matmul of two activations runs one
# task per batch element, i.e. per head and patch (heads); dense 3x3 stride-1 convolutions use
# Winograd (winograd); 64-byte rows (align); which reshapes and transposes move data (layout);
# ops the engine cannot run go to the GPU (fallback);
# two hypotheses tried and left off by the Apple profiles (docs/BENCHMARKS.md): depthwise
# convolutions on the planar path instead of the multiply array (depthwise); copies through
# rank-5+ tensors leave the engine for the fallback (rank5).
ANE_MECHANISMS = ("epilogue", "l2", "slc", "layer", "heads", "winograd", "align", "layout", "fallback", "depthwise",
                  "rank5")


@dataclass(frozen=True)
class NeuralEngine:
    mechanisms: tuple[str, ...]
    l2_mib: float  # a task's working set (input + output activations, bytes) that stays in the engine's buffer
    l2_gbps: float  # bandwidth of that buffer
    winograd_tile: int = 2  # output tile m of the Winograd F(m x m, 3x3) transform for dense 3x3 convolutions


def _neural_engine(d: dict, where: str) -> NeuralEngine | None:
    if "ane" not in d:
        return None
    w = f"{where} ane"
    mech = _strs(d["ane"], "mechanisms", w)
    unknown = [m for m in mech if m not in ANE_MECHANISMS]
    if unknown:
        raise AutoVitError(f"hardware profile {w}: unknown mechanism {unknown[0]!r}; use any of {', '.join(ANE_MECHANISMS)}")
    return NeuralEngine(mechanisms=mech, l2_mib=float(_get(d["ane"], "l2_mib", _NUM, w, positive=True)),
                        l2_gbps=float(_get(d["ane"], "l2_gbps", _NUM, w, positive=True)),
                        winograd_tile=_get(d["ane"], "winograd_tile", int, w, 2, positive=True))


# Free parameters: what data sheets cannot give, and where each lives in a profile TOML
# (section, key). Calibration fits exactly these.
PARAMETER_FIELDS = {
    "eff_matrix": ("efficiency", "matrix"), "eff_gemm": ("efficiency", "gemm"), "eff_vector": ("efficiency", "vector"),
    "eff_memory": ("efficiency", "memory"), "launch_us": ("overhead", "launch_us"),
    "dispatch_us": ("overhead", "dispatch_us"), "view_dispatch_us": ("overhead", "view_dispatch_us"),
    "layout_penalty": ("efficiency", "layout_penalty"), "k_half": ("efficiency", "k_half"),
    "run_us": ("overhead", "run_us"), "layout_run_ns": ("efficiency", "layout_run_ns"),
    "reduce_row_ns": ("efficiency", "reduce_row_ns"),
    "transcendental_flops": ("compute", "transcendental_flops"),
}


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    kind: str
    runtime: str
    dtypes: tuple[str, ...]
    default_dtype: str
    units: int
    matrix_tflops: dict[str, float]
    vector_tflops: dict[str, float]
    gemm_tile: tuple[int, int]
    tiles_per_unit: int
    vector_block: int
    matrix_align: dict[str, int]
    transcendental_flops: float
    dram_gbps: float
    cache_mib: float
    cache_gbps: float
    last_axis_align_bytes: int
    launch_us: float
    dispatch_us: float
    view_dispatch_us: float
    async_dispatch: bool
    eff_matrix: float
    eff_gemm: float
    eff_vector: float
    eff_memory: float
    layout_penalty: float
    k_half: float
    run_us: float  # once per inference: the runtime's call overhead (ORT session.run: input/output binding)
    reduce_row_ns: float  # per row of a last-axis reduction (LayerNorm, Softmax)
    layout_run_ns: float  # per contiguous run of a strided copy (a transpose moving the last axis)
    weights_cached: bool  # weights stay in cache between inferences when the model fits (CPU, large L3)
    chain_reorder: bool  # convolutions run in a blocked layout with reorders at the ends of conv chains (ORT NCHWc)
    elided: tuple[str, ...]
    strided_readers: tuple[str, ...]
    nchw_conv_relayout: tuple[str, ...]
    relayout_categories: tuple[str, ...]
    fusion: tuple[FusionRule, ...]
    fallback: Fallback | None = None
    source: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    ane: NeuralEngine | None = None  # kind = "npu": how the Neural Engine prices its tasks

    def ane_uses(self, mechanism: str) -> bool:
        """Whether this profile's Neural Engine model has `mechanism` switched on (False off the ANE)."""
        return self.ane is not None and mechanism in self.ane.mechanisms

    def dtype_bytes(self, dtype: str) -> int:
        return DTYPE_BYTES[dtype]

    def check_dtype(self, dtype: str) -> str:
        if dtype not in DTYPE_BYTES:
            raise AutoVitError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPE_BYTES)}")
        if dtype not in self.dtypes:
            raise AutoVitError(
                f"hardware '{self.name}' does not compute in {dtype}; use --dtype {' or '.join(self.dtypes)}")
        return dtype

    FREE_PARAMETERS = tuple(PARAMETER_FIELDS)


# ---- schema -----------------------------------------------------------------------------------
_NUM = (int, float)


def _get(d: dict, path: str, kind, where: str, default: Any = ..., positive: bool = False) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if default is ...:
                raise AutoVitError(f"hardware profile {where}: missing field '{path}'")
            return default
        cur = cur[part]
    if isinstance(cur, bool) and kind is not bool:
        raise AutoVitError(f"hardware profile {where}: field '{path}' must be {_kname(kind)}, got {cur!r}")
    if not isinstance(cur, kind):
        raise AutoVitError(f"hardware profile {where}: field '{path}' must be {_kname(kind)}, got {cur!r}")
    if positive and isinstance(cur, _NUM) and cur <= 0:
        raise AutoVitError(f"hardware profile {where}: field '{path}' must be > 0, got {cur!r}")
    if isinstance(cur, _NUM) and not isinstance(cur, bool) and cur < 0:
        raise AutoVitError(f"hardware profile {where}: field '{path}' must be >= 0, got {cur!r}")
    return cur


def _kname(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false",
                        "dict": "a table", "list": "a list"}.get(k.__name__, k.__name__) for k in kinds)


def _per_dtype(d: dict, path: str, where: str, kind=_NUM) -> dict[str, Any]:
    table = _get(d, path, dict, where)
    out = {}
    for k, v in table.items():
        if k not in DTYPE_BYTES:
            raise AutoVitError(f"hardware profile {where}: field '{path}.{k}' is not a dtype ({', '.join(DTYPE_BYTES)})")
        out[k] = _get(table, k, kind, f"{where} ({path})", positive=True)
    return out


def _strs(d: dict, path: str, where: str, default: Any = ...) -> tuple[str, ...]:
    v = _get(d, path, list, where, default=default)
    if not all(isinstance(x, str) for x in v):
        raise AutoVitError(f"hardware profile {where}: field '{path}' must be a list of strings")
    return tuple(v)


def _fusion(d: dict, where: str) -> tuple[FusionRule, ...]:
    rules = []
    for i, r in enumerate(_get(d, "fusion", list, where, default=[])):
        w = f"{where} fusion[{i}]"
        if not isinstance(r, dict):
            raise AutoVitError(f"hardware profile {w}: each [[fusion]] entry must be a table")
        rule = FusionRule(
            name=_get(r, "name", str, w), head=_strs(r, "head", w, ()), tail=_strs(r, "tail", w, ()),
            max_tail=_get(r, "max_tail", int, w, 0), pattern=_strs(r, "pattern", w, ()),
            prologue=_strs(r, "prologue", w, ()), category=_get(r, "category", str, w, None),
            unary=_strs(r, "unary", w, ()), max_unary=_get(r, "max_unary", int, w, 0),
        )
        if not rule.head and not rule.pattern:
            raise AutoVitError(f"hardware profile {w}: a fusion rule needs 'head' or 'pattern'")
        rules.append(rule)
    return tuple(rules)


def _derive_cpu(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Fill a CPU's compute table from its [cpu] parameters (cores, clock, SIMD, FMA units).

    peak FLOP/s = cores x GHz x lanes x 2 (a fused multiply-add) x FMA units, lanes = SIMD bits /
    element bits. This is arithmetic, not a device fact: the facts stay in the TOML.
    """
    cpu = d.get("cpu")
    if cpu is None:
        return d
    w = f"{where} cpu"
    cores = _get(cpu, "cores", int, w, positive=True)
    ghz = float(_get(cpu, "ghz", _NUM, w, positive=True))
    simd = _get(cpu, "simd_bits", int, w, positive=True)
    fma = _get(cpu, "fma_units", int, w, positive=True)
    compute = dict(d.get("compute", {}))
    peaks = {dt: cores * ghz * (simd // (8 * DTYPE_BYTES[dt])) * 2 * fma / 1e3 for dt in d.get("dtypes", ["fp32"])}
    compute.setdefault("units", cores)
    compute.setdefault("matrix_tflops", peaks)
    compute.setdefault("vector_tflops", peaks)
    # oneDNN blocks channels by the SIMD width (nChw16c on AVX-512, nChw8c on AVX2).
    compute.setdefault("matrix_align", {dt: simd // (8 * DTYPE_BYTES[dt]) for dt in peaks})
    return {**d, "compute": compute}


def profile_from_dict(d: dict[str, Any], where: str) -> HardwareProfile:
    d = _derive_cpu(d, where)
    kind = _get(d, "kind", str, where)
    if kind not in ("gpu", "cpu", "npu"):
        raise AutoVitError(f"hardware profile {where}: field 'kind' must be gpu, cpu or npu, got {kind!r}")
    dtypes = _strs(d, "dtypes", where)
    for dt in dtypes:
        if dt not in DTYPE_BYTES:
            raise AutoVitError(f"hardware profile {where}: field 'dtypes' has unknown dtype {dt!r}")
    matrix, vector = _per_dtype(d, "compute.matrix_tflops", where), _per_dtype(d, "compute.vector_tflops", where)
    for dt in dtypes:
        if dt not in matrix or dt not in vector:
            raise AutoVitError(f"hardware profile {where}: 'compute.matrix_tflops' and 'compute.vector_tflops' need a {dt} entry")
    tile = _get(d, "compute.gemm_tile", list, where)
    if len(tile) != 2 or not all(isinstance(x, int) and x > 0 for x in tile):
        raise AutoVitError(f"hardware profile {where}: field 'compute.gemm_tile' must be [M, N] positive integers")
    fb = None
    if "fallback" in d:
        f = d["fallback"]
        w = f"{where} fallback"
        fb = Fallback(
            name=_get(f, "name", str, w), unsupported_ops=_strs(f, "unsupported_ops", w),
            matrix_tflops=_per_dtype(f, "matrix_tflops", w), vector_tflops=_per_dtype(f, "vector_tflops", w),
            units=_get(f, "units", int, w, positive=True), launch_us=float(_get(f, "launch_us", _NUM, w)),
            switch_us=float(_get(f, "switch_us", _NUM, w)), transfer_gbps=float(_get(f, "transfer_gbps", _NUM, w, positive=True)),
        )
    default_dtype = _get(d, "default_dtype", str, where, dtypes[0])
    if default_dtype not in dtypes:
        raise AutoVitError(f"hardware profile {where}: field 'default_dtype' {default_dtype!r} is not in 'dtypes'")
    effs = {k: float(_get(d, f"efficiency.{k}", _NUM, where, positive=True)) for k in ("matrix", "vector", "memory")}
    effs["gemm"] = float(_get(d, "efficiency.gemm", _NUM, where, effs["matrix"], positive=True))
    for k, v in effs.items():
        if v > 1:
            raise AutoVitError(f"hardware profile {where}: field 'efficiency.{k}' is a fraction of peak, must be <= 1, got {v}")
    return HardwareProfile(
        name=_get(d, "name", str, where), description=_get(d, "description", str, where, ""), kind=kind,
        runtime=_get(d, "runtime", str, where), dtypes=dtypes, default_dtype=default_dtype,
        units=_get(d, "compute.units", int, where, positive=True), matrix_tflops=matrix, vector_tflops=vector,
        gemm_tile=(tile[0], tile[1]), tiles_per_unit=_get(d, "compute.tiles_per_unit", int, where, positive=True),
        vector_block=_get(d, "compute.vector_block", int, where, positive=True),
        transcendental_flops=float(_get(d, "compute.transcendental_flops", _NUM, where, 1.0, positive=True)),
        matrix_align=_per_dtype(d, "compute.matrix_align", where, int) if "matrix_align" in d.get("compute", {}) else {},
        dram_gbps=float(_get(d, "memory.dram_gbps", _NUM, where, positive=True)),
        cache_mib=float(_get(d, "memory.cache_mib", _NUM, where)),
        cache_gbps=float(_get(d, "memory.cache_gbps", _NUM, where, positive=True)),
        last_axis_align_bytes=_get(d, "memory.last_axis_align_bytes", int, where, 0),
        launch_us=float(_get(d, "overhead.launch_us", _NUM, where)),
        dispatch_us=float(_get(d, "overhead.dispatch_us", _NUM, where)),
        view_dispatch_us=float(_get(d, "overhead.view_dispatch_us", _NUM, where, 0.0)),
        async_dispatch=_get(d, "overhead.async", bool, where),
        eff_matrix=effs["matrix"], eff_gemm=effs["gemm"], eff_vector=effs["vector"], eff_memory=effs["memory"],
        layout_penalty=float(_get(d, "efficiency.layout_penalty", _NUM, where, 1.0, positive=True)),
        k_half=float(_get(d, "efficiency.k_half", _NUM, where, 0.0)),
        run_us=float(_get(d, "overhead.run_us", _NUM, where, 0.0)),
        layout_run_ns=float(_get(d, "efficiency.layout_run_ns", _NUM, where, 0.0)),
        reduce_row_ns=float(_get(d, "efficiency.reduce_row_ns", _NUM, where, 0.0)),
        weights_cached=_get(d, "memory.weights_cached", bool, where, False),
        chain_reorder=_get(d, "layout.chain_reorder", bool, where, False),
        elided=_strs(d, "layout.elided", where, ()), strided_readers=_strs(d, "layout.strided_readers", where, ()),
        nchw_conv_relayout=_strs(d, "layout.nchw_conv_relayout", where, ()),
        relayout_categories=_strs(d, "layout.relayout_categories", where, ("conv",)), fusion=_fusion(d, where), fallback=fb,
        source=where, calibration=d.get("calibration", {}), ane=_neural_engine(d, where),
    )


# ---- finding profiles -------------------------------------------------------------------------
def _builtin_dir():
    return resources.files("autovit.hw_profiles")


def builtin_names() -> list[str]:
    """Device profiles shipped with the package (files starting with "_" are shared bases)."""
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir()
                  if p.name.endswith(".toml") and not p.name.startswith("_"))


CALIBRATED_SUFFIX = "@calibrated"


def user_profile_dir() -> Path:
    """Where calibrated profiles are written: $AUTOVIT_HOME/profiles (default ~/.autovit)."""
    import os

    return Path(os.environ.get("AUTOVIT_HOME", Path.home() / ".autovit")) / "profiles"


def calibrated_names() -> list[str]:
    d = user_profile_dir()
    return sorted(p.name[:-5] for p in d.glob(f"*{CALIBRATED_SUFFIX}.toml")) if d.is_dir() else []


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def write_calibrated_profile(base: str, params: dict[str, float], calibration: dict[str, Any],
                             path: str | Path | None = None) -> Path:
    """A profile that starts from `base` and overrides the fitted free parameters (atomic write)."""
    from autovit.latmodel.io import atomic_write_text

    name = f"{Path(base).stem.split('@')[0]}{CALIBRATED_SUFFIX}"
    sections: dict[str, dict[str, Any]] = {}
    for param, value in params.items():
        section, key = PARAMETER_FIELDS[param]
        sections.setdefault(section, {})[key] = value
    lines = ["# Written by `autovit-lat calibrate`: the fitted free parameters of the base profile.",
             f"name = {_toml_value(name)}", f"base = {_toml_value(base)}",
             f"description = {_toml_value('calibrated from ' + str(calibration.get('lut', '?')))}", ""]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    lines.append("[calibration]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in calibration.items()]
    out = Path(path) if path else user_profile_dir() / f"{name}.toml"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def _read_toml(name_or_path: str) -> tuple[dict[str, Any], str]:
    p = Path(name_or_path)
    if name_or_path.endswith(CALIBRATED_SUFFIX) and not p.is_file():
        p = user_profile_dir() / f"{name_or_path}.toml"
        if not p.is_file():
            raise AutoVitError(f"no calibrated profile '{name_or_path}' in {p.parent}; run "
                               f"`autovit-lat calibrate --hw {name_or_path[:-len(CALIBRATED_SUFFIX)]} --lut LUT` first")
        name_or_path = str(p)
    if name_or_path.endswith(".toml") or p.is_file():
        if not p.is_file():
            raise AutoVitError(f"hardware profile file not found: {p}")
        text, where = p.read_text(), str(p)
    else:
        ref = _builtin_dir() / f"{name_or_path}.toml"
        if not ref.is_file():
            raise AutoVitError(f"unknown hardware '{name_or_path}': use one of {', '.join(builtin_names())} or a profile .toml path")
        text, where = ref.read_text(), f"{name_or_path}.toml"
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as e:
        raise AutoVitError(f"hardware profile {where}: not valid TOML ({e})") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolved_dict(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    d, where = _read_toml(name_or_path)
    base = d.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise AutoVitError(f"hardware profile {where}: field 'base' must be a profile name")
        if base in seen:
            raise AutoVitError(f"hardware profile {where}: 'base' chain loops through '{base}'")
        parent, _ = _resolved_dict(base, seen + (base,))
        d = _merge(parent, {k: v for k, v in d.items() if k != "base"})
    return d, where


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def _size_mib(text: str | None) -> float:
    """'1024K' / '32M' (sysfs cache sizes) -> MiB."""
    if not text:
        return 0.0
    unit = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1].upper(), 1 / 2**20)
    number = text[:-1] if text[-1].isalpha() else text
    return float(number) * unit


def detect_local_cpu() -> dict[str, Any]:
    """This machine's [cpu] table and cache size, read from the OS (Linux; else what os tells)."""
    from autovit.latmodel.measure import physical_cores

    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                elif line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
    except OSError:
        pass
    max_khz = _read_first_line("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    ghz = int(max_khz) / 1e6 if max_khz and max_khz.isdigit() else (mhz / 1e3 if mhz else 2.5)
    simd = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    cores = physical_cores()
    # Private caches count once per core, shared ones once.
    cache = 0.0
    for i in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{i}"
        level, kind = _read_first_line(f"{base}/level"), _read_first_line(f"{base}/type")
        if level is None:
            break
        if kind == "Instruction" or level == "1":
            continue
        shared = _read_first_line(f"{base}/shared_cpu_list") or "0"
        per_core = "," not in shared and "-" not in shared
        cache += _size_mib(_read_first_line(f"{base}/size")) * (cores if per_core else 1)
    out: dict[str, Any] = {"cpu": {"cores": cores, "ghz": round(ghz, 3), "simd_bits": simd}}
    if cache > 0:
        out["memory"] = {"cache_mib": round(cache, 2)}
    return out


def load_profile(name_or_path: str) -> HardwareProfile:
    """A built-in profile by name (see builtin_names()) or a TOML file by path."""
    d, where = _resolved_dict(name_or_path)
    if d.get("detect"):
        d = _merge(d, detect_local_cpu())
    return profile_from_dict(d, where)
