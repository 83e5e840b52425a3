"""The weight-entangled supernet: slices, static equivalence, memory, BatchNorm recalibration."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import TransformerLayer
from autovit.nas.params import count_params
from autovit.nas.space import load_space
from autovit.nas.supernet import DynamicConv2d, DynamicQKV, Supernet, recalibrate_bn


# Block internals: the default (depthwise local conv, 1x1 fusion), MobileViT v1's (the legacy
# option), and conv channels narrower than the transformer width.
INTERNALS = {
    "default": {},
    "v1": dict(local_conv="dense", fusion_kernel=3),
    "narrow": dict(conv_ratio=0.75, local_conv="dense", fusion_kernel=3),
}


def small_space(name: str = "xxs", internals: str = "default"):
    return replace(load_space(name), num_classes=10, resolutions=(32, 48), **INTERNALS[internals])


def randomize(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights and BatchNorm statistics, so a wrong slice changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.2 if t.dim() > 1 else 0.5))


@pytest.mark.parametrize("name", ["xxs", "xs", "s"])
@pytest.mark.parametrize("internals", list(INTERNALS))
def test_supernet_stores_exactly_the_largest_subnet(name, internals):
    sp = small_space(name, internals)
    net = Supernet(sp)
    assert sum(p.numel() for p in net.parameters()) == count_params(sp.largest())


@pytest.mark.parametrize("internals", list(INTERNALS))
def test_static_subnet_matches_supernet_for_sampled_archs(internals):
    # Tolerance: 1e-4 relative to the logits' scale (float32 sums in a different order).
    sp = small_space(internals=internals)
    net = Supernet(sp)
    randomize(net)
    net.eval()
    rng = random.Random(1)
    archs = [sp.largest(), sp.smallest()] + [sp.sample(rng) for _ in range(14)]
    for arch in archs:
        net.set_active_subnet(arch)
        static = net.get_active_subnet().eval()
        assert count_params(arch) == sum(p.numel() for p in static.parameters())
        x = torch.randn(2, 3, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            a, b = net(x), static(x)
        assert torch.allclose(a, b, rtol=0, atol=1e-4 * b.abs().max().item()), arch


def test_active_arch_round_trip_and_static_copy_is_independent():
    sp = small_space()
    net = Supernet(sp)
    arch = net.sample_active_subnet(random.Random(3))
    assert net.active_arch() == arch
    static = net.get_active_subnet()
    with torch.no_grad():
        static.stem[0].weight.add_(1.0)
    assert not torch.equal(net.stem[0].weight[: arch.stem_width], static.stem[0].weight)


def test_arch_outside_space_is_refused():
    sp = small_space()
    net = Supernet(sp)
    bad = replace(sp.largest(), stem_width=40)
    with pytest.raises(AutoVitError, match="stem_width"):
        net.set_active_subnet(bad)


def test_qkv_slices_keep_each_head_whole():
    """Head 0 of q, k and v has the same weights whatever the number of active heads
    (a prefix of the fused rows would hand k's rows to q)."""
    qkv = DynamicQKV(max_dim=32, max_heads=4, head_dim=8)
    w2, _ = qkv.params_for(2, 32)
    w4, _ = qkv.params_for(4, 32)
    for part in range(3):  # q, k, v
        assert torch.equal(w2[part * 16: part * 16 + 16], w4[part * 32: part * 32 + 16])
    full = qkv.weight.view(3, 32, 32)
    assert torch.equal(w2.view(3, 16, 32)[1], full[1, :16])  # k of 2 heads = first 2 heads of k


def test_fusion_conv_takes_the_first_channels_of_each_half():
    conv = DynamicConv2d(max_in=2 * 6, max_out=6, kernel=3, parts=2)
    w = conv.weight_for(out=4, cin=8, kernel=3)
    assert torch.equal(w[:, :4], conv.weight[:4, :4])
    assert torch.equal(w[:, 4:], conv.weight[:4, 6:10])


def test_smaller_kernel_is_the_centre_crop():
    conv = DynamicConv2d(max_in=4, max_out=4, kernel=5)
    assert torch.equal(conv.weight_for(4, 4, 3), conv.weight[:, :, 1:4, 1:4])


def test_layer_choices_reach_the_static_model():
    sp = small_space()
    net = Supernet(sp)
    arch = sp.largest()
    stage = replace(arch.transformer[0], layers=(TransformerLayer(2, 1.5),) * 2)
    arch = replace(arch, transformer=(stage,) + arch.transformer[1:])
    sp.check(arch)
    net.set_active_subnet(arch)
    block = net.get_active_subnet().stages[-7]  # first MobileViT block: 4 stages x (MBConv, MobileViT)
    assert block.transformer[0].attn.heads == 2
    assert block.transformer[0].mlp.fc1.out_features == round(arch.transformer[0].width * 1.5)


def test_bn_recalibration_is_the_exact_average_of_the_batches():
    bn_model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    bn_model[0].momentum = 0.3
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 5, 5, generator=g) * (i + 1) + i for i in range(3)]
    n = recalibrate_bn(bn_model, batches)
    assert n == 3
    bn = bn_model[0]
    expected_mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    expected_var = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-4)
    assert bn.momentum == 0.3 and not bn_model.training


def test_bn_recalibration_without_batches_is_an_error():
    with pytest.raises(AutoVitError, match="no batches"):
        recalibrate_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), [])


def test_supernet_bn_updates_only_the_active_slice():
    sp = small_space()
    net = Supernet(sp).train()
    arch = sp.smallest()
    net.set_active_subnet(arch)
    before = net.stem[1].running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    after = net.stem[1].running_mean
    assert not torch.equal(before[: arch.stem_width], after[: arch.stem_width])
    assert torch.equal(before[arch.stem_width:], after[arch.stem_width:])
