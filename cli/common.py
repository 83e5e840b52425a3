"""What every command shares: one-line errors with exit codes, JSON on stdout, rich on stderr."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from autovit.latmodel.checks import dumps
from autovit.latmodel.errors import AutoVitError, UsageError

# Human output goes to stderr so that --json output on stdout is never mixed with it.
console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """One JSON object on stdout; NaN and infinities become null (they are not JSON)."""
    sys.stdout.write(dumps(obj, indent=None, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def register_autovit(models: tuple[str, ...] = ()) -> None:
    """AutoViT's block kinds and sources (`autovit:`, architecture files) join the toolkit's.
    Skipped when every model named is an ONNX file: importing the NAS engine (torch, timm)
    takes seconds that reading an ONNX file does not need."""
    if models and all(m.lower().endswith(".onnx") for m in models):
        return
    import autovit.nas  # noqa: F401 - registers on import


def buildable(source: str) -> bool:
    """Whether a command may build `source` from a LUT's word alone: a timm model (random
    weights, nothing downloaded) or an AutoViT preset, never a file."""
    from autovit.latmodel.sources import source_kind

    return source_kind(source) in ("timm", "autovit")


def output_path(path: str | None, flag: str, inputs: tuple[str | None, ...] = ()) -> Path | None:
    """Where an --out/--plot file goes, checked before any work: missing parent folders are
    created (every command does this, as `train --out` does); a folder or a file in the way of
    one is refused in one line, and so is one of the command's own `inputs` (writing there would
    destroy what is being read)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"cannot use {flag} {p}: it is a folder; give a file name")
    if any(i and Path(i).is_file() and Path(i).resolve() == p.resolve() for i in inputs):
        raise UsageError(f"cannot use {flag} {p}: it is an input of this command and would be overwritten")
    blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"cannot use {flag} {p}: {blocker} is a file, not a folder")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


class FiniteFloat(click.ParamType):
    """A float flag within [lo, hi] (lo excluded when `lo_open`); nan and inf are refused, which
    click.FloatRange lets through (nan compares false with every bound)."""

    name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo))) or (self.hi is not None and v > self.hi):
            lo = f"{self.lo:g} <{'' if self.lo_open else '='} " if self.lo is not None else ""
            hi = f" <= {self.hi:g}" if self.hi is not None else ""
            self.fail(f"{v:g} is not in the range {lo}x{hi}", param, ctx)
        return v


class Bar:
    """A transient rich progress bar on stderr: count, elapsed time and a free-text field."""

    def __init__(self, desc: str, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console, transient=True)
        self.p.start()
        self.task = self.p.add_task(desc, total=total, info="")

    def update(self, info: str = "", advance: int = 1, **fields: Any) -> None:
        self.p.update(self.task, advance=advance, info=info, **fields)

    def close(self) -> None:
        self.p.stop()


def progress_bar(enabled: bool, desc: str, total: int | None) -> Bar | None:
    return Bar(desc, total) if enabled else None


def run(group: click.Group) -> None:
    """Run a click group; expected errors become one line on stderr and an exit code."""
    try:
        group.main(standalone_mode=False)
    except AutoVitError as e:
        console.print(f"[bold red]error:[/] {_one_line(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        console.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(130)
    except click.ClickException as e:
        console.print(f"[bold red]error:[/] {_one_line(e.format_message())} (see --help)", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:
        # A path the user gave cannot be read or written (missing folder, a file where a folder
        # should be, permissions, full disk): say which and why, like any other bad input.
        where = f" {e.filename}" if e.filename else ""
        console.print(f"[bold red]error:[/] cannot use{where}: {e.strerror or e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(0)


def _one_line(msg: str) -> str:
    """One line, with rich markup escaped: a message may quote "[cpu]" or "[1, 3, 224, 224]"."""
    from rich.markup import escape

    return escape(" ".join(msg.split()))
