"""The search's proxy and measured latency oracles (latmodel/oracle.py)."""
from __future__ import annotations

import numpy as np
import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.hardware import load_profile
from autovit.latmodel.measure import TimingPolicy
from autovit.latmodel.oracle import AnalyticalOracle, BlockCounts, MeasuredOracle, ProxyOracle
from autovit.nas.blocks import DECOMPOSITION, arch_block_fields
from autovit.nas.builder import build_model
from autovit.nas.latency import input_shape, make_oracle
from autovit.nas.space import load_space

SPACE = load_space("xxs")
REFERENCE = [SPACE.sample(i) for i in range(12)]
# What MeasuredOracle needs of AutoViT: build, key, input shape.
AUTOVIT = (build_model, lambda a: a.key(), input_shape)


def test_flops_proxy_is_proportional_and_fitted_on_the_profile():
    profile = load_profile("v100")
    oracle = ProxyOracle("flops", profile, REFERENCE, **DECOMPOSITION)
    archs = [SPACE.smallest(), SPACE.sample(100), SPACE.largest()]
    flops = BlockCounts(**DECOMPOSITION).flops(archs)
    ms = oracle.latency_ms(archs)
    assert np.allclose(ms, oracle.factor * flops) and ms[0] < ms[2]
    # fitted on log scale: over its reference architectures, the geometric mean of proxy / profile is 1
    ratios = oracle.latency_ms(REFERENCE) / AnalyticalOracle(profile, **DECOMPOSITION).latency_ms(REFERENCE)
    assert np.exp(np.mean(np.log(ratios))) == pytest.approx(1.0, rel=1e-9)


def test_params_proxy_and_flops_of_an_arch_add_its_blocks():
    arch = SPACE.sample(5)
    counts = BlockCounts(**DECOMPOSITION)
    blocks = arch_block_fields(arch)
    assert counts.flops([arch])[0] == pytest.approx(sum(counts.block(f)[0] for f in blocks))
    params = ProxyOracle("params", load_profile("iphone13"), REFERENCE, **DECOMPOSITION)
    assert params.latency_ms([arch])[0] == pytest.approx(params.factor * counts.params([arch])[0])
    with pytest.raises(AutoVitError, match="use flops or params"):
        ProxyOracle("macs", load_profile("v100"), REFERENCE, **DECOMPOSITION)
    assert isinstance(make_oracle("flops", "v100", SPACE), ProxyOracle)


def test_measured_oracle_caches_on_disk_and_refuses_a_foreign_cache(tmp_path, monkeypatch):
    cache = tmp_path / "measured_ms.json"
    timed = []
    monkeypatch.setattr(MeasuredOracle, "measure", lambda self, arch: timed.append(arch) or 1.0 + len(timed))
    progress = []
    oracle = MeasuredOracle(*AUTOVIT, cache, threads=1, on_measure=lambda done, total: progress.append((done, total)))
    a, b = SPACE.smallest(), SPACE.largest()
    assert list(oracle.latency_ms([a, b, a])) == [2.0, 3.0, 2.0]
    assert progress == [(1, 2), (2, 2)] and len(timed) == 2
    again = MeasuredOracle(*AUTOVIT, cache, threads=1)
    assert list(again.latency_ms([b])) == [3.0] and len(timed) == 2  # read back, not timed again
    with pytest.raises(AutoVitError, match="measured with 1 threads, this run uses 2"):
        MeasuredOracle(*AUTOVIT, cache, threads=2)
    for hostile in ("{ half", '{"format": "autovit-measured/1", "threads": 1, "ms": [1]}',
                    '{"format": "autovit-measured/1", "threads": 1, "ms": {"a": "fast"}}', "[]"):
        cache.write_text(hostile)
        with pytest.raises(AutoVitError, match="is not a measurement cache"):
            MeasuredOracle(*AUTOVIT, cache, threads=1)


def test_measured_oracle_times_a_real_network():
    oracle = MeasuredOracle(*AUTOVIT, None, threads=1, policy=TimingPolicy(warmup=1, min_repeats=6, max_repeats=6))
    ms = oracle.latency_ms([SPACE.smallest()])
    assert ms.shape == (1,) and 0 < ms[0] < 1000


def test_make_oracle_measured_is_for_this_machine_only(tmp_path):
    assert isinstance(make_oracle("measured", "local-cpu", tmp_path), MeasuredOracle)
    with pytest.raises(AutoVitError, match="measured times this machine; it cannot price v100"):
        make_oracle("measured", "v100", tmp_path)
    with pytest.raises(AutoVitError, match="use analytical, lut:PATH, measured, flops or params"):
        make_oracle("guess", "v100")
