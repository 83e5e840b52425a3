"""Which MobileViT-block internals bring the presets and the spaces' largest subnets to the
paper's parameter counts (issue 14, item 8). Parameter counting only, no training.

    python benchmarks/internals.py > benchmarks/results/internals.json

Every combination of: the block's conv channels as a fraction of the stage width (`conv_ratio`;
MobileViT v1 uses 2/3 to 5/6), the local conv (dense as v1, depthwise as v3), the fusion conv's
side (3 as v1, 1 as v3), the MBPool head's expansion (6 as the paper, 4 as MobileViT) and the
attention's head_dim (16 as ours, 32). Each is counted with nas/params.py on the three presets
and the three spaces' largest and smallest subnets; `max_rel_error` is the largest relative
distance to the six paper figures (presets 1.8 / 2.5 / 6.3 M, space maxima 1.8 / 2.6 / 7.2 M).
Prints JSON: every row, sorted by that error.
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace

PAPER_MAX_M = {"xxs": 1.8, "xs": 2.6, "s": 7.2}
GRID = {
    "conv_ratio": (1.0, 0.875, 0.75, 2 / 3),
    "local_conv": ("dense", "depthwise"),
    "fusion_kernel": (3, 1),
    "head_expansion": (6, 4),
    "head_dim": (16, 32),
}


def counts(internals: dict, archs: dict) -> dict[str, float]:
    """M parameters of each named architecture with `internals` swapped in."""
    from autovit.nas.params import count_params

    return {k: count_params(replace(a, **internals)) / 1e6 for k, a in archs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    from autovit.nas.presets import PAPER_PARAMS_M, PRESETS, load_preset
    from autovit.nas.space import load_space

    archs, paper = {}, {}
    for name in PRESETS:
        space = load_space(name)
        archs[f"preset_{name}"], paper[f"preset_{name}"] = load_preset(name), PAPER_PARAMS_M[name]
        archs[f"max_{name}"], paper[f"max_{name}"] = space.largest(), PAPER_MAX_M[name]
        archs[f"min_{name}"] = space.smallest()
    rows = []
    for values in itertools.product(*GRID.values()):
        internals = dict(zip(GRID, values))
        m = counts(internals, archs)
        errors = {k: m[k] / p - 1 for k, p in paper.items()}
        rows.append({**internals, "params_m": {k: round(v, 3) for k, v in m.items()},
                     "rel_error": {k: round(v, 3) for k, v in errors.items()},
                     "max_rel_error": round(max(abs(e) for e in errors.values()), 3)})
    rows.sort(key=lambda r: r["max_rel_error"])
    print(json.dumps({"benchmark": "internals", "paper_m": paper, "grid": GRID, "rows": rows}))


if __name__ == "__main__":
    main()
