"""benchmarks/networks_csv.py and cache_levels.py: what they write, and one-line refusals of bad
input that leave an existing table as it was."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120)


def _validate_out(path: Path) -> Path:
    arch = {"space": "xxs", "resolution": 224}
    rows = [{"model": f"xxs#{i}", "group": "random", "measured_ms": 5.0 + i, "arch": arch} for i in range(4)]
    rows += [{"model": "timm:resnet18", "group": "zoo", "measured_ms": 13.0},
             {"model": "timm:ghostnet_100", "group": "zoo", "measured_ms": None}]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_networks_csv_takes_every_kth_row_of_a_set_and_appends(tmp_path):
    v = _validate_out(tmp_path / "v.json")
    table = tmp_path / "t" / "nets.csv"
    assert run("networks_csv.py", "--every", "2", "--group", "random", "--out", str(table), str(v)).returncode == 0
    rows = list(csv.DictReader(table.open()))
    assert [r["model"] for r in rows] == ["xxs#0", "xxs#2"] and rows[1]["path"] == "archs/xxs_2.json"
    assert json.loads((table.parent / "archs" / "xxs_2.json").read_text())["space"] == "xxs"
    assert run("networks_csv.py", "--every", "1", "--group", "zoo", "--append", "--out", str(table), str(v)).returncode == 0
    rows = list(csv.DictReader(table.open()))  # the unmeasured ghostnet row is left out
    assert [(r["model"], r["timm_name"]) for r in rows][-1] == ("timm:resnet18", "resnet18") and len(rows) == 3


@pytest.mark.parametrize("args, existing, needle", [
    (["--every", "0"], None, "--every must be between 1 and 10000"),
    (["--append"], "model,latency_ms,timm_name,resolution\nx,1,resnet18,160\n", "has columns this script does not write (resolution)"),
    (["--append"], "model,latency_ms\nx,1,extra\n", "has columns this script does not write"),
    (["--append"], b"\xff\xfe", "cannot read it to append"),
])
def test_networks_csv_refuses_bad_input_in_one_line_and_keeps_the_table(tmp_path, args, existing, needle):
    v = _validate_out(tmp_path / "v.json")
    table = tmp_path / "nets.csv"
    if existing is not None:
        table.write_bytes(existing if isinstance(existing, bytes) else existing.encode())
    r = run("networks_csv.py", *args, "--out", str(table), str(v))
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    if existing is not None:
        assert table.read_bytes() == (existing if isinstance(existing, bytes) else existing.encode())


@pytest.mark.parametrize("content", ["not json", json.dumps({"rows": [{"measured_ms": 1}]}), json.dumps([1])])
def test_networks_csv_refuses_a_file_validate_did_not_write(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = run("networks_csv.py", "--out", str(tmp_path / "nets.csv"), str(bad))
    assert r.returncode != 0 and "not a `validate --out` file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "nets.csv").exists()


@pytest.mark.parametrize("args, needle", [
    (["--sizes-mib", "abc"], "use comma-separated numbers of MiB"),
    (["--sizes-mib", "0"], "between 0.001 and 4096 MiB"),
    (["--sizes-mib", "1e9"], "between 0.001 and 4096 MiB"),
    (["--repeats", "0"], "--repeats must be between 1 and 10000"),
])
def test_cache_levels_refuses_bad_sizes_in_one_line(args, needle):
    r = run("cache_levels.py", *args)
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr


def test_cache_levels_prints_a_rate_per_size():
    r = run("cache_levels.py", "--sizes-mib", "0.01,0.02", "--repeats", "2")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and [c["mib"] for c in out["copies"]] == [0.01, 0.02]
    assert all(c["copy_gbps"] > 0 for c in out["copies"]) and isinstance(out["caches"], list)


def test_calib_variants_change_one_thing_each():
    """benchmarks/calib_variants.py: which whole networks, at which weights, each variant fits."""
    from types import SimpleNamespace

    sys.path.insert(0, str(BENCH.parent))
    from benchmarks.calib_variants import networks_for

    lut = SimpleNamespace(networks={"autovit:xxs": {"median_ms": 3.0}, "timm:resnet18": {"median_ms": 9.0}},
                          reference={"model": "autovit:xxs", "ref_ms": 3.1})
    weights = lambda v: [(n.source, n.weight) for n in networks_for(v, lut, 50)]  # noqa: E731
    assert weights("default") == [("autovit:xxs", 27.0), ("timm:resnet18", 27.0)]
    assert weights("equal-total") == [("autovit:xxs", 25.0), ("timm:resnet18", 25.0)]
    assert weights("networks-x4") == [("autovit:xxs", 108.0), ("timm:resnet18", 108.0)]
    assert weights("blocks-only") == [] and weights("reference-only") == [("autovit:xxs", 27.0)]
    assert run("calib_variants.py", "missing.json", "--out-dir", "x", "--variants", "nope").returncode != 0
    r = run("calib_variants.py", str(BENCH / "missing_lut.json"), "--out-dir", "x", "--variants", "default")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script, args", [
    ("block_sums.py", ["--hw", "nope", "--validation", "missing.json"]),
    ("block_sums.py", ["--hw", "local-cpu", "--validation", "missing.json"]),
    ("block_sums.py", ["--hw", "local-cpu", "--validation", "BROKEN"]),
    ("block_sums.py", ["--hw", "local-cpu", "--validation", "NOROWS"]),
    ("mlas_conv_check.py", ["--data", "no-such-folder"]),
    ("nchwc_reorder_cost.py", ["--hw", "nope"]),
    ("ort_core_handoff.py", ["--reps", "1"]),
    ("cpu_per_op.py", ["--data", "no-such-folder", "--node-us", "-1"]),
    ("cpu_per_op.py", ["--data", "no-such-folder", "--node-us", "nan"]),
    ("ort_gemm_bias.py", ["--reps", "1"]),
    ("cpu_rescore.py", ["--summary", "missing.json"]),
    ("cpu_rescore.py", ["--summary", "BROKEN"]),
    ("cpu_rescore.py", ["--summary", "NOROWS"]),
])
def test_issue12_probes_refuse_bad_input_in_one_line(tmp_path, script, args):
    """The offline checks of docs/BENCHMARKS.md §3.16-§3.17: a missing or broken input, an unknown
    profile: one line, no traceback (and no timing started)."""
    (tmp_path / "broken.json").write_text('{"rows": [')
    (tmp_path / "norows.json").write_text('{"rows": 5}')
    args = [str(tmp_path / "broken.json") if a == "BROKEN" else str(tmp_path / "norows.json") if a == "NOROWS"
            else str(tmp_path / a) if a.endswith((".json", "folder")) else a for a in args]
    r = run(script, *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
