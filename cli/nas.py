"""`autovit-nas`: search spaces (and, as later issues land, supernet training and search)."""
from __future__ import annotations

import click
from rich.table import Table

from autovit.cli.common import console, print_json, run


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

    from autovit.latmodel.errors import AutoVitError
    from autovit.nas.arch import load_arch
    from autovit.nas.params import count_params
    from autovit.nas.space import BUILTIN_SPACES, load_space

    if sample < 0:
        raise AutoVitError(f"--sample must be >= 0, got {sample}")
    if sample:
        if not space_name:
            raise AutoVitError("--sample needs --space xxs|xs|s or a space file")
        sp = load_space(space_name)
        rng = random.Random(seed)
        archs = [sp.sample(rng) for _ in range(sample)]
        if out_dir:
            from pathlib import Path

            for i, a in enumerate(archs):
                a.to_json(Path(out_dir) / f"arch_{i:03d}.json")
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
                raise AutoVitError("checking an architecture needs --space NAME")
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
    t = Table(title="search spaces (SPEC.md section 2)")
    for col in ("space", "architectures", "without width rule", "params (M)", "paper (M)"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], f"{r['count']:.3e}", f"{r['count_without_width_rule']:.3e}",
                  f"{r['params_min'] / 1e6:.2f}-{r['params_max'] / 1e6:.2f}",
                  "-".join(f"{x:g}" for x in r["paper_params_range_m"]))
    console.print(t)


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


def main() -> None:
    run(cli)


if __name__ == "__main__":
    main()
