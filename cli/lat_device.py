"""`autovit-lat` for a device this tool cannot run on: export blocks, import their times,
calibrate on whole networks, validate against a table measured anywhere.

Each function is the body of one option or command of cli/lat.py (which stays a list of flags).
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from autovit.cli.common import buildable, console, output_path, print_json, register_autovit
from autovit.latmodel.errors import AutoVitError, UsageError


def _families(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip())


def _cache(cache: str | None) -> Path:
    from autovit.latmodel.network_graphs import default_cache

    return Path(cache) if cache else default_cache()


def read_networks(table: str, coreml_format: str, cvnets: str, cache: str | None, jobs: int,
                  exclude: tuple[str, ...] = ()):
    """(rows, models, skip) of a measurement table, its models built (timm exports cached)."""
    from autovit.latmodel.measurements import check_exclude, read_measurements
    from autovit.latmodel.network_graphs import build_models

    rows = read_measurements(table, coreml_format, _families(cvnets))
    if any(r.path is not None and r.path.suffix.lower() == ".json" for r in rows):
        register_autovit()  # AutoViT architecture files are a source `autovit.nas` registers
    check_exclude(rows, exclude)  # before the exports, which can take minutes
    models, skip = build_models(rows, _cache(cache), jobs, "export the table's timm models")
    return rows, models, skip


# ---- validate --measurements -------------------------------------------------------------
def run_validate_measurements(hw: str, table: str, coreml_format: str, cvnets: str, exclude: tuple[str, ...],
                              cache: str | None, jobs: int, plot: str | None, out_path: str | None,
                              as_json: bool) -> None:
    """Score `hw`'s predictions against a measurement table (measurements.py)."""
    from autovit.latmodel.checks import dumps
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.measurements import price_rows, scatter_png, score_table

    profile = load_profile(hw)
    plot_path, out_file = output_path(plot, "--plot", (table,)), output_path(out_path, "--out", (table,))
    rows, models, skip = read_networks(table, coreml_format, cvnets, cache, jobs, exclude)
    priced, failed, excluded = price_rows(rows, models, skip, profile, exclude)
    result = {"table": str(table), "hw": profile.name, **score_table(priced, models), "failed": failed,
              "excluded": excluded}
    if out_file:
        atomic_write_text(out_file, dumps(result, indent=1) + "\n")
    if plot_path:
        scatter_png(priced, result["scale"], f"{Path(table).name} on {profile.name}", plot_path)
    if as_json:
        print_json(result)
        return
    _print_validation(result)
    if plot:
        console.print(f"wrote {plot}", highlight=False)


def _print_validation(r: dict) -> None:
    t = Table(title=f"{r['n']} networks of {r['table']} on {r['hw']}")
    for col in ("predictor", "tau", "Spearman", "MAPE %", "median APE %", "<=10 %", "<=25 %"):
        t.add_column(col, justify="left" if col == "predictor" else "right")
    fmt = lambda d, k: f"{d[k]:.3f}" if k in ("kendall_tau", "spearman") else (f"{d[k]:.1f}" if k in d else "-")  # noqa: E731
    lines = [(f"ours, x {r['scale']:.3g}", {**r, "mape": r["mape"]}), ("ours, unscaled", {**r, **r["unscaled"]})]
    lines += [(f"{b} (in-sample)", d) for b, d in r["baselines"].items()]
    lines += [(f"{b} (cross-validated)", d) for b, d in r["baselines_cross_validated"].items()]
    for name, d in lines:
        t.add_row(name, *(fmt(d, k) for k in ("kendall_tau", "spearman", "mape", "median_ape", "within_10", "within_25")))
    console.print(t)
    for f in r["failed"]:
        console.print(f"[yellow]not priced:[/] {f['model']} (line {f['line']}): {f['reason']}", highlight=False)
    for f in r["excluded"]:
        console.print(f"excluded: {f['model']} (line {f['line']})", highlight=False)


# ---- calibrate --networks ----------------------------------------------------------------
def lut_cross_core_gbps(lut) -> float | None:
    """The rate a LUT's handoff probe measured a tensor crossing between cores at (GB/s;
    runner.handoff_gbps), None without the probe or where nothing measurable crossed."""
    from autovit.latmodel.runner import handoff_gbps

    ms = lut.environment.get("handoff_ms")  # checked by load_lut: None or the three chains' ms
    return handoff_gbps(ms, lut.environment.get("threads") or 2) if ms else None


def lut_profile(hw: str, lut, lut_path: str):
    """(profile, fixed keys) of `hw` as a LUT's blocks ran: on its threads, at a clock no lower
    than its GEMM probe implies (hardware.profile_at_threads); a probe that implies a clock no
    profile allows is the LUT's fault, said in one line."""
    from autovit.latmodel.hardware import profile_at_threads

    threads = lut.environment.get("threads")  # checked by load_lut: None or 1..4096
    probe = lut.environment.get("sgemm_gflops")  # checked by load_lut: None or a rate
    try:
        return profile_at_threads(hw, threads, probe, lut.environment.get("stream_gbps"), lut_cross_core_gbps(lut))
    except AutoVitError as e:
        if not probe:
            raise
        raise AutoVitError(f"{lut_path}: its GEMM probe (environment.sgemm_gflops = {probe:g}) implies a clock "
                           f"the profile refuses ({str(e)[:120]}); re-run `autovit-lat profile`") from None


def priced_lut_networks(lut, fix: str) -> list:
    """The whole networks a LUT timed (fit.ReferenceNetwork, weight 1) that calibrate may build
    (common.buildable: timm models and AutoViT presets, never a file), each with its pricer built
    now; one that cannot be priced (a LUT from elsewhere may name a model the exporter refuses) is
    a one-line error ending in `fix`."""
    from dataclasses import replace

    from autovit.latmodel.fit import ReferenceNetwork, network_pricer

    out = []
    for net in ReferenceNetwork.of_lut_networks(lut, buildable):
        try:
            out.append(replace(net, pricer=network_pricer(net.source)))
        except Exception as e:  # noqa: BLE001 - any exporter failure is the LUT's, said in one line
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise AutoVitError(f"the LUT's network '{net.source[:60]}' cannot be priced ({why}); {fix}") from None
    return out


def run_calibrate_networks(hw: str, networks: str, lut_path: str | None, mode: str, out_path: str | None,
                           coreml_format: str, cvnets: str, cache: str | None, jobs: int, as_json: bool) -> None:
    """Fit `hw` to measured whole networks (and a LUT's blocks); writes HW@calibrated."""
    from datetime import date

    from autovit.latmodel.hardware import CALIBRATED_SUFFIX, CALIBRATION_HEADER, load_profile, write_calibrated_profile
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.netcal import calibrate, network_pricer

    if hw.endswith(CALIBRATED_SUFFIX):
        raise UsageError(f"--hw {hw} is already calibrated; calibrate its data-sheet profile: "
                         f"--hw {hw[:-len(CALIBRATED_SUFFIX)]}")
    out_file = output_path(out_path, "--out", (hw, networks, lut_path))
    if out_file and out_file.exists() and not out_file.read_bytes().startswith(CALIBRATION_HEADER.encode()):
        raise UsageError(f"cannot use --out {out_file}: it exists and is not a profile written by calibrate; "
                         "choose a new file")
    profile, fixed = load_profile(hw), None
    if lut_path:
        register_autovit()  # the LUT's blocks are read through the block registry
    lut = load_lut(lut_path, profile.name) if lut_path else None
    if lut is not None:  # as `calibrate --lut`
        profile, fixed = lut_profile(hw, lut, lut_path)
        env = lut.environment
    rows, models, skip = read_networks(networks, coreml_format, cvnets, cache, jobs)
    usable = [r for r in rows if r.graph_key not in skip]
    failed = [{"model": r.model, "line": r.line, "reason": skip[r.graph_key]} for r in rows if r.graph_key in skip]
    nets = [(network_pricer(models[r.graph_key], r.coreml_format), r.latency_ms) for r in usable]
    if lut is not None:  # the whole networks profile timed with the LUT's blocks join the table's
        nets += [(n.pricer, n.ms) for n in priced_lut_networks(lut, "fit without the LUT or re-run `autovit-lat profile`")]
    with console.status(f"fitting {profile.name} to {len(nets)} networks" + (" and a LUT" if lut else ""), spinner="dots"):
        cal, _ = calibrate(profile, nets, lut, mode)
    record = {"lut": str(Path(lut_path).resolve()) if lut_path else None, "networks": str(Path(networks).resolve()),
              "date": date.today().isoformat(), "mode": mode if lut else None, "n_points": cal.n_points,
              "rms_log_error": cal.rms_log_error, "mape_by_kind": cal.mape_by_kind, "stderr": cal.stderr,
              "at_bound": cal.at_bound,
              **({"threads": env.get("threads"), "sgemm_gflops": env.get("sgemm_gflops")} if lut is not None else {})}
    written = write_calibrated_profile(hw, cal.params, record, out_file, fixed)
    if as_json:
        print_json({"profile": str(written), "networks": len(nets), "failed": failed, **cal.to_dict()})
        return
    for f in failed:
        console.print(f"[yellow]not used:[/] {f['model']} (line {f['line']}): {f['reason']}", highlight=False)
    print_calibration(profile, cal, written, f"{profile.name} calibrated on {len(nets)} networks"
                      + (f" and {cal.n_points - len(nets)} blocks" if lut else ""))


def print_calibration(profile, cal, written: Path, title: str) -> None:
    """The fitted parameters next to the data sheet's, the fit error and where it was written."""
    from autovit.latmodel.hardware import user_profile_dir

    t = Table(title=title)
    for col in ("parameter", "data sheet", "fitted", "+-"):
        t.add_column(col, justify="left" if col == "parameter" else "right")
    for n, v in cal.params.items():
        t.add_row(n, f"{getattr(profile, n):.4g}", f"{v:.4g}", f"{cal.stderr[n]:.2g}")
    console.print(t)
    console.print("fit error (MAPE by kind): " + ", ".join(f"{k} {v:.1f} %" for k, v in cal.mape_by_kind.items())
                  + f"; RMS log error {cal.rms_log_error:.3f}", highlight=False)
    for w in cal.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    use = f"{profile.name}@calibrated" if written.parent == user_profile_dir() else str(written)
    console.print(f"wrote {written}; use --hw {use}", highlight=False)


# ---- profile --export ----------------------------------------------------------------------
def run_export_blocks(blocks: list, fmt: str, folder: str, hw: str, mode: str, as_json: bool) -> None:
    """Write every block as a model file + manifest.json, to be timed on another device."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from autovit.latmodel.block_export import export_blocks
    from autovit.latmodel.hardware import load_profile

    if mode != "isolated":
        raise UsageError("--export writes blocks to be timed alone (isolated); drop --mode ablation")
    out = Path(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"cannot use --export {out}: it exists and is not an empty folder; choose a new folder")
    hw = load_profile(hw).name

    with Progress(TextColumn(f"[bold]export {fmt}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console) as prog:
        task = prog.add_task("", total=len(blocks))
        manifest = export_blocks(blocks, fmt, out, hw, lambda b: prog.update(task, advance=1, description=b.key[:60]))
    summary = {"manifest": str(out / "manifest.json"), "format": fmt, "blocks": len(manifest["blocks"])}
    if as_json:
        print_json(summary)
        return
    console.print(f"wrote {summary['blocks']} {fmt} blocks and {summary['manifest']}; time each file on the device, "
                  "then `autovit-lat lut import`", highlight=False)


# ---- lut import ----------------------------------------------------------------------------
@click.group("lut")
def lut_group() -> None:
    """Lookup tables measured elsewhere."""


@lut_group.command("import")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.argument("times", type=click.Path(dir_okay=False))
@click.option("--hw", "hw", required=True, help="The profile of the device the blocks were timed on (e.g. iphone13).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="LUT file to write (a new file).")
@click.option("--json", "as_json", is_flag=True, help="Summary as one JSON object on stdout.")
def lut_import(manifest: str, times: str, hw: str, out_path: str, as_json: bool) -> None:
    """Build a LUT from block times measured on another device.

    MANIFEST is the manifest.json `profile --export` wrote; TIMES is a CSV with a `file` or
    `key` column, `latency_ms` and optionally `std_ms`, one row per block.

    \b
    Example:
      autovit-lat lut import blocks/manifest.json times.csv --hw iphone13 --out luts/iphone13.json
    """
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.lut_import import import_lut

    register_autovit()  # the manifest's blocks are AutoViT's kinds unless another package registered its own
    out = output_path(out_path, "--out", (manifest, times))
    if out.exists():
        raise UsageError(f"cannot use --out {out}: it exists; choose a new file (nothing was overwritten)")
    lut = import_lut(manifest, times, load_profile(hw).name)
    lut.save(out)
    summary = {"lut": str(out), "device": lut.device, "backend": lut.backend, "entries": len(lut.entries)}
    if as_json:
        print_json(summary)
        return
    console.print(f"wrote {summary['entries']} entries to {out}; calibrate with "
                  f"`autovit-lat calibrate --hw {lut.device} --lut {out}`", highlight=False)


def table_options(f):
    """The flags that say how a measurement table's rows become models (calibrate, validate)."""
    opts = [
        click.option("--coreml-format", "table_format", type=click.Choice(["mlprogram", "neuralnetwork"]),
                     default="mlprogram", show_default=True,
                     help="Core ML format of rows without a coreml_format column (Neural Engine profiles)."),
        click.option("--cvnets-families", default="mobilevit_", show_default=True,
                     help="timm name prefixes priced with Apple's per-head attention in NeuralNetwork-format rows "
                          "(cvnets-convert's conversion), comma-separated."),
        click.option("--cache", default=None, type=click.Path(file_okay=False),
                     help="Graph cache of the timm rows [default: $AUTOVIT_HOME/cache]."),
        click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="Processes exporting timm rows."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f
