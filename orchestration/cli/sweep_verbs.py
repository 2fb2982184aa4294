"""cxr tune, cxr ablate and cxr cross-domain: sweeps on Ray Tune + Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from orchestration.cli import options as opt
from orchestration.cli.app import config_from, lines, print_frame, say, verb, warn
from orchestration.settings.config import imagenet_warning

if TYPE_CHECKING:
    from orchestration.sweeps.spaces import SweepSpace
    from orchestration.sweeps.tune import SweepOutcome, SweepSettings


def _run_sweep(space: SweepSpace, data: str, settings: SweepSettings, address: str | None,
               config: list[Path] | None, overrides: list[str] | None) -> SweepOutcome:
    """Run a sweep and print its trials, Pareto front and best trial."""
    from orchestration.sweeps.tune import run_sweep

    base = config_from(config, overrides)
    warn([w for w in [space.paper and imagenet_warning(base)] if w])
    say(f"sweep [bold]{settings.sweep_name}[/] over {space.path} ({space.kind}); continue it after a stop with "
        f"--sweep-name {settings.sweep_name} --resume")
    outcome = run_sweep(space, base, data, settings, address=address, handle_signals=True)
    print_frame(outcome.shown_trials(space, settings), f"trials of {settings.sweep_name}")
    lines(outcome.summary(settings, data))
    return outcome


@verb
def tune(
    space: Annotated[str, typer.Option(help="A built-in space (e.g. optuna_full, fig4_lambda_ute) or a YAML file.")],
    data: Annotated[str, typer.Option(help="Prepared dataset folder, or its object-store URI.")],
    num_samples: Annotated[int, typer.Option(help="Trials to sample (search spaces; grids run every point).")] = 10,
    max_concurrent: opt.MaxConcurrent = 1,
    scheduler: Annotated[str, typer.Option(help="asha (early stopping on the metric per epoch) or none.")] = "none",
    metric: Annotated[str, typer.Option(help="Metric to optimise; two comma-separated for multi-objective, e.g. val_mean_com_auc,val_mean_int_auc.")] = "",
    seeds: Annotated[int, typer.Option(help="Repeat every grid point with seeds 0..K-1.")] = 1,
    search_seed: Annotated[int, typer.Option(help="Seed of Optuna's TPE sampler.")] = 0,
    sweep_name: opt.SweepName = None, resume: opt.Resume = False,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Sweep λ_tat, λ_ute, α, γ and the H schedule with Ray Tune + Optuna; one MLflow child run per trial.

    Overrides set the base config of every trial (e.g. train.epochs=8 train.workers=2). The best
    trial's full config is written as a YAML that `cxr train --config` accepts.
    """
    from orchestration.sweeps.spaces import load_space
    from orchestration.sweeps.tune import SweepSettings
    from orchestration.sweeps.tune import sweep_name as named

    loaded = load_space(space)
    metrics = tuple(m.strip() for m in metric.split(",") if m.strip()) or (loaded.metric,)
    settings = SweepSettings(sweep_name=named(sweep_name, resume, "tune"), num_samples=num_samples, metrics=metrics,
                             max_concurrent=max_concurrent, scheduler=scheduler, seeds=seeds, resume=resume,
                             search_seed=search_seed)
    _run_sweep(loaded, data, settings, address, config, overrides)


@verb
def ablate(
    grid: Annotated[str, typer.Option(help="A built-in grid (ablation_table6, baselines_table3, cross_domain_table2, fig4_lambda_tat, fig4_lambda_ute, paper_default) or a YAML file.")],
    data: Annotated[str, typer.Option(help="Prepared dataset folder, or its object-store URI.")],
    seeds: Annotated[int, typer.Option(help="Run every row with seeds 0..K-1.")] = 1,
    rows: Annotated[Optional[str], typer.Option(help="Only these rows, comma-separated (e.g. a,b,g).")] = None,
    max_concurrent: opt.MaxConcurrent = 1,
    sweep_name: opt.SweepName = None, resume: opt.Resume = False,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Run every row of an ablation grid (× seeds) as a trial: Table VI a-i, Table III, Table II, Fig. 4."""
    from orchestration.sweeps.spaces import load_grid
    from orchestration.sweeps.tune import SweepSettings
    from orchestration.sweeps.tune import sweep_name as named

    loaded = load_grid(grid, [r.strip() for r in rows.split(",") if r.strip()] if rows else None)
    settings = SweepSettings.for_grid(loaded, named(sweep_name, resume, loaded.name.replace("_", "-")),
                                      max_concurrent=max_concurrent, seeds=seeds, resume=resume)
    _run_sweep(loaded, data, settings, address, config, overrides)


@verb
def cross_domain(
    data: Annotated[str, typer.Option(help="Prepared dataset folder, or its object-store URI.")],
    seeds: Annotated[int, typer.Option(help="Train every single-domain model with seeds 0..K-1.")] = 1,
    split: Annotated[str, typer.Option(help="The split of every domain to test on.")] = "test",
    tencrop: opt.Tencrop = False, device: opt.Device = "cpu",
    max_concurrent: opt.MaxConcurrent = 1,
    sweep_name: opt.SweepName = None, resume: opt.Resume = False,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Table II: train one model per domain alone, test each on every domain (common findings).

    The cross_domain_table2 grid runs as a sweep; the matrix (rows: tested on, columns: trained on;
    mean AUC over the findings all domains share) is printed and logged to the sweep's MLflow parent
    run. Naming a finished sweep with --sweep-name only tests its models again.
    """
    from orchestration.sweeps.cross_domain import SPACE_NAME, finished_sweep, score_sweep_models
    from orchestration.sweeps.spaces import load_space
    from orchestration.sweeps.tune import SweepSettings
    from orchestration.sweeps.tune import sweep_name as named

    name, cfg = named(sweep_name, resume, "cross-domain"), config_from(config, overrides)
    parent_run_id = finished_sweep(cfg, name, resume)
    if parent_run_id is not None:
        say(f"sweep {name} finished already: testing its models")
    else:
        space = load_space(SPACE_NAME)
        settings = SweepSettings.for_grid(space, name, max_concurrent=max_concurrent, seeds=seeds, resume=resume)
        parent_run_id = _run_sweep(space, data, settings, address, config, overrides).parent_run_id
    result = score_sweep_models(cfg, parent_run_id, data, split=split, tencrop=tencrop, device=device)
    print_frame(result.matrix, result.title)
    say(f"logged to MLflow run {parent_run_id} (artifacts cross_domain/)")
