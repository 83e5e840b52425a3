"""`autovit-lat`: predict how fast a network runs on a device you may not own."""
from __future__ import annotations

from dataclasses import asdict, replace

import math

import click
from rich.markup import escape
from rich.table import Table

from autovit.cli.common import FiniteFloat, buildable, console, output_path, print_json, register_autovit, run
from autovit.cli.lat_device import (lut_group, lut_profile, print_calibration, priced_lut_networks,
                                    run_calibrate_networks, run_export_blocks, run_validate_measurements, table_options)
from autovit.latmodel.errors import AutoVitError, UsageError

DTYPES = ("fp32", "fp16", "bf16", "int8")
# Flag ranges: beyond them a value is a typo, not a setting (a batch of 2**20 images already
# needs terabytes of activations).
BATCH = click.IntRange(1, 2**20)
THREADS = click.IntRange(1, 1024)
ROUNDS = click.IntRange(1, 1000)


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
@click.option("--batch", type=BATCH, default=None, help="Images per inference [default: the model's own, 1 for timm/autovit].")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Precision (default: the profile's).")
@click.option("--input-shape", default=None, help="Fix a dynamic ONNX input, e.g. 1,3,224,224.")
@click.option("--coreml-format", type=click.Choice(["mlprogram", "neuralnetwork"]), default=None,
              help="Neural Engine profiles: the Core ML format the model is converted to "
                   "[default: mlprogram, coremltools' default since 7.0; neuralnetwork = an .mlmodel].")
@click.option("--breakdown", type=click.Choice(["category", "kernel", "none"]), default="category", show_default=True,
              help="Human output: ms per op category, or every kernel.")
@click.option("--top", type=click.IntRange(0, 10_000), default=10, show_default=True, help="Slowest kernels to list.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG: stacked breakdown bar.")
@click.option("--roofline", is_flag=True, help="With --plot: a roofline scatter of the kernels instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def estimate(model: str, hw: str, batch: int | None, dtype: str | None, input_shape: str | None,
             coreml_format: str | None, breakdown: str, top: int, plot: str | None, roofline: bool, as_json: bool) -> None:
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

    register_autovit((model,))
    if roofline and not plot:
        raise UsageError("--roofline needs --plot PATH.png to write the picture to")
    shape = parse_input_shape(input_shape) if input_shape else None
    plot_path = output_path(plot, "--plot", (model, hw))
    profile = load_profile(hw)
    if coreml_format:
        from autovit.latmodel.neural_engine import for_format

        if profile.ane is None:
            raise UsageError(f"--coreml-format: '{profile.name}' is not a Neural Engine profile; "
                             "drop the flag or use an Apple one (e.g. --hw iphone13)")
        profile = for_format(profile, coreml_format)
    if dtype and dtype not in profile.dtypes:
        raise UsageError(f"--dtype {dtype}: hardware '{profile.name}' does not compute in {dtype}; "
                         f"use --dtype {' or '.join(profile.dtypes)}")
    with console.status(f"reading {model}", spinner="dots"):
        graph = graph_for(model, shape)
    est = LatencyModel(graph).estimate(profile, batch, dtype)
    if plot:
        from autovit.latmodel.plots import breakdown_png, roofline_png

        (roofline_png(est, profile, plot_path) if roofline else breakdown_png([est], plot_path))
    if as_json:
        print_json(est.to_dict())
        return
    _print_estimate(est, breakdown, top)
    if plot:
        console.print(f"wrote {plot}")


def _print_estimate(est, breakdown: str, top: int) -> None:
    console.print(
        f"[bold]{est.source}[/] on [bold]{est.hw}[/] (batch {est.batch}, {est.dtype}): "
        f"[bold green]{est.latency_ms:.3f} ms[/], "
        f"{f'{est.throughput_per_s:,.0f}' if est.latency_ms > 0 else '-'} img/s, "
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
@click.option("--batch", type=BATCH, default=None, help="Images per inference [default: the model's own].")
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

    register_autovit(models)
    if len(set(hws)) != len(hws):
        raise UsageError("a device is named twice in --hw")
    plot_path = output_path(plot, "--plot", models + hws)
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

        breakdown_png(estimates, plot_path)
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


@cli.command()
@click.option("--hw", "hw", required=True, help="The profile of the device you measure on (e.g. local-cpu).")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "torch-cuda", "coreml"]), default="onnxruntime",
              show_default=True)
@click.option("--preset", type=click.Choice(["paper46", "calib50"]), default=None,
              help="paper46: the paper's 46 modules; calib50: 50 blocks covering every block kind of XXS/XS/S (for calibrate).")
@click.option("--space", "space_name", default=None, help="Every distinct block of a space (xxs, xs, s or a TOML).")
@click.option("--blocks", "blocks_file", type=click.Path(dir_okay=False), default=None,
              help="A JSON list of block descriptions (a registered kind each; AutoViT's: nas/blocks.py BlockSpec).")
@click.option("--mode", type=click.Choice(["isolated", "ablation"]), default="isolated", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="LUT file [default: luts/HW.json]; an existing one is resumed.")
@click.option("--threads", type=THREADS, default=None, help="Threads [default: physical cores].")
@click.option("--ci-pct", type=FiniteFloat(0, 100, lo_open=True), default=2.0, show_default=True,
              help="Stop timing a block when its median's 95 % CI is within this %.")
@click.option("--max-repeats", type=click.IntRange(5, 10**6), default=300, show_default=True)
@click.option("--rounds", type=ROUNDS, default=5, show_default=True,
              help="Bursts per block, one pass over all blocks each (robust to slow spells of shared machines).")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time a reference model between bursts: its fast state is the LUT's reference speed, to which validate scales.")
@click.option("--per-op/--no-per-op", default=True, show_default=True,
              help="onnxruntime, isolated: also record each block's kernel time per op class (its profiler), "
                   "which calibrate fits op class by op class.")
@click.option("--networks", "networks_spec", default="preset", show_default=True,
              help="Whole networks to time in the same rounds (calibrate fits them with the blocks): "
                   "'preset' (calib50's 3 AutoViT presets and 5 timm models; none for the others), 'none', "
                   "or a comma list of timm:NAME / autovit:PRESET.")
@click.option("--export", "export_dir", type=click.Path(), default=None,
              help="Measure elsewhere: write every block as a model file + manifest.json into this new folder.")
@click.option("--format", "export_format", type=click.Choice(["coreml", "onnx", "torchscript"]), default="coreml",
              show_default=True, help="With --export: the file format of the blocks.")
@click.option("--json", "as_json", is_flag=True, help="Summary as one JSON object on stdout.")
def profile(hw: str, backend: str, preset: str | None, space_name: str | None, blocks_file: str | None, mode: str,
            out_path: str | None, threads: int | None, ci_pct: float, max_repeats: int, rounds: int,
            reference: bool, per_op: bool, networks_spec: str, export_dir: str | None, export_format: str,
            as_json: bool) -> None:
    """Measure blocks on this machine into a lookup table (LUT).

    \b
    Examples:
      autovit-lat profile --hw local-cpu --backend onnxruntime --preset paper46 --out luts/local-cpu.json
      autovit-lat profile --hw local-cpu --space xxs --mode ablation
      autovit-lat profile --hw local-cpu --preset calib50 --rounds 5 --out luts/calib50.json
      autovit-lat profile --hw iphone13 --preset calib50 --export blocks/ --format coreml
    """
    import time

    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.io import FolderLock
    from autovit.latmodel.measure import TimingPolicy, check_backend, physical_cores
    from autovit.latmodel.profiler import rounds_done

    register_autovit()
    chosen = [x for x in (preset, space_name, blocks_file) if x]
    if len(chosen) != 1:
        raise UsageError("give exactly one module set: --preset paper46|calib50, --space NAME or --blocks FILE")
    if export_dir:
        return run_export_blocks(_module_set(preset, space_name, blocks_file), export_format, export_dir, hw, mode, as_json)
    check_backend(backend)
    device = load_profile(hw).name
    blocks = _module_set(preset, space_name, blocks_file)
    networks = _network_set(networks_spec, preset)
    threads = threads or physical_cores()
    out = output_path(out_path or f"luts/{device}.json", "--out", (hw, blocks_file))  # fail before measuring, not after
    policy = TimingPolicy(ci_pct=ci_pct, max_repeats=max_repeats, rounds=rounds)
    # One writer per LUT folder: a second run would drop the first one's entries when it saves
    # (and two runs at once disturb each other's timings).
    with FolderLock(out.parent, "LUT folder"):
        lut = _open_lut(out, device, backend, threads, policy)
        todo = [b for b in blocks if rounds_done(lut, mode, b) < rounds]
        nets_todo = [n for n in networks if rounds_done(lut, mode, n) < rounds]
        console.print(f"{len(blocks)} blocks, {len(blocks) - len(todo)} already in {out}, {len(todo)} to measure"
                      + (f"; {len(networks)} whole networks, {len(nets_todo)} to measure" if networks else "")
                      + f" ({backend}, {threads} threads)", highlight=False)
        t0 = time.time()
        measured, failures = _measure(todo + nets_todo, lut, out, backend, threads, mode, policy, reference)
        per_op = per_op and backend == "onnxruntime" and mode == "isolated"
        op_annotated = _annotate_op_classes(blocks, lut, out, threads) if per_op else 0
    summary = {"lut": str(out), "device": device, "backend": backend, "threads": threads, "mode": mode,
               "reference": lut.reference,
               "blocks": len(blocks), "networks": [n.source for n in networks], "measured": measured,
               "already_there": len(blocks) + len(networks) - len(todo) - len(nets_todo),
               "op_classes_recorded": op_annotated,
               "sgemm_gflops": lut.environment.get("sgemm_gflops"), "stream_gbps": lut.environment.get("stream_gbps"),
               "failed": [{"block": k, "error": e} for k, e in failures], "wall_s": round(time.time() - t0, 1)}
    if as_json:
        print_json(summary)
    else:
        console.print(f"measured {measured} blocks" + (" and networks" if networks else "")
                      + f" in {summary['wall_s']} s -> {out}", highlight=False)
        probes = lut.environment
        if probes.get("sgemm_gflops") or probes.get("stream_gbps"):
            streams = probes.get("stream_gbps") or {}
            console.print(f"probes (fastest rounds): GEMM {probes.get('sgemm_gflops') or '-'} GFLOP/s"
                          + (f"; streaming {streams['private']} GB/s within the private caches, {streams['shared']} beyond"
                             if streams else ""), highlight=False)
        for k, e in failures:
            console.print(f"[yellow]failed:[/] {k}: {e}", highlight=False)
    if failures:
        n_kept = len(lut.entries) + len(lut.networks)
        kept = f"{out} keeps the {n_kept} measured entries and networks" if n_kept else "nothing was written"
        raise AutoVitError(f"{len(failures)} of {len(todo) + len(nets_todo)} blocks{' and networks' if nets_todo else ''} failed (first: {failures[0][0]}: {failures[0][1]}); "
                           f"{kept}; fix or drop those blocks and run the same command to resume")


def _measure(todo: list, lut, out, backend: str, threads: int, mode: str, policy, reference: bool) -> tuple[int, list]:
    """profile_blocks behind a progress bar; Ctrl-C says what is saved and exits 130."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from autovit.latmodel.profiler import profile_blocks, rounds_done, run_speed_change

    bursts = sum(policy.rounds - rounds_done(lut, mode, b) for b in todo)
    try:
        with Progress(TextColumn("[bold]profile[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.description}"), console=console) as prog:
            task = prog.add_task("", total=bursts)

            def step(block, m, err) -> None:
                prog.update(task, advance=1, description=block.key[:60] + (f"  {m.median_ms:.3f} ms" if m else "  failed"))

            monitor = _drift_monitor(backend, threads, policy) if reference and todo else None
            before = lut.reference.get("ref_ms") if lut.entries else None
            probe = _peak_probe(lut, out, backend, threads) if todo else None
            result = profile_blocks(todo, lut, out, backend, threads, mode, policy, step, monitor, probe)
            prog.update(task, completed=bursts)
        change = run_speed_change(before, monitor)
        if change is not None and not 1 / 1.1 <= change <= 1.1:
            console.print(f"[bold yellow]warning:[/] this run's reference model ran at {change:.2f}x the LUT's earlier "
                          f"speed; its new entries are at another machine speed than the old ones: profile into a "
                          f"new LUT in one run for a consistent table", highlight=False)
        return result
    except KeyboardInterrupt:
        console.print(f"[bold red]error:[/] interrupted; {len(lut.entries)} entries and {len(lut.networks)} networks "
                      f"are saved in {out}; "
                      "run the same command to resume", highlight=False)
        raise SystemExit(130) from None


def _annotate_op_classes(blocks: list, lut, out, threads: int) -> int:
    """Each measured block's kernel ms per op class (ort_profile.annotate_lut) behind a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from autovit.latmodel.convert import export_onnx_bytes
    from autovit.latmodel.ort_profile import OP_ROUNDS, annotate_lut, op_rounds_left

    left = op_rounds_left(lut, blocks)
    try:
        with Progress(TextColumn("[bold]op classes[/]"), BarColumn(), MofNCompleteColumn(), console=console) as prog:
            task = prog.add_task("", total=left)
            return annotate_lut(lut, out, blocks, lambda b: export_onnx_bytes(b.build(), b.input_shape()), threads,
                                rounds=OP_ROUNDS, on_progress=lambda b: prog.advance(task))
    except KeyboardInterrupt:
        console.print(f"[bold red]error:[/] interrupted; the measurements and every finished per-op profile are "
                      f"saved in {out}; run the same command to resume", highlight=False)
        raise SystemExit(130) from None


def _module_set(preset: str | None, space_name: str | None, blocks_file: str | None) -> list:
    """The blocks `profile` measures: a preset, every block of a space, or a --blocks file."""
    from autovit.latmodel.blocks import load_blocks
    from autovit.nas.blocks import calib50, paper46, space_blocks
    from autovit.nas.space import load_space

    if preset:
        return paper46() if preset == "paper46" else calib50()
    if space_name:
        return space_blocks(load_space(space_name))
    return load_blocks(blocks_file)


def _peak_probe(lut, out, backend: str, threads: int):
    """after_round for profile_blocks: time a GEMM burst (runner.sgemm_probe) and keep the
    fastest rate of every round of every run that filled the LUT in its environment
    (`sgemm_gflops`, saved at once): calibrate raises a profile's clock to it. None where the
    backend does not run on this CPU."""
    from autovit.latmodel.runner import handoff_probe, sgemm_probe

    probe = sgemm_probe(backend, threads)
    if probe is None:
        return None
    streams = _stream_probes(backend, threads)
    try:
        handoff = handoff_probe(backend, threads)
    except Exception:  # noqa: BLE001 - optional like the others: without it the profile keeps its cross-core rate
        handoff = None

    def after_round(_round: int) -> None:
        changed = False
        try:
            gflops = probe()
            if gflops > (lut.environment.get("sgemm_gflops") or 0.0):
                lut.environment["sgemm_gflops"] = round(gflops, 1)
                changed = True
            for level, stream in streams.items():
                gbps, kept = stream(), dict(lut.environment.get("stream_gbps") or {})
                if gbps > kept.get(level, 0.0):
                    lut.environment["stream_gbps"] = {**kept, level: round(gbps, 1)}
                    changed = True
            if handoff is not None:  # each chain's fastest burst, as for the other probes
                kept = dict(lut.environment.get("handoff_ms") or {})
                for chain, ms in handoff().items():
                    if ms < kept.get(chain, math.inf):
                        kept[chain] = round(ms, 5)
                        changed = True
                lut.environment["handoff_ms"] = kept
        except Exception:  # noqa: BLE001 - the probes are optional: a LUT without them keeps the profile's figures
            pass
        if changed and (lut.entries or lut.networks):  # a run where everything failed leaves no LUT behind
            lut.save(out)
    return after_round


def _stream_probes(backend: str, threads: int) -> dict:
    """{"private", "shared"}: runner.stream_probe over an activation a quarter the size of the
    private caches of `threads` cores, and one twice their size (four times them must fit the shared
    cache the OS reports, so that the second probe reads the shared level, not DRAM); {} where the OS
    lists no private cache below a shared one that large: the profile then keeps one level."""
    from autovit.latmodel.hardware import detect_local_cpu
    from autovit.latmodel.runner import stream_probe

    memory = detect_local_cpu().get("memory") or {}
    private = (memory.get("private_mib") or 0.0) * threads
    if private <= 0 or 4 * private > memory.get("cache_mib", 0.0) - private:
        return {}
    probes = {"private": stream_probe(backend, threads, private / 4), "shared": stream_probe(backend, threads, 2 * private)}
    return {k: v for k, v in probes.items() if v is not None}


def _network_set(spec: str, preset: str | None) -> list:
    """The whole networks `profile --networks` times: the preset's, none, or a comma list of
    names, each checked by building it now (a bad name fails before any timing, not after)."""
    from autovit.latmodel.profiler import NetworkItem
    from autovit.latmodel.sources import network_module
    from autovit.nas.blocks import CALIB50_NETWORKS

    if spec == "none":
        return []
    if spec == "preset":
        names = list(CALIB50_NETWORKS) if preset == "calib50" else []
    else:
        names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
        if not names:
            raise UsageError("--networks: give preset, none, or a comma list such as timm:resnet18,autovit:xs")
    for name in names:
        if not buildable(name):
            raise UsageError(f"--networks {name[:60]!r}: name networks as timm:NAME or autovit:PRESET "
                             "(a LUT names what it timed; calibrate rebuilds it from that name)")
        network_module(name)
    return [NetworkItem(n) for n in names]


def _drift_monitor(backend: str, threads: int, policy):
    """The drift monitor around AutoViT's XXS preset (nas/latency.py REFERENCE_MODEL)."""
    from autovit.latmodel.runner import drift_monitor
    from autovit.nas.latency import reference_model

    module, shape, name = reference_model()
    return drift_monitor(module, shape, backend, threads, policy, name=name)


def _open_lut(out, device: str, backend: str, threads: int, policy):
    """The LUT at `out` to resume (same device and backend), or a new one (not written until a
    block is measured: a run where everything fails leaves no empty LUT behind)."""
    from autovit.latmodel.lut import Lut, load_lut
    from autovit.latmodel.measure import environment

    if not out.exists():
        return Lut(device, backend, environment(backend, threads), policy.__dict__)
    lut = load_lut(out, device)
    if lut.backend != backend:
        raise AutoVitError(f"{out} was measured with {lut.backend}, not {backend}; use another --out")
    measured_threads = (lut.environment or {}).get("threads")
    if measured_threads is not None and measured_threads != threads:
        # calibrate models the LUT's thread count: entries (and the GEMM probe) at another would mix two machines
        raise AutoVitError(f"{out} was measured with {measured_threads} threads, not {threads}; "
                           f"pass --threads {measured_threads} or use another --out")
    return lut


def reference_network(lut):
    """The LUT's reference network (fit.ReferenceNetwork), counted as the preset's blocks: it
    prices that many blocks inside a network, each of which the LUT measured alone; None when the
    LUT has none."""
    from autovit.latmodel.fit import ReferenceNetwork
    from autovit.nas.blocks import arch_block_fields
    from autovit.nas.presets import load_preset

    # The drift monitor's reference is an AutoViT preset (nas/latency.py REFERENCE_MODEL); a LUT
    # naming anything else (a file, a timm model) is not trusted to make calibrate read or export it.
    net = ReferenceNetwork.of_lut(lut, trusted=lambda source: source.startswith("autovit:"))
    if net is None:
        return None
    try:
        return replace(net, weight=float(len(arch_block_fields(load_preset(net.source)))))
    except AutoVitError as e:
        raise AutoVitError(f"the LUT's reference network '{net.source[:40]}' cannot be priced ({str(e)[:120]}); "
                           "calibrate on the blocks alone with --no-network") from None


def lut_networks(lut) -> list:
    """The whole networks calibrate fits beside a LUT's blocks: those `profile` timed with them
    (lut.networks, priced now: lat_device.priced_lut_networks), each counted as many points as
    the reference network's blocks (27, the XXS preset: a network prices that many blocks inside
    it, each of which the LUT timed alone, and the networks are what `estimate` prices); in a LUT
    without any, its reference network (reference_network)."""
    from autovit.nas.blocks import arch_block_fields
    from autovit.nas.latency import REFERENCE_MODEL
    from autovit.nas.presets import load_preset

    nets = priced_lut_networks(lut, "calibrate on the blocks alone with --no-network")
    if not nets:
        ref = reference_network(lut)
        return [ref] if ref else []
    weight = float(len(arch_block_fields(load_preset(REFERENCE_MODEL))))
    return [replace(net, weight=weight) for net in nets]


@cli.command()
@click.option("--hw", "hw", required=True, help="The data-sheet profile to calibrate (e.g. local-cpu).")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False), default=None,
              help="LUT from `autovit-lat profile` or `lut import`.")
@click.option("--networks", type=click.Path(dir_okay=False), default=None,
              help="Whole networks measured on the device: a measurement CSV (model, latency_ms, path or timm_name).")
@click.option("--mode", type=click.Choice(["isolated", "ablation"]), default="isolated", show_default=True)
@click.option("--network/--no-network", "with_network", default=True, show_default=True,
              help="Fit the whole networks the LUT timed with its blocks (profile --networks; in a LUT without "
                   "any, its reference network) together with the blocks.")
@click.option("--per-op/--no-per-op", default=True, show_default=True,
              help="Fit each block's large op classes too, where the LUT recorded them (profile --per-op).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Profile file to write [default: $AUTOVIT_HOME/profiles/HW@calibrated.toml].")
@table_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def calibrate(hw: str, lut_path: str | None, networks: str | None, mode: str, with_network: bool, per_op: bool,
              out_path: str | None, table_format: str, cvnets_families: str, cache: str | None, jobs: int, as_json: bool) -> None:
    """Fit a profile's free parameters to measured blocks (a LUT), whole networks, or both; writes HW@calibrated.

    \b
    Example:
      autovit-lat calibrate --hw local-cpu --lut luts/local-cpu.json
      autovit-lat estimate autovit:xxs --hw local-cpu@calibrated
      autovit-lat calibrate --hw iphone13 --networks measured.csv [--lut luts/iphone13.json]
    """
    if networks:
        return run_calibrate_networks(hw, networks, lut_path, mode, out_path, table_format, cvnets_families, cache,
                                      jobs, as_json)
    if not lut_path:
        raise UsageError("nothing to calibrate on: give --lut LUT, --networks TABLE.csv or both")
    from datetime import date
    from pathlib import Path

    from autovit.latmodel.blocks import block_from_dict
    from autovit.latmodel.fit import ProfileCalibrator
    from autovit.latmodel.hardware import CALIBRATED_SUFFIX, CALIBRATION_HEADER, load_profile, write_calibrated_profile
    from autovit.latmodel.lut import load_lut

    register_autovit()
    if hw.endswith(CALIBRATED_SUFFIX):
        raise UsageError(f"--hw {hw} is already calibrated; calibrate its data-sheet profile: "
                         f"--hw {hw[:-len(CALIBRATED_SUFFIX)]}")
    out_file = output_path(out_path, "--out", (hw, lut_path))
    if out_file and out_file.exists() and not out_file.read_bytes().startswith(CALIBRATION_HEADER.encode()):
        raise UsageError(f"cannot use --out {out_file}: it exists and is not a profile written by calibrate; "
                         "choose a new file")
    lut = load_lut(lut_path, load_profile(hw).name)
    profile, fixed = lut_profile(hw, lut, lut_path)
    threads, probe = lut.environment.get("threads"), lut.environment.get("sgemm_gflops")
    entries = [e for e in lut.entries.values() if e.get("mode") == mode]
    if not entries:
        others = sorted({e["mode"] for e in lut.entries.values()})
        hint = f"it holds {' and '.join(others)} entries: pass --mode {others[0]}" if others else \
            "it is empty; measure blocks with `autovit-lat profile --preset calib50` first"
        raise AutoVitError(f"{lut_path}: no {mode} entries to calibrate on; {hint}")
    blocks = [block_from_dict(e["block"]) for e in entries]
    measured = [float(e["median_ms"]) for e in entries]
    calibrator = ProfileCalibrator(profile, mode=mode)
    # Whole networks separate per-run from per-op costs and price what a network pays beyond
    # its blocks timed alone (fit.ProfileCalibrator.fit); a LUT measured without networks or the
    # drift monitor has none.
    networks = lut_networks(lut) if with_network else []
    op_ms = [e.get("op_ms") for e in entries] if per_op else None
    what = f"{len(blocks)} blocks" + (" (per op class)" if op_ms and any(op_ms) else "") + \
        (f" and {networks[0].source}" if len(networks) == 1 else f" and {len(networks)} networks" if networks else "")
    with console.status(f"fitting {len(calibrator.names)} parameters to {what}", spinner="dots"):
        cal = calibrator.fit(blocks, measured, networks, op_ms)
    described = "; ".join(n.describe() for n in networks)[:4096] or None
    record = {"lut": str(Path(lut_path).resolve()), "date": date.today().isoformat(), "mode": mode, "n_points": cal.n_points,
              "rms_log_error": cal.rms_log_error, "mape_by_kind": cal.mape_by_kind, "stderr": cal.stderr,
              "at_bound": cal.at_bound, "network": described, "threads": threads, "sgemm_gflops": probe,
              "stream_gbps": lut.environment.get("stream_gbps"), "cross_core_gbps": (fixed.get("memory") or {}).get("cross_core_gbps"),
              "mechanisms": list(profile.mechanisms)}
    written = write_calibrated_profile(hw, cal.params, record, out_file, fixed)
    if as_json:
        print_json({"profile": str(written), **cal.to_dict(), "network": record["network"],
                    "networks": [n.source for n in networks]})
        return
    print_calibration(profile, cal, written, f"{profile.name} calibrated on {what} ({mode})")


@cli.command()
@click.option("--hw", "hw", required=True, help="Profile to predict with (e.g. local-cpu@calibrated): the device you measure on.")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "torch-cuda", "coreml"]), default="onnxruntime",
              show_default=True)
@click.option("--models", "models_spec", default="random:100", show_default=True,
              help="Random subnets: random:N (spread over --space), or none.")
@click.option("--space", "spaces", default="xxs,xs,s", show_default=True, help="Spaces to draw subnets from.")
@click.option("--zoo", default="default", show_default=True,
              help="Held-out timm models: default (20 models), none, or a comma-separated list of timm names.")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False), default=None,
              help="LUT for the LUT-sum predictor, e.g. one profiled with --space [default: the one --hw was calibrated on].")
@click.option("--lut-mode", type=click.Choice(["isolated", "ablation"]), default=None,
              help="LUT entries to use [default: the calibration's mode, else isolated].")
@click.option("--rounds", type=ROUNDS, default=10, show_default=True, help="Bursts per model, one pass over all models each.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time a reference model between bursts; express latencies at the LUT's reference speed.")
@click.option("--threads", type=THREADS, default=None, help="Threads [default: physical cores].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Scatter PNG: predicted vs measured, log-log.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the full result JSON here.")
@click.option("--measurements", type=click.Path(dir_okay=False), default=None,
              help="Measured elsewhere: score --hw's predictions against this CSV (model, latency_ms, path or "
                   "timm_name [, resolution]) instead of measuring here.")
@click.option("--exclude", multiple=True, help="With --measurements: leave out this row (model, timm name or name@px).")
@table_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def validate(hw: str, backend: str, models_spec: str, spaces: str, zoo: str, lut_path: str | None,
             lut_mode: str | None, rounds: int, reference: bool, threads: int | None, seed: int, plot: str | None,
             out_path: str | None, measurements: str | None, exclude: tuple[str, ...], table_format: str,
             cvnets_families: str, cache: str | None, jobs: int, as_json: bool) -> None:
    """Measure random subnets and a held-out timm zoo here; compare four predictors.

    \b
    Example:
      autovit-lat validate --hw local-cpu@calibrated --backend onnxruntime --models random:100 \\
          --space xxs,xs,s --zoo default --plot scatter.png
      autovit-lat validate --hw iphone13 --measurements mobilenetv4-paper_iphone13.csv --plot scatter.png
    """
    if measurements:
        return run_validate_measurements(hw, measurements, table_format, cvnets_families, exclude, cache, jobs, plot,
                                         out_path, as_json)
    import time

    from autovit.latmodel import validate as v
    from autovit.latmodel.checks import dumps
    from autovit.latmodel.hardware import load_profile
    from autovit.latmodel.io import atomic_write_text
    from autovit.latmodel.measure import check_backend, environment, physical_cores

    n_random = v.parse_models(models_spec)
    space_names = [s.strip() for s in spaces.split(",") if s.strip()]
    if n_random and not space_names:
        raise UsageError("--space is empty: name at least one space (xxs, xs, s)")
    check_backend(backend)
    profile = load_profile(hw)
    inputs = (hw, lut_path, profile.calibration.get("lut"))
    plot_path, out_file = output_path(plot, "--plot", inputs), output_path(out_path, "--out", inputs)
    lut_path, mode, oracle, factors, ref_ms = _validation_luts(profile, lut_path, lut_mode)
    cands = _validation_models(n_random, space_names, seed, zoo)
    threads = threads or physical_cores()
    t0 = time.time()
    failed = _price_and_measure(cands, profile, oracle, factors, backend, threads, rounds, reference, ref_ms)
    result = {"hw": profile.name, "backend": backend, "threads": threads, "lut": str(lut_path), "lut_mode": mode,
              "block_construction": oracle.fallback.construction, "calibration_lut": profile.calibration.get("lut"),
              "seed": seed, "rounds": rounds, "spaces": space_names, "baseline_factors": factors,
              "lut_coverage": sum(1 for c in cands if c.predicted.get("lut") is not None),
              **v.report(cands), "failed": [{"model": n, "error": e} for n, e in failed],
              "environment": environment(backend, threads), "wall_s": round(time.time() - t0, 1)}
    if out_file:
        atomic_write_text(out_file, dumps(result, indent=1) + "\n")
    if plot_path:
        v.scatter_png(cands, plot_path)
    if as_json:
        print_json(result)
        return
    _print_validation(result, f"{profile.name} ({backend}, {threads} threads)", n_random)
    if plot:
        console.print(f"wrote {plot}", highlight=False)


def _validation_luts(profile, lut_path: str | None, lut_mode: str | None):
    """(LUT path, mode, LUT oracle, FLOPs/params factors, reference ms) of a validation: the
    LUT given or the one the profile was calibrated on; the baselines and the reference speed
    come from the calibration LUT (the data the analytical model was fitted on, nothing else)."""
    from autovit.latmodel import validate as v
    from autovit.latmodel.lut import load_lut
    from autovit.latmodel.oracle import LutOracle
    from autovit.nas.blocks import DECOMPOSITION
    from autovit.nas.latency import IN_NETWORK

    calib_lut = profile.calibration.get("lut")
    lut_path = lut_path or calib_lut
    if not lut_path:
        raise AutoVitError(f"no LUT: pass --lut PATH (profile '{profile.name}' is not calibrated, so it names none)")
    lut = load_lut(lut_path, profile.name)
    mode = lut_mode or profile.calibration.get("mode", "isolated")
    oracle = LutOracle(lut, profile, mode=mode, **DECOMPOSITION, **IN_NETWORK)
    ref_lut = load_lut(calib_lut, profile.name) if calib_lut else lut
    # Scale to the LUT's speed only with the network it was measured with (the drift monitor's).
    from autovit.nas.latency import REFERENCE_MODEL

    same = ref_lut.reference.get("model") == REFERENCE_MODEL
    return lut_path, mode, oracle, v.baseline_factors(ref_lut, mode), ref_lut.reference.get("ref_ms") if same else None


def _validation_models(n_random: int, space_names: list[str], seed: int, zoo: str) -> list:
    """Random subnets of the spaces and the timm zoo (`--zoo default|none|a,b,c`)."""
    from autovit.latmodel import validate as v
    from autovit.nas.latency import random_candidates

    zoo_names = [] if zoo == "none" else list(v.DEFAULT_ZOO) if zoo == "default" else \
        [z.strip() for z in zoo.split(",") if z.strip()]
    cands = random_candidates(n_random, space_names, seed) + v.zoo_candidates(zoo_names)
    if not cands:
        raise AutoVitError("nothing to validate: --models none and --zoo none")
    return cands


def _price_and_measure(cands: list, profile, oracle, factors, backend: str, threads: int, rounds: int,
                       reference: bool, ref_ms: float | None) -> list[tuple[str, str]]:
    """Price then measure every model behind one progress bar; Ctrl-C exits 130. Returns failures."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from autovit.latmodel import validate as v
    from autovit.latmodel.measure import FAST_STATE_TOL, TimingPolicy

    # Short bursts, many rounds: a model's best burst has more chances to fall in a quiet spell.
    policy = TimingPolicy(warmup=2, min_repeats=6, max_repeats=15, ci_pct=2.0, max_seconds=1.5)
    try:
        with Progress(TextColumn("[bold]{task.fields[phase]}[/]"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), TextColumn("{task.description}"), console=console) as prog:
            task = prog.add_task("", total=len(cands), phase="predict")
            step = lambda c, err: prog.update(task, advance=1, description=c.name + ("  failed" if err else ""))  # noqa: E731
            failed = v.price(cands, profile, oracle, factors, step)
            bad = {n for n, _ in failed}
            todo = [c for c in cands if c.name not in bad]
            prog.update(task, completed=0, total=len(todo) * rounds, phase=f"measure ({rounds} rounds)")
            monitor = _drift_monitor(backend, threads, policy) if reference else None
            failed += v.measure(todo, backend, threads, rounds, policy, step, monitor, ref_ms)
        if monitor is not None and ref_ms and monitor.run_ms and monitor.run_ms > FAST_STATE_TOL * ref_ms:
            console.print(f"[bold yellow]warning:[/] the reference model ran at {monitor.run_ms / ref_ms:.2f}x the "
                          f"LUT's speed in this run (never in the LUT's fast state); its measurements are scaled by "
                          f"that much: rerun on a quieter machine or with more --rounds", highlight=False)
        return failed
    except KeyboardInterrupt:
        console.print("[bold red]error:[/] interrupted; nothing was written", highlight=False)
        raise SystemExit(130) from None


def _print_validation(result: dict, where: str, n_random: int) -> None:
    """The metrics table, the failures and a note when the LUT misses subnets."""
    from autovit.latmodel.validate import PREDICTORS

    t = Table(title=f"{result['n_models']} models on {where}; noise floor CV "
                    f"{result['noise_floor_cv'] * 100:.1f} % ({result['noise_floor_cv_raw'] * 100:.1f} % raw)")
    for col in ("set", "predictor", "n", "MAPE%", "RMSPE%", "<=5%", "<=10%", "tau", "rho"):
        t.add_column(col, justify="left" if col in ("set", "predictor") else "right")
    for g, d in result["by_set"].items():
        for p in PREDICTORS:
            if p in d:
                m = d[p]
                t.add_row(g, p, str(m["n"]), f"{m['mape']:.1f}", f"{m['rmspe']:.1f}", f"{m['within_5']:.0f}",
                          f"{m['within_10']:.0f}", f"{m['kendall_tau']:.3f}", f"{m['spearman']:.3f}")
    console.print(t)
    for f in result["failed"]:
        console.print(f"[yellow]failed:[/] {f['model']}: {f['error']} (left out of the figures)", highlight=False)
    slow = result.get("slow_state_only") or []
    if slow:
        console.print(f"[bold yellow]warning:[/] {len(slow)} of {result['n_models']} models were timed only while the "
                      "reference model ran slow (none of their rounds followed a fast reference burst): their figures "
                      "are the slow state's, up to 1.6x the fast one on a shared VM; rerun on a quieter machine or "
                      "with more --rounds (listed under slow_state_only in --out)", highlight=False)
    if n_random and result["lut_coverage"] < n_random:
        console.print(f"note: the LUT covers {result['lut_coverage']} of {n_random} subnets; for the LUT-sum predictor "
                      "on all of them pass --lut with a LUT profiled with --space xxs/xs/s", highlight=False)


@cli.group()
def hw() -> None:
    """Hardware profiles (hw_profiles/*.toml)."""


@hw.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON array on stdout.")
def hw_list(as_json: bool) -> None:
    """List the built-in hardware profiles."""
    from autovit.latmodel.hardware import builtin_names, calibrated_names, load_profile

    profiles = [load_profile(n) for n in builtin_names()]
    for name in calibrated_names():
        try:  # one broken file among the user's profiles must not hide all the others
            profiles.append(load_profile(name))
        except AutoVitError as e:
            console.print(f"[yellow]warning:[/] skipped {name}: {escape(str(e))}", highlight=False, soft_wrap=True)
    if as_json:
        print_json([{"name": p.name, "kind": p.kind, "runtime": p.runtime, "dtypes": list(p.dtypes),
                     "matrix_tflops": p.matrix_tflops, "dram_gbps": p.dram_gbps, "description": p.description,
                     "calibration": {k: p.calibration.get(k) for k in ("lut", "date", "rms_log_error")}
                     if p.calibration else None}
                    for p in profiles])
        return
    t = Table(title="hardware profiles")
    for col in ("name", "kind", "runtime", "dtypes", "peak TFLOPS", "DRAM GB/s", "description"):
        t.add_column(col)
    for p in profiles:
        desc = p.description
        if p.calibration:
            c = p.calibration
            desc = f"calibrated {c.get('date')} on {c.get('lut')}, RMS log error {c.get('rms_log_error', 0):.3f}"
        t.add_row(p.name, p.kind, p.runtime, ",".join(p.dtypes),
                  " / ".join(f"{k} {v:.4g}" for k, v in p.matrix_tflops.items()), f"{p.dram_gbps:g}", desc)
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


cli.add_command(lut_group)


def main() -> None:
    run(cli)


if __name__ == "__main__":
    main()
