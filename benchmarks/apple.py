"""Published iPhone (Core ML) latency tables as external sets: rows, exclusion rule, cross-table check.

Data: `shared/external-latency/apple/*.csv` (columns model, latency_ms, device, runtime,
resolution, timm_name, ...), one table per paper or doc page. `benchmarks/external.py --sets
apple` scores each table on its own chip's profile.

Rows used (decided before any prediction was looked at):
- every row with a `timm_name`; resolution from the row, else timm's default input size for
  that model; the timm model is built with random weights and re-parameterised
  (`timm.utils.reparameterize_model`: MobileOne, FastViT, RepViT, ... as deployed) before the
  ONNX export;
- skipped, and counted: rows whose export fails, and graphs whose shapes ONNX inference leaves
  unresolved for more than 10 % of the ops (as for the GPU/CPU sets);
- the one exclusion rule (`excluded_rows`): when two tables give the same timm model at the
  same resolution and the table on the newer-or-equal chip reports more than 2x the latency of
  the table on the older chip, the newer chip's row is excluded. Each Neural Engine generation
  is at least as fast as the one before (A14 11, A15 15.8, A16 17, A17 Pro 35 trillion ops/s,
  Apple), so a row 2x slower on a newer chip did not run the same network on the Neural Engine
  (an op left it: an export difference, not a device effect). On the same chip neither row can
  be blamed, so both are kept and reported. No row is excluded for its prediction.

Cross-table disagreements (`disagreements`): every pair of rows of the same timm model and
resolution in two tables, with the ratio of their latencies; pairs of the same chip above 2x
are the ones the issue asks to report, pairs across chips above 2x are listed beside them.

What each table measured. Unlike the exclusion rule, these two rules were written after the
first Neural Engine model's residuals had pointed at the rows they change (docs/BENCHMARKS.md
7.0, 7.3); each rests on the exporters' own code or files, cited where it is set:
- its Core ML format (`COREML_FORMAT`): the NeuralNetwork format where the paper's exports are
  documented as such, else an ML Program (coremltools' default since 7.0). A table is priced on
  its chip's profile for that format (neural_engine.for_format);
- the graph of each row (`coreml_form`): timm's model, except where the measured network is
  Apple's Core ML conversion of it. Apple's converter for its own MobileViT and ViT models
  (apple/ml-cvnets `cvnets-convert`, the documented way to Core ML of MobileViT's official
  code) switches on Core ML-compatible modules whose attention splits the heads by slicing the
  last axis (`MultiHeadAttention.forward_tracing`) instead of timm's rank-5 qkv reshape and
  permute, and always writes the NeuralNetwork format (`convert_to="neuralnetwork"`, every
  release). So in a NeuralNetwork-format table the MobileViT rows, and the DeiT rows of Apple's
  own MobileViTv2 table (which cvnets measured), are exported with that attention
  (`split_head_attention`; the rest of the network stays timm's); an ML Program table was not
  converted by cvnets.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# Apple's per-head attention and timm's default sizes are the library's (validate --measurements uses them too).
from autovit.latmodel.measurements import CVNETS_FAMILIES, default_resolution, graph_form, timm_graph_key
from autovit.latmodel.network_graphs import split_head_attention  # noqa: F401  (tests use apple.split_head_attention)

# name -> (CSV under the data folder, profile that prices it, chip)
APPLE_SETS = {
    "apple-iformer-a15": ("apple/iformer-paper_iphone13.csv", "iphone13", "A15"),
    "apple-mnv4-a15": ("apple/mobilenetv4-paper_iphone13.csv", "iphone13", "A15"),
    "apple-swiftformer-a15": ("apple/swiftformer-paper_iphone14.csv", "iphone13", "A15"),
    "apple-mobilevitv2-a14": ("apple/mobilevitv2-paper_iphone12.csv", "iphone12", "A14"),
    "apple-shvit-a14": ("apple/shvit-paper_iphone12.csv", "iphone12", "A14"),
    "apple-coremltools-a16": ("apple/coremltools-docs_iphone14pro.csv", "iphone14pro", "A16"),
    "apple-coremltools-a17": ("apple/coremltools-docs_iphone15pro.csv", "iphone15pro", "A17 Pro"),
}
# Held-out tables (benchmarks/data/apple-heldout/README.md): read from this repository, scored on
# their chip's profile after the model was built; no row is excluded from them.
HELDOUT_DIR = Path(__file__).resolve().parent / "data" / "apple-heldout"
HELDOUT_SETS = {
    "heldout-mobileone-a14": ("mobileone-readme_iphone12pro.csv", "iphone12", "A14"),
    "heldout-fastvit-a14": ("fastvit-readme_iphone12pro.csv", "iphone12", "A14"),
    "heldout-efficientformer-a14": ("efficientformer-readme_iphone12.csv", "iphone12", "A14"),
    "heldout-efficientformerv2-a14": ("efficientformerv2-readme_iphone12.csv", "iphone12", "A14"),
    "heldout-repvit-a14": ("repvit-readme_iphone12.csv", "iphone12", "A14"),
}
# One table per team ranks a single family, which any predictor orders; pooled, the five A14 tables
# are a cross-family check (different teams' exports, same chip).
HELDOUT_SETS["heldout-pooled-a14"] = (tuple(rel for rel, _, _ in HELDOUT_SETS.values()), "iphone12", "A14")
TABLES = {**APPLE_SETS, **HELDOUT_SETS}
# Neural Engine generations in order (each at least as fast as the one before).
CHIP_ORDER = ("A14", "A15", "A16", "A17 Pro")
# Above this ratio two tables cannot both describe the same network on the Neural Engine.
DISAGREE_RATIO = 2.0


# Core ML format of each table's exports (default "mlprogram") and where that is documented.
COREML_FORMAT = {
    "apple-swiftformer-a15": ("neuralnetwork", "Amshaker/SwiftFormer issue 3: the Core ML models its README links "
                              "are .mlmodel files and the authors convert 'to mlmodel' (the NeuralNetwork format; an "
                              "ML Program is saved as .mlpackage), with coremltools 5.2, whose default it is"),
    "apple-mobilevitv2-a14": ("neuralnetwork", "apple/ml-cvnets at the MobileViTv2 release (commit 5f5dbc7), "
                              "utils/pytorch_to_coreml.py: ct.convert(..., convert_to='neuralnetwork')"),
    "apple-mnv4-a15": ("mlprogram", "MobileNetV4 paper: Core ML MLProgram FP16, coremltools 7.1"),
    "heldout-fastvit-a14": ("mlprogram", "apple/ml-fastvit export_model.py: convert_to='mlprogram'"),
}
# The format only matters for a graph with a rank-5 tensor (timm's attention): of the held-out
# tables' models only FastViT's have one, so the pooled held-out table is an ML Program too.
# Apple's Core ML conversion (cvnets-convert, NeuralNetwork format) of the models with timm's ViT
# attention that cvnets has too: MobileViT (v1; its official code) in any NeuralNetwork-format
# table, DeiT/ViT as well in the table cvnets measured.
CVNETS_TABLES = {"apple-mobilevitv2-a14": ("mobilevit_", "deit_", "vit_")}


def coreml_format(set_name: str) -> str:
    """The Core ML format a table's exports used ("mlprogram" unless documented otherwise)."""
    return COREML_FORMAT.get(set_name, ("mlprogram", ""))[0]


def coreml_form(set_name: str, timm_name: str) -> str:
    """Which graph prices a row: "timm", or "cvnets" (timm's model with Apple's per-head attention)."""
    return graph_form(coreml_format(set_name), timm_name, CVNETS_TABLES.get(set_name, CVNETS_FAMILIES))


@dataclass(frozen=True)
class AppleRow:
    set: str
    model: str  # as printed in the table
    timm_name: str
    resolution: int  # px, from the row or timm's default
    latency_ms: float
    chip: str
    form: str = "timm"  # coreml_form: the graph that prices the row

    @property
    def key(self) -> str:
        """The model: the re-parameterised timm model at this resolution (rows of two tables match on it)."""
        return timm_graph_key(self.timm_name, self.resolution)

    @property
    def graph_key(self) -> str:
        """Graph cache key: `key`, or its Core ML form's variant."""
        return timm_graph_key(self.timm_name, self.resolution, self.form)

    @property
    def label(self) -> str:
        return f"{self.set}:{self.timm_name}@{self.resolution}"


def apple_rows(data: Path, sets: list[str] | None = None) -> dict[str, list[AppleRow]]:
    """Rows with a timm model, per set, in table order: the shared tables by default, any of
    TABLES by name."""
    out: dict[str, list[AppleRow]] = {}
    for name in (sets if sets is not None else list(APPLE_SETS)):
        rel, _, chip = TABLES[name]
        rows = []
        for part in (rel if isinstance(rel, tuple) else (rel,)):
            with open((HELDOUT_DIR if name in HELDOUT_SETS else data) / part) as f:
                for r in csv.DictReader(f):
                    if not r["timm_name"]:
                        continue
                    res = int(r["resolution"]) if r["resolution"].strip() else default_resolution(r["timm_name"])
                    rows.append(AppleRow(name, r["model"], r["timm_name"], res, float(r["latency_ms"]), chip,
                                         coreml_form(name, r["timm_name"])))
        out[name] = rows
    return out


def _pairs(rows: dict[str, list[AppleRow]]):
    """Every pair of rows of the same model and resolution in two different tables."""
    flat = [r for rs in rows.values() for r in rs]
    for i, a in enumerate(flat):
        for b in flat[i + 1:]:
            if a.set != b.set and a.key == b.key:
                yield a, b


def excluded_rows(rows: dict[str, list[AppleRow]]) -> dict[str, str]:
    """label -> why, by the rule in the module docstring (newer chip > 2x slower than older)."""
    out = {}
    for a, b in _pairs(rows):
        if CHIP_ORDER.index(a.chip) == CHIP_ORDER.index(b.chip):
            continue
        old, new = (a, b) if CHIP_ORDER.index(a.chip) < CHIP_ORDER.index(b.chip) else (b, a)
        if new.latency_ms > DISAGREE_RATIO * old.latency_ms:
            out[new.label] = (f"{new.latency_ms:g} ms on {new.chip} vs {old.latency_ms:g} ms on the older "
                              f"{old.chip} ({old.set}): a newer Neural Engine is not {DISAGREE_RATIO:g}x slower")
    return out


def disagreements(rows: dict[str, list[AppleRow]]) -> dict:
    """Cross-table pairs of the same model and resolution: all same-chip pairs with their ratio
    (flagged above 2x) and the cross-chip pairs above 2x."""
    same, cross = [], []
    for a, b in _pairs(rows):
        ratio = max(a.latency_ms, b.latency_ms) / min(a.latency_ms, b.latency_ms)
        item = {"model": a.timm_name, "resolution": a.resolution, "ratio": round(ratio, 3),
                a.set: a.latency_ms, b.set: b.latency_ms}
        if a.chip == b.chip:
            same.append({**item, "chip": a.chip, "over_2x": ratio > DISAGREE_RATIO})
        elif ratio > DISAGREE_RATIO:
            cross.append({**item, "chips": f"{a.chip} / {b.chip}"})
    same.sort(key=lambda x: -x["ratio"])
    cross.sort(key=lambda x: -x["ratio"])
    return {"same_chip": same, "same_chip_over_2x": sum(x["over_2x"] for x in same), "cross_chip_over_2x": cross}


def residual_png(name: str, pred, meas, shares: list[dict[str, float]], flops, path: Path) -> Path:
    """r = log(scale x predicted / measured) against each op category's share of the predicted
    time and against FLOPs, one panel each (positive r: predicted too slow)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from autovit.latmodel.io import atomic_write_bytes
    from autovit.latmodel.metrics import global_scale

    p, m = np.asarray(pred, float), np.asarray(meas, float)
    r = np.log(p * global_scale(p, m) / m)
    cats = [c for c in sorted({c for s in shares for c, v in s.items() if v > 0.01})]
    panels = [(f"{c} share", [s.get(c, 0.0) for s in shares]) for c in cats] + [("GFLOPs (log)", np.asarray(flops) / 1e9)]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    for ax, (label, x) in zip(axes.flat, panels):
        x = np.asarray(x, float)
        ax.scatter(x, r, s=10)
        ax.axhline(0, color="grey", lw=0.6)
        if label.startswith("GFLOPs"):
            ax.set_xscale("log")
        c = np.corrcoef(x, r)[0, 1] if np.std(x) > 0 else float("nan")
        ax.set_title(f"{label}  corr {c:+.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{name}: log(scale x pred / meas), n = {len(r)}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
