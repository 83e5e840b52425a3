import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autovit.nas.builder import build_model, fold_patches, unfold_patches
from autovit.nas.export import export_onnx_bytes
from autovit.nas.params import count_params
from autovit.nas.presets import PRESETS, load_preset
from autovit.nas.space import BUILTIN_SPACES, load_space

SPACES = {n: load_space(n) for n in BUILTIN_SPACES}


@pytest.mark.parametrize("name", BUILTIN_SPACES)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31))
def test_analytic_params_equal_built_model(name, seed):
    arch = SPACES[name].sample(seed)
    model = build_model(arch)
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_extremes_params(name):
    for arch in (SPACES[name].smallest(), SPACES[name].largest()):
        assert count_params(arch) == sum(p.numel() for p in build_model(arch).parameters())


def test_unfold_fold_round_trip():
    x = torch.randn(2, 5, 8, 6)
    tokens, grid = unfold_patches(x, 2)
    assert tokens.shape == (2 * 4, 12, 5)
    assert torch.equal(fold_patches(tokens, 2, grid, 2), x)


def test_forward_at_224_uses_resize_for_odd_maps():
    arch = SPACES["xxs"].sample(1).with_num_classes(10)
    from dataclasses import replace

    arch = replace(arch, resolution=224)
    with torch.no_grad():
        y = build_model(arch).eval()(torch.randn(2, 3, 224, 224))
    assert y.shape == (2, 10)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build(name):
    arch = load_preset(name)
    assert count_params(arch) == sum(p.numel() for p in build_model(arch).parameters())


def test_onnx_export_matches_torch():
    arch = SPACES["xxs"].smallest().with_num_classes(10)
    model = build_model(arch).eval()
    x = torch.randn(1, 3, arch.resolution, arch.resolution)
    data = export_onnx_bytes(model, tuple(x.shape))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (y_onnx,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        y = model(x).numpy()
    assert np.allclose(y, y_onnx, atol=1e-4)
