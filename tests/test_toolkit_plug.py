"""The latency toolkit works for a model family it has never heard of: a block kind registered
from outside is read from LUTs, profiled, calibrated on and priced by oracles over its own
`decompose`; sources are a registry; AutoViT plugs in the same way (and its presets into timm)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pytest
from torch import nn

from autovit.latmodel.blocks import Block, block_from_dict, register_block_kind, registered_kinds
from autovit.latmodel.checks import number
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import load_profile
from autovit.latmodel.lut import Lut, load_lut
from autovit.latmodel.measure import TimingPolicy
from autovit.latmodel.oracle import AnalyticalOracle, BlockCounts, LutOracle
from autovit.latmodel.profiler import profile_blocks
from autovit.latmodel.sources import graph_for, module_graph, register_source

CPU = load_profile("local-cpu")
FAST = TimingPolicy(warmup=1, min_repeats=5, max_repeats=6, ci_pct=50.0)


@dataclass(frozen=True)
class ToyConv:
    """A 3x3 convolution + ReLU on an hw x hw map: a block kind no AutoViT code knows."""

    kind = "toy_conv"
    hw: int
    cin: int
    cout: int

    @property
    def key(self) -> str:
        return f"toy_conv:hw={self.hw},cin={self.cin},cout={self.cout}"

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.cin, self.hw, self.hw)

    def build(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(self.cin, self.cout, 3, padding=1), nn.ReLU()).eval()

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d, where: str = "block") -> "ToyConv":
        return cls(*(int(number(d.get(k), f"{where}: '{k}'", 1, 512, integer=True)) for k in ("hw", "cin", "cout")))


register_block_kind("toy_conv", ToyConv)
TOY = [ToyConv(8, 4, 8), ToyConv(8, 8, 8), ToyConv(4, 8, 16)]


def toy_decompose(net: tuple[int, ...]) -> list[ToyConv]:
    """A 'network' is a tuple of widths: one ToyConv per consecutive pair at 8 px."""
    return [ToyConv(8, a, b) for a, b in zip(net, net[1:])]


def test_a_registered_kind_round_trips_and_an_unknown_one_is_named():
    b = TOY[0]
    assert isinstance(b, Block) and "toy_conv" in registered_kinds()
    assert block_from_dict(b.to_dict()) == b
    with pytest.raises(AutoVitError, match=r"'kind' must be one of .*toy_conv.*import autovit.nas"):
        block_from_dict({"kind": "toy_comv", "hw": 8})
    with pytest.raises(AutoVitError, match="a block description is a JSON object"):
        block_from_dict([1, 2])


def test_a_foreign_kind_is_profiled_into_a_lut_and_read_back(tmp_path):
    lut = Lut("local-cpu", "onnxruntime", {}, {})
    measured, failures = profile_blocks(TOY[:2], lut, tmp_path / "toy.json", "onnxruntime", 1, "isolated", FAST)
    assert measured == 2 and not failures
    again = load_lut(tmp_path / "toy.json", "local-cpu")
    assert again.median_ms("isolated", TOY[0]) == lut.median_ms("isolated", TOY[0]) > 0


def test_oracles_price_any_decomposition():
    nets = [(4, 8, 8), (4, 8)]
    analytical = AnalyticalOracle(CPU, toy_decompose)
    ms = analytical.latency_ms(nets)
    assert ms[0] == pytest.approx(sum(analytical.block_ms(b) for b in toy_decompose(nets[0])))
    assert ms[0] > ms[1] > 0
    lut = Lut("local-cpu", "onnxruntime", {}, {})
    lut.add("isolated", ToyConv(8, 4, 8), {"median_ms": 0.5})
    lut.add("isolated", ToyConv(8, 8, 8), {"median_ms": 0.25})
    oracle = LutOracle(lut, CPU, toy_decompose)
    got = oracle.latency_ms([(4, 8, 8), (4, 8, 16)])
    assert got[0] == pytest.approx(0.75) and got[1] == pytest.approx(analytical.latency_ms([(4, 8, 16)])[0])
    assert oracle.coverage == {"lut": 1, "analytical": 1}
    flops = BlockCounts(toy_decompose).flops(nets)
    assert np.all(flops > 0) and flops[0] > flops[1]


def test_sources_are_a_registry(tmp_path):
    register_source("toy", lambda s: s.startswith("toy:"), lambda s, _shape: module_graph(
        ToyConv(8, 3, int(s[4:])).build(), (1, 3, 8, 8), source=s), "toy:WIDTH")
    assert graph_for("toy:16").params == 3 * 16 * 9 + 16
    with pytest.raises(AutoVitError, match=r"not found: give an \.onnx file, .*toy:WIDTH"):
        graph_for(str(tmp_path / "missing.pt"))


def test_autovit_registers_its_kinds_sources_and_timm_models():
    import timm

    from autovit.nas.builder import build_model
    from autovit.nas.presets import load_preset

    assert {"conv", "mbconv", "mvit_convs", "transformer", "head"} <= set(registered_kinds())
    model = timm.create_model("autovit_xxs", num_classes=10)
    ref = build_model(load_preset("xxs").with_num_classes(10))
    assert model.arch == ref.arch and model.pretrained_cfg["input_size"] == (3, 256, 256)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    with pytest.raises(AutoVitError, match="no pretrained AutoViT weights"):
        timm.create_model("autovit_s", pretrained=True)
    assert graph_for("autovit:xxs").params == graph_for("timm:autovit_xxs").params


def test_the_ofa_example_decomposes_a_subnet_into_exactly_its_layers():
    """examples/ofa_mbv3_oracle.py: the blocks of a subnet hold all its parameters, in LUT-able form."""
    from examples.ofa_mbv3_oracle import OFABlock, decompose, network, sample_subnets

    subnet = sample_subnets(1, 64, [3, 5, 7], [3, 4, 6], [2, 3, 4], seed=1)[0]
    blocks = decompose(subnet)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert sum(count(b.build()) for b in blocks) == count(network(subnet))
    assert all(block_from_dict(b.to_dict()) == b for b in blocks) and isinstance(blocks[0], OFABlock)
    with pytest.raises(AutoVitError, match="kind must be one of ofa_stem"):
        block_from_dict({**blocks[1].to_dict(), "act": "gelu"})
