"""Times measured elsewhere (issue 13): measurement tables, times CSVs and block manifests, the
hostile ones refused in one line, the good ones scored, imported and calibrated on. Tiny ONNX
graphs stand in for networks (the `path` column); no timm export runs here."""
import json

import numpy as np
import onnx
import pytest

from autovit.cli import lat
from autovit.latmodel.block_export import export_blocks
from autovit.latmodel.errors import AutoVitError
from autovit.latmodel.lut import load_lut
from autovit.latmodel.lut_import import import_lut
from autovit.latmodel.measurements import read_measurements
from autovit.nas.blocks import BlockSpec
from conftest import conv_model
from test_cli import assert_one_line_error, run_cli

# Tiny blocks, one of every kind the presets use.
TINY_BLOCKS = [
    BlockSpec("conv", 16, 3, 8, 3, 2),
    BlockSpec("mbconv", 8, 8, 8, 3, 1, 2.0),
    BlockSpec("mvit_convs", 8, 16, 16, 3, head_dim=8, patch=2, local_conv="depthwise", fusion_kernel=1),  # the spaces'
    BlockSpec("transformer", 4, 16, 16, heads=2, mlp_ratio=2.0, head_dim=8, patch=2),
    BlockSpec("head", 4, 16, 32, num_classes=10),
]
HEADER = "model,latency_ms,path,device,notes\n"


def _nets(folder, n: int) -> list[str]:
    """n tiny conv networks of growing size, written next to the table."""
    names = []
    for i in range(n):
        name = f"net{i}.onnx"
        # Large enough that compute, not the per-kernel launch, sets a GPU's time.
        onnx.save(conv_model(cin=16 + 16 * (i % 4), cout=32 * (i + 1), hw=32 + 16 * (i % 3)), folder / name)
        names.append(name)
    return names


def _table(folder, rows: list[str], name="table.csv", header=HEADER):
    p = folder / name
    p.write_text(header + "".join(r + "\n" for r in rows))
    return p


def _priced_table(folder, n: int = 12, factor: float = 1.3):
    """A table of n tiny networks 'measured' at factor x their v100 prediction (synthetic)."""
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.graph import graph_from_onnx_file
    from autovit.latmodel.hardware import load_profile

    prof = load_profile("v100")
    rows = []
    for i, name in enumerate(_nets(folder, n)):
        ms = LatencyModel(graph_from_onnx_file(folder / name)).estimate(prof, 1).latency_ms * factor * (1 + 0.02 * (i % 3))
        rows.append(f"net {i},{ms:.6g},{name},phone,synthetic")
    return _table(folder, rows)


# ---- measurement tables --------------------------------------------------------------------
@pytest.mark.parametrize("body, needle", [
    ("", "empty"),
    ("model,latency_ms\n", "no rows"),
    ("model,latency\na,1\n", "no column 'latency_ms'"),
    ("name,latency_ms\na,1\n", "no column 'model'"),
    ("model,latency_ms,model\na,1,b\n", "appears twice"),
    ("model,latency_ms\na,nan\nb,1\nc,2\n", "finite number"),
    ("model,latency_ms\na,inf\n", "finite number"),
    ("model,latency_ms\na,-1\n", "> 0"),
    ("model,latency_ms\na,0\n", "> 0"),
    ("model,latency_ms\na,fast\n", "not a number"),
    ("model,latency_ms\na,1e300\n", "<= 1e+07"),
    ("model,latency_ms\na,1\na,2\n", "lines 2 and 3"),
    ("model,latency_ms\n,1\n", "model cell is empty"),
    ("model,latency_ms,path\na,1,../outside.onnx\n", "outside the table's folder"),
    ("model,latency_ms,path\na,1,/etc/passwd.onnx\n", "absolute"),
    ("model,latency_ms,path\na,1,net.txt\n", "not a .onnx or .json file"),
    ("model,latency_ms,timm_name,resolution\na,1,resnet18,-3\n", "resolution"),
    ("model,latency_ms,timm_name,resolution\na,1,resnet18,22.5\n", "resolution"),
    ("model,latency_ms,path,coreml_format\na,1,x.onnx,mlprogam\n", "did you mean 'mlprogram'"),
    ("model,latency_ms,path,graph\na,1,x.onnx,vit\n", "not one of timm, cvnets"),
])
def test_hostile_measurement_tables_are_one_line(tmp_path, capsys, body, needle):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "t.csv"
    p.write_text(body)
    with pytest.raises(AutoVitError, match=None) as e:
        read_measurements(p)
    assert needle in str(e.value)
    code, _, err = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(p)], capsys)
    assert_one_line_error(code, err, needle)


def test_non_utf8_and_missing_tables(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_bytes(b"model,latency_ms\n\xff\xfe,1\n")
    code, _, err = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(p)], capsys)
    assert_one_line_error(code, err, "not UTF-8")
    code, _, err = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(tmp_path / "none.csv")], capsys)
    assert_one_line_error(code, err, "measurement table not found")


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    onnx.save(conv_model(), outside / "net.onnx")
    folder = tmp_path / "table"
    folder.mkdir()
    (folder / "net.onnx").symlink_to(outside / "net.onnx")
    with pytest.raises(AutoVitError, match="outside the table's folder"):
        read_measurements(_table(folder, ["a,1,net.onnx,,"]))


def test_validate_measurements_scores_and_lists_what_it_cannot_build(tmp_path, capsys):
    table = _priced_table(tmp_path, 6)
    with open(table, "a") as f:
        f.write("ghost,1.0,missing.onnx,,\nno graph,2.0,,,\n")
    code, out, _ = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(table), "--json",
                                 "--plot", str(tmp_path / "s.png"), "--exclude", "net 5"], capsys)
    assert code == 0
    r = json.loads(out)
    assert r["n"] == 5 and r["hw"] == "v100"
    assert {f["model"] for f in r["failed"]} == {"ghost", "no graph"}
    assert "no such file" in next(f["reason"] for f in r["failed"] if f["model"] == "ghost")
    assert [x["model"] for x in r["excluded"]] == ["net 5"]
    # Measured = 1.3-1.35 x the v100 prediction: ranks agree, one scale fixes the error, unscaled it is ~25 %.
    assert r["kendall_tau"] > 0.7 and r["spearman"] > 0.8
    assert abs(r["scale"] - 1.32) < 0.03 and r["median_ape"] < 3 and r["within_10"] == 100
    assert 20 < r["unscaled"]["median_ape"] < 30 and r["unscaled"]["within_10"] == 0
    assert set(r["baselines"]) == {"flops_proportional", "params_proportional", "lstsq_flops_activations"}
    assert set(r["baselines_cross_validated"]) == {"flops_proportional", "params_proportional"}
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unknown_timm_model_is_listed_not_fatal(tmp_path, capsys):
    table = _priced_table(tmp_path, 4)
    text = table.read_text().replace("model,latency_ms,path,device,notes", "model,latency_ms,path,device,notes,timm_name")
    table.write_text(text + "mystery,1.0,,phone,,no_such_net_xyz\n")
    code, out, err = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(table), "--json",
                                   "--cache", str(tmp_path / "cache")], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 4 and [f["model"] for f in r["failed"]] == ["mystery"]
    assert "unknown timm model 'no_such_net_xyz'" in r["failed"][0]["reason"]


def test_validate_measurements_needs_three_rows_and_known_exclusions(tmp_path, capsys):
    table = _priced_table(tmp_path, 3)
    code, _, err = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(table), "--exclude", "net 0"], capsys)
    assert_one_line_error(code, err, "at least 3")
    code, _, err = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(table), "--exclude", "net 9"], capsys)
    assert_one_line_error(code, err, "--exclude net 9")


def test_loo_baseline_uses_no_row_to_price_itself():
    from autovit.latmodel.measurements import loo_proportional

    x, y = np.array([1.0, 2.0, 4.0]), np.array([2.0, 4.0, 80.0])
    p = loo_proportional(x, y)
    assert p[0] == pytest.approx(np.exp(np.mean(np.log([2.0, 20.0]))) * 1.0)
    assert p[2] == pytest.approx(2.0 * 4.0)  # fitted on the two rows at k = 2, not on itself


# ---- calibrate --networks ----------------------------------------------------------------
def test_calibrate_networks_writes_a_profile_that_fits_better(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    table = _priced_table(tmp_path, 14, factor=2.0)
    out = tmp_path / "v100@calibrated.toml"
    code, stdout, err = run_cli(lat, ["calibrate", "--hw", "v100", "--networks", str(table), "--out", str(out),
                                      "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["networks"] == 14 and r["n_points"] == 14 and r["failed"] == []
    assert "networks = " in out.read_text()
    code, stdout, _ = run_cli(lat, ["validate", "--hw", str(out), "--measurements", str(table), "--json"], capsys)
    after = json.loads(stdout)
    code, stdout, _ = run_cli(lat, ["validate", "--hw", "v100", "--measurements", str(table), "--json"], capsys)
    before = json.loads(stdout)
    assert after["unscaled"]["median_ape"] < before["unscaled"]["median_ape"]


def test_calibrate_on_networks_and_a_lut_together(onnx_blocks, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOVIT_HOME", str(tmp_path / "home"))
    m = json.loads((onnx_blocks / "manifest.json").read_text())
    lut = import_lut(onnx_blocks / "manifest.json", _times(tmp_path, _all_times(m)), "v100")
    lut.save(tmp_path / "lut.json")
    table = _priced_table(tmp_path, 12)
    code, stdout, err = run_cli(lat, ["calibrate", "--hw", "v100", "--networks", str(table), "--lut",
                                      str(tmp_path / "lut.json"), "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["n_points"] == 12 + len(TINY_BLOCKS) and "network" in r["mape_by_kind"] and "conv" in r["mape_by_kind"]
    written = tmp_path / "home" / "profiles" / "v100@calibrated.toml"
    assert written.exists()
    # A network the LUT names that cannot be priced: one line, and the profile already written stays.
    before = written.read_text()
    lut.networks = {"timm:no_such_model_x": {"median_ms": 3.0}}
    lut.save(tmp_path / "lut.json")
    code, _, err = run_cli(lat, ["calibrate", "--hw", "v100", "--networks", str(table), "--lut",
                                 str(tmp_path / "lut.json")], capsys)
    assert_one_line_error(code, err, "no_such_model_x")
    assert written.read_text() == before


def test_calibrate_networks_refuses_too_few_rows_and_bad_tables(tmp_path, capsys):
    table = _priced_table(tmp_path, 3)
    code, _, err = run_cli(lat, ["calibrate", "--hw", "v100", "--networks", str(table), "--out",
                                 str(tmp_path / "x.toml")], capsys)
    assert_one_line_error(code, err, "at least as many")
    assert not (tmp_path / "x.toml").exists()
    bad = _table(tmp_path, ["a,0,net0.onnx,,"], "bad.csv")
    code, _, err = run_cli(lat, ["calibrate", "--hw", "v100", "--networks", str(bad)], capsys)
    assert_one_line_error(code, err, "> 0")
    code, _, err = run_cli(lat, ["calibrate", "--hw", "v100"], capsys)
    assert_one_line_error(code, err, "--lut LUT, --networks")


# ---- block export, manifest, lut import ------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_blocks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocks")
    export_blocks(TINY_BLOCKS, "onnx", folder, "v100")
    return folder


def _times(folder, rows: list[str], header="file,latency_ms,std_ms\n"):
    p = folder / "times.csv"
    p.write_text(header + "".join(r + "\n" for r in rows))
    return p


def _all_times(manifest: dict) -> list[str]:
    return [f"{b['file']},{0.05 * (i + 1):g},0.001" for i, b in enumerate(manifest["blocks"])]


def test_onnx_blocks_are_their_blocks(onnx_blocks):
    m = json.loads((onnx_blocks / "manifest.json").read_text())
    assert m["format"] == "onnx" and m["hw"] == "v100" and len(m["blocks"]) == len(TINY_BLOCKS)
    for e, b in zip(m["blocks"], TINY_BLOCKS):
        model = onnx.load(onnx_blocks / e["file"])
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert e["key"] == b.key and dims == e["input_shape"] == list(b.input_shape())
        assert BlockSpec.from_dict(e["block"]) == b


def test_lut_import_round_trip(onnx_blocks, tmp_path, capsys):
    m = json.loads((onnx_blocks / "manifest.json").read_text())
    b = m["blocks"]
    # The first block named by its key (quoted: keys hold commas; no std), the others by file.
    rows = [f',"{b[0]["key"]}",0.05,'] + [f"{e['file']},,{0.05 * (i + 1):g},0.001" for i, e in enumerate(b) if i]
    times = _times(tmp_path, rows, "file,key,latency_ms,std_ms\n")
    out = tmp_path / "lut.json"
    code, stdout, err = run_cli(lat, ["lut", "import", str(onnx_blocks / "manifest.json"), str(times), "--hw", "v100",
                                      "--out", str(out), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["entries"] == len(TINY_BLOCKS)
    lut = load_lut(out, "v100")
    assert lut.backend == "onnxruntime"
    assert lut.median_ms("isolated", TINY_BLOCKS[1]) == pytest.approx(0.1)
    assert "std_ms" not in lut.entries[f"isolated|{TINY_BLOCKS[0].key}"]
    code, _, err = run_cli(lat, ["lut", "import", str(onnx_blocks / "manifest.json"), str(times), "--hw", "v100",
                                 "--out", str(out)], capsys)
    assert_one_line_error(code, err, "exists")


@pytest.mark.parametrize("rows, needle", [
    (lambda r: r[:-1], "1 blocks of the manifest have no time: 004-head.onnx"),
    (lambda r: r[1:-1], "2 blocks of the manifest have no time: 000-conv.onnx, 004-head.onnx"),
    (lambda r: r + [r[0]], "is on lines"),
    (lambda r: r + ["999-conv.onnx,1,"], "not in the manifest"),
    (lambda r: [r[0].replace("000-conv", "000-cnv")] + r[1:], "did you mean '000-conv.onnx'"),
    (lambda r: [r[0].replace(",0.05,", ",nan,")] + r[1:], "finite number"),
    (lambda r: [r[0].replace(",0.05,", ",-0.05,")] + r[1:], "> 0"),
    (lambda r: [r[0].replace(",0.05,", ",0,")] + r[1:], "> 0"),
    (lambda r: [r[0].replace(",0.001", ",-1")] + r[1:], "std_ms"),
    (lambda r: [], "no rows"),
])
def test_hostile_times_csv(onnx_blocks, tmp_path, capsys, rows, needle):
    m = json.loads((onnx_blocks / "manifest.json").read_text())
    times = _times(tmp_path, rows(_all_times(m)))
    code, _, err = run_cli(lat, ["lut", "import", str(onnx_blocks / "manifest.json"), str(times), "--hw", "v100",
                                 "--out", str(tmp_path / "lut.json")], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "lut.json").exists()


def test_times_csv_without_columns_or_content(onnx_blocks, tmp_path):
    for body, needle in (("", "empty"), ("block,latency_ms\nx,1\n", "no column 'file' or 'key'"),
                         ("file,ms\nx,1\n", "no column 'latency_ms'")):
        p = tmp_path / "t.csv"
        p.write_text(body)
        with pytest.raises(AutoVitError) as e:
            import_lut(onnx_blocks / "manifest.json", p, "v100")
        assert needle in str(e.value)


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(schema="x"), "not a block manifest"),
    (lambda d: d.update(format="tflite"), "'format' must be one of"),
    (lambda d: d.update(blocks=[]), "1 to"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d["blocks"][0].update(file="../../etc/x.onnx"), "plain file name"),
    (lambda d: d["blocks"][0].update(file=".hidden"), "plain file name"),
    (lambda d: d["blocks"][0].update(key="conv:hw=1"), "do not match its block"),
    (lambda d: d["blocks"][0].update(input_shape=[1, 3, 8, 8]), "input_shape"),
    (lambda d: d["blocks"][0]["block"].update(cin=float("nan")), "not valid JSON"),
    (lambda d: d["blocks"][0]["block"].update(cin=-3), "field 'cin'"),
    (lambda d: d["blocks"].append(dict(d["blocks"][0], file="x.onnx")), "key"),
    (lambda d: d["blocks"][1].update(file=d["blocks"][0]["file"]), "file"),
    (lambda d: d["blocks"][0].pop("block"), "missing 'block'"),
])
def test_hostile_manifests(onnx_blocks, tmp_path, mutate, needle):
    d = json.loads((onnx_blocks / "manifest.json").read_text())
    times = _times(tmp_path, _all_times(d))
    mutate(d)
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(d))
    with pytest.raises(AutoVitError) as e:
        import_lut(p, times, "v100")
    assert needle in str(e.value)


def test_profile_export_refuses_a_used_folder_and_ablation(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    code, _, err = run_cli(lat, ["profile", "--hw", "iphone13", "--preset", "calib50", "--export",
                                 str(tmp_path / "used")], capsys)
    assert_one_line_error(code, err, "not an empty folder")
    assert (tmp_path / "used" / "x").read_text() == "keep me"
    code, _, err = run_cli(lat, ["profile", "--hw", "iphone13", "--preset", "calib50", "--mode", "ablation",
                                 "--export", str(tmp_path / "new")], capsys)
    assert_one_line_error(code, err, "isolated")


def test_every_preset_block_kind_is_covered_here():
    from autovit.nas.blocks import calib50, paper46

    assert {b.kind for b in paper46() + calib50()} <= {b.kind for b in TINY_BLOCKS}


def test_coreml_blocks_of_every_kind_convert_and_reread(tmp_path):
    """Core ML packages of one tiny block per kind (every kind of paper46 and calib50) are
    converted, saved and re-read with the block's input shape."""
    pytest.importorskip("coremltools")
    import coremltools as ct

    m = export_blocks(TINY_BLOCKS, "coreml", tmp_path, "iphone13")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([e["file"] for e in m["blocks"]] + ["manifest.json"])
    for e in m["blocks"]:
        spec = ct.utils.load_spec(str(tmp_path / e["file"]))
        assert [i.name for i in spec.description.input] == ["input"]
        assert [o.name for o in spec.description.output] == ["output"]
        assert list(spec.description.input[0].type.multiArrayType.shape) == e["input_shape"]
