"""The `cxr` application: the Typer app every verb registers on, user errors as `error: ...` and
exit status 2, and the printing all verbs share (lines, warnings, tables)."""

from __future__ import annotations

import functools
import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cxrcommon.errors import UserError
from orchestration.settings.config import Config, load_config
from orchestration.settings.masking import MaskedStream

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
    help="Train chest X-ray classifiers from several imperfect datasets at once (Luo et al.) on Ray.",
)
console = Console(file=MaskedStream(lambda: sys.stderr))  # type: ignore[arg-type]


class UsageError(UserError):
    """Bad command-line arguments."""


def verb(function):
    """A command: the project's user errors become `error: ...` and exit status 2, no traceback."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
    return app.command(function.__name__.replace("_", "-"))(run)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show Ray's own console output (execution plans, worker and raylet messages); they are always in Ray's log files. Same as CXR_VERBOSE=1.")] = False,
) -> None:
    if verbose:
        os.environ["CXR_VERBOSE"] = "1"
    if os.environ.get("CXR_VERBOSE", "") in ("", "0"):
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not its INFO lines (database setup, system metrics)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # nor a bar per artifact read back
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # nor "View run at URL" per run ended


def say(line: str, style: str = "") -> None:
    console.print(f"{style}{line}", highlight=False, soft_wrap=True)


def lines(lines: list[str]) -> None:
    for line in lines:
        say(line)


def warn(lines: list[str], label: str = "warning") -> None:
    for line in lines:
        say(line, f"[yellow]{label}:[/] ")


def tables(tables: list[tuple[str, pd.DataFrame]]) -> None:
    for title, frame in tables:
        print_frame(frame, title)


def print_frame(frame: pd.DataFrame, title: str) -> None:
    """A table on stdout: floats to 4 decimals, blank where missing."""
    shown = Table(title=title)
    shown.add_column(str(frame.index.name or ""))
    for column in frame.columns:
        shown.add_column(str(column), justify="right")
    for name, row in frame.iterrows():
        shown.add_row(str(name), *["" if v is None or (isinstance(v, float) and np.isnan(v))
                                   else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(shown)


def pairs(items: list[str] | None, flag: str, key_name: str, example: str) -> dict[str, Path]:
    """`--flag KEY=FILE` options (repeatable) as {KEY: FILE}; `key_name` is what KEY is called in the error."""
    found = {}
    for item in items or []:
        key, sep, file = item.partition("=")
        if not sep or not key or not file:
            raise UsageError(f"--{flag} {item!r}: expected {key_name}=FILE, e.g. --{flag} {example}")
        found[key] = Path(file)
    return found


def config_from(config: list[Path] | None, overrides: list[str] | None, *flags: str) -> Config:
    return load_config(config or [], [*flags, *(overrides or [])])


def main() -> None:
    # Everything this process prints passes the masking: MLflow's own lines ("View run at URI",
    # its warnings) and Ray's carry the tracking URI, credentials included.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskedStream(lambda: out), MaskedStream(lambda: err)
    try:
        app()
    finally:
        if "ray" in sys.modules:  # only commands that use Ray import it
            from orchestration.settings.runtime import stop_ray

            stop_ray()
        # What the command built lives until the process ends, and Python's last collections walk
        # all of it (torch's, MLflow's and Ray's modules): ~0.7 s of each command here. Frozen, those
        # objects are skipped; exit functions and the modules' teardown run as before.
        gc.freeze()
