"""Latency-aware search (docs/METHOD.md §5): budgets, constraint checks, the evolutionary
operators, the three strategies (random, evolution, coarse-to-fine), the saved state and the
results folder.

The four parts stay separate (NNI's split): the space; latency oracles, anything with
`latency_ms(archs) -> np.ndarray` (latmodel/oracle.py; nas/latency.py make_oracle picks one); an accuracy
evaluator, any `arch -> top-1 %` (cached here by architecture, so a duplicate is never
evaluated twice); and a strategy (Searcher), which may split each generation over processes.
"""
from __future__ import annotations

import gc
import json
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from autovit.latmodel.checks import check_keys, dumps, number, read_json
from autovit.latmodel.errors import AutoVitError, UsageError
from autovit.nas.arch import ArchConfig, MBConvStage, TransformerLayer, TransformerStage, mlp_hidden
from autovit.nas.params import count_params
from autovit.nas.space import SearchSpace

_UNITS_MS = {"ms": 1.0, "s": 1e3, "us": 1e-3, "": 1.0}
MAX_BUDGET_MS = 1e7  # ~3 hours per image: a budget beyond it is no budget, and 1e999 is infinite
MAX_PARAMS_BUDGET = 10**12  # no network has a trillion parameters
MAX_DEVICES = 16


def parse_latency(text: str) -> float:
    """'10ms', '0.01s', '500us' or a bare number (ms) -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|us|)\s*", str(text)[:100], re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"latency budget '{str(text)[:40]}' is not a positive time: write e.g. 10ms, 0.01s or 10 (ms)")
    ms = float(m.group(1)) * _UNITS_MS[m.group(2).lower()]
    if not ms <= MAX_BUDGET_MS:
        raise UsageError(f"latency budget '{str(text)[:40]}' is out of range: at most {MAX_BUDGET_MS:.0e} ms")
    return ms


def parse_params(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*", text[:100])
    if not m:
        raise UsageError(f"parameter count '{text[:40]}' is not a number: write e.g. 1.8M, 900k or 1800000")
    n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if not n <= MAX_PARAMS_BUDGET:
        raise UsageError(f"parameter count '{text[:40]}' is out of range: at most {MAX_PARAMS_BUDGET:.0e} "
                         "(no network has a trillion parameters)")
    return int(round(n))


def parse_param_window(text: str) -> tuple[int, int]:
    """'1.0M:1.8M' (either side may be empty) -> (low, high) parameters."""
    lo_s, sep, hi_s = text.partition(":")
    if not sep:
        raise UsageError(f"--param-budget '{text[:40]}' needs LOW:HIGH, e.g. 1.0M:1.8M (either side may be empty)")
    lo = parse_params(lo_s) if lo_s.strip() else 0
    hi = parse_params(hi_s) if hi_s.strip() else 2**62
    if lo > hi:
        raise UsageError(f"--param-budget '{text[:40]}' is reversed: LOW must not exceed HIGH")
    return lo, hi


def parse_latency_budgets(text: str, devices: list[str]) -> dict[str, float]:
    """'2ms' (one device) or 'iphone13=10ms,v100=2ms' -> {device: ms}; every device needs one."""
    if len(devices) > MAX_DEVICES:
        raise UsageError(f"--hw is given {len(devices)} times; price on at most {MAX_DEVICES} devices per search")
    if len(set(devices)) != len(devices):
        twice = sorted({d for d in devices if devices.count(d) > 1})
        raise UsageError(f"--hw {twice[0]} is given twice; name each device once")
    if "=" not in text:
        if len(devices) != 1:
            raise UsageError(f"with {len(devices)} devices give one budget each: --latency-budget "
                               + ",".join(f"{d}=10ms" for d in devices))
        return {devices[0]: parse_latency(text)}
    out: dict[str, float] = {}
    for part in text.split(","):
        dev, _, val = part.partition("=")
        dev = dev.strip()
        if dev in out:
            raise UsageError(f"--latency-budget names {dev} twice")
        if dev not in devices:
            raise UsageError(f"--latency-budget names {dev}, which is not among --hw {', '.join(devices)}")
        out[dev] = parse_latency(val)
    missing = [d for d in devices if d not in out]
    if missing:
        raise UsageError(f"--latency-budget gives no budget for {', '.join(missing)}")
    return out


class LatencyOracle(Protocol):
    def latency_ms(self, archs: Iterable[ArchConfig]) -> np.ndarray: ...


@dataclass
class Constraints:
    """A parameter window and a latency budget (ms) per device, each device with its oracle."""

    param_window: tuple[int, int] = (0, 2**62)
    budgets_ms: dict[str, float] = field(default_factory=dict)
    oracles: dict[str, LatencyOracle] = field(default_factory=dict)

    def price(self, archs: list[ArchConfig], lazy: bool = True) -> dict[str, np.ndarray]:
        """{"params": [n], device: latency ms [n]} for a batch (the oracles' batch API). Lazy:
        a device's oracle prices only the candidates still legal (inf for the rest), so a
        slow oracle (measured) never times what the parameter window already rejects."""
        out = {"params": np.array([count_params(a) for a in archs], dtype=np.int64)}
        lo, hi = self.param_window
        alive = (out["params"] >= lo) & (out["params"] <= hi) if lazy else np.ones(len(archs), bool)
        for dev, budget in self.budgets_ms.items():
            ms = np.full(len(archs), np.inf)
            idx = np.flatnonzero(alive)
            if idx.size:
                ms[idx] = np.asarray(self.oracles[dev].latency_ms([archs[i] for i in idx]), dtype=float)
            out[dev] = ms
            if lazy:
                alive &= ms <= budget
        return out

    def legal(self, priced: dict[str, np.ndarray]) -> np.ndarray:
        lo, hi = self.param_window
        ok = (priced["params"] >= lo) & (priced["params"] <= hi)
        for dev, budget in self.budgets_ms.items():
            ok &= priced[dev] <= budget
        return ok

    def infeasible_message(self, space: SearchSpace, priced: dict[str, np.ndarray]) -> str:
        """Which budget binds, with the smallest value reached among the candidates drawn and
        by the space's smallest architecture."""
        lo, hi = self.param_window
        parts = []
        if priced["params"].min() > hi or priced["params"].max() < lo:
            parts.append(f"parameters {lo / 1e6:.2f}-{hi / 1e6:.2f} M (the space reaches "
                         f"{count_params(space.smallest()) / 1e6:.2f}-{count_params(space.largest()) / 1e6:.2f} M)")
        for dev, budget in self.budgets_ms.items():
            seen = priced[dev][np.isfinite(priced[dev])]
            if seen.size and seen.min() > budget:
                smallest = float(self.oracles[dev].latency_ms([space.smallest()])[0])
                parts.append(f"{dev} latency {budget:g} ms (the fastest candidate drawn takes {seen.min():.3g} ms, "
                             f"the space's smallest architecture {smallest:.3g} ms)")
        binding = "; ".join(parts) or "the combination of the budgets"
        return f"no architecture meets the budgets: {binding}; relax them"


# ---- evolutionary operators --------------------------------------------------------------------
def repair_monotonic(arch: ArchConfig, space: SearchSpace) -> ArchConfig:
    """The nearest member under the monotonic-width rule: walking the transformer layers in
    order, a width that shrinks is raised to the smallest option that does not. Resampling
    layers independently breaks the rule in most mutations of a good XXS parent, which
    stalled evolution; repaired, children stay in the space (tests/test_search.py). A width
    with no large-enough option is left for the caller's check to reject."""
    if not space.monotonic_widths:
        return arch
    prev_w = prev_a = prev_m = 0
    stages = []
    for st, ch in zip(arch.transformer, space.transformer):
        width = st.width if st.width >= prev_w else min((w for w in ch.widths if w >= prev_w), default=st.width)
        layers = []
        for layer in st.layers:
            heads, ratio = layer.heads, layer.mlp_ratio
            if heads * arch.head_dim < prev_a:
                heads = min((h for h in ch.heads if h * arch.head_dim >= prev_a), default=heads)
            if mlp_hidden(width, ratio) < prev_m:
                ratio = min((r for r in ch.mlp_ratios if mlp_hidden(width, r) >= prev_m), default=ratio)
            layers.append(TransformerLayer(heads, ratio))
            prev_a, prev_m = max(prev_a, heads * arch.head_dim), max(prev_m, mlp_hidden(width, ratio))
        stages.append(replace(st, width=width, layers=tuple(layers)))
        prev_w = width
    return replace(arch, transformer=tuple(stages))


def mutate(arch: ArchConfig, space: SearchSpace, rng: random.Random, p_depth: float, p_layer: float) -> ArchConfig:
    """Resample each stage's depth with p_depth, then each choice (widths, per-layer heads and
    MLP ratios, kernel, expansion, resolution) with p_layer; then repair_monotonic. Callers
    still check the space and the budgets."""
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
    return repair_monotonic(replace(arch, resolution=pick(arch.resolution, space.resolutions),
                                    stem_width=pick(arch.stem_width, space.stem_widths), mbconv=tuple(mb),
                                    transformer=tuple(tr)), space)


def crossover(a: ArchConfig, b: ArchConfig, rng: random.Random, space: SearchSpace | None = None) -> ArchConfig:
    """Each stage (and the resolution and stem) from one parent or the other, uniformly; with
    `space`, repaired to its monotonic-width rule."""
    n = rng.choice([a.num_transformer_stages, b.num_transformer_stages])
    tr = []
    for s in range(n):
        options = [p.transformer[s] for p in (a, b) if s < p.num_transformer_stages]
        tr.append(rng.choice(options))
    child = replace(a, resolution=rng.choice([a.resolution, b.resolution]),
                    stem_width=rng.choice([a.stem_width, b.stem_width]),
                    mbconv=tuple(rng.choice(pair) for pair in zip(a.mbconv, b.mbconv)), transformer=tuple(tr))
    return repair_monotonic(child, space) if space is not None else child


# ---- strategies --------------------------------------------------------------------------------
@dataclass
class EvolutionSettings:
    """docs/METHOD.md §5 defaults (AutoFormer's code swaps the two probabilities: both settable)."""

    population: int = 50
    generations: int = 20
    parents: int = 10
    p_depth: float = 0.2
    p_layer: float = 0.4
    max_tries: int = 200  # attempts per child wanted, before a generation stays smaller


@dataclass
class SearchResult:
    best: ArchConfig
    best_top1: float
    history: list[dict[str, Any]]  # every evaluated candidate, in order

    @property
    def evaluations(self) -> int:
        return len(self.history)


@contextmanager
def _collector_paused():
    """Pause the cyclic garbage collector: building 10,000 candidates creates ~300,000 objects
    and no cycles, and the collector's repeated passes over them made the coarse stage ~2x slower."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Searcher:
    """Runs a strategy under constraints with a cached evaluator; every strategy is seeded."""

    def __init__(self, space: SearchSpace, constraints: Constraints, evaluate: Callable[[ArchConfig], float],
                 seed: int = 0, known: dict[str, float] | None = None,
                 on_result: Callable[[str, float], None] | None = None,
                 rank: int = 0, world: int = 1, gather: Callable[[Any], list[Any]] | None = None):
        """`known`: results of an interrupted run with the same settings. Resuming replays the
        strategy from the seed and takes these instead of evaluating again, so the replay makes
        the same decisions and continues exactly. `on_result(key, top1)` follows every new one.

        Under torchrun every rank runs the same seeded strategy; rank `rank` of `world`
        evaluates every world-th new candidate of a generation and `gather` (all_gather of a
        Python object) shares the results, so every rank decides on the same numbers as one
        process would."""
        self.space, self.constraints, self._evaluate = space, constraints, evaluate
        self.rng = random.Random(seed)
        self.known = dict(known or {})
        self.on_result = on_result
        self.rank, self.world, self.gather = rank, world, gather
        if world > 1 and gather is None:
            raise ValueError("a search over several processes needs a gather function")
        self.cache: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    def evaluate_batch(self, archs: list[ArchConfig], generation: int) -> None:
        """Evaluate the candidates not seen before, in order, and append them to the history."""
        new: dict[str, ArchConfig] = {}
        for a in archs:
            key = a.key()
            if key not in self.cache:
                new.setdefault(key, a)
        fresh = [k for k in new if k not in self.known]
        mine: dict[str, float] = {}
        for key in fresh[self.rank::self.world]:
            mine[key] = float(self._evaluate(new[key]))
            if self.on_result is not None:  # at once: an interrupt loses nothing finished
                self.on_result(key, mine[key])
        results = dict(mine)
        if self.world > 1:
            for part in self.gather(mine):
                for key, top1 in part.items():
                    if key not in mine:
                        results[key] = top1
                        if self.on_result is not None:
                            self.on_result(key, top1)
        for key, arch in new.items():
            self.cache[key] = self.known[key] if key in self.known else results[key]
            self.history.append({"arch": arch, "top1": self.cache[key], "generation": generation})

    def _legal(self, archs: list[ArchConfig]) -> list[ArchConfig]:
        if not archs:
            return []
        ok = self.constraints.legal(self.constraints.price(archs))
        return [a for a, k in zip(archs, ok) if k]

    def _draw_legal(self, n: int, pool: int) -> list[ArchConfig]:
        """n distinct legal random architectures, drawn in batches of `pool`; an infeasible
        budget raises with the binding constraint named."""
        found: dict[ArchConfig, None] = {}  # insertion-ordered set (equal configs hash alike)
        for _ in range(20):
            with _collector_paused():
                batch = [self.space.sample(self.rng) for _ in range(pool)]
                priced = self.constraints.price(batch)
            for i in np.flatnonzero(self.constraints.legal(priced)):
                found.setdefault(batch[i])
                if len(found) >= n:
                    return list(found)
        if not found:
            raise AutoVitError(self.constraints.infeasible_message(self.space, priced))
        return list(found)

    def _result(self) -> SearchResult:
        if not self.history:
            raise AutoVitError("the search evaluated no architecture")
        best = max(self.history, key=lambda h: h["top1"])
        return SearchResult(best["arch"], best["top1"], self.history)

    def random(self, evaluations: int) -> SearchResult:
        self.evaluate_batch(self._draw_legal(evaluations, max(64, evaluations)), 0)
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
            pending = [a for a in population if a.key() not in self.cache]
            self.evaluate_batch(pending[: max(0, budget - len(self.cache))], gen)
            if len(self.cache) >= budget:
                break
            scored = sorted(((self.cache[a.key()], a) for a in population), key=lambda t: -t[0])
            parents = [a for _, a in scored[: s.parents]]
            children: dict[str, ArchConfig] = {a.key(): a for a in parents}
            # AutoFormer's split: half the newcomers by crossover, the rest by mutation, which
            # also makes up whatever crossover could not (similar parents cross into old archs).
            if len(parents) > 1:
                self._grow(children, (s.population - len(children)) // 2, s.max_tries,
                           lambda: crossover(*self.rng.sample(parents, 2), self.rng, self.space))
            self._grow(children, s.population - len(children), s.max_tries,
                       lambda: mutate(self.rng.choice(parents), self.space, self.rng, s.p_depth, s.p_layer))
            population = list(children.values())
        return self._result()

    def _grow(self, children: dict[str, ArchConfig], n: int, max_tries: int, make: Callable[[], ArchConfig]) -> None:
        """Add up to n new children from `make`: distinct, never evaluated, in the space and
        legal; at most max_tries attempts per child wanted."""
        target = len(children) + n
        for _ in range(max_tries * n):
            if len(children) >= target:
                return
            child = make()
            key = child.key()
            if key in children or key in self.cache or self.space.problems(child):
                continue
            if self._legal([child]):
                children[key] = child

    def coarse_to_fine(self, s: EvolutionSettings, coarse: int = 10_000, skeletons: int | None = None,
                       evaluations: int | None = None) -> SearchResult:
        """Coarse: price `coarse` random candidates in one batch, keep the legal ones, rank by
        parameter count (the cheap score: within one budget, more parameters is more capacity),
        keep the top `skeletons` (default: the population). Fine: evolution seeded with them."""
        k = skeletons or s.population
        legal = self._draw_legal(min(coarse, 10 * k), coarse)
        legal.sort(key=lambda a: -count_params(a))
        return self.evolution(s, seeds=legal[:k], evaluations=evaluations)


@dataclass
class SearchState:
    """state.json in the results folder: the settings and every finished evaluation, rewritten
    atomically after each, so Ctrl-C loses nothing and --resume continues."""

    path: Path
    settings: dict[str, Any]
    results: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return max(self.wall_s.values(), default=0.0)

    @classmethod
    def open(cls, folder, settings: dict[str, Any], resume: bool) -> "SearchState":
        path = Path(folder) / "state.json"
        plain = json.loads(dumps(settings))
        if not resume:
            if path.exists():
                raise AutoVitError(f"{folder} already holds a search; continue it with --resume {folder} "
                                   "or choose another --out")
            return cls(path, plain)
        if not path.exists():
            raise AutoVitError(f"--resume {folder}: no search state there (state.json); start with --out {folder}")
        saved = check_state(read_json(path, "search state", _STATE_FIX), path)
        diff = [k for k in sorted(set(plain) | set(saved["settings"])) if plain.get(k) != saved["settings"].get(k)]
        if diff:
            shown = "; ".join(f"{k[:40]}: {repr(saved['settings'].get(k))[:60]} then, {repr(plain.get(k))[:60]} now"
                              for k in diff[:3])
            raise AutoVitError(f"--resume {folder} was made with different settings ({shown}); "
                               "repeat the original command or use a new --out")
        return cls(path, plain, dict(saved["results"]), dict(saved["wall_s"]))

    def record(self, key: str, top1: float, wall_s: float) -> None:
        from autovit.latmodel.io import atomic_write_text

        self.results[key], self.wall_s[key] = top1, wall_s
        atomic_write_text(self.path, dumps({"settings": self.settings, "results": self.results,
                                            "wall_s": self.wall_s}) + "\n")


_STATE_FIX = "start a new search with another --out"
MAX_STATE_RESULTS = 100_000  # the --evaluations bound


def check_state(saved: Any, path: Path) -> dict[str, Any]:
    """The fields of a state.json and their types: settings (a table), results (architecture
    key -> top-1 %) and wall_s (the same keys -> seconds); one line naming the field otherwise."""
    where = f"search state {path}"
    tail = f"; it is not a search state this version wrote ({_STATE_FIX})"
    if not isinstance(saved, dict):
        raise AutoVitError(f"{where} must be a JSON object, got {type(saved).__name__}{tail}")
    try:
        check_keys(saved, ("settings", "results", "wall_s"), where)
        for key in ("settings", "results", "wall_s"):
            if not isinstance(saved.get(key), dict):
                got = type(saved[key]).__name__ if key in saved else "nothing"
                raise AutoVitError(f"{where}: field '{key}' must be an object, got {got}")
        results, wall = saved["results"], saved["wall_s"]
        if len(results) > MAX_STATE_RESULTS:
            raise AutoVitError(f"{where}: {len(results):,} results, more than any search makes")
        if set(results) != set(wall):
            raise AutoVitError(f"{where}: fields 'results' and 'wall_s' name different architectures")
        for key, top1 in results.items():
            number(top1, f"{where}: a result (top-1 %)", 0, 100)
            number(wall[key], f"{where}: a wall_s value (seconds)", 0)
    except AutoVitError as e:
        raise AutoVitError(f"{e}{tail}") from None
    return saved


# ---- results folder ----------------------------------------------------------------------------
def write_results(out, settings: dict[str, Any], result: SearchResult, constraints: Constraints,
                  wall_s: list[float], top: int = 10) -> dict[str, Any]:
    """search.json, best_arch.json, progress.csv and pareto.png in `out`; returns the summary
    (settings, the best candidate, the `top` best without their architectures)."""
    import csv
    import io

    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.oracle import BlockCounts
    from autovit.latmodel.plots import pareto_png
    from autovit.nas.blocks import DECOMPOSITION

    out = Path(out)
    archs = [h["arch"] for h in result.history]
    priced = constraints.price(archs, lazy=False)
    flops = BlockCounts(**DECOMPOSITION).flops(archs)
    rows = []
    for i, h in enumerate(result.history):
        rows.append({"arch": h["arch"].to_dict(), "params": int(priced["params"][i]), "flops": float(flops[i]),
                     "latency_ms": {d: float(priced[d][i]) for d in constraints.budgets_ms},
                     "top1": h["top1"], "generation": h["generation"], "wall_s": wall_s[i]})
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["top1"])
    best_i = order[0]
    summary = {**settings, "evaluations": len(rows), "best": rows[best_i],
               "top": [{k: v for k, v in rows[i].items() if k != "arch"} for i in order[:top]]}
    atomic_write_text(out / "search.json", dumps({**summary, "candidates": rows}, indent=1) + "\n")
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
