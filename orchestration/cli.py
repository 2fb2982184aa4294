"""`cxr`: the one command-line entry point. Run `cxr --help` or `cxr COMMAND --help`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from data_prep.config import SourceConfig
from data_prep.errors import DataPrepError
from orchestration.config import Config, ConfigError, load_config, with_updates

if TYPE_CHECKING:
    from orchestration.spaces import SweepSpace
    from orchestration.tune import SweepOutcome

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
    help="Train chest X-ray classifiers from several imperfect datasets at once (Luo et al.) on Ray.",
)
console = Console(stderr=True)

ConfigFiles = Annotated[
    Optional[list[Path]], typer.Option("--config", help="YAML config file(s), merged in order.")
]
Overrides = Annotated[
    Optional[list[str]],
    typer.Argument(help="Dotted overrides applied last, e.g. prepare.val_fraction=0.1", show_default=False),
]


Address = Annotated[
    Optional[str], typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
]
MaxConcurrent = Annotated[int, typer.Option(help="Trials running at once.")]
SweepName = Annotated[Optional[str], typer.Option(help="Name of the sweep; with --resume, the one to continue.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a stopped or killed sweep (needs --sweep-name).")]


class UsageError(ValueError):
    """Bad command-line arguments."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write nih/, chexpert/ and inhouse/ into.")],
    images_per_source: Annotated[int, typer.Option(help="Images per dataset.")] = 300,
    image_size: Annotated[int, typer.Option(help="Side of the generated images in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files.")] = 0,
) -> None:
    """Write NIH-, CheXpert- and in-house-like datasets in the real on-disk formats, with learnable signal."""
    from data_prep.synth import synthesize

    try:
        folders = synthesize(out, images_per_source=images_per_source, image_size=image_size, seed=seed)
    except ValueError as exc:
        _fail(str(exc))
    for name, folder in folders.items():
        console.print(f"wrote {name:9s} {folder}")
    console.print(
        f"next: cxr prepare --nih {folders['nih']} --chexpert {folders['chexpert']} "
        f"--csv inhouse={folders['inhouse'] / 'labels.csv'} --out PREPARED_DIR"
    )


def _sources_from_flags(
    config: Config, nih: Path | None, chexpert: Path | None, csv: list[str]
) -> list[SourceConfig]:
    sources = {s.name: s for s in config.prepare.sources}
    if nih:
        sources["nih"] = SourceConfig(name="nih", kind="nih", path=nih)
    if chexpert:
        sources["chexpert"] = SourceConfig(name="chexpert", kind="chexpert", path=chexpert)
    for item in csv:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--csv {item!r}: expected NAME=FILE, e.g. --csv inhouse=/data/labels.csv")
        previous = sources.get(name)
        extra = previous.model_dump(exclude={"name", "kind", "path"}) if previous else {}
        sources[name] = SourceConfig(name=name, kind="csv", path=Path(file), **extra)
    return list(sources.values())


def _table_one(stats: dict) -> Table:
    """The paper's Table I: positives per finding and dataset ('-' where a dataset does not label it)."""
    domains = stats["domains"]
    table = Table(title="Findings per dataset (positives; '-' = not labelled)")
    table.add_column("Finding")
    for name, d in domains.items():
        table.add_column(f"{name} ({d['role']})", justify="right")
    for finding in stats["label_space"]:
        marker = " *" if finding in stats["common"] else ""
        cells = [
            f"{d['counts'][finding]['positive']:,}" if finding in d["findings"] else "-"
            for d in domains.values()
        ]
        table.add_row(finding + marker, *cells)
    table.add_section()
    table.add_row("images", *[f"{d['num_images']:,}" for d in domains.values()])
    table.add_row("patients", *[f"{d['num_patients']:,}" for d in domains.values()])
    for split in ("train", "val", "test"):
        table.add_row(f"{split} images", *[f"{d['splits'][split]:,}" for d in domains.values()])
    table.caption = "* common to all datasets"
    return table


@app.command()
def prepare(
    out: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder to write.")] = None,
    nih: Annotated[Optional[Path], typer.Option(help="NIH ChestX-ray14 folder (Data_Entry_2017*.csv, images*/).")] = None,
    chexpert: Annotated[Optional[Path], typer.Option(help="CheXpert folder (train.csv) or its parent.")] = None,
    csv: Annotated[Optional[list[str]], typer.Option(help="NAME=FILE: a dataset in the generic CSV schema (repeatable).")] = None,
    internal: Annotated[Optional[str], typer.Option(help="Name of the internal (target) dataset. Default: nih.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the stored square images. Default: 320.")] = None,
    max_bad_fraction: Annotated[Optional[float], typer.Option(help="Fail when more images than this are unusable. Default: 0.001.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read label tables only: print the Table I summary, write no images.")] = False,
    stats_json: Annotated[Optional[Path], typer.Option(help="Write label statistics as JSON here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Read, join, split and preprocess the datasets into Parquet shards with Ray Data."""
    from data_prep.join import dataset_stats, load_sources

    flags = {"internal": internal, "image_size": image_size, "max_bad_fraction": max_bad_fraction}
    extra = [f"prepare.{k}={v}" for k, v in flags.items() if v is not None]
    try:
        cfg = load_config(config or [], [*extra, *(overrides or [])])
        sources = _sources_from_flags(cfg, nih, chexpert, csv or [])
        cfg = with_updates(cfg, "prepare", sources=[s.model_dump(mode="json") for s in sources])
        if not dry_run and out is None:
            raise UsageError("--out is required (or use --dry-run)")
        joined = load_sources(cfg.prepare, find_images=not dry_run)
        stats = dataset_stats(joined)
        for warning in joined.warnings:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        if dry_run:
            Console().print(_table_one(stats))
        if stats_json:
            stats_json.write_text(json.dumps(stats, indent=1))
        if dry_run:
            return
        from data_prep.pipeline import run_prepare
        from orchestration.runtime import init_ray

        init_ray(address)
        prepared = run_prepare(joined, cfg.prepare, out, overwrite=overwrite, resolved_config=cfg.model_dump(mode="json"))
    except (ConfigError, DataPrepError, UsageError) as exc:
        _fail(str(exc))
    skipped = prepared.manifest["skipped"]
    Console().print(_table_one(prepared.manifest))
    console.print(
        f"prepared {prepared.manifest['num_samples']:,} images into {out} "
        f"({len(skipped)} skipped, listed in manifest.json)"
    )


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (from cxr prepare).")],
    workers: Annotated[Optional[int], typer.Option(help="Data-parallel workers. Default: 1.")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="One GPU per worker.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Name of the run; the same name again resumes it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the training plan (domains, findings, α, β, ensemble, steps, LR and H schedule) and stop; Ray is not started.")] = False,
    plan_json: Annotated[Optional[Path], typer.Option(help="Write the training plan as JSON here (the same document every run logs as plan/plan.json).")] = None,
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Train DenseIBN-121 with TW + TAT + UTE on Ray Train; log everything to MLflow.

    Settings: --config FILE and dotted overrides such as method.lambda_tat=0.03 train.epochs=8
    (see README "Configuration"). Stop with Ctrl-C or SIGTERM: the run ends KILLED and the same
    command with the same --run-name resumes from the last checkpoint.
    """
    from orchestration.plan import plan_document, plan_training

    flags = {"workers": workers, "gpu": gpu}
    extra = [f"train.{k}={v}" for k, v in flags.items() if v is not None]
    try:
        cfg = load_config(config or [], [*extra, *(overrides or [])])
        document = plan_document(cfg, plan_training(cfg, data))
    except (ConfigError, DataPrepError) as exc:
        _fail(str(exc))
    if plan_json:
        plan_json.write_text(json.dumps(document, indent=1))
    if dry_run:
        _print_plan(document)
        return
    _warn_without_imagenet(cfg)
    from orchestration.train import default_run_name, run_training

    try:
        name = run_name or cfg.train.run_name or default_run_name()
        console.print(f"run name: [bold]{name}[/] (resume with: cxr train --data {data} --run-name {name} ...)",
                      highlight=False, soft_wrap=True)
        outcome = run_training(cfg, data, address=address, run_name=name, handle_signals=True)
    except (ConfigError, DataPrepError) as exc:
        _fail(str(exc))
    summary = {k: v for k, v in outcome.metrics.items() if k.startswith("test_") and "/" not in k}
    console.print(f"finished run {outcome.run_name} (MLflow run {outcome.run_id}): {summary}", highlight=False)


def _warn_without_imagenet(config: Config) -> None:
    """The paper starts from ImageNet weights; nothing is downloaded here, so say how to get them."""
    if config.model.weights:
        return
    console.print(
        "[yellow]warning:[/] no model.weights: the network starts from random weights, the paper from "
        "ImageNet. Results are not comparable with the paper's (MLflow param model.pretrained=false). "
        "On a machine with internet, save torchvision's weights once: python -c \"import torch, torchvision; "
        "torch.save(torchvision.models.densenet121(weights='IMAGENET1K_V1').state_dict(), 'densenet121.pth')\" "
        "then pass model.weights=densenet121.pth",
        highlight=False, soft_wrap=True,
    )


def _print_plan(document: dict) -> None:
    """`cxr train --dry-run`: the plan as three tables."""
    out = Console()
    roles = ", ".join(f"{d} ({r})" for d, r in document["roles"].items())
    out.print(f"training domains: {roles}", highlight=False)
    out.print(f"{document['epochs']} epochs x {document['steps_per_epoch']} steps = {document['total_steps']} steps; "
              f"batch {document['per_domain_batch']} per domain per worker, {document['workers']} worker(s)",
              highlight=False)
    findings = Table(title="findings (β = N / P over the training domains' train splits)")
    for column in ("finding", "group", "α", "P", "N", "β", "TE/UTE", "evaluated"):
        findings.add_column(column, justify="left" if column in ("finding", "group") else "right")
    for name, f in document["findings"].items():
        group = f["group"].replace("_", " ") if f["trained"] else "not trained"
        findings.add_row(name, group, f"{f['alpha']:g}", f"{f['positive']:,}", f"{f['negative']:,}",
                         f"{f['beta']:.2f}" if f["trained"] else "-", "yes" if f["ensemble"] else "",
                         "yes" if f["evaluated"] else "")
    out.print(findings)
    schedule = Table(title="at each epoch boundary")
    for column in ("epoch", "step", "Adam LR", "H"):
        schedule.add_column(column, justify="right")
    for row in document["schedule"]:
        schedule.add_row(str(row["epoch"]), f"{row['step']:,}", f"{row['lr']:.0e}",
                         "-" if row["h"] is None else f"{row['h']:.3f}")
    out.print(schedule)


def _run_sweep(space: "SweepSpace", data: Path, settings_kwargs: dict, address: str | None,
               config: list[Path] | None, overrides: list[str] | None) -> "SweepOutcome":
    from orchestration.tune import SweepSettings, run_sweep

    try:
        base = load_config(config or [], overrides or [])
        if space.paper:
            _warn_without_imagenet(base)
        settings = SweepSettings(**settings_kwargs)
        console.print(f"sweep [bold]{settings.sweep_name}[/] over {space.path} ({space.kind}); "
                      f"continue it after a stop with --sweep-name {settings.sweep_name} --resume",
                      highlight=False, soft_wrap=True)
        outcome = run_sweep(space, base, data, settings, address=address, handle_signals=True)
    except (ConfigError, DataPrepError) as exc:
        _fail(str(exc))
    table = Table(title=f"trials of {settings.sweep_name}")
    described_by = "row" if space.kind == "ablation" else "params"
    columns = ["trial_id", "status", described_by, *settings.metrics, "test_mean_auc"]
    for column in dict.fromkeys(columns):
        table.add_column(column)
    for _, trial in outcome.trials.iterrows():
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in (trial.get(c) for c in dict.fromkeys(columns))])
    Console().print(table)
    if outcome.best_config_path:
        console.print(f"best trial {outcome.best_updates['trial_id']}: {outcome.best_updates}", highlight=False, soft_wrap=True)
        console.print(f"its config: {outcome.best_config_path} (cxr train --data {data} --config {outcome.best_config_path})",
                      highlight=False, soft_wrap=True)
    console.print(f"MLflow parent run: {outcome.parent_run_id}")
    return outcome


def _sweep_name(given: str | None, resume: bool, prefix: str) -> str:
    """The given name, or a new timestamped one; resuming needs the name of the sweep to continue."""
    from datetime import datetime

    if given:
        return given
    if resume:
        _fail("--resume needs --sweep-name NAME (the name printed when the sweep started)")
    return datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")


@app.command()
def tune(
    space: Annotated[str, typer.Option(help="A built-in space (e.g. optuna_full, fig4_lambda_ute) or a YAML file.")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    num_samples: Annotated[int, typer.Option(help="Trials to sample (search spaces; grids run every point).")] = 10,
    max_concurrent: MaxConcurrent = 1,
    scheduler: Annotated[str, typer.Option(help="asha (early stopping on the metric per epoch) or none.")] = "none",
    metric: Annotated[str, typer.Option(help="Metric to optimise; two comma-separated for multi-objective, e.g. val_mean_com_auc,val_mean_int_auc.")] = "",
    seeds: Annotated[int, typer.Option(help="Repeat every grid point with seeds 0..K-1.")] = 1,
    search_seed: Annotated[int, typer.Option(help="Seed of Optuna's TPE sampler.")] = 0,
    sweep_name: SweepName = None,
    resume: Resume = False,
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Sweep λ_tat, λ_ute, α, γ and the H schedule with Ray Tune + Optuna; one MLflow child run per trial.

    Overrides set the base config of every trial (e.g. train.epochs=8 train.workers=2). The best
    trial's full config is written as a YAML that `cxr train --config` accepts.
    """
    from orchestration.spaces import load_space

    try:
        loaded = load_space(space)
    except ConfigError as exc:
        _fail(str(exc))
    metrics = tuple(m.strip() for m in metric.split(",") if m.strip()) or (loaded.metric,)
    settings = dict(sweep_name=_sweep_name(sweep_name, resume, "tune"), num_samples=num_samples,
                    max_concurrent=max_concurrent, scheduler=scheduler, metrics=metrics, seeds=seeds,
                    resume=resume, search_seed=search_seed)
    _run_sweep(loaded, data, settings, address, config, overrides)


@app.command()
def ablate(
    grid: Annotated[str, typer.Option(help="A built-in grid (ablation_table6, baselines_table3, cross_domain_table2, fig4_lambda_tat, fig4_lambda_ute, paper_default) or a YAML file.")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    seeds: Annotated[int, typer.Option(help="Run every row with seeds 0..K-1.")] = 1,
    rows: Annotated[Optional[str], typer.Option(help="Only these rows, comma-separated (e.g. a,b,g).")] = None,
    max_concurrent: MaxConcurrent = 1,
    sweep_name: SweepName = None,
    resume: Resume = False,
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Run every row of an ablation grid (× seeds) as a trial: Table VI a-i, Table III, Table II, Fig. 4."""
    from orchestration.spaces import load_space

    try:
        loaded = load_space(grid)
        if rows:
            loaded = loaded.only_rows([r.strip() for r in rows.split(",") if r.strip()])
    except ConfigError as exc:
        _fail(str(exc))
    if loaded.kind == "search":
        _fail(f"{loaded.path} is a search space: run it with cxr tune --space")
    name = _sweep_name(sweep_name, resume, loaded.name.replace("_", "-"))
    _run_sweep(loaded, data, _grid_settings(loaded, name, max_concurrent, seeds, resume), address, config, overrides)


def _grid_settings(space: "SweepSpace", name: str, max_concurrent: int, seeds: int, resume: bool) -> dict:
    return dict(sweep_name=name, max_concurrent=max_concurrent, metrics=(space.metric,), seeds=seeds, resume=resume)


@app.command("cross-domain")
def cross_domain(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    seeds: Annotated[int, typer.Option(help="Train every single-domain model with seeds 0..K-1.")] = 1,
    split: Annotated[str, typer.Option(help="The split of every domain to test on.")] = "test",
    tencrop: Annotated[bool, typer.Option("--tencrop", help="Average 10 crops at test time.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda, for testing.")] = "cpu",
    max_concurrent: MaxConcurrent = 1,
    sweep_name: SweepName = None,
    resume: Resume = False,
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Table II: train one model per domain alone, test each on every domain (common findings).

    The cross_domain_table2 grid runs as a sweep; the matrix (rows: tested on, columns: trained on;
    mean AUC over the findings all domains share) is printed and logged to the sweep's MLflow parent
    run. Naming a finished sweep with --sweep-name only tests its models again.
    """
    from mlflow.tracking import MlflowClient

    from data_prep.prepared import PreparedDataset
    from orchestration.cross_domain import SPACE_NAME, cross_domain_matrix, log_cross_domain
    from orchestration.spaces import load_space
    from orchestration.tracking import tracking_uri
    from orchestration.tune import find_sweep

    name = _sweep_name(sweep_name, resume, "cross-domain")
    try:
        cfg = load_config(config or [], overrides or [])
        client = MlflowClient(tracking_uri(cfg))
        finished = find_sweep(client, cfg.mlflow.experiment, name)
        if finished is not None and finished.info.status == "FINISHED" and not resume:
            console.print(f"sweep {name} finished already: testing its models", highlight=False)
            parent_run_id = finished.info.run_id
        else:
            space = load_space(SPACE_NAME)
            settings = _grid_settings(space, name, max_concurrent, seeds, resume)
            parent_run_id = _run_sweep(space, data, settings, address, config, overrides).parent_run_id
        result = cross_domain_matrix(client, parent_run_id, PreparedDataset.load(data), split=split,
                                     tencrop=tencrop, device=device)
        log_cross_domain(client, parent_run_id, result)
    except (ConfigError, DataPrepError) as exc:
        _fail(str(exc))
    _print_table(result.matrix, f"mean AUC over the {len(result.common)} common findings "
                                f"(rows: tested on, columns: trained on)")
    console.print(f"logged to MLflow run {parent_run_id} (artifacts cross_domain/)")


def _run_id(config: Config, run: str) -> str:
    from mlflow.tracking import MlflowClient

    from orchestration.tracking import resolve_run_id, tracking_uri

    return resolve_run_id(MlflowClient(tracking_uri(config)), config.mlflow.experiment, run)


def _trained(checkpoint: Path | None, run: str | None):
    from mlflow.tracking import MlflowClient

    from orchestration.predict import checkpoint_of_run, load_trained
    from orchestration.tracking import tracking_uri

    if (checkpoint is None) == (run is None):
        raise UsageError("give exactly one of --checkpoint PATH or --run RUN")
    if checkpoint:
        return load_trained(checkpoint)
    config = load_config()
    return load_trained(checkpoint_of_run(MlflowClient(tracking_uri(config)), _run_id(config, run)))


@app.command()
def predict(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .csv.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="A cxr train checkpoint_* folder.")] = None,
    run: Annotated[Optional[str], typer.Option(help="A cxr train run, by MLflow run id or run name (uses its checkpoint).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    domain: Annotated[Optional[list[str]], typer.Option(help="Domain(s) to predict (default: all).")] = None,
    tencrop: Annotated[bool, typer.Option("--tencrop", help="Average 10 crops (4 corners + centre, flipped).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Write one probability per finding for every image of a split: image_id, domain, findings."""
    from data_prep.prepared import PreparedDataset
    from orchestration.predict import predict as run_predict
    from orchestration.predict import write_table

    try:
        net, _, plan = _trained(checkpoint, run)
        frame = run_predict(net, plan, PreparedDataset.load(data), split=split, domains=domain, tencrop=tencrop,
                            device=device)
        write_table(frame, out)
    except (ConfigError, DataPrepError, UsageError) as exc:
        _fail(str(exc))
    console.print(f"wrote {len(frame):,} predictions to {out}")


def _print_table(table, title: str) -> None:
    shown = Table(title=title)
    shown.add_column("")
    for column in table.columns:
        shown.add_column(str(column), justify="right")
    for name, row in table.iterrows():
        shown.add_row(str(name), *["" if np.isnan(v) else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(shown)


@app.command()
def evaluate(
    predictions: Annotated[Optional[Path], typer.Option(help="A file written by cxr predict.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="The prepared dataset: its labels, and its images when predicting here.")] = None,
    clean_labels: Annotated[Optional[Path], typer.Option(help="Google's relabelled NIH CSV: score Pneumothorax, Airspace opacity and Nodule or mass against it (Table VII).")] = None,
    set_name: Annotated[str, typer.Option("--set", help="With --clean-labels: the test or val rows (its Set Id column).")] = "test",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Predict here with this cxr train checkpoint_* folder instead of reading --predictions.")] = None,
    run: Annotated[Optional[str], typer.Option(help="The training run evaluated (MLflow run id or run name): linked to, and without --predictions, predicted with.")] = None,
    split: Annotated[str, typer.Option(help="When predicting here: the split of every domain.")] = "test",
    tencrop: Annotated[bool, typer.Option("--tencrop", help="When predicting here: average 10 crops.")] = False,
    device: Annotated[str, typer.Option(help="When predicting here: cpu or cuda.")] = "cpu",
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write the AUC table here.")] = None,
    stats_json: Annotated[Optional[Path], typer.Option(help="Also write the figures as JSON here.")] = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """AUC of a model's predictions per finding; printed and logged as an MLflow evaluation run.

    The evaluation run is linked to the training run given with --run (tag cxr.evaluates). Predictions come from --predictions FILE (cxr predict), or are made here with --checkpoint or
    --run on --data. Labels: --data (per-finding AUC, Mean, Mean_Com and Mean_Int of every domain)
    or --clean-labels (AUC on Google's relabelled NIH images; images there without a prediction are
    counted).
    """
    from orchestration.predict import log_evaluation, read_predictions
    from orchestration.tracking import tracking_uri

    try:
        if predictions is not None and checkpoint is not None:
            raise UsageError("give --predictions FILE or --checkpoint PATH, not both")
        if predictions is None and checkpoint is None and run is None:
            raise UsageError("give --predictions FILE, or --checkpoint PATH / --run RUN to predict here")
        if predictions is None and data is None:
            raise UsageError("predicting here needs --data DIR (the prepared images)")
        if predictions is not None and (data is None) == (clean_labels is None):
            raise UsageError("give exactly one of --data DIR (the prepared labels) or --clean-labels FILE")
        cfg = load_config(config or [], overrides or [])
        if predictions is not None:
            frame, source = read_predictions(predictions), str(predictions.resolve())
        else:
            from data_prep.prepared import PreparedDataset
            from orchestration.predict import predict as run_predict

            net, _, plan = _trained(checkpoint, None if checkpoint else run)
            frame = run_predict(net, plan, PreparedDataset.load(data), split=split, tencrop=tencrop, device=device)
            source = f"{split} split of {data.resolve()} predicted by {checkpoint or run}"
        if clean_labels:
            table, metrics, stats, warnings = _clean_label_evaluation(frame, clean_labels, set_name)
            params = {"clean_labels": str(clean_labels.resolve()), "set": set_name}
        else:
            table, metrics, stats, warnings = _domain_evaluation(frame, data)
            params = {"data": str(data.resolve())}
        evaluates = _run_id(cfg, run) if run else None
    except (ConfigError, DataPrepError, UsageError) as exc:
        _fail(str(exc))
    what = predictions.name if predictions else checkpoint.name if checkpoint else run
    against = f" against relabelled NIH ({set_name})" if clean_labels else ""
    run_id = log_evaluation(tracking_uri(cfg), cfg.mlflow.experiment, f"evaluate {what}{against}", metrics, table,
                            {**params, "predictions": source}, evaluates)
    _print_table(table, f"AUC of {what}")
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if csv_out:
        table.to_csv(csv_out)
    if stats_json:
        stats_json.write_text(json.dumps(stats, indent=1))
    console.print(f"logged as MLflow run {run_id}")


def _domain_evaluation(frame, data: Path):
    from data_prep.prepared import PreparedDataset
    from orchestration.predict import evaluate_predictions, report_table

    prepared = PreparedDataset.load(data)
    reports, unmatched = evaluate_predictions(frame, prepared)
    table = report_table(reports, prepared.label_space)
    metrics = {f"{d}/{k}": v for d, r in reports.items() for k, v in r.as_metrics().items()}
    stats = {"domains": {d: {**r.as_metrics(), "unmatched_images": unmatched[d]} for d, r in reports.items()}}
    warnings = [f"{n} predicted {d} images are not in {data}; left out" for d, n in unmatched.items() if n]
    return table, metrics, stats, warnings


def _clean_label_evaluation(frame, clean_labels: Path, set_name: str):
    import pandas as pd

    from data_prep.relabelled_nih import read_relabelled_nih
    from orchestration.clean_labels import SCORED_BY, evaluate_clean_labels

    result = evaluate_clean_labels(frame, read_relabelled_nih(clean_labels, set_name), set_name)
    table = pd.DataFrame({f"{set_name} ({result.num_images} images)": {
        f: result.report.auc.get(f, np.nan) for f in SCORED_BY}}).astype(float)
    metrics = {f"clean_{set_name}/auc/{f}": v for f, v in result.report.auc.items()}
    metrics[f"clean_{set_name}/num_images"] = result.num_images
    metrics[f"clean_{set_name}/missing_predictions"] = len(result.missing)
    warnings = [f"{f}: no AUC, {why}" for f, why in result.report.undefined.items()]
    if result.missing:
        warnings.append(f"{len(result.missing)} of the {set_name} images in {clean_labels} have no prediction "
                        f"(e.g. {result.missing[0]}); they are not scored")
    return table, metrics, result.stats(), warnings


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Folder to write report.md, report.html and the figures into.")],
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default: mlflow.experiment of the config).")] = None,
    parent: Annotated[Optional[str], typer.Option(help="Only this sweep: the MLflow id of its parent run.")] = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Paper-style tables (Tables II, III, VI), Fig. 4 curves and Optuna plots from MLflow alone.

    Each sweep gets a section (also logged to its parent run under report/); stand-alone training
    runs get one more. Runs that failed, were stopped or are still running are listed apart.
    """
    from mlflow.tracking import MlflowClient

    from orchestration.report import write_report
    from orchestration.tracking import tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per section instead
    try:
        cfg = load_config(config or [], overrides or [])
        client = MlflowClient(tracking_uri(cfg))
        outcome = write_report(client, experiment or cfg.mlflow.experiment, out, parent,
                               progress=lambda line: console.print(line, highlight=False))
    except (ConfigError, DataPrepError) as exc:
        _fail(str(exc))
    for section in outcome.sections:
        runs = len(section.section.runs)
        console.print(f"{section.section.title}: {len(section.table)} table rows from {runs} runs, "
                      f"{len(section.excluded)} not averaged in, {len(section.figures)} figures", highlight=False)
    console.print(f"report: {outcome.markdown} and {outcome.html}", highlight=False)
    if outcome.logged_to:
        console.print(f"also logged under report/ of MLflow run(s) {', '.join(outcome.logged_to)}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
