"""The paper's searched models (Table 5) as named, standalone configurations.

Table 5 gives widths, heads and MLP ratios per transformer stage only. The rest is ours and
stated here: every transformer stage has depth 2 (the smallest depth of the spaces), all its
layers share the stage's heads and ratio, the stem/MBConv part is the smallest of the matching
space, and the resolution is 256 (the paper's). XXS lists five widths, so it has five
transformer stages, which no space allows; XS and S use widths outside their spaces. The
presets are therefore not members of any space; `docs/ARCHITECTURES.md` prints their parameter
counts next to the paper's.
"""
from __future__ import annotations

from importlib import resources

from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import ArchConfig, arch_from_dict

PRESETS = ("xxs", "xs", "s")
PAPER_PARAMS_M = {"xxs": 1.8, "xs": 2.5, "s": 6.3}


def load_preset(name: str) -> ArchConfig:
    key = name.lower().removeprefix("autovit_").removeprefix("autovit:")
    if key not in PRESETS:
        raise AutoVitError(f"unknown AutoViT preset '{name}': use one of {', '.join('autovit:' + p for p in PRESETS)}")
    import json

    text = (resources.files("autovit.nas") / "presets" / f"autovit_{key}.json").read_text()
    return arch_from_dict(json.loads(text))
