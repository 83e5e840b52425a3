"""`autovit-lat`: predict how fast a network runs on a device you may not own."""
from __future__ import annotations

from dataclasses import asdict

import click
from rich.table import Table

from autovit.cli.common import console, print_json, run
from autovit.latmodel.errors import AutoVitError

DTYPES = ("fp32", "fp16", "bf16", "int8")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Latency prediction for vision networks on GPUs, CPUs and the iPhone Neural Engine.

    \b
    Examples:
      autovit-lat estimate model.onnx --hw iphone13
      autovit-lat estimate timm:mobilevit_xxs --hw v100 --batch 64 --dtype fp16
      autovit-lat estimate autovit:xxs --hw a100 --json
      autovit-lat hw list
    """


@cli.command()
@click.argument("model")
@click.option("--hw", "hw", required=True, help="Hardware profile name (see `hw list`) or a profile .toml path.")
@click.option("--batch", type=int, default=None, help="Images per inference [default: the model's own, 1 for timm/autovit].")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Precision (default: the profile's).")
@click.option("--input-shape", default=None, help="Fix a dynamic ONNX input, e.g. 1,3,224,224.")
@click.option("--breakdown", type=click.Choice(["category", "kernel", "none"]), default="category", show_default=True,
              help="Human output: ms per op category, or every kernel.")
@click.option("--top", type=int, default=10, show_default=True, help="Slowest kernels to list.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG: stacked breakdown bar.")
@click.option("--roofline", is_flag=True, help="With --plot: a roofline scatter of the kernels instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def estimate(model: str, hw: str, batch: int | None, dtype: str | None, input_shape: str | None, breakdown: str,
             top: int, plot: str | None, roofline: bool, as_json: bool) -> None:
    """Predict the latency of MODEL on a device.

    MODEL is an .onnx file, an architecture .json, timm:NAME (random weights, nothing is
    downloaded) or autovit:xxs|xs|s.

    \b
    Example:
      autovit-lat estimate arch.json --hw cpu-x86 --breakdown category --plot breakdown.png
    """
    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.graph import parse_input_shape
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.sources import graph_for

    if batch is not None and batch <= 0:
        raise AutoVitError(f"--batch must be a positive integer, got {batch}")
    if roofline and not plot:
        raise AutoVitError("--roofline needs --plot PATH.png to write the picture to")
    profile = load_profile(hw)
    if dtype:
        profile.check_dtype(dtype)
    shape = parse_input_shape(input_shape) if input_shape else None
    with console.status(f"reading {model}", spinner="dots"):
        graph = graph_for(model, shape)
    est = LatencyModel(graph).estimate(profile, batch, dtype)
    if plot:
        from autovit.latmodel.plots import breakdown_png, roofline_png

        (roofline_png(est, profile, plot) if roofline else breakdown_png([est], plot))
    if as_json:
        print_json(est.to_dict())
        return
    _print_estimate(est, breakdown, top)
    if plot:
        console.print(f"wrote {plot}")


def _print_estimate(est, breakdown: str, top: int) -> None:
    console.print(
        f"[bold]{est.source}[/] on [bold]{est.hw}[/] (batch {est.batch}, {est.dtype}): "
        f"[bold green]{est.latency_ms:.3f} ms[/], {est.throughput_per_s:,.0f} img/s, "
        f"{est.params / 1e6:.2f} M params, {est.flops / 1e9:.3f} GFLOPs, {est.bytes / 2**20:.1f} MiB moved",
        highlight=False,
    )
    if breakdown == "category":
        t = Table(title="latency by op category")
        t.add_column("category")
        t.add_column("ms", justify="right")
        t.add_column("%", justify="right")
        for cat, ms in sorted(est.breakdown.items(), key=lambda kv: -kv[1]):
            if ms > 0:
                t.add_row(cat, f"{ms:.4f}", f"{100 * ms / est.latency_ms:.1f}")
        console.print(t)
    kernels = est.slowest(top) if breakdown != "kernel" else [k for k in est.kernels if k.kernel.klass != "view"]
    if breakdown != "none" and kernels:
        t = Table(title="slowest kernels" if breakdown != "kernel" else "kernels in order")
        for col in ("kernel", "ops", "category", "ms", "bound"):
            t.add_column(col, justify="right" if col == "ms" else "left")
        for k in kernels:
            t.add_row(k.kernel.name[:40], "+".join(k.kernel.op_types)[:40], k.kernel.category, f"{k.ms:.4f}", k.bound)
        console.print(t)
    for w in est.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--hw", "hws", multiple=True, required=True, help="Hardware profile; repeat for several devices.")
@click.option("--batch", type=int, default=None, help="Images per inference [default: the model's own].")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG: one stacked breakdown bar per model and device.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout: {'estimates': [...]}.")
def compare(models: tuple[str, ...], hws: tuple[str, ...], batch: int | None, plot: str | None, as_json: bool) -> None:
    """Predict several MODELS on several devices, side by side.

    \b
    Example:
      autovit-lat compare autovit:xxs timm:mobilevit_xxs --hw iphone13 --hw v100 --plot cmp.png
    """
    from rich.progress import Progress

    from autovit.latmodel.estimate import LatencyModel
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.sources import graph_for

    if batch is not None and batch <= 0:
        raise AutoVitError(f"--batch must be a positive integer, got {batch}")
    if len(set(hws)) != len(hws):
        raise AutoVitError("a device is named twice in --hw")
    profiles = [load_profile(h) for h in hws]
    estimates = []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("reading models", total=len(models))
        for m in models:
            lm = LatencyModel(graph_for(m))
            estimates += [lm.estimate(p, batch) for p in profiles]
            prog.advance(task)
    if plot:
        from autovit.latmodel.plots import breakdown_png

        breakdown_png(estimates, plot)
    if as_json:
        print_json({"estimates": [e.to_dict(top=5) for e in estimates]})
        return
    t = Table(title="predicted latency (ms)")
    t.add_column("model")
    t.add_column("params (M)", justify="right")
    t.add_column("GFLOPs", justify="right")
    for p in profiles:
        t.add_column(p.name, justify="right")
    for i, m in enumerate(models):
        row = estimates[i * len(profiles):(i + 1) * len(profiles)]
        t.add_row(m, f"{row[0].params / 1e6:.2f}", f"{row[0].flops / 1e9 / row[0].batch:.2f}",
                  *[f"{e.latency_ms:.3f}" for e in row])
    console.print(t)
    if plot:
        console.print(f"wrote {plot}")


@cli.group()
def hw() -> None:
    """Hardware profiles (hw_profiles/*.toml)."""


@hw.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON array on stdout.")
def hw_list(as_json: bool) -> None:
    """List the built-in hardware profiles."""
    from autovit.latmodel.hardware import builtin_names, load_profile

    profiles = [load_profile(n) for n in builtin_names()]
    if as_json:
        print_json([{"name": p.name, "kind": p.kind, "runtime": p.runtime, "dtypes": list(p.dtypes),
                     "matrix_tflops": p.matrix_tflops, "dram_gbps": p.dram_gbps, "description": p.description}
                    for p in profiles])
        return
    t = Table(title="hardware profiles")
    for col in ("name", "kind", "runtime", "dtypes", "peak TFLOPS", "DRAM GB/s", "description"):
        t.add_column(col)
    for p in profiles:
        t.add_row(p.name, p.kind, p.runtime, ",".join(p.dtypes),
                  " / ".join(f"{k} {v:g}" for k, v in p.matrix_tflops.items()), f"{p.dram_gbps:g}", p.description)
    console.print(t)


@hw.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="JSON object on stdout.")
def hw_show(name: str, as_json: bool) -> None:
    """Every parameter of one profile, and which ones calibration fits."""
    from autovit.latmodel.hardware import HardwareProfile, load_profile

    p = load_profile(name)
    d = asdict(p)
    d["free_parameters"] = list(HardwareProfile.FREE_PARAMETERS)
    if as_json:
        print_json(d)
        return
    t = Table(title=f"{p.name}: {p.description}")
    t.add_column("field")
    t.add_column("value")
    for k, v in d.items():
        if k == "fusion":
            v = ", ".join(r["name"] for r in v)
        free = " (calibrated)" if k in HardwareProfile.FREE_PARAMETERS else ""
        t.add_row(k + free, str(v))
    console.print(t)


def main() -> None:
    run(cli)


if __name__ == "__main__":
    main()
