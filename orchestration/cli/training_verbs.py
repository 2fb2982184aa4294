"""cxr train, and cxr clean for the Ray processes a killed command left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from orchestration.cli import options as opt
from orchestration.cli.app import config_from, lines, say, tables, verb, warn
from orchestration.settings.config import imagenet_warning


@verb
def train(
    data: Annotated[str, typer.Option(help="Prepared dataset folder (from cxr prepare), or its object-store URI (s3://bucket/prefix).")],
    workers: Annotated[Optional[int], typer.Option(help="Data-parallel workers. Default: 1.")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="One GPU per worker.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Name of the run; the same name again resumes it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the training plan (domains, findings, α, β, ensemble, steps, LR and H schedule) and stop; Ray is not started.")] = False,
    plan_json: Annotated[Optional[Path], typer.Option(help="Write the training plan as JSON here (the same document every run logs as plan/plan.json).")] = None,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Train DenseIBN-121 with TW + TAT + UTE on Ray (one worker: one Ray task; several: Ray Train
    with DDP); log everything to MLflow.

    Settings: --config FILE and dotted overrides such as method.lambda_tat=0.03 train.epochs=8
    (every key: docs/configuration.md). Stop with Ctrl-C or SIGTERM: the run ends KILLED and the same
    command with the same --run-name resumes from the last checkpoint.
    """
    from orchestration.settings.config import check_run_name
    from orchestration.settings.plan import plan_document, plan_summary, plan_tables, plan_training

    cfg = config_from(config, overrides, *[f"train.{k}={v}" for k, v in {"workers": workers, "gpu": gpu}.items() if v is not None])
    plan = plan_training(cfg, data)
    document = plan_document(cfg, plan)
    if plan_json:
        plan_json.write_text(json.dumps(document, indent=1))
    if dry_run:
        Console().print(plan_summary(document), highlight=False)
        return tables(plan_tables(document))
    warn([w for w in [imagenet_warning(cfg)] if w])
    from orchestration.training.train import default_run_name, run_training

    name = check_run_name(run_name or cfg.train.run_name or default_run_name())
    say(f"run name: [bold]{name}[/] (resume with: cxr train --data {data} --run-name {name} ...)")
    outcome = run_training(cfg, plan, address=address, run_name=name, handle_signals=True)
    say(f"finished run {outcome.run_name} (MLflow run {outcome.run_id}): {outcome.test_summary()}")




@verb
def clean() -> None:
    """Stop the Ray processes that cxr commands killed with SIGKILL (kill -9, the OOM killer) left
    running. A local Ray ends with the command that started it, except then: its agents live on.
    Every local Ray start does this too. Deletes no files but its own records of those sessions."""
    from orchestration.settings.runtime import stop_orphaned_ray

    stopped = stop_orphaned_ray()
    lines([f"stopped {count} process(es) of the Ray session {session}, left by a killed cxr command"
            for session, count in stopped] or ["no Ray processes left by killed cxr commands"])
