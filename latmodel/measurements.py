"""Latencies measured elsewhere, as CSV tables: reading them and scoring predictions against them.

A measurement table is a CSV file with a header row. Columns (others are ignored, so the
published Apple tables are read as they are):

- `model` (required): the row's name, unique in the table (with `resolution`: at each size);
- `latency_ms` (required): the measured latency, ms, finite and > 0;
- `path`: an ONNX file or an AutoViT architecture JSON, relative to the CSV's folder; a path
  that is absolute or leads outside that folder is refused (a table travels with its models,
  and a table from someone else cannot make the tool read arbitrary files);
- `timm_name` and `resolution` (px; blank: timm's default for the model): a timm model, built
  with random weights and re-parameterised as deployed (network_graphs.py); used when `path`
  is blank;
- `coreml_format`: mlprogram or neuralnetwork, the Core ML format the model was timed in
  (blank: the command's --coreml-format); Neural Engine profiles only;
- `graph`: timm or cvnets (Apple's per-head attention, network_graphs.split_head_attention);
  blank: cvnets for the `--cvnets-families` of NeuralNetwork-format rows, else timm.

A row with neither `path` nor `timm_name` cannot be built: it is listed with its reason, as is
a row whose model fails to export, never fatal. A malformed table (missing columns, a bad
number, a duplicate model, an unsafe path, an empty file) is refused in one line.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autovit.latmodel.checks import did_you_mean, read_text
from autovit.latmodel.errors import AutoVitError

# Largest CSV any reader accepts (the biggest published table is ~20 KB) and most data rows.
MAX_CSV_BYTES = 16 * 2**20
MAX_ROWS = 100_000
# Longest latency a row may hold (about 3 hours, as a LUT entry) and the input sides allowed (px).
MAX_MS = 1e7
RESOLUTIONS = (8, 4096)
COREML_FORMATS = ("mlprogram", "neuralnetwork")
GRAPH_FORMS = ("timm", "cvnets")
# Models whose NeuralNetwork-format Core ML is Apple's own conversion (cvnets-convert): MobileViT.
CVNETS_FAMILIES = ("mobilevit_",)
MEASUREMENT_FIX = "columns: model, latency_ms and path (ONNX or arch JSON) or timm_name [, resolution]"


# ---- CSV ---------------------------------------------------------------------------------
def read_csv(path: str | Path, what: str, required: list[tuple[str, ...]], fix: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header; each entry of `required` is a set of
    alternative column names of which at least one must be present. Cells are stripped; a
    missing cell is ''. A file that is missing, empty, not UTF-8 text, without rows or too big
    is one line."""
    p = Path(path)
    where = f"{what} {p}"
    text = read_text(p, what, fix, MAX_CSV_BYTES, "utf-8-sig")  # -sig: a spreadsheet's BOM is not a column name
    if not text.strip():
        raise AutoVitError(f"{where}: the file is empty; {fix}")
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip() for h in next(reader)]
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(rows) >= MAX_ROWS:
                raise AutoVitError(f"{where}: more than {MAX_ROWS:,} rows")
            rows.append((reader.line_num, {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}))
    except csv.Error as e:
        raise AutoVitError(f"{where}: not a valid CSV ({e}); {fix}") from None
    _check_header(header, required, where, fix)
    if not rows:
        raise AutoVitError(f"{where}: a header and no rows; {fix}")
    return rows


def _check_header(header: list[str], required: list[tuple[str, ...]], where: str, fix: str) -> None:
    dup = sorted({h for h in header if header.count(h) > 1 and h})
    if dup:
        raise AutoVitError(f"{where}: column '{dup[0]}' appears twice in the header")
    for alternatives in required:
        if not any(a in header for a in alternatives):
            name = " or ".join(f"'{a}'" for a in alternatives)
            close = next((did_you_mean(a, header) for a in alternatives if did_you_mean(a, header)), "")
            raise AutoVitError(f"{where}: no column {name}{close}; {fix} (found: {', '.join(header)[:120]})")


def positive_ms(text: str, where: str) -> float:
    """A latency cell: a finite number of ms, > 0 and at most MAX_MS."""
    try:
        v = float(text)
    except ValueError:
        raise AutoVitError(f"{where}: latency_ms {text[:40]!r} is not a number") from None
    if not math.isfinite(v) or v <= 0 or v > MAX_MS:
        raise AutoVitError(f"{where}: latency_ms is {text[:40]!r}; a measured latency is a finite number of ms, "
                           f"> 0 and <= {MAX_MS:g}")
    return v


def duplicates(names: list[tuple[int, str]], what: str, where: str) -> None:
    """Refuse a name given twice: [(line, name)] -> one line naming both lines."""
    seen: dict[str, int] = {}
    for line, name in names:
        if name in seen:
            raise AutoVitError(f"{where}: {what} '{name[:80]}' is on lines {seen[name]} and {line}; "
                               "keep one row per " + what)
        seen[name] = line


def safe_path(text: str, folder: Path, where: str, suffixes: tuple[str, ...]) -> Path:
    """A path cell resolved against `folder`: relative, inside it (links resolved), with one
    of `suffixes`."""
    p = Path(text)
    if p.is_absolute():
        raise AutoVitError(f"{where}: path '{text[:80]}' is absolute; give it relative to the table's folder {folder}")
    full = (folder / p).resolve()
    if not full.is_relative_to(folder.resolve()):
        raise AutoVitError(f"{where}: path '{text[:80]}' leads outside the table's folder {folder}; "
                           "keep the models next to the table")
    if full.suffix.lower() not in suffixes:
        raise AutoVitError(f"{where}: path '{text[:80]}' is not a {' or '.join(suffixes)} file")
    return full


# ---- measurement tables ------------------------------------------------------------------
@dataclass(frozen=True)
class MeasuredRow:
    """One measured network: where its graph comes from and its measured latency (ms)."""

    line: int
    model: str
    latency_ms: float
    timm_name: str = ""
    resolution: int = 0  # px; 0 for a `path` row
    path: Path | None = None
    coreml_format: str = "mlprogram"
    form: str = "timm"  # the graph of a timm row: timm's, or Apple's per-head attention (cvnets)

    @property
    def graph_key(self) -> str:
        """Cache key of the graph (the same as benchmarks/apple.py's, so one cache serves both)."""
        if self.path is not None:
            return f"path__{self.path}"
        return timm_graph_key(self.timm_name, self.resolution, self.form)

    @property
    def names(self) -> tuple[str, ...]:
        """What --exclude may call this row: its model, timm name, timm name@resolution."""
        return (self.model, f"{self.model}@{self.resolution}") + (
            (self.timm_name, f"{self.timm_name}@{self.resolution}") if self.timm_name else ())


def timm_graph_key(timm_name: str, resolution: int, form: str = "timm") -> str:
    """Graph-cache key of a re-parameterised timm model at `resolution` px in one of GRAPH_FORMS."""
    prefix = "timm-rep" if form == "timm" else f"timm-rep-{form}"
    return f"{prefix}__{timm_name}__{resolution}"


def graph_form(coreml_format: str, timm_name: str, families: tuple[str, ...] = CVNETS_FAMILIES) -> str:
    """The graph that prices a timm row: "cvnets" (Apple's per-head attention) for a model of `families`
    converted to the NeuralNetwork format, which Apple's converter always writes; else "timm"."""
    return "cvnets" if coreml_format == "neuralnetwork" and timm_name.startswith(families) else "timm"


def read_measurements(path: str | Path, coreml_format: str = "mlprogram",
                      cvnets_families: tuple[str, ...] = CVNETS_FAMILIES) -> list[MeasuredRow]:
    """Every row of a measurement table, checked (see the module docstring)."""
    p = Path(path)
    rows = read_csv(p, "measurement table", [("model",), ("latency_ms",)], MEASUREMENT_FIX)
    # A table may give one model at two resolutions (MobileViTv2's does): a row is a model at a size.
    duplicates([(line, r["model"] + (f" at {r['resolution']} px" if r.get("resolution") else "")) for line, r in rows],
               "model", f"measurement table {p}")
    return [_measured_row(line, r, p.parent, coreml_format, cvnets_families, f"{p}, line {line}") for line, r in rows]


def _measured_row(line: int, r: dict[str, str], folder: Path, default_format: str, families: tuple[str, ...],
                  where: str) -> MeasuredRow:
    if not r["model"]:
        raise AutoVitError(f"{where}: the model cell is empty; name every row")
    ms = positive_ms(r["latency_ms"], where)
    fmt = _choice(r.get("coreml_format", ""), COREML_FORMATS, "coreml_format", where) or default_format
    path = safe_path(r["path"], folder, where, (".onnx", ".json")) if r.get("path") else None
    timm_name = "" if path is not None else r.get("timm_name", "")
    res = _resolution(r.get("resolution", ""), timm_name, where) if timm_name else 0
    form = _choice(r.get("graph", ""), GRAPH_FORMS, "graph", where) or graph_form(fmt, timm_name, families)
    return MeasuredRow(line, r["model"], ms, timm_name, res, path, fmt, form)


def _choice(text: str, choices: tuple[str, ...], column: str, where: str) -> str:
    if text and text not in choices:
        raise AutoVitError(f"{where}: {column} '{text[:40]}' is not one of {', '.join(choices)}{did_you_mean(text, choices)}")
    return text


def _resolution(text: str, timm_name: str, where: str) -> int:
    if not text:
        return default_resolution(timm_name)
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    lo, hi = RESOLUTIONS
    if not (math.isfinite(v) and v == int(v) and lo <= v <= hi):
        raise AutoVitError(f"{where}: resolution '{text[:40]}' must be a whole number of px from {lo} to {hi}")
    return int(v)


def default_resolution(timm_name: str) -> int:
    """timm's default input side (px) for a model, from its pretrained config (no download);
    224 for a name timm does not know (the row then fails to build and is listed)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(timm_name)
    except (RuntimeError, ValueError, KeyError):
        cfg = None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


# ---- metrics -----------------------------------------------------------------------------
KEEP = ("kendall_tau", "spearman", "median_ape", "within_10", "within_25")


def table_metrics(pred, meas, flops, acts, params=None) -> dict[str, Any]:
    """Rank and error figures of `pred` against `meas` after one global scale, and of the
    baselines fitted in-sample (FLOPs- and parameter-proportional, least squares on FLOPs and
    activations); the figures benchmarks/external.py prints."""
    from autovit.latmodel.metrics import lstsq_fit, summary

    m, f, a = np.asarray(meas, float), np.asarray(flops, float), np.asarray(acts, float)
    ours = summary(np.asarray(pred, float), m)
    baselines = {"flops_proportional": np.maximum(f, 1e-9), "lstsq_flops_activations": lstsq_fit(np.column_stack([f, a]), m)}
    if params is not None:
        baselines["params_proportional"] = np.maximum(np.asarray(params, float), 1e-9)
    return {**{k: round(ours[k], 4) for k in KEEP}, "scale": round(ours["scale"], 4),
            "baselines": {b: {k: round(v, 4) for k, v in summary(x, m).items() if k in KEEP} for b, x in baselines.items()}}


def extended_metrics(pred, meas, flops, params) -> dict[str, Any]:
    """What table_metrics leaves out: MAPE after the scale, every error without it, and the
    FLOPs- and parameter-proportional baselines cross-validated (leave one row out: the factor
    fitted on the other rows prices the one left out, errors not rescaled)."""
    from autovit.latmodel.metrics import summary

    p, m = np.asarray(pred, float), np.asarray(meas, float)
    keep = ("median_ape", "mape", "within_10", "within_25")
    rounded = lambda d: {k: round(d[k], 4) for k in ("kendall_tau", "spearman") + keep if k in d}  # noqa: E731
    return {"mape": round(summary(p, m)["mape"], 4),
            "unscaled": {k: round(v, 4) for k, v in summary(p, m, rescale=False).items() if k in keep},
            "baselines_cross_validated": {name: rounded(summary(loo_proportional(np.asarray(x, float), m), m, rescale=False))
                                          for name, x in (("flops_proportional", flops), ("params_proportional", params))}}


def loo_proportional(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of y ~ k * x (k fitted on log scale on the other rows)."""
    from autovit.latmodel.metrics import proportional_factor

    idx = np.arange(len(y))
    return np.array([proportional_factor(x[idx != i], y[idx != i]) * x[i] for i in idx])


# ---- scoring a table -----------------------------------------------------------------------
MIN_ROWS = 3  # fewer rows rank nothing


def price_rows(rows: list[MeasuredRow], models: dict, skip: dict[str, str], profile,
               exclude: tuple[str, ...] = ()) -> tuple[list[tuple[MeasuredRow, Any]], list[dict], list[dict]]:
    """(row, Estimate) of every row that was built and not excluded; the rows that could not be
    built and the excluded ones, each as {model, line, reason}. `exclude` names rows by model,
    timm name or timm name@resolution."""
    from autovit.latmodel.network_graphs import coreml_profile

    check_exclude(rows, exclude)
    priced, failed, excluded = [], [], []
    for r in rows:
        if r.graph_key in skip:
            failed.append({"model": r.model, "line": r.line, "reason": skip[r.graph_key]})
        elif set(r.names) & set(exclude):
            excluded.append({"model": r.model, "line": r.line, "reason": "--exclude"})
        else:
            priced.append((r, models[r.graph_key].estimate(coreml_profile(profile, r.coreml_format), 1)))
    return priced, failed, excluded


def check_exclude(rows: list[MeasuredRow], exclude: tuple[str, ...]) -> None:
    """Refuse an --exclude that names no row (a typo would silently exclude nothing)."""
    unused = set(exclude) - {n for r in rows for n in r.names}
    if unused:
        raise AutoVitError(f"--exclude {sorted(unused)[0]}: no row of the table has that model, timm name or "
                           "timm name@resolution")


def score_table(priced: list[tuple[MeasuredRow, Any]], models: dict) -> dict[str, Any]:
    """Every figure of `validate --measurements` for the priced rows (table_metrics +
    extended_metrics) and the rows themselves."""
    if len(priced) < MIN_ROWS:
        raise AutoVitError(f"only {len(priced)} rows of the table could be priced; at least {MIN_ROWS} are needed "
                           "to rank anything (see the failed rows)")
    pred = [e.latency_ms for _, e in priced]
    meas = [r.latency_ms for r, _ in priced]
    flops = [e.flops for _, e in priced]
    params = [float(e.params) for _, e in priced]
    acts = [float(sum(c.out_elems for c in models[r.graph_key].costs.values())) for r, _ in priced]
    return {"n": len(priced), **table_metrics(pred, meas, flops, acts, params),
            **extended_metrics(pred, meas, flops, params),
            "rows": [{"model": r.model, "line": r.line, "ms": r.latency_ms, "pred_ms": round(e.latency_ms, 4),
                      "gflops": round(e.flops / 1e9, 3), "params_m": round(e.params / 1e6, 3),
                      "coreml_format": r.coreml_format, "graph": "file" if r.path else r.form}
                     for r, e in priced]}


def scatter_png(priced: list[tuple[MeasuredRow, Any]], scale: float, title: str, path: Path) -> Path:
    """Predicted (x the global scale) against measured ms, log-log, with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autovit.latmodel.plots import _save

    pred = np.array([e.latency_ms for _, e in priced]) * scale
    meas = np.array([r.latency_ms for r, _ in priced])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(meas, pred, s=14)
    lo, hi = min(pred.min(), meas.min()) * 0.8, max(pred.max(), meas.max()) * 1.25
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (ms)",
           ylabel=f"predicted x {scale:.3g} (ms)", title=title)
    return _save(fig, path)
