"""Search building blocks (issue 5, in progress): budgets, constraint checks, the evolutionary
operators and the three strategies (random, evolution, coarse-to-fine; SPEC.md section 5).

The four parts stay separate (NNI's split): the space; latency oracles, anything with
`latency_ms(archs) -> np.ndarray`; an accuracy evaluator, any `arch -> top-1 %` (cached here
by architecture, so a duplicate is never evaluated twice); and a strategy. The CLI, the saved
state and the Pareto plot are not written yet.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import ArchConfig, MBConvStage, TransformerLayer, TransformerStage
from autovit.nas.params import count_params
from autovit.nas.space import SearchSpace

_UNITS_MS = {"ms": 1.0, "s": 1e3, "us": 1e-3, "": 1.0}


def parse_latency(text: str) -> float:
    """'10ms', '0.01s', '500us' or a bare number (ms) -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|us|)\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise AutoVitError(f"latency budget '{text}' is not a positive time: write e.g. 10ms, 0.01s or 10 (ms)")
    return float(m.group(1)) * _UNITS_MS[m.group(2).lower()]


def parse_params(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*", text)
    if not m:
        raise AutoVitError(f"parameter count '{text}' is not a number: write e.g. 1.8M, 900k or 1800000")
    return int(round(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]))


def parse_param_window(text: str) -> tuple[int, int]:
    """'1.0M:1.8M' (either side may be empty) -> (low, high) parameters."""
    lo_s, sep, hi_s = text.partition(":")
    if not sep:
        raise AutoVitError(f"--param-budget '{text}' needs LOW:HIGH, e.g. 1.0M:1.8M (either side may be empty)")
    lo = parse_params(lo_s) if lo_s.strip() else 0
    hi = parse_params(hi_s) if hi_s.strip() else 2**62
    if lo > hi:
        raise AutoVitError(f"--param-budget '{text}' is reversed: LOW must not exceed HIGH")
    return lo, hi


def parse_latency_budgets(text: str, devices: list[str]) -> dict[str, float]:
    """'2ms' (one device) or 'iphone13=10ms,v100=2ms' -> {device: ms}; every device needs one."""
    if len(set(devices)) != len(devices):
        twice = sorted({d for d in devices if devices.count(d) > 1})
        raise AutoVitError(f"--hw {twice[0]} is given twice; name each device once")
    if "=" not in text:
        if len(devices) != 1:
            raise AutoVitError(f"with {len(devices)} devices give one budget each: --latency-budget "
                               + ",".join(f"{d}=10ms" for d in devices))
        return {devices[0]: parse_latency(text)}
    out: dict[str, float] = {}
    for part in text.split(","):
        dev, _, val = part.partition("=")
        dev = dev.strip()
        if dev in out:
            raise AutoVitError(f"--latency-budget names {dev} twice")
        if dev not in devices:
            raise AutoVitError(f"--latency-budget names {dev}, which is not among --hw {', '.join(devices)}")
        out[dev] = parse_latency(val)
    missing = [d for d in devices if d not in out]
    if missing:
        raise AutoVitError(f"--latency-budget gives no budget for {', '.join(missing)}")
    return out


class LatencyOracle(Protocol):
    def latency_ms(self, archs: Iterable[ArchConfig]) -> np.ndarray: ...


@dataclass
class Constraints:
    """A parameter window and a latency budget (ms) per device, each device with its oracle."""

    param_window: tuple[int, int] = (0, 2**62)
    budgets_ms: dict[str, float] = field(default_factory=dict)
    oracles: dict[str, LatencyOracle] = field(default_factory=dict)

    def price(self, archs: list[ArchConfig]) -> dict[str, np.ndarray]:
        """{"params": [n], device: latency ms [n]} for a batch (the oracles' batch API)."""
        out = {"params": np.array([count_params(a) for a in archs], dtype=np.int64)}
        for dev in self.budgets_ms:
            out[dev] = np.asarray(self.oracles[dev].latency_ms(archs), dtype=float)
        return out

    def legal(self, priced: dict[str, np.ndarray]) -> np.ndarray:
        lo, hi = self.param_window
        ok = (priced["params"] >= lo) & (priced["params"] <= hi)
        for dev, budget in self.budgets_ms.items():
            ok &= priced[dev] <= budget
        return ok

    def infeasible_message(self, space: SearchSpace, priced: dict[str, np.ndarray]) -> str:
        """Which budget binds, with the smallest value reached among the candidates drawn."""
        lo, hi = self.param_window
        parts = []
        if priced["params"].min() > hi or priced["params"].max() < lo:
            parts.append(f"parameters {lo / 1e6:.2f}-{hi / 1e6:.2f} M (the space reaches "
                         f"{count_params(space.smallest()) / 1e6:.2f}-{count_params(space.largest()) / 1e6:.2f} M)")
        for dev, budget in self.budgets_ms.items():
            best = float(priced[dev].min())
            if best > budget:
                parts.append(f"{dev} latency {budget:g} ms (the fastest candidate takes {best:.3g} ms)")
        binding = "; ".join(parts) or "the combination of the budgets"
        return f"no architecture meets the budgets: {binding}; relax them"


# ---- evolutionary operators --------------------------------------------------------------------
def arch_key(arch: ArchConfig) -> str:
    return json.dumps(arch.to_dict(), sort_keys=True, default=list)


def mutate(arch: ArchConfig, space: SearchSpace, rng: random.Random, p_depth: float, p_layer: float) -> ArchConfig:
    """Resample each stage's depth with p_depth, then each choice (widths, per-layer heads and
    MLP ratios, kernel, expansion, resolution) with p_layer. May leave the space (the monotonic
    rule); callers check and retry."""
    def pick(current, options):
        return rng.choice(options) if rng.random() < p_layer else current

    mb = []
    for st, ch in zip(arch.mbconv, space.mbconv):
        depth = rng.choice(ch.depths) if rng.random() < p_depth else st.depth
        mb.append(MBConvStage(width=pick(st.width, ch.widths), depth=depth, kernel=pick(st.kernel, ch.kernels),
                              expansion=pick(st.expansion, ch.expansions), stride=st.stride))
    n = rng.choice(space.num_transformer_stages) if rng.random() < p_depth else arch.num_transformer_stages
    tr = []
    for s in range(n):
        ch = space.transformer[s]
        old = arch.transformer[s] if s < arch.num_transformer_stages else None
        depth = old.depth if old is not None and rng.random() >= p_depth else rng.choice(ch.depths)
        layers = []
        for j in range(depth):
            base = old.layers[j] if old is not None and j < old.depth else TransformerLayer(
                rng.choice(ch.heads), rng.choice(ch.mlp_ratios))
            layers.append(TransformerLayer(pick(base.heads, ch.heads), pick(base.mlp_ratio, ch.mlp_ratios)))
        width = pick(old.width, ch.widths) if old is not None else rng.choice(ch.widths)
        tr.append(TransformerStage(width=width, layers=tuple(layers), stride=ch.stride))
    return replace(arch, resolution=pick(arch.resolution, space.resolutions),
                   stem_width=pick(arch.stem_width, space.stem_widths), mbconv=tuple(mb), transformer=tuple(tr))


def crossover(a: ArchConfig, b: ArchConfig, rng: random.Random) -> ArchConfig:
    """Each stage (and the resolution and stem) from one parent or the other, uniformly."""
    n = rng.choice([a.num_transformer_stages, b.num_transformer_stages])
    tr = []
    for s in range(n):
        options = [p.transformer[s] for p in (a, b) if s < p.num_transformer_stages]
        tr.append(rng.choice(options))
    return replace(a, resolution=rng.choice([a.resolution, b.resolution]),
                   stem_width=rng.choice([a.stem_width, b.stem_width]),
                   mbconv=tuple(rng.choice(pair) for pair in zip(a.mbconv, b.mbconv)), transformer=tuple(tr))


# ---- strategies --------------------------------------------------------------------------------
@dataclass
class EvolutionSettings:
    """SPEC.md section 5 defaults (AutoFormer's code swaps the two probabilities: both settable)."""

    population: int = 50
    generations: int = 20
    parents: int = 10
    p_depth: float = 0.2
    p_layer: float = 0.4
    max_tries: int = 200  # per child, before the generation is declared unable to grow


@dataclass
class SearchResult:
    best: ArchConfig
    best_top1: float
    history: list[dict[str, Any]]  # every evaluated candidate, in order

    @property
    def evaluations(self) -> int:
        return len(self.history)


class Searcher:
    """Runs a strategy under constraints with a cached evaluator; every strategy is seeded."""

    def __init__(self, space: SearchSpace, constraints: Constraints, evaluate: Callable[[ArchConfig], float],
                 seed: int = 0, known: dict[str, float] | None = None,
                 on_result: Callable[[str, float], None] | None = None):
        """`known`: results of an interrupted run with the same settings. Resuming replays the
        strategy from the seed and takes these instead of evaluating again, so the replay makes
        the same decisions and continues exactly. `on_result(key, top1)` follows every new one."""
        self.space, self.constraints, self._evaluate = space, constraints, evaluate
        self.rng = random.Random(seed)
        self.known = dict(known or {})
        self.on_result = on_result
        self.cache: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    def fitness(self, arch: ArchConfig, generation: int) -> float:
        key = arch_key(arch)
        if key not in self.cache:
            if key in self.known:
                self.cache[key] = self.known[key]
            else:
                self.cache[key] = float(self._evaluate(arch))
                if self.on_result is not None:
                    self.on_result(key, self.cache[key])
            self.history.append({"arch": arch, "top1": self.cache[key], "generation": generation})
        return self.cache[key]

    def _legal(self, archs: list[ArchConfig]) -> list[ArchConfig]:
        if not archs:
            return []
        ok = self.constraints.legal(self.constraints.price(archs))
        return [a for a, k in zip(archs, ok) if k]

    def _draw_legal(self, n: int, pool: int) -> list[ArchConfig]:
        """n distinct legal random architectures, drawn in batches of `pool`; an infeasible
        budget raises with the binding constraint named."""
        found: dict[str, ArchConfig] = {}
        for _ in range(20):
            batch = [self.space.sample(self.rng) for _ in range(pool)]
            priced = self.constraints.price(batch)
            ok = self.constraints.legal(priced)
            for a, k in zip(batch, ok):
                if k:
                    found.setdefault(arch_key(a), a)
            if len(found) >= n:
                return list(found.values())[:n]
        if not found:
            raise AutoVitError(self.constraints.infeasible_message(self.space, priced))
        return list(found.values())

    def _result(self) -> SearchResult:
        if not self.history:
            raise AutoVitError("the search evaluated no architecture")
        best = max(self.history, key=lambda h: h["top1"])
        return SearchResult(best["arch"], best["top1"], self.history)

    def random(self, evaluations: int) -> SearchResult:
        for arch in self._draw_legal(evaluations, max(64, evaluations)):
            self.fitness(arch, 0)
        return self._result()

    def evolution(self, s: EvolutionSettings, seeds: list[ArchConfig] | None = None,
                  evaluations: int | None = None) -> SearchResult:
        """AutoFormer-style: keep the top `parents`, fill the rest of each generation half by
        crossover and half by mutation, constraints checked before any evaluation."""
        population = list(seeds or [])[: s.population]
        if len(population) < s.population:
            population += self._draw_legal(s.population - len(population), 256)
        budget = evaluations if evaluations is not None else s.population * s.generations
        for gen in range(s.generations):
            scored = []
            for arch in population:
                if len(self.cache) >= budget and arch_key(arch) not in self.cache:
                    break
                scored.append((self.fitness(arch, gen), arch))
            if len(self.cache) >= budget:
                break
            scored.sort(key=lambda t: -t[0])
            parents = [a for _, a in scored[: s.parents]]
            children: dict[str, ArchConfig] = {arch_key(a): a for a in parents}
            tries = 0
            while len(children) < s.population and tries < s.max_tries * s.population:
                tries += 1
                if len(children) % 2:
                    child = crossover(*self.rng.sample(parents, 2), self.rng) if len(parents) > 1 else parents[0]
                else:
                    child = mutate(self.rng.choice(parents), self.space, self.rng, s.p_depth, s.p_layer)
                key = arch_key(child)
                if key in children or key in self.cache or self.space.problems(child):
                    continue
                if self._legal([child]):
                    children[key] = child
            population = list(children.values())
        return self._result()

    def coarse_to_fine(self, s: EvolutionSettings, coarse: int = 10_000, skeletons: int | None = None,
                       evaluations: int | None = None) -> SearchResult:
        """Coarse: price `coarse` random candidates in one batch, keep the legal ones, rank by
        parameter count (the cheap score: within one budget, more parameters is more capacity),
        keep the top `skeletons` (default: the population). Fine: evolution seeded with them."""
        k = skeletons or s.population
        legal = self._draw_legal(min(coarse, 10 * k), coarse)
        legal.sort(key=lambda a: -count_params(a))
        return self.evolution(s, seeds=legal[:k], evaluations=evaluations)


def make_oracle(spec: str, device: str) -> LatencyOracle:
    """`analytical` (the device's profile) or `lut:PATH` (LUT sum, analytical fallback; the LUT
    must have been measured on `device`)."""
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.oracle import AnalyticalOracle, LutOracle

    profile = load_profile(device)
    if spec == "analytical":
        return AnalyticalOracle(profile)
    if spec.startswith("lut:"):
        from autovit.latmodel.lut import load_lut

        return LutOracle(load_lut(spec.removeprefix("lut:")), profile)
    raise AutoVitError(f"--latency-oracle '{spec}': use analytical or lut:PATH")


@dataclass
class SearchState:
    """state.json in the results folder: the settings and every finished evaluation, rewritten
    atomically after each, so Ctrl-C loses nothing and --resume continues."""

    path: Any
    settings: dict[str, Any]
    results: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return max(self.wall_s.values(), default=0.0)

    @classmethod
    def open(cls, folder, settings: dict[str, Any], resume: bool) -> "SearchState":
        from pathlib import Path

        path = Path(folder) / "state.json"
        plain = json.loads(json.dumps(settings))
        if not resume:
            if path.exists():
                raise AutoVitError(f"{folder} already holds a search; continue it with --resume {folder} "
                                   "or choose another --out")
            return cls(path, plain)
        if not path.exists():
            raise AutoVitError(f"--resume {folder}: no search state there (state.json); start with --out {folder}")
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AutoVitError(f"{path} is not valid JSON; start a new search with another --out") from None
        diff = [k for k in sorted(set(plain) | set(saved["settings"])) if plain.get(k) != saved["settings"].get(k)]
        if diff:
            shown = "; ".join(f"{k}: {saved['settings'].get(k)!r} then, {plain.get(k)!r} now" for k in diff[:3])
            raise AutoVitError(f"--resume {folder} was made with different settings ({shown}); "
                               "repeat the original command or use a new --out")
        return cls(path, plain, dict(saved["results"]), dict(saved["wall_s"]))

    def record(self, key: str, top1: float, wall_s: float) -> None:
        from autovit.latmodel.io import atomic_write_text

        self.results[key], self.wall_s[key] = top1, wall_s
        atomic_write_text(self.path, json.dumps({"settings": self.settings, "results": self.results,
                                                 "wall_s": self.wall_s}) + "\n")


# ---- results folder ----------------------------------------------------------------------------
def write_results(out, settings: dict[str, Any], result: SearchResult, constraints: Constraints,
                  wall_s: list[float]) -> dict[str, Any]:
    """search.json, best_arch.json, progress.csv and pareto.png in `out`; returns the summary."""
    import csv
    import io
    from pathlib import Path

    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.plots import pareto_png

    out = Path(out)
    archs = [h["arch"] for h in result.history]
    priced = constraints.price(archs)
    rows = []
    for i, h in enumerate(result.history):
        rows.append({"arch": json.loads(h["arch"].to_json()), "params": int(priced["params"][i]),
                     "latency_ms": {d: float(priced[d][i]) for d in constraints.budgets_ms},
                     "top1": h["top1"], "generation": h["generation"], "wall_s": wall_s[i]})
    best_i = max(range(len(rows)), key=lambda i: rows[i]["top1"])
    summary = {**settings, "evaluations": len(rows), "best": rows[best_i]}
    atomic_write_text(out / "search.json", json.dumps({**summary, "candidates": rows}, indent=1) + "\n")
    result.best.to_json(out / "best_arch.json")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["evaluation", "top1", "best_top1", "wall_s"])
    best = -1.0
    for i, r in enumerate(rows):
        best = max(best, r["top1"])
        w.writerow([i + 1, f"{r['top1']:.4g}", f"{best:.4g}", f"{r['wall_s']:.4g}"])
    atomic_write_text(out / "progress.csv", buf.getvalue())
    if constraints.budgets_ms:
        dev = next(iter(constraints.budgets_ms))
        pareto_png(priced[dev], [r["top1"] for r in rows], constraints.budgets_ms[dev], best_i, dev,
                   out / "pareto.png")
    return summary
