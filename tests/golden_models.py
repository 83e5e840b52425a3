"""The models of the golden estimate test (tests/test_golden.py) and how each is priced.

One list serves the script that writes tests/data/golden_estimates.json and the test that
compares with it, so the two can never price different things."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import onnx

from tests.conftest import conv_model

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_estimates.json"
# Tiny ONNX graphs (written to a temporary folder), timm models (random weights), the AutoViT
# presets and an architecture file: every kind of source `estimate` reads.
ONNX_MODELS = {
    "conv.onnx": dict(),
    "depthwise.onnx": dict(cin=32, cout=32, group=32, hw=16),
    "sigmoid.onnx": dict(cin=8, cout=64, hw=28, act="Sigmoid"),
    "batch4.onnx": dict(batch=4, cin=24, cout=48, hw=14, act=None),
}
NAMED_MODELS = ("timm:mobilenetv3_small_100", "timm:mobilevit_xxs", "timm:deit_tiny_patch16_224",
                "autovit:xxs", "autovit:xs", "autovit:s", str(DATA / "golden_arch.json"))
FIELDS = ("latency_ms", "flops", "params", "bytes", "breakdown")
# local-cpu reads the CPU it loads on (`detect = true`); the golden figures are those of one
# fixed machine, so that they do not move with the machine the tests run on (a 2-vCPU AVX-512
# VM of this project's CI kind).
PINNED_MACHINE = {"cpu": {"cores": 2, "ghz": 2.6, "simd_bits": 512}, "memory": {"cache_mib": 36.0, "private_mib": 2.0}}


def model_names() -> list[str]:
    """Names as the golden file stores them (ONNX files by file name, the arch file by name)."""
    return list(ONNX_MODELS) + [n if not n.endswith(".json") else Path(n).name for n in NAMED_MODELS]


def sources(folder: Path) -> dict[str, str]:
    """name -> what `estimate` is given; the ONNX files are written into `folder`."""
    out = {}
    for name, kwargs in ONNX_MODELS.items():
        onnx.save(conv_model(**kwargs), folder / name)
        out[name] = str(folder / name)
    for n in NAMED_MODELS:
        out[n if not n.endswith(".json") else Path(n).name] = n
    return out


@contextmanager
def pinned_machine():
    """Profiles with `detect = true` load as if on PINNED_MACHINE while inside."""
    with mock.patch("autovit.latmodel.hardware.detect_local_cpu", side_effect=lambda: copy.deepcopy(PINNED_MACHINE)):
        yield


def priced(estimate_dict: dict) -> dict:
    """The fields the golden test compares."""
    return {k: estimate_dict[k] for k in FIELDS}
