"""`autovit-nas`: search spaces, supernet training, evaluation and export."""
from __future__ import annotations

import click
from rich.table import Table

from autovit.cli.common import Bar, console, print_json, progress_bar, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Hybrid CNN/ViT architecture search.

    \b
    Examples:
      autovit-nas spaces
      autovit-nas spaces --check my_space.toml
      autovit-nas spaces --sample 3 --space xxs --seed 0 --json
    """


@cli.command()
@click.option("--check", "check_path", type=click.Path(dir_okay=False), default=None,
              help="Validate a space TOML file (or an architecture JSON with --space).")
@click.option("--space", "space_name", default=None, help="Space for --sample / an architecture check.")
@click.option("--sample", type=int, default=0, help="Draw this many architectures uniformly (needs --space).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="With --sample: write each architecture to OUT/arch_NNN.json.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def spaces(check_path: str | None, space_name: str | None, sample: int, seed: int, out_dir: str | None,
           as_json: bool) -> None:
    """List the search spaces with their sizes, validate a space or architecture file, or sample."""
    import random

    from autovit.latmodel.errors import UsageError
    from autovit.nas.arch import load_arch
    from autovit.nas.bounds import SEED, Bound
    from autovit.nas.params import count_params
    from autovit.nas.space import BUILTIN_SPACES, load_space

    Bound(0, 10_000, "each is printed or written as a file", integer=True).check(sample, "--sample")
    SEED.check(seed, "--seed")
    if sample:
        if not space_name:
            raise UsageError("--sample needs --space xxs|xs|s or a space file")
        sp = load_space(space_name)
        rng = random.Random(seed)
        archs = [sp.sample(rng) for _ in range(sample)]
        if out_dir:
            _write_archs(archs, out_dir)
        if as_json:
            print_json([a.to_dict() for a in archs])  # each loadable as an architecture file
        else:
            for i, a in enumerate(archs):
                console.print(f"[bold]#{i}[/] {count_params(a) / 1e6:.3f} M params", highlight=False)
                console.print(a.to_json(), highlight=False)
            if out_dir:
                console.print(f"wrote {len(archs)} files to {out_dir}")
        return
    if check_path:
        if check_path.endswith(".json"):
            if not space_name:
                raise UsageError("checking an architecture needs --space NAME")
            arch = load_space(space_name).check(load_arch(check_path))
            result = {"file": check_path, "valid": True, "params": count_params(arch)}
        else:
            sp = load_space(check_path)
            result = {"file": check_path, "valid": True, "name": sp.name, "count": sp.count()}
        print_json(result) if as_json else console.print(f"{check_path}: valid", highlight=False)
        return
    rows = []
    for name in BUILTIN_SPACES:
        sp = load_space(name)
        rows.append({
            "name": name, "count": sp.count(), "count_without_width_rule": sp.count(monotonic=False),
            "params_min": count_params(sp.smallest()), "params_max": count_params(sp.largest()),
            "paper_params_range_m": list(sp.params_range_m or ()), "resolutions": list(sp.resolutions),
        })
    if as_json:
        print_json(rows)
        return
    t = Table(title="search spaces (docs/METHOD.md §2)")
    for col in ("space", "architectures", "without width rule", "params (M)", "paper (M)"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], f"{r['count']:.3e}", f"{r['count_without_width_rule']:.3e}",
                  f"{r['params_min'] / 1e6:.2f}-{r['params_max'] / 1e6:.2f}",
                  "-".join(f"{x:g}" for x in r["paper_params_range_m"]))
    console.print(t)


def _write_archs(archs: list, out_dir: str) -> None:
    """OUT/arch_NNN.json for each, refusing to replace any file already there; each names its
    space by the space's identity (a file by its absolute path, 'xxs@32px' as it is), so the
    files can be read from any folder."""
    from pathlib import Path

    from autovit.latmodel.errors import AutoVitError
    from autovit.latmodel.io import FolderLock

    out = Path(out_dir)
    paths = [out / f"arch_{i:03d}.json" for i in range(len(archs))]
    with FolderLock(out, "architecture folder"):
        taken = [p.name for p in paths if p.exists()]
        if taken:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise AutoVitError(f"--out {out} already holds {taken[0]}{more}; nothing is overwritten: choose another --out")
        for a, p in zip(archs, paths):
            a.to_json(p)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON array on stdout.")
def presets(as_json: bool) -> None:
    """The paper's searched models (Table 5) as standalone configurations, with parameter
    counts next to the paper's."""
    from autovit.nas.params import count_params
    from autovit.nas.presets import PAPER_PARAMS_M, PRESETS, load_preset
    from autovit.nas.space import load_space

    rows = []
    for name in PRESETS:
        arch = load_preset(name)
        rows.append({
            "preset": f"autovit:{name}", "params": count_params(arch), "paper_params_m": PAPER_PARAMS_M[name],
            "widths": [s.width for s in arch.transformer], "heads": [s.layers[0].heads for s in arch.transformer],
            "mlp_ratios": [s.layers[0].mlp_ratio for s in arch.transformer],
            "depths": [s.depth for s in arch.transformer], "resolution": arch.resolution,
            "in_space": not load_space(name).problems(arch),
        })
    if as_json:
        print_json(rows)
        return
    t = Table(title="AutoViT presets (paper Table 5)")
    for col in ("preset", "params (M)", "paper (M)", "widths", "heads", "MLP ratios", "depths", "in its space"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["preset"], f"{r['params'] / 1e6:.2f}", f"{r['paper_params_m']:g}", str(r["widths"]),
                  str(r["heads"]), str(r["mlp_ratios"]), str(r["depths"]), "yes" if r["in_space"] else "no")
    console.print(t)


def _resolutions(value: str | None) -> tuple[int, ...] | None:
    from autovit.latmodel.errors import UsageError
    from autovit.nas.bounds import MAX_RESOLUTIONS

    if not value:
        return None
    import re

    parts = value.split(",")
    if len(parts) > MAX_RESOLUTIONS or not all(re.fullmatch(r"[0-9]{1,9}", p.strip()) for p in parts):
        raise UsageError(f"--resolutions takes up to {MAX_RESOLUTIONS} comma-separated integers (e.g. 48,64), "
                         f"got '{value[:60]}'")
    return tuple(int(p) for p in parts)


def _given_on_command_line() -> set[str]:
    """The TrainConfig fields the user set with a flag (not left at its default)."""
    from dataclasses import fields

    from autovit.nas.train import TrainConfig

    ctx = click.get_current_context()
    names = {n for n in ctx.params if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
    return {"arch" if n == "arch_file" else n for n in names} & {f.name for f in fields(TrainConfig)}


def _clip_grad(value: str | None) -> float | None:
    """--clip-grad NORM or none (0: no clipping)."""
    from autovit.latmodel.errors import UsageError

    if value is None:
        return None
    if value.strip().lower() in ("none", "off"):
        return 0.0
    try:
        norm = float(value)
    except ValueError:
        raise UsageError(f"--clip-grad takes a gradient norm > 0 or 'none', got '{value[:40]}'") from None
    if not norm > 0:  # NaN too
        raise UsageError(f"--clip-grad must be > 0 (or 'none' for no clipping), got {value[:40]}")
    return norm


@cli.command()
@click.option("--space", default="xxs", show_default=True, help="xxs, xs, s or a space TOML file.")
@click.option("--data", default="mnist5k", show_default=True,
              help="mnist5k, mnist5k-clutter, mnist5k-pairs (built in, offline) or a folder with train/ and val/.")
@click.option("--epochs", type=int, default=None,
              help="Epochs in all [default: 10; with --resume, the checkpoint's].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: last.ckpt, best.ckpt, metrics.csv, config.json.")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a checkpoint (its configuration is used; --epochs may extend it).")
@click.option("--recipe", type=click.Choice(["deit", "small"]), default="small", show_default=True,
              help="deit: the paper's recipe; small: for a few thousand small images.")
@click.option("--sampling", type=click.Choice(["uniform", "sandwich"]), default="uniform", show_default=True,
              help="uniform: one subnet per step (the paper); sandwich: largest + smallest + k random, "
                   "in-place distillation (beyond the paper).")
@click.option("--sandwich-random", type=int, default=2, show_default=True, help="k for --sampling sandwich.")
@click.option("--kd", type=click.Choice(["none", "soft", "hard"]), default="none", show_default=True)
@click.option("--kd-alpha", type=float, default=0.5, show_default=True)
@click.option("--kd-tau", type=float, default=1.0, show_default=True)
@click.option("--teacher", default=None, help="timm:NAME (with --teacher-ckpt), a .pt model file from 'export', "
              "supernet-max, or TorchScript with --trust-teacher-code. With --resume, name it again.")
@click.option("--trust-teacher-code", is_flag=True,
              help="Allow a TorchScript teacher: loading it runs the code inside the file. Only for files you trust.")
@click.option("--teacher-ckpt", default=None, type=click.Path(dir_okay=False), help="Local weights for a timm teacher.")
@click.option("--batch-size", type=int, default=None, help="Per process. Default: the recipe's.")
@click.option("--lr", type=float, default=None, help="Peak learning rate. Default: the recipe's.")
@click.option("--weight-decay", type=float, default=None)
@click.option("--warmup-epochs", type=float, default=None)
@click.option("--clip-grad", default=None, help="Gradient norm clip, or none. Default: the recipe's.")
@click.option("--ema/--no-ema", default=None, help="Keep an EMA of the weights and evaluate it.")
@click.option("--zero-init-residual", is_flag=True,
              help="Start every residual branch at zero, so deep subnets first train as shallow ones.")
@click.option("--resolutions", default=None, help="Input sides to train (comma list). Default: the data's "
              "native size for built-in sets, the space's otherwise.")
@click.option("--eval-random", type=int, default=3, show_default=True,
              help="Fixed random subnets evaluated each epoch besides max and min.")
@click.option("--eval-every", type=int, default=1, show_default=True,
              help="Evaluate the followed subnets every N epochs (always after the last).")
@click.option("--val-images", type=int, default=None, help="Evaluate on the first N validation images only.")
@click.option("--steps-per-epoch", type=int, default=None, help="Cap on steps per epoch (quick runs).")
@click.option("--workers", type=int, default=0, show_default=True, help="Data-loading processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--amp", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Mixed precision: auto = fp16 on CUDA, off on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace the run in a non-empty --out (its checkpoints are deleted).")
@click.option("--tensorboard", is_flag=True, help="Also log to OUT/tensorboard (needs the tensorboard package).")
@click.option("--arch", "arch_file", default=None, type=click.Path(dir_okay=False),
              help="Train only this subnet (architecture JSON): the stand-alone baseline of ranking studies.")
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON on stdout.")
def train(space, data, epochs, out_dir, resume, recipe, sampling, sandwich_random, kd, kd_alpha, kd_tau, teacher,
          trust_teacher_code, teacher_ckpt, batch_size, lr, weight_decay, warmup_epochs, clip_grad, ema,
          zero_init_residual, resolutions,
          eval_random, steps_per_epoch, val_images, eval_every, workers, seed, amp, device, force, tensorboard,
          arch_file, as_json) -> None:
    """Train a weight-entangled supernet (docs/METHOD.md §3).

    \b
    Examples:
      autovit-nas train --space xxs --data mnist5k-clutter --epochs 10 --out runs/xxs
      autovit-nas train --space xxs --data mnist5k-clutter --epochs 20 --out runs/xxs --resume runs/xxs/last.ckpt
      torchrun --nproc-per-node 2 -m autovit.cli.nas train --space xxs --data mnist5k --out runs/ddp
    """
    import json
    from pathlib import Path

    from autovit.latmodel.errors import Interrupted, UsageError
    from autovit.nas.arch import load_arch
    from autovit.nas.train import TrainConfig, leave_process_group, train as run_train

    if trust_teacher_code and not teacher:
        raise UsageError("--trust-teacher-code only applies to a --teacher FILE; drop it")
    if trust_teacher_code:
        console.print(f"[yellow]warning:[/] --trust-teacher-code: if {teacher} is TorchScript, loading it runs the "
                      "code inside it with your permissions (it can read, write or delete files)", highlight=False)
    arch = json.loads(load_arch(arch_file).to_json()) if arch_file else None
    cfg = TrainConfig(
        space=space, data=data, epochs=epochs, recipe=recipe, sampling=sampling, sandwich_random=sandwich_random,
        kd=kd, kd_alpha=kd_alpha, kd_tau=kd_tau, teacher=teacher, teacher_ckpt=teacher_ckpt, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, clip_grad=_clip_grad(clip_grad), ema=ema,
        zero_init_residual=zero_init_residual,
        resolutions=_resolutions(resolutions), eval_random=eval_random, steps_per_epoch=steps_per_epoch,
        eval_every=eval_every, val_images=val_images,
        workers=workers, seed=seed, amp=amp, device=device, tensorboard=tensorboard, arch=arch,
    )
    log = (lambda m: None) if as_json else (lambda m: console.print(m, highlight=False))
    try:
        summary = run_train(cfg, Path(out_dir), resume=Path(resume) if resume else None,
                            progress=None if as_json else Bar,
                            log=log, force=force, trust_teacher_code=trust_teacher_code,
                            explicit=_given_on_command_line())
    except KeyboardInterrupt:
        last = Path(out_dir) / "last.ckpt"
        keep = f"{last} (a finished epoch) is intact; continue with --resume {last}" if last.exists() else \
            "no epoch had finished, so no checkpoint was written"
        raise Interrupted(f"interrupted: {keep}") from None
    summary.pop("step_losses")
    summary.pop("final_state")
    leave_process_group()  # after rank 0 has written its last checkpoint: no rank leaves while another works
    if summary["rank"] != 0:
        return
    if as_json:
        print_json(summary)
    else:
        console.print(f"done: {summary['epochs_done']} epochs in {summary['wall_s']:.0f} s; "
                      f"best mean top-1 {summary['best']['top1_mean']:.2f} % at epoch {summary['best']['epoch']}; "
                      f"checkpoints in {out_dir}", highlight=False)


_supernet_opt = click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), required=True,
                             help="A checkpoint written by 'autovit-nas train'.")
_arch_opt = click.option("--arch", "arch_spec", default="max", show_default=True,
                         help="max, min, autovit:NAME or an architecture JSON file (from 'spaces --sample --out').")
_space_opt = click.option("--space", default=None, help="Expected space; an error if the checkpoint's differs.")
_bn_opt = click.option("--bn-batches", type=int, default=None,
                       help="Training batches for BatchNorm recalibration. Default: the training run's.")


@cli.command(name="eval")
@_supernet_opt
@_arch_opt
@click.option("--data", default=None, help="Evaluation data (default: the checkpoint's).")
@_space_opt
@_bn_opt
@click.option("--batch-size", type=int, default=None)
@click.option("--ema", is_flag=True, help="Use the EMA weights when the checkpoint has them.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def eval_cmd(ckpt, arch_spec, data, space, bn_batches, batch_size, ema, as_json) -> None:
    """Top-1/top-5 of a subnet with inherited weights, after BatchNorm recalibration.

    \b
    Examples:
      autovit-nas eval --supernet runs/xxs/best.ckpt --arch max
      autovit-nas eval --supernet runs/xxs/best.ckpt --arch arch.json --json
    """
    from autovit.nas.evaluate import evaluate, resolve_arch, supernet_from_checkpoint

    net, cfg, _ = supernet_from_checkpoint(ckpt, space, ema)
    arch = resolve_arch(arch_spec, net.space)
    res = {"supernet": ckpt, "arch": arch_spec, "space": net.space.name,
           **evaluate(net, arch, cfg, data=data, bn_batches=bn_batches, batch_size=batch_size)}
    if as_json:
        print_json(res)
    else:
        console.print(f"{arch_spec}: top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  "
                      f"({res['params'] / 1e6:.3f} M params, {res['resolution']} px, {res['images']} images)",
                      highlight=False)


@cli.command()
@_supernet_opt
@_arch_opt
@click.option("--format", "formats", multiple=True, default=("onnx",), show_default=True,
              type=click.Choice(["pt", "onnx", "torchscript", "coreml"]), help="Repeat for several.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--name", default=None, help="File stem (default: the arch name: max, min or the JSON's stem).")
@_space_opt
@_bn_opt
@click.option("--no-recalibrate", is_flag=True, help="Keep the supernet's BatchNorm statistics as they are.")
@click.option("--force", is_flag=True, help="Replace files of the same name in --out.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def export(ckpt, arch_spec, formats, out_dir, name, space, bn_batches, no_recalibrate, force, as_json) -> None:
    """A standalone subnet with inherited weights (BatchNorm recalibrated) as pt, ONNX,
    TorchScript or Core ML; ONNX and TorchScript are checked against torch.

    \b
    Examples:
      autovit-nas export --supernet runs/xxs/best.ckpt --arch max --format onnx --out out/
      autovit-lat estimate out/max.onnx --hw iphone13
    """
    import re
    from pathlib import Path

    from autovit.latmodel.errors import AutoVitError, UsageError
    from autovit.latmodel.io import FolderLock
    from autovit.nas.evaluate import inherited_subnet, resolve_arch, supernet_from_checkpoint
    from autovit.nas.export import SUFFIX, export_model

    stem = name or (arch_spec if arch_spec in ("max", "min") else Path(arch_spec.replace(":", "_")).stem)
    if not re.fullmatch(r"[\w.+-]{1,128}", stem) or stem.startswith("."):
        raise UsageError(f"--name must be a plain file stem (letters, digits, . _ + -; no folders), got '{stem[:60]}'")
    net, cfg, _ = supernet_from_checkpoint(ckpt, space)
    arch = resolve_arch(arch_spec, net.space)
    model, _ = inherited_subnet(net, arch, cfg, bn_batches=bn_batches, recalibrate=not no_recalibrate)
    paths = {f: Path(out_dir) / f"{stem}{SUFFIX[f]}" for f in dict.fromkeys(formats)}
    with FolderLock(Path(out_dir), "export folder"):
        taken = [p.name for p in paths.values() if p.exists()]
        if taken and not force:
            raise AutoVitError(f"--out {out_dir} already holds {', '.join(taken)}; nothing is overwritten without "
                               "--force: pass --force, --name STEM or another --out")
        results = [export_model(model, f, p, arch.resolution) for f, p in paths.items()]
    if as_json:
        print_json(results)
    else:
        for r in results:
            diff = f" (max relative difference {r['max_rel_diff']:.1e})" if "max_rel_diff" in r else ""
            console.print(f"{r['format']}: {r['path']}: {r['check']}{diff}", highlight=False)


@cli.command()
@_supernet_opt
@_space_opt
@click.option("--hw", "devices", multiple=True, required=True, help="Device profile(s) to price on; repeat.")
@click.option("--latency-budget", required=True, help="2ms for one device, or iphone13=10ms,v100=2ms.")
@click.option("--param-budget", default=":", show_default=True, help="LOW:HIGH parameters, e.g. 1.0M:1.8M.")
@click.option("--strategy", type=click.Choice(["coarse-to-fine", "evolution", "random"]), default="coarse-to-fine",
              show_default=True)
@click.option("--evaluations", type=int, default=None, help="Accuracy evaluations (default population x generations).")
@click.option("--population", type=int, default=50, show_default=True)
@click.option("--generations", type=int, default=20, show_default=True)
@click.option("--parents", type=int, default=10, show_default=True)
@click.option("--p-depth", type=float, default=0.2, show_default=True)
@click.option("--p-layer", type=float, default=0.4, show_default=True)
@click.option("--coarse", type=int, default=10_000, show_default=True, help="Candidates priced in the coarse stage.")
@click.option("--val-images", type=int, default=500, show_default=True, help="Fixed validation subset for fitness.")
@click.option("--latency-oracle", "oracle", default="analytical", show_default=True,
              help="analytical (the device profile), lut:PATH (the LUT sum, analytical fallback), measured "
                   "(onnxruntime here, --hw local-cpu only; seconds per candidate, cached in the results folder), "
                   "flops or params (proxies in ms, scaled on the device profile over the space).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Results folder.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the search in this folder (same settings; finished evaluations are reused).")
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON on stdout.")
def search(ckpt, space, devices, latency_budget, param_budget, strategy, evaluations, population, generations, parents,
           p_depth, p_layer, coarse, val_images, oracle, seed, out_dir, resume_dir, as_json) -> None:
    """Latency-aware search over a trained supernet (docs/METHOD.md §5): coarse-to-fine,
    evolution or random under a parameter window and a latency budget per device. Writes
    search.json, best_arch.json, progress.csv and pareto.png; state.json after every evaluation
    (Ctrl-C loses nothing; --resume continues). Under torchrun, ranks split each generation.

    \b
    Examples:
      autovit-nas search --supernet runs/xxs/best.ckpt --hw v100 --latency-budget 2ms --param-budget 1.0M:1.8M --out s/v100
      autovit-nas search --supernet runs/xxs/best.ckpt --hw iphone13 --hw v100 --latency-budget iphone13=10ms,v100=2ms --out s/two
      torchrun --nproc-per-node 2 -m autovit.cli.nas search ... --out s/v100
    """
    import contextlib
    from pathlib import Path

    from autovit.latmodel.errors import AutoVitError
    from autovit.latmodel.io import FolderLock
    from autovit.nas.evaluate import supernet_from_checkpoint
    from autovit.nas.latency import make_oracle
    from autovit.nas.search import Constraints, SearchState
    from autovit.nas.train import DistContext, leave_process_group

    out_dir = _search_folder(out_dir, resume_dir)
    settings_d = _search_settings(ckpt, devices, latency_budget, param_budget, strategy, evaluations, population,
                                  generations, parents, p_depth, p_layer, coarse, val_images, oracle, seed)
    ctx = DistContext.setup("cpu")  # fitness runs on the CPU; gloo joins the ranks under torchrun
    # a bad checkpoint, LUT or device profile touches no folder
    net, cfg, _ = supernet_from_checkpoint(ckpt, space)
    measuring = _MeasureBar() if ctx.main and not as_json and oracle == "measured" else None
    cons = Constraints(tuple(settings_d["param_window"]), settings_d["budgets_ms"],
                       {d: make_oracle(oracle, d, net.space, out_dir, measuring) for d in devices})
    if resume_dir and not (out_dir / "state.json").is_file():
        raise AutoVitError(f"--resume {out_dir}: no search state there (state.json); start with --out {out_dir}")
    # One writer per results folder: a second search on it is refused instead of racing it.
    with FolderLock(out_dir, "search results folder") if ctx.main else contextlib.nullcontext():
        state = SearchState.open(out_dir, settings_d, resume=bool(resume_dir))
        ctx.barrier()  # every rank has read the folder before any writes to it
        _run_search(ctx, net, cfg, state, settings_d, cons, measuring, out_dir, as_json)
    leave_process_group()  # after rank 0 has written the results: no rank leaves while another works


def _search_folder(out_dir: str | None, resume_dir: str | None):
    from pathlib import Path

    from autovit.latmodel.errors import UsageError

    if not out_dir and not resume_dir:
        raise UsageError("give --out DIR (or --resume DIR to continue a search)")
    if out_dir and resume_dir and Path(out_dir) != Path(resume_dir):
        raise UsageError("--out and --resume name different folders; --resume DIR alone continues in DIR")
    return Path(out_dir or resume_dir)


def _search_settings(ckpt, devices, latency_budget, param_budget, strategy, evaluations, population, generations,
                     parents, p_depth, p_layer, coarse, val_images, oracle, seed) -> dict:
    """The search's settings from its flags, every one checked (UsageError naming the flag);
    saved in state.json, so that --resume can refuse other settings."""
    from pathlib import Path

    from autovit.latmodel.errors import UsageError
    from autovit.nas.bounds import PROBABILITY, SEARCH_BOUNDS, SEED
    from autovit.nas.latency import check_oracle_spec
    from autovit.nas.search import parse_latency_budgets, parse_param_window

    budgets = parse_latency_budgets(latency_budget, list(devices))
    window = parse_param_window(param_budget)
    flags = {"population": population, "generations": generations, "parents": parents, "evaluations": evaluations,
             "coarse": coarse, "val_images": val_images}
    for name, value in flags.items():
        SEARCH_BOUNDS[name].check(value, f"--{name.replace('_', '-')}")
    if parents > population:
        raise UsageError(f"--parents must be <= --population (parents <= population), got {parents} > {population}")
    total = evaluations or population * generations
    SEARCH_BOUNDS["evaluations"].check(total, "--population x --generations (the evaluations)")
    for flag, value in (("--p-depth", p_depth), ("--p-layer", p_layer)):
        try:
            PROBABILITY.check(value, flag)
        except UsageError:
            raise UsageError(f"{flag} is a probability: give a value in [0, 1], got {value}") from None
    SEED.check(seed, "--seed")
    check_oracle_spec(oracle, list(devices))
    return {"supernet": str(Path(ckpt).resolve()), "supernet_sha256": _sha256(ckpt), "devices": list(devices),
            "budgets_ms": budgets,
            "param_window": list(window), "strategy": strategy, "evaluations": evaluations,
            "population": population, "generations": generations, "parents": parents, "p_depth": p_depth,
            "p_layer": p_layer, "coarse": coarse, "val_images": val_images, "oracle": oracle, "seed": seed}


def _sha256(path: str) -> str | None:
    """The checkpoint's digest (16 hex digits): --resume refuses a supernet retrained at the same
    path, whose accuracies differ from the saved ones."""
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
    except OSError:
        return None  # not readable: the checkpoint loader says why, in one line
    return h.hexdigest()[:16]


def _run_search(ctx, net, cfg, state, settings_d: dict, cons, measuring, out_dir, as_json: bool) -> None:
    """Run the strategy of `settings_d` with `state` recording each evaluation; rank 0 writes
    the results folder and prints the summary."""
    import time

    from autovit.latmodel.errors import Interrupted
    from autovit.nas.evaluate import AccuracyEvaluator
    from autovit.nas.search import EvolutionSettings, Searcher, write_results

    s = settings_d
    budgets, strategy, coarse = s["budgets_ms"], s["strategy"], s["coarse"]
    show = ctx.main and not as_json
    if s["oracle"] == "measured" and strategy == "coarse-to-fine" and coarse > 1000 and ctx.main:
        console.print(f"[yellow]note:[/] the measured oracle times every candidate inside the parameter window "
                      f"(most of a second each, cached in {out_dir}/measured_ms.json): the coarse stage's {coarse} may "
                      f"take ~{coarse // 60} min at 1 s each; --coarse 500 is quicker", highlight=False)
    evaluator = AccuracyEvaluator(net, cfg, val_images=s["val_images"])
    total = s["evaluations"] or s["population"] * s["generations"]
    bar = progress_bar(show, "search", total)
    if bar is not None and state.results:
        bar.update("resumed", advance=len(state.results))
    t0 = time.perf_counter() - state.elapsed_s

    def recorded(key: str, top1: float) -> None:
        if ctx.main:
            state.record(key, top1, time.perf_counter() - t0)
        if bar is not None:
            bar.update(f"best {max(state.results.values()):.2f} %")

    searcher = Searcher(net.space, cons, evaluator, seed=s["seed"], known=state.results, on_result=recorded,
                        rank=ctx.rank, world=ctx.world, gather=_gather(ctx))
    settings = EvolutionSettings(s["population"], s["generations"], s["parents"], s["p_depth"], s["p_layer"])
    try:
        if strategy == "random":
            result = searcher.random(total)
        elif strategy == "evolution":
            result = searcher.evolution(settings, evaluations=s["evaluations"])
        else:
            result = searcher.coarse_to_fine(settings, coarse=coarse, evaluations=s["evaluations"])
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {len(state.results)} evaluations are saved in {state.path}; "
                          f"continue with --resume {out_dir}") from None
    finally:
        for b in (bar, measuring):
            if b is not None:
                b.close()
    if ctx.main:
        stamps = [state.wall_s[h["arch"].key()] for h in result.history]
        summary = write_results(out_dir, {**s, "world": ctx.world, "wall_s": time.perf_counter() - t0},
                                result, cons, stamps)
        _print_search(summary, budgets, out_dir, as_json)


def _gather(ctx):
    """all_gather of a Python object over the torchrun ranks; None in one process."""
    if ctx.world == 1:
        return None
    import torch.distributed as dist

    def gather(obj):
        parts = [None] * ctx.world
        dist.all_gather_object(parts, obj)
        return parts

    return gather


def _print_search(summary: dict, budgets: dict, out_dir, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    console.print(_search_table(summary["top"], list(budgets)))
    b = summary["best"]
    lat = ", ".join(f"{d} {v:.3g} ms (budget {budgets[d]:g})" for d, v in b["latency_ms"].items())
    console.print(f"best of {summary['evaluations']} evaluations: top-1 {b['top1']:.2f} %, "
                  f"{b['params'] / 1e6:.3f} M params, {b['flops'] / 1e6:.1f} MFLOPs, {lat}\n"
                  f"{out_dir}/best_arch.json (ready for autovit-nas export), search.json, progress.csv, pareto.png",
                  highlight=False)


class _MeasureBar:
    """A bar that appears while the measured oracle times a batch of new architectures."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Bar("measuring (onnxruntime)", total)
        self.bar.update()
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _search_table(top: list[dict], devices: list[str]) -> Table:
    t = Table(title="search: the best architectures", title_justify="left")
    for col in ("#", "top-1 %", "params M", "MFLOPs", *(f"{d} ms" for d in devices), "generation"):
        t.add_column(col, justify="right")
    for i, r in enumerate(top, 1):
        t.add_row(str(i), f"{r['top1']:.2f}", f"{r['params'] / 1e6:.3f}", f"{r['flops'] / 1e6:.1f}",
                  *(f"{r['latency_ms'][d]:.3g}" for d in devices), str(r["generation"]))
    return t


def main() -> None:
    run(cli)


if __name__ == "__main__":
    main()
