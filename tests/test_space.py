import json
import random
from collections import Counter
from pathlib import Path
from dataclasses import replace

import pytest

from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import ArchConfig, TransformerLayer, arch_from_dict, load_arch
from autovit.nas.space import (BUILTIN_SPACES, load_space, monotonic_problems, space_from_dict, space_from_saved,
                               space_to_saved)

TINY = {
    "name": "tiny", "resolutions": [32], "head_dim": 8, "num_transformer_stages": [1, 2],
    "stem": {"widths": [8]},
    "mbconv": [{"widths": [8], "depths": [1], "kernels": [3], "expansions": [1], "stride": 1}],
    "transformer": [
        {"widths": [16, 24], "depths": [1], "heads": [1, 2], "mlp_ratios": [2.0], "stride": 1},
        {"widths": [16, 24], "depths": [1, 2], "heads": [1, 2], "mlp_ratios": [2.0], "stride": 2},
    ],
}


@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_width_rule_brings_space_to_paper_scale(name):
    sp = load_space(name)
    assert 1e9 <= sp.count() <= 1e11  # docs/METHOD.md §2: "about 1e10 subnets" after the rule
    assert sp.count(monotonic=False) >= 1e6 * sp.count()  # the rule is what cuts ~1e16+ to ~1e10


def test_tiny_space_count_matches_enumeration():
    sp = space_from_dict(TINY)
    # 1 stage: width 2 x heads 2 = 4. 2 stages, rule: w2 >= w1, heads never decrease, mlp never shrinks.
    seen = {json.dumps(sp.sample(random.Random(s)).to_dict(), sort_keys=True) for s in range(3000)}
    assert len(seen) == sp.count()
    for a in (arch_from_dict(json.loads(x)) for x in seen):
        assert sp.problems(a) == []


def test_sampling_is_uniform():
    sp = space_from_dict(TINY)
    rng = random.Random(7)
    counts = Counter(json.dumps(sp.sample(rng).to_dict(), sort_keys=True) for _ in range(20000))
    expected = 20000 / sp.count()
    assert len(counts) == sp.count()
    assert max(abs(c - expected) / expected for c in counts.values()) < 0.2


@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_samples_are_valid_and_seeded(name):
    sp = load_space(name)
    a, b = sp.sample(3), sp.sample(3)
    assert a == b and sp.sample(4) != a
    for seed in range(50):
        arch = sp.sample(seed)
        assert sp.problems(arch) == []
        assert monotonic_problems(arch) == []


def test_json_round_trip(tmp_path):
    arch = load_space("xs").sample(11)
    p = tmp_path / "a.json"
    arch.to_json(p)
    assert load_arch(p) == arch
    assert ArchConfig.from_dict(json.loads(arch.to_json())) == arch


def test_validate_names_field_and_allowed_values():
    sp = load_space("xxs")
    arch = sp.sample(0)
    st = arch.transformer[0]
    bad = replace(arch, transformer=(replace(st, layers=(TransformerLayer(7, 2.0),) + st.layers[1:]),) + arch.transformer[1:])
    with pytest.raises(AutoVitError, match=r"transformer\[0\]\.layers\[0\]\.heads = 7 not in \{2, 3, 4\}"):
        sp.check(bad)
    with pytest.raises(AutoVitError, match=r"resolution = 300 not in \{224, 256\}"):
        sp.check(replace(arch, resolution=300))


def test_monotonic_rule_violation_is_named():
    arch = load_space("xxs").largest()
    t = arch.transformer
    shrunk = replace(arch, transformer=(t[0], replace(t[1], width=40)) + t[2:])
    assert any("transformer[1].width = 40 < 64" in p for p in monotonic_problems(shrunk))


def test_space_file_errors_name_the_field(tmp_path):
    broken = dict(TINY, transformer=[dict(TINY["transformer"][0], heads="many")])
    with pytest.raises(AutoVitError, match="'heads' must be a non-empty list of integers"):
        space_from_dict(broken)
    p = tmp_path / "s.toml"
    p.write_text("name = 'x'\nresolutions = [")
    with pytest.raises(AutoVitError, match="not valid TOML"):
        load_space(p)
    with pytest.raises(AutoVitError, match="unknown space"):
        load_space("nope")


def test_arch_json_errors(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("{not json")
    with pytest.raises(AutoVitError, match="not valid JSON"):
        load_arch(p)
    d = load_space("xxs").sample(0).to_dict()
    d["transformer"][0]["width"] = "wide"
    p.write_text(json.dumps(d))
    with pytest.raises(AutoVitError, match=r"transformer\[0\]\.width' must be int"):
        load_arch(p)
    with pytest.raises(AutoVitError, match="not found"):
        load_arch(tmp_path / "missing.json")


def test_format_1_files_mean_mobilevit_v1_internals(tmp_path):
    """Files written before the block-internal fields keep their meaning: dense local conv,
    n x n fusion, conv channels = width (their supernets' weights have those shapes)."""
    d = json.loads(load_space("xxs").sample(0).to_json())
    for k in ("local_conv", "fusion_kernel", "conv_ratio"):
        d.pop(k)
    d["format"] = "autovit-arch/1"
    old = ArchConfig.from_dict(d)
    assert (old.local_conv, old.fusion_kernel, old.conv_ratio) == ("dense", 3, 1.0)
    d.pop("format")
    current = ArchConfig.from_dict(d)
    assert (current.local_conv, current.fusion_kernel) == ("depthwise", 1)
    saved = space_to_saved(load_space("xxs"))
    for k in ("local_conv", "fusion_kernel", "conv_ratio"):
        saved.pop(k)
    assert space_from_saved(saved).local_conv == "dense"


@pytest.mark.parametrize("field,value,match", [
    ("local_conv", "grouped", "'local_conv' must be one of depthwise, dense"),
    ("fusion_kernel", 2, "'fusion_kernel' must be odd"),
    ("conv_ratio", 1.5, "'conv_ratio' must be"),
])
def test_bad_block_internals_are_named(field, value, match):
    d = json.loads(load_space("xxs").sample(0).to_json())
    with pytest.raises(AutoVitError, match=match):
        ArchConfig.from_dict({**d, field: value})
    with pytest.raises(AutoVitError, match=match):
        space_from_dict({**TINY, field: value})


def test_space_fixes_the_block_internals():
    sp = load_space("xxs")
    with pytest.raises(AutoVitError, match="local_conv = dense but space 'xxs' fixes it to depthwise"):
        sp.check(replace(sp.sample(0), local_conv="dense"))


def test_a_space_at_other_resolutions_has_its_own_identity(tmp_path):
    from autovit.nas.space import same_space, with_resolutions

    sp = with_resolutions(load_space("xxs"), [32])
    assert (sp.name, sp.ident, sp.resolutions) == ("xxs@32px", "xxs@32px", (32,))
    assert load_space(sp.ident) == sp and sp.sample(0).space == "xxs@32px"
    assert with_resolutions(load_space("xxs"), [256, 224]) == load_space("xxs")
    assert same_space("xxs", sp) and same_space("XXS@32px", sp) and not same_space("xs", sp)
    # a space file is recorded by its absolute path, so a file written elsewhere finds it
    f = tmp_path / "mine.toml"
    f.write_text((Path(__file__).parents[1] / "nas" / "spaces" / "xxs.toml").read_text().replace('"xxs"', '"mine"'))
    mine = with_resolutions(load_space(f), [48, 64])
    assert mine.ident == f"{f.resolve()}@48,64px" and load_space(mine.ident).resolutions == (48, 64)
    # checkpoints saved before derived spaces were named get their identity on load
    saved = space_to_saved(sp)
    saved.update(name="xxs", source="builtin:xxs")
    assert space_from_saved(saved).ident == "xxs@32px"
