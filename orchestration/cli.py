"""`cxr`: the one command-line entry point. Run `cxr --help` or `cxr COMMAND --help`.

Each verb parses its options, calls the module that does the work and prints what comes back;
a new verb is a function here and its module (orchestration/<floor>/...)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cxrcommon.errors import UserError
from orchestration import cli_options as opt
from orchestration.settings.config import Config, imagenet_warning, load_config, with_updates
from orchestration.settings.masking import MaskedStream

if TYPE_CHECKING:
    import pandas as pd

    from orchestration.sweeps.spaces import SweepSpace
    from orchestration.sweeps.tune import SweepOutcome, SweepSettings

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


def say(line: str, style: str = "") -> None:
    console.print(f"{style}{line}", highlight=False, soft_wrap=True)


def _lines(lines: list[str]) -> None:
    for line in lines:
        say(line)


def _warn(lines: list[str], label: str = "warning") -> None:
    for line in lines:
        say(line, f"[yellow]{label}:[/] ")


def _tables(tables: list[tuple[str, pd.DataFrame]]) -> None:
    for title, frame in tables:
        _print_frame(frame, title)


def _print_frame(frame: pd.DataFrame, title: str) -> None:
    """A table on stdout: floats to 4 decimals, blank where missing."""
    shown = Table(title=title)
    shown.add_column(str(frame.index.name or ""))
    for column in frame.columns:
        shown.add_column(str(column), justify="right")
    for name, row in frame.iterrows():
        shown.add_row(str(name), *["" if v is None or (isinstance(v, float) and np.isnan(v))
                                   else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(shown)


def _pairs(items: list[str] | None, flag: str, example: str) -> dict[str, Path]:
    """`--flag KEY=FILE` options (repeatable) as {KEY: FILE}."""
    pairs = {}
    for item in items or []:
        key, sep, file = item.partition("=")
        if not sep or not key or not file:
            raise UsageError(f"--{flag} {item!r}: expected {example.split('=')[0].upper()}=FILE, e.g. --{flag} {example}")
        pairs[key] = Path(file)
    return pairs


def _config(config: list[Path] | None, overrides: list[str] | None, *flags: str) -> Config:
    return load_config(config or [], [*flags, *(overrides or [])])


@verb
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write one folder per dataset into (nih/, chexpert/, inhouse/, ...).")],
    images_per_source: Annotated[Optional[int], typer.Option(help="Images per dataset (default 300; a scenario sets its own sizes).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the generated images in pixels (default 256, or the scenario's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files.")] = 0,
    inhouse_format: Annotated[str, typer.Option(help="dicom (a PACS-like mix: MONOCHROME1/2, 12/16 bits, windows, rescale, RLE / JPEG 2000, one file without pixels) or png16.")] = "dicom",
    sources: Annotated[str, typer.Option(help="Comma-separated, from nih, chexpert, inhouse, mimic (MIMIC-CXR-JPG), vindr (VinDr-CXR), padchest.")] = "nih,chexpert,inhouse",
    scenario: Annotated[Optional[str], typer.Option(help="Generate a scenario instead of the default look: 'paper' (NIH-like internal, CheXpert-like external, Table I prevalences, label noise, a shift in how findings look; data_prep/scenarios/paper.yaml) or a YAML file of that shape.")] = None,
) -> None:
    """Write NIH-, CheXpert-, in-house-, MIMIC-CXR-, VinDr-CXR- and PadChest-like datasets in the real on-disk formats, with learnable signal.

    Every dataset folder also gets truth.csv: each finding drawn in each image, labelled or not
    (cxr prepare never reads it; cxr diagnose does)."""
    from data_prep.scenario import load_scenario, synthesize_scenario
    from data_prep.synth import prepare_command, synthesize

    if scenario is not None and images_per_source is not None:
        raise UsageError("--images-per-source: a scenario sets each dataset's size; copy its YAML to change them")
    folders = (synthesize_scenario(out, load_scenario(scenario), seed=seed, image_size=image_size) if scenario else
               synthesize(out, images_per_source=images_per_source or 300, image_size=image_size or 256, seed=seed,
                          inhouse_format=inhouse_format, sources=tuple(x.strip() for x in sources.split(",") if x.strip())))
    notes, command = prepare_command(folders, inhouse_format)
    _lines([*[f"wrote {name:9s} {folder}" for name, folder in folders.items()], *notes, f"next: {command}"])


TABLE_ONE_TITLE = "Findings per dataset (positives; '-' = not labelled; * = common to all)"


@verb
@opt.with_dataset_flags
def prepare(
    folders: dict[str, Optional[Path]],
    out: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder to write.")] = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="Print the label-map presets (source label -> finding) and stop.")] = False,
    csv: Annotated[Optional[list[str]], typer.Option(help="NAME=FILE: a dataset in the generic CSV schema (repeatable).")] = None,
    internal: Annotated[Optional[str], typer.Option(help="Name of the internal (target) dataset. Default: nih.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the stored square images. Default: 320.")] = None,
    max_bad_fraction: Annotated[Optional[float], typer.Option(help="Fail when more images than this are unusable. Default: 0.001.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read label tables only: print the Table I summary, write no images.")] = False,
    stats_json: Annotated[Optional[Path], typer.Option(help="Write label statistics as JSON here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Read, join, split and preprocess the datasets into Parquet shards with Ray Data."""
    from data_prep.config import sources_with_flags
    from data_prep.findings import preset_lines
    from data_prep.join import dataset_stats, load_sources, table_one

    if list_presets:
        return _lines(preset_lines())
    flags = {"internal": internal, "image_size": image_size, "max_bad_fraction": max_bad_fraction}
    cfg = _config(config, overrides, *[f"prepare.{k}={v}" for k, v in flags.items() if v is not None])
    sources = sources_with_flags(cfg.prepare.sources, folders, _pairs(csv, "csv", "inhouse=/data/labels.csv"))
    cfg = with_updates(cfg, "prepare", sources=[s.model_dump(mode="json") for s in sources])
    if not dry_run and out is None:
        raise UsageError("--out is required (or use --dry-run)")
    joined = load_sources(cfg.prepare, find_images=not dry_run)
    stats = dataset_stats(joined)
    _warn(joined.warnings)
    if stats_json:
        stats_json.write_text(json.dumps(stats, indent=1))
    if dry_run:
        return _print_frame(table_one(stats), TABLE_ONE_TITLE)
    from data_prep.pipeline import run_prepare
    from orchestration.settings.runtime import init_ray

    init_ray(address)
    manifest = run_prepare(joined, cfg.prepare, out, overwrite=overwrite, resolved_config=cfg.model_dump(mode="json")).manifest
    _print_frame(table_one(manifest.model_dump()), TABLE_ONE_TITLE)
    _warn(manifest.warnings[len(joined.warnings):], "note")  # remarks on images, from decoding
    say(f"prepared {manifest.num_samples:,} images into {out} ({len(manifest.skipped)} skipped, listed in manifest.json)")


@verb
def train(
    data: Annotated[Path, typer.Option(help="Prepared dataset folder (from cxr prepare).")],
    workers: Annotated[Optional[int], typer.Option(help="Data-parallel workers. Default: 1.")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="One GPU per worker.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Name of the run; the same name again resumes it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the training plan (domains, findings, α, β, ensemble, steps, LR and H schedule) and stop; Ray is not started.")] = False,
    plan_json: Annotated[Optional[Path], typer.Option(help="Write the training plan as JSON here (the same document every run logs as plan/plan.json).")] = None,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Train DenseIBN-121 with TW + TAT + UTE on Ray Train; log everything to MLflow.

    Settings: --config FILE and dotted overrides such as method.lambda_tat=0.03 train.epochs=8
    (see README "Configuration"). Stop with Ctrl-C or SIGTERM: the run ends KILLED and the same
    command with the same --run-name resumes from the last checkpoint.
    """
    from orchestration.settings.config import check_run_name
    from orchestration.settings.plan import plan_document, plan_summary, plan_tables, plan_training

    cfg = _config(config, overrides, *[f"train.{k}={v}" for k, v in {"workers": workers, "gpu": gpu}.items() if v is not None])
    plan = plan_training(cfg, data)
    document = plan_document(cfg, plan)
    if plan_json:
        plan_json.write_text(json.dumps(document, indent=1))
    if dry_run:
        Console().print(plan_summary(document), highlight=False)
        return _tables(plan_tables(document))
    _warn([w for w in [imagenet_warning(cfg)] if w])
    from orchestration.training.train import default_run_name, run_training

    name = check_run_name(run_name or cfg.train.run_name or default_run_name())
    say(f"run name: [bold]{name}[/] (resume with: cxr train --data {data} --run-name {name} ...)")
    outcome = run_training(cfg, plan, address=address, run_name=name, handle_signals=True)
    say(f"finished run {outcome.run_name} (MLflow run {outcome.run_id}): {outcome.test_summary()}")


def _run_sweep(space: SweepSpace, data: Path, settings: SweepSettings, address: str | None,
               config: list[Path] | None, overrides: list[str] | None) -> SweepOutcome:
    """Run a sweep and print its trials, Pareto front and best trial."""
    from orchestration.sweeps.tune import run_sweep

    base = _config(config, overrides)
    _warn([w for w in [space.paper and imagenet_warning(base)] if w])
    say(f"sweep [bold]{settings.sweep_name}[/] over {space.path} ({space.kind}); continue it after a stop with "
        f"--sweep-name {settings.sweep_name} --resume")
    outcome = run_sweep(space, base, data, settings, address=address, handle_signals=True)
    _print_frame(outcome.shown_trials(space, settings), f"trials of {settings.sweep_name}")
    _lines(outcome.summary(settings, data))
    return outcome


@verb
def tune(
    space: Annotated[str, typer.Option(help="A built-in space (e.g. optuna_full, fig4_lambda_ute) or a YAML file.")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
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
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
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
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
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

    name, cfg = named(sweep_name, resume, "cross-domain"), _config(config, overrides)
    parent_run_id = finished_sweep(cfg, name, resume)
    if parent_run_id is not None:
        say(f"sweep {name} finished already: testing its models")
    else:
        space = load_space(SPACE_NAME)
        settings = SweepSettings.for_grid(space, name, max_concurrent=max_concurrent, seeds=seeds, resume=resume)
        parent_run_id = _run_sweep(space, data, settings, address, config, overrides).parent_run_id
    result = score_sweep_models(cfg, parent_run_id, data, split=split, tencrop=tencrop, device=device)
    _print_frame(result.matrix, result.title)
    say(f"logged to MLflow run {parent_run_id} (artifacts cross_domain/)")


@verb
def predict(
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .csv.")],
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder (or give --images).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Raw images instead of --data: a folder (PNG, JPEG, DICOM, searched recursively) or a CSV with a path column.")] = None,
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    split: opt.Split = "test",
    domain: Annotated[Optional[list[str]], typer.Option(help="With --data: domain(s) to predict (default: all).")] = None,
    tencrop: opt.Tencrop = False,
    device: Annotated[str, typer.Option(help="With --data: cpu or cuda (--images uses a GPU per actor when the cluster has them).")] = "cpu",
    image_size: Annotated[Optional[int], typer.Option(help="With --images: the side the model was trained at. Default: that of its prepared data.")] = None,
    actors: Annotated[int, typer.Option(help="With --images: at most this many model copies scoring in parallel.")] = 2,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Write one probability per finding for every image of a prepared split, or of a folder / CSV of
    raw images (--images): image_id, domain, findings (and path).

    --run and --model names are looked up in the MLflow store and experiment of the config
    (--config / overrides such as mlflow.tracking_uri=..., else $MLFLOW_TRACKING_URI).
    """
    from orchestration.evaluation.models import chosen_model

    if (data is None) == (images is None):
        raise UsageError("give --data DIR (a prepared split) or --images DIR|CSV (raw files)")
    found = chosen_model(_config(config, overrides), run=run, model=model, checkpoint=checkpoint)
    if images is not None:
        from orchestration.evaluation.image_prediction import predict_image_files

        result, skipped = predict_image_files(images, found.checkpoint, out, tencrop=tencrop, image_size=image_size,
                                              actors=actors, address=address, say=say)
        return say(f"wrote {len(result.table):,} predictions to {out}; {len(result.skipped)} images could not be "
                   f"used, listed with the reason in {skipped}")
    from orchestration.evaluation.prediction import predict_prepared, write_table

    frame = predict_prepared(found.checkpoint, data, split=split, domains=domain, tencrop=tencrop, device=device)
    write_table(frame, out)
    say(f"wrote {len(frame):,} predictions to {out}")


@verb
def evaluate(
    predictions: Annotated[Optional[Path], typer.Option(help="A file written by cxr predict.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="The prepared dataset: its labels, and its images when predicting here.")] = None,
    clean_labels: Annotated[Optional[Path], typer.Option(help="Google's relabelled NIH CSV: score Pneumothorax, Airspace opacity and Nodule or mass against it (Table VII).")] = None,
    set_name: Annotated[str, typer.Option("--set", help="With --clean-labels: the test or val rows (its Set Id column).")] = "test",
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    split: opt.Split = "test",
    tencrop: opt.Tencrop = False, device: opt.Device = "cpu",
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write the AUC table here.")] = None,
    stats_json: opt.StatsJson = None,
    bootstrap: opt.Bootstrap = 1000, seed: opt.Seed = 0,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """AUC of a model's predictions per finding, with 95% bootstrap intervals; printed and logged as an MLflow evaluation run.

    The evaluation run is linked to the training run given with --run (tag cxr.evaluates).
    Predictions come from --predictions FILE (cxr predict), or are made here with --model,
    --checkpoint or --run on --data. Labels: --data (per-finding AUC, Mean, Mean_Com and Mean_Int of
    every domain) or --clean-labels (AUC on Google's relabelled NIH images; images there without a
    prediction are counted). --run is looked up in the MLflow store and experiment of the config.
    """
    from orchestration.evaluation.evaluate import evaluate_model

    done = evaluate_model(_config(config, overrides), predictions=predictions, data=data, clean_labels=clean_labels,
                          set_name=set_name, run=run, model=model, checkpoint=checkpoint, split=split,
                          tencrop=tencrop, device=device, bootstrap=bootstrap, seed=seed)
    _tables([done.table(bootstrap)])
    _warn(done.result.warnings)
    if csv_out:
        done.result.table.to_csv(csv_out)
    if stats_json:
        stats_json.write_text(json.dumps(done.result.stats, indent=1))
    say(f"logged as MLflow run {done.run_id}")


@verb
def explain(
    out: Annotated[Path, typer.Option(help="Folder for the contact sheets, overlays and explain.csv.")],
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset. Default: the one the model was trained on.")] = None,
    split: opt.Split = "test",
    domain: Annotated[Optional[str], typer.Option(help="The domain whose images are explained. Default: the model's internal one.")] = None,
    findings: Annotated[Optional[str], typer.Option(help="Comma-separated findings. Default: every finding the domain labels.")] = None,
    top: Annotated[int, typer.Option(help="Images per finding: the K the model scores highest.")] = 4,
    device: opt.Device = "cpu",
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Grad-CAM heat maps of where the model looks: for each finding, the K images of a split it
    scores highest, as overlays and one contact sheet, with explain.csv (probability, label and the
    heat map's peak per image).

    The maps weigh the last dense block's output (denseblock4, 1/32 of the image side) by the gradient
    of that finding's output, so a model trained at 256² gives 8x8 cells of evidence. When the model
    comes from a training run that the MLflow store knows, the folder is also logged to it under explain/.
    """
    from orchestration.evaluation.explanation import explain_model
    from orchestration.evaluation.models import chosen_model

    cfg = _config(config, overrides)
    found = chosen_model(cfg, run=run, model=model, checkpoint=checkpoint, find_run=True)
    explain_model(cfg, found, out, data=data, split=split, domain=domain, top=top, device=device, say=say,
                  findings=[f.strip() for f in findings.split(",") if f.strip()] if findings else None)


@verb
def diagnose(
    run: Annotated[str, typer.Option(help="A cxr train run on generated data, by MLflow run id or run name.")],
    truth: Annotated[Optional[list[str]], typer.Option(help="DOMAIN=FILE: a domain's truth.csv (default: beside the dataset the run's data were prepared from).")] = None,
    probe_images: Annotated[int, typer.Option(help="Test images per domain for the TAT probe.")] = 400,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Check the method's parts against the truth of data from cxr synth (its truth.csv).

    TE / UTE (for a run trained with train.ensemble_history=true): per epoch, on the external
    training images, the AUC of the temporal ensemble's targets z and of the network's own
    predictions p against the truth for each internal-only finding, and the share of entries UTE
    lets through (|0.5 - p| >= H) with how often they are right. TAT: the held-out AUC of a
    logistic-regression probe telling internal from external test images by each common finding's
    task-specific feature (0.5: the feature does not show the domain). Printed, and logged to the
    run under diagnostics/.
    """
    from orchestration.evaluation.diagnostics import diagnose_and_log

    files = _pairs(truth, "truth", "chexpert=raw/chexpert/truth.csv")
    diagnosis, run_id = diagnose_and_log(_config(config, overrides), run, truth_files=files, probe_images=probe_images)
    _lines([f"note: {note}" for note in diagnosis.notes])
    _tables(diagnosis.tables())
    say(f"logged to MLflow run {run_id} (metrics and artifacts diagnostics/)")


@verb
def compare(
    data: Annotated[Path, typer.Option(help="The prepared dataset whose labels score both models.")],
    predictions: Annotated[Optional[list[Path]], typer.Option(help="Two files written by cxr predict: A, then B.")] = None,
    run: Annotated[Optional[list[str]], typer.Option(help="Two models (training runs by id or name, or any --model reference), A then B: their logged test predictions.")] = None,
    split: Annotated[str, typer.Option(help="The split both were scored on.")] = "test",
    domain: Annotated[Optional[str], typer.Option(help="The domain compared. Default: the internal one.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap replicates for the intervals of Δ.")] = 2000,
    seed: opt.Seed = 0, stats_json: opt.StatsJson = None,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Model B against model A on the images both scored: per finding AUC_A, AUC_B, Δ = B − A with a
    paired-bootstrap 95% interval, DeLong's p and Holm's p across findings; Δ and its interval for
    Mean, Mean_Com and Mean_Int. A difference whose interval holds 0 may be noise."""
    from orchestration.evaluation.comparison import compare_models, comparison_table

    result = compare_models(_config(config, overrides), data, predictions=predictions, runs=run, domain=domain,
                            split=split, bootstrap=bootstrap, seed=seed)
    _print_frame(comparison_table(result), f"B against A on {result.stats['num_images']:,} images "
                                           f"({result.domain}, {result.split}); {bootstrap} paired replicates")
    _warn(result.notes(), "note")
    if stats_json:
        stats_json.write_text(json.dumps(result.stats, indent=1))


@verb
def report(
    out: Annotated[Path, typer.Option(help="Folder to write report.md, report.html and the figures into.")],
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default: mlflow.experiment of the config).")] = None,
    parent: Annotated[Optional[str], typer.Option(help="Only this sweep: the MLflow id of its parent run.")] = None,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Paper-style tables (Tables II, III, VI), Fig. 4 curves and Optuna plots from MLflow alone.

    Each sweep gets a section (also logged to its parent run under report/); stand-alone training
    runs get one more. Runs that failed, were stopped or are still running are listed apart.
    """
    from orchestration.evaluation.report import write_report
    from orchestration.settings.tracking import client_for

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per section instead
    cfg = _config(config, overrides)
    _lines(write_report(client_for(cfg), experiment or cfg.mlflow.experiment, out, parent, progress=say).lines())


@verb
def clean() -> None:
    """Stop the Ray processes that cxr commands killed with SIGKILL (kill -9, the OOM killer) left
    running. A local Ray ends with the command that started it, except then: its agents live on.
    Every local Ray start does this too. Deletes no files but its own records of those sessions."""
    from orchestration.settings.runtime import stop_orphaned_ray

    stopped = stop_orphaned_ray()
    _lines([f"stopped {count} process(es) of the Ray session {session}, left by a killed cxr command"
            for session, count in stopped] or ["no Ray processes left by killed cxr commands"])


def main() -> None:
    # Everything this process prints passes the masking: MLflow's own lines ("View run at URI",
    # its warnings) and Ray's carry the tracking URI, credentials included.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskedStream(lambda: out), MaskedStream(lambda: err)
    app()


if __name__ == "__main__":
    sys.exit(main())
