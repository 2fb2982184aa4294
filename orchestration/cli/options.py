"""The options of the cxr verbs that several share, each defined once with its help, and the
dataset options that come from the reader registry."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from data_prep.readers import READERS

ConfigFiles = Annotated[
    Optional[list[Path]], typer.Option("--config", help="YAML config file(s), merged in order.")
]
Overrides = Annotated[
    Optional[list[str]],
    typer.Argument(help="Dotted overrides applied last, e.g. prepare.val_fraction=0.1", show_default=False),
]
Address = Annotated[
    Optional[str], typer.Option(help="Ray cluster: HOST:PORT, ray://HOST:PORT, or auto (the cluster `ray start` runs on this "
                               "machine). Default: $RAY_ADDRESS, else a fresh local Ray. One that does not answer "
                               "fails within 30 s.")
]
MaxConcurrent = Annotated[int, typer.Option(help="Trials running at once.")]
SweepName = Annotated[Optional[str], typer.Option(help="Name of the sweep; with --resume, the one to continue.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a stopped or killed sweep (needs --sweep-name).")]

# The model a verb uses (give one): resolved by orchestration.evaluation.models.chosen_model.
Run = Annotated[Optional[str], typer.Option("--run", help="A cxr train run, by MLflow run id or run name (uses its checkpoint).")]
Model = Annotated[Optional[str], typer.Option("--model", help="Any of: a checkpoint folder, a run id or name, models:/NAME@ALIAS (the MLflow Model Registry).")]
Checkpoint = Annotated[Optional[Path], typer.Option("--checkpoint", help="A cxr train checkpoint_* folder.")]

Split = Annotated[str, typer.Option(help="The split scored: train, val or test.")]
Tencrop = Annotated[bool, typer.Option("--tencrop", help="Average 10 crops (4 corners + centre, flipped).")]
Device = Annotated[str, typer.Option(help="cpu or cuda, for scoring.")]
Bootstrap = Annotated[int, typer.Option(help="Bootstrap replicates for the 95% intervals.")]
Seed = Annotated[int, typer.Option(help="Seed of the bootstrap.")]
StatsJson = Annotated[Optional[Path], typer.Option(help="Also write the figures as JSON here.")]


def with_dataset_flags(function):
    """One `--KIND FOLDER` option per reader of a dataset folder (data_prep/readers/), handed to the
    verb as `folders` (kind -> folder or None): a new reader brings its option with it."""
    flags = [inspect.Parameter(kind, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=Annotated[Optional[Path], typer.Option(help=reader.layout)])
             for kind, reader in READERS.items() if reader.folder_flag]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(function, eval_str=True).parameters.values() if p.name != "folders"]

    @functools.wraps(function)
    def run(**kwargs):
        return function({p.name: kwargs.pop(p.name) for p in flags}, **kwargs)

    run.__signature__ = inspect.Signature([own[0], *flags, *own[1:]])
    return run
