"""What every command shares: one-line errors with exit codes, JSON on stdout, rich on stderr."""
from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from autovit.latmodel.checks import dumps
from autovit.latmodel.errors import AutoVitError

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
