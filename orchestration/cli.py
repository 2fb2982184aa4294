"""`cxr`: the one command-line entry point. Run `cxr --help` or `cxr COMMAND --help`."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cxrcommon.errors import UserError
from data_prep.config import SourceConfig
from data_prep.readers import READERS
from orchestration.settings.config import Config, check_run_name, load_config, with_updates
from orchestration.settings.masking import MaskedStream

if TYPE_CHECKING:
    import pandas as pd

    from orchestration.sweeps.spaces import SweepSpace
    from orchestration.sweeps.tune import SweepOutcome

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
    help="Train chest X-ray classifiers from several imperfect datasets at once (Luo et al.) on Ray.",
)
console = Console(file=MaskedStream(lambda: sys.stderr))  # type: ignore[arg-type]

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


class UsageError(UserError):
    """Bad command-line arguments."""


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def verb(function):
    """A command: the project's user errors become `error: ...` and exit status 2, no traceback."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as exc:
            _fail(str(exc))
    return app.command(function.__name__.replace("_", "-"))(run)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show Ray's own console output (execution plans, worker and raylet messages); they are always in Ray's log files. Same as CXR_VERBOSE=1.")] = False,
) -> None:
    if verbose:
        os.environ["CXR_VERBOSE"] = "1"
    if os.environ.get("CXR_VERBOSE", "") in ("", "0"):
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not its INFO lines (database setup, system metrics)


def _print_frame(frame: "pd.DataFrame", title: str) -> None:
    """A table on stdout: floats to 4 decimals, blank where missing."""
    shown = Table(title=title)
    shown.add_column(str(frame.index.name or ""))
    for column in frame.columns:
        shown.add_column(str(column), justify="right")
    for name, row in frame.iterrows():
        shown.add_row(str(name), *[_cell(v) for v in row])
    Console().print(shown)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


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
    from data_prep.synth import synthesize

    if scenario is None:
        folders = synthesize(out, images_per_source=images_per_source or 300, image_size=image_size or 256, seed=seed,
                             inhouse_format=inhouse_format,
                             sources=tuple(x.strip() for x in sources.split(",") if x.strip()))
    else:
        from data_prep.scenario import load_scenario, synthesize_scenario

        if images_per_source is not None:
            raise UserError("--images-per-source: a scenario sets each dataset's size; copy its YAML to change them")
        folders = synthesize_scenario(out, load_scenario(scenario), seed=seed, image_size=image_size)
    for name, folder in folders.items():
        console.print(f"wrote {name:9s} {folder}")
    flags = [f"--{name} {folder}" if name != "inhouse" else f"--csv inhouse={folder / 'labels.csv'}"
             for name, folder in folders.items()]
    if "inhouse" in folders and inhouse_format == "dicom":
        console.print("the in-house set holds one DICOM file without pixel data: cxr prepare lists it as skipped")
        flags.append("--max-bad-fraction 0.01")
    internal = "" if "nih" in folders else f" --internal {next(iter(folders))}"
    console.print(f"next: cxr prepare {' '.join(flags)}{internal} --out PREPARED_DIR", soft_wrap=True)


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


def _sources_from_flags(config: Config, folders: dict[str, Path | None], csv: list[str]) -> list[SourceConfig]:
    """Config sources, then one per dataset flag (named as its kind), then the --csv ones."""
    sources = {s.name: s for s in config.prepare.sources}
    for kind, folder in folders.items():
        if folder:
            sources[kind] = SourceConfig(name=kind, kind=kind, path=folder)
    for item in csv:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--csv {item!r}: expected NAME=FILE, e.g. --csv inhouse=/data/labels.csv")
        previous = sources.get(name)
        extra = previous.model_dump(exclude={"name", "kind", "path"}, exclude_unset=True) if previous else {}
        sources[name] = SourceConfig(name=name, kind="csv", path=Path(file), **extra)
    return list(sources.values())


def _print_presets() -> None:
    from data_prep.findings import PRESETS_DIR, load_preset, preset_names

    for kind in preset_names():
        preset = load_preset(kind)
        console.print(f"[bold]{kind}[/] ({PRESETS_DIR / kind}.yaml): {preset.description}; labels not listed: "
                      f"{'stop cxr prepare' if preset.unlisted == 'error' else 'ignored, named in the manifest'}",
                      highlight=False, soft_wrap=True)
        for label, finding in preset.labels.items():
            console.print(f"  {label:28s} -> {finding or '(ignored)'}", highlight=False, soft_wrap=True)
    console.print("override any of them with label_map in the dataset's config "
                  "(prepare.sources[].label_map: {LABEL: FINDING or null})", highlight=False, soft_wrap=True)


TABLE_ONE_TITLE = "Findings per dataset (positives; '-' = not labelled; * = common to all)"


@verb
@with_dataset_flags
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
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Read, join, split and preprocess the datasets into Parquet shards with Ray Data."""
    from data_prep.join import dataset_stats, load_sources, table_one

    if list_presets:
        _print_presets()
        return
    flags = {"internal": internal, "image_size": image_size, "max_bad_fraction": max_bad_fraction}
    extra = [f"prepare.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(config or [], [*extra, *(overrides or [])])
    cfg = with_updates(cfg, "prepare", sources=[s.model_dump(mode="json") for s in
                                                _sources_from_flags(cfg, folders, csv or [])])
    if not dry_run and out is None:
        raise UsageError("--out is required (or use --dry-run)")
    joined = load_sources(cfg.prepare, find_images=not dry_run)
    stats = dataset_stats(joined)
    for warning in joined.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if stats_json:
        stats_json.write_text(json.dumps(stats, indent=1))
    if dry_run:
        _print_frame(table_one(stats), TABLE_ONE_TITLE)
        return
    from data_prep.pipeline import run_prepare
    from orchestration.settings.runtime import init_ray

    init_ray(address)
    manifest = run_prepare(joined, cfg.prepare, out, overwrite=overwrite,
                           resolved_config=cfg.model_dump(mode="json")).manifest
    _print_frame(table_one(manifest.model_dump()), TABLE_ONE_TITLE)
    for warning in manifest.warnings[len(joined.warnings):]:  # remarks on images, from decoding
        console.print(f"[yellow]note:[/] {warning}", highlight=False, soft_wrap=True)
    console.print(f"prepared {manifest.num_samples:,} images into {out} "
                  f"({len(manifest.skipped)} skipped, listed in manifest.json)")


@verb
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
    from orchestration.settings.plan import plan_document, plan_tables, plan_training

    flags = {"workers": workers, "gpu": gpu}
    cfg = load_config(config or [], [*[f"train.{k}={v}" for k, v in flags.items() if v is not None], *(overrides or [])])
    plan = plan_training(cfg, data)
    document = plan_document(cfg, plan)
    if plan_json:
        plan_json.write_text(json.dumps(document, indent=1))
    if dry_run:
        roles = ", ".join(f"{d} ({r})" for d, r in document["roles"].items())
        Console().print(f"training domains: {roles}\n{document['epochs']} epochs x {document['steps_per_epoch']} "
                        f"steps = {document['total_steps']} steps; batch {document['per_domain_batch']} per domain "
                        f"per worker, {document['workers']} worker(s)", highlight=False)
        findings, schedule = plan_tables(document)
        _print_frame(findings, "findings (β = N / P over the training domains' train splits)")
        _print_frame(schedule, "at each epoch boundary")
        return
    _warn_without_imagenet(cfg)
    from orchestration.training.train import default_run_name, run_training

    name = check_run_name(run_name or cfg.train.run_name or default_run_name())
    console.print(f"run name: [bold]{name}[/] (resume with: cxr train --data {data} --run-name {name} ...)",
                  highlight=False, soft_wrap=True)
    outcome = run_training(cfg, plan, address=address, run_name=name, handle_signals=True)
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


def _run_sweep(space: "SweepSpace", data: Path, settings_kwargs: dict, address: str | None,
               config: list[Path] | None, overrides: list[str] | None) -> "SweepOutcome":
    from orchestration.sweeps.tune import SweepSettings, run_sweep

    base = load_config(config or [], overrides or [])
    if space.paper:
        _warn_without_imagenet(base)
    settings = SweepSettings(**settings_kwargs)
    console.print(f"sweep [bold]{settings.sweep_name}[/] over {space.path} ({space.kind}); "
                  f"continue it after a stop with --sweep-name {settings.sweep_name} --resume",
                  highlight=False, soft_wrap=True)
    outcome = run_sweep(space, base, data, settings, address=address, handle_signals=True)
    described_by = "row" if space.kind == "ablation" else "params"
    columns = list(dict.fromkeys(["status", described_by, *settings.metrics, "test_mean_auc"]))
    _print_frame(outcome.trials.set_index("trial_id")[columns], f"trials of {settings.sweep_name}")
    if len(settings.metrics) > 1:
        front = outcome.trials[outcome.trials["pareto"]]
        console.print(f"Pareto front over {', '.join(settings.metrics)} ({len(front)} of {len(outcome.trials)} "
                      "trials): " + "; ".join(f"{row.trial_id} ("
                                              + ", ".join(f"{row[m]:.4f}" for m in settings.metrics) + ")"
                                              for _, row in front.iterrows()),
                      highlight=False, soft_wrap=True)
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
        return check_run_name(given, "--sweep-name")
    if resume:
        raise UsageError("--resume needs --sweep-name NAME (the name printed when the sweep started)")
    return datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")


@verb
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
    from orchestration.sweeps.spaces import load_space

    loaded = load_space(space)
    metrics = tuple(m.strip() for m in metric.split(",") if m.strip()) or (loaded.metric,)
    settings = dict(sweep_name=_sweep_name(sweep_name, resume, "tune"), num_samples=num_samples,
                    max_concurrent=max_concurrent, scheduler=scheduler, metrics=metrics, seeds=seeds,
                    resume=resume, search_seed=search_seed)
    _run_sweep(loaded, data, settings, address, config, overrides)


@verb
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
    from orchestration.sweeps.spaces import load_space

    loaded = load_space(grid)
    if rows:
        loaded = loaded.only_rows([r.strip() for r in rows.split(",") if r.strip()])
    if loaded.kind == "search":
        raise UsageError(f"{loaded.path} is a search space: run it with cxr tune --space")
    name = _sweep_name(sweep_name, resume, loaded.name.replace("_", "-"))
    _run_sweep(loaded, data, _grid_settings(loaded, name, max_concurrent, seeds, resume), address, config, overrides)


def _grid_settings(space: "SweepSpace", name: str, max_concurrent: int, seeds: int, resume: bool) -> dict:
    return dict(sweep_name=name, max_concurrent=max_concurrent, metrics=(space.metric,), seeds=seeds, resume=resume)


@verb
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
    from data_prep.prepared import PreparedDataset
    from orchestration.settings.tracking import client_for, find_sweep
    from orchestration.sweeps.cross_domain import SPACE_NAME, cross_domain_matrix, log_cross_domain
    from orchestration.sweeps.spaces import load_space

    name = _sweep_name(sweep_name, resume, "cross-domain")
    cfg = load_config(config or [], overrides or [])
    client = client_for(cfg)
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
    _print_frame(result.matrix, f"mean AUC over the {len(result.common)} common findings "
                                f"(rows: tested on, columns: trained on)")
    console.print(f"logged to MLflow run {parent_run_id} (artifacts cross_domain/)")


@verb
def predict(
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .csv.")],
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset folder (or give --images).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Raw images instead of --data: a folder (PNG, JPEG, DICOM, searched recursively) or a CSV with a path column.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A cxr train checkpoint_* folder.")] = None,
    run: Annotated[Optional[str], typer.Option(help="A cxr train run, by MLflow run id or run name (uses its checkpoint).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Any of: a checkpoint folder, a run id or name, models:/NAME@ALIAS (the MLflow Model Registry).")] = None,
    split: Annotated[str, typer.Option(help="With --data: train, val or test.")] = "test",
    domain: Annotated[Optional[list[str]], typer.Option(help="With --data: domain(s) to predict (default: all).")] = None,
    tencrop: Annotated[bool, typer.Option("--tencrop", help="Average 10 crops (4 corners + centre, flipped).")] = False,
    device: Annotated[str, typer.Option(help="With --data: cpu or cuda (--images uses a GPU per actor when the cluster has them).")] = "cpu",
    image_size: Annotated[Optional[int], typer.Option(help="With --images: the side the model was trained at. Default: that of its prepared data.")] = None,
    actors: Annotated[int, typer.Option(help="With --images: at most this many model copies scoring in parallel.")] = 2,
    address: Address = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Write one probability per finding for every image of a prepared split, or of a folder / CSV of
    raw images (--images): image_id, domain, findings (and path).

    --run and --model names are looked up in the MLflow store and experiment of the config
    (--config / overrides such as mlflow.tracking_uri=..., else $MLFLOW_TRACKING_URI).
    """
    from orchestration.evaluation.prediction import resolve_model, write_table

    if (data is None) == (images is None):
        raise UsageError("give --data DIR (a prepared split) or --images DIR|CSV (raw files)")
    if sum(x is not None for x in (checkpoint, run, model)) != 1:
        raise UsageError("give the model once: --model, --checkpoint or --run")
    cfg = load_config(config or [], overrides or [])
    found = checkpoint if checkpoint is not None else resolve_model(cfg, model or run).checkpoint
    if images is not None:
        _predict_images(cfg, images, found, out, tencrop=tencrop, image_size=image_size, actors=actors,
                        address=address)
        return
    from data_prep.prepared import PreparedDataset
    from orchestration.evaluation.prediction import predict_table
    from orchestration.training.checkpoint import load_trained

    net, _, plan = load_trained(found)
    frame = predict_table(net, plan, PreparedDataset.load(data), split=split, domains=domain, tencrop=tencrop,
                          device=device)
    write_table(frame, out)
    console.print(f"wrote {len(frame):,} predictions to {out}")


def _predict_images(cfg: Config, images: Path, checkpoint: Path, out: Path, *, tencrop: bool,
                    image_size: int | None, actors: int, address: str | None) -> None:
    from orchestration.evaluation.image_prediction import list_images, predict_images
    from orchestration.evaluation.prediction import trained_image_size, write_table
    from orchestration.settings.runtime import init_ray
    from orchestration.training.checkpoint import trained_weights

    listed = list_images(images)
    size = image_size or trained_image_size(checkpoint)
    trained_weights(checkpoint)  # refuse an unusable checkpoint here, not in every scoring actor
    init_ray(address)
    import ray

    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    console.print(f"scoring {len(listed):,} images at {size}² with up to {actors} model copies"
                  + (" on GPUs" if gpus else ""), highlight=False)
    step = max(len(listed) // 10, 1)

    def progress(done: int, total: int) -> None:
        if done // step != (done - 1) // step or done == total:
            console.print(f"  {done:,} / {total:,}", highlight=False)

    result = predict_images(listed, checkpoint, size=size, tencrop=tencrop, domain=images.stem, actors=actors,
                            gpus_per_actor=gpus, progress=progress)
    write_table(result.table, out)
    skipped = out.with_name(out.stem + ".skipped.json")
    skipped.write_text(json.dumps(result.skipped, indent=1))
    console.print(f"wrote {len(result.table):,} predictions to {out}; {len(result.skipped)} images could not be "
                  f"used, listed with the reason in {skipped}", highlight=False, soft_wrap=True)


@verb
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
    bootstrap: Annotated[int, typer.Option(help="With --data: bootstrap replicates for 95% intervals of each AUC and mean (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """AUC of a model's predictions per finding, with 95% bootstrap intervals; printed and logged as an MLflow evaluation run.

    The evaluation run is linked to the training run given with --run (tag cxr.evaluates).
    Predictions come from --predictions FILE (cxr predict), or are made here with --checkpoint or
    --run on --data. Labels: --data (per-finding AUC, Mean, Mean_Com and Mean_Int of every domain)
    or --clean-labels (AUC on Google's relabelled NIH images; images there without a prediction are
    counted). --run is looked up in the MLflow store and experiment of the config.
    """
    from orchestration.evaluation.clean_labels import evaluate_on_relabelled
    from orchestration.evaluation.scoring import evaluate_on_prepared
    from orchestration.settings.tracking import client_for, log_evaluation, resolve_run_id

    if predictions is not None and checkpoint is not None:
        raise UsageError("give --predictions FILE or --checkpoint PATH, not both")
    if predictions is None and checkpoint is None and run is None:
        raise UsageError("give --predictions FILE, or --checkpoint PATH / --run RUN to predict here")
    if predictions is None and data is None:
        raise UsageError("predicting here needs --data DIR (the prepared images)")
    if predictions is not None and (data is None) == (clean_labels is None):
        raise UsageError("give exactly one of --data DIR (the prepared labels) or --clean-labels FILE")
    cfg = load_config(config or [], overrides or [])
    client = client_for(cfg)
    evaluates = resolve_run_id(client, cfg.mlflow.experiment, run) if run else None
    if predictions is not None:
        from orchestration.evaluation.prediction import read_predictions

        frame, source = read_predictions(predictions), str(predictions.resolve())
    else:
        from data_prep.prepared import PreparedDataset
        from orchestration.evaluation.prediction import predict_table, resolve_model
        from orchestration.training.checkpoint import load_trained

        net, _, plan = load_trained(checkpoint if checkpoint is not None else resolve_model(cfg, run).checkpoint)
        frame = predict_table(net, plan, PreparedDataset.load(data), split=split, tencrop=tencrop, device=device)
        source = f"{split} split of {data.resolve()} predicted by {checkpoint or run}"
    result = (evaluate_on_relabelled(frame, clean_labels, set_name) if clean_labels
              else evaluate_on_prepared(frame, data, bootstrap=bootstrap, seed=seed))
    what = predictions.name if predictions else checkpoint.name if checkpoint else run
    against = f" against relabelled NIH ({set_name})" if clean_labels else ""
    run_id = log_evaluation(client, cfg.mlflow.experiment, f"evaluate {what}{against}", result.metrics,
                            result.table.to_csv(), {**result.params, "predictions": source}, evaluates)
    if result.shown is not None:
        _print_frame(result.shown, f"AUC of {what} [95% interval, {bootstrap} bootstrap replicates]")
    else:
        _print_frame(result.table, f"AUC of {what}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if csv_out:
        result.table.to_csv(csv_out)
    if stats_json:
        stats_json.write_text(json.dumps(result.stats, indent=1))
    console.print(f"logged as MLflow run {run_id}")


@verb
def explain(
    out: Annotated[Path, typer.Option(help="Folder for the contact sheets, overlays and explain.csv.")],
    run: Annotated[Optional[str], typer.Option(help="A cxr train run, by MLflow run id or run name (uses its checkpoint).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A cxr train checkpoint_* folder.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Any of: a checkpoint folder, a run id or name, models:/NAME@ALIAS.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset. Default: the one the model was trained on.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    domain: Annotated[Optional[str], typer.Option(help="The domain whose images are explained. Default: the model's internal one.")] = None,
    findings: Annotated[Optional[str], typer.Option(help="Comma-separated findings. Default: every finding the domain labels.")] = None,
    top: Annotated[int, typer.Option(help="Images per finding: the K the model scores highest.")] = 4,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Grad-CAM heat maps of where the model looks: for each finding, the K images of a split it
    scores highest, as overlays and one contact sheet, with explain.csv (probability, label and the
    heat map's peak per image).

    The maps weigh the last dense block's output (denseblock4, 1/32 of the image side) by the gradient
    of that finding's output, so a model trained at 256² gives 8x8 cells of evidence. When the model
    comes from a training run that the MLflow store knows, the folder is also logged to it under explain/.
    """
    from data_prep.prepared import PreparedDataset
    from orchestration.evaluation.explanation import INDEX_FILE, explain_top_images
    from orchestration.evaluation.prediction import resolve_model
    from orchestration.evaluation.scoring import score_split
    from orchestration.settings.tracking import EXPLAIN_ARTIFACT_DIR, client_for
    from orchestration.training.checkpoint import load_trained

    if sum(x is not None for x in (checkpoint, run, model)) != 1:
        raise UsageError("give the model once: --model, --checkpoint or --run")
    if checkpoint is not None and not checkpoint.is_dir():
        raise UsageError(f"--checkpoint {checkpoint} is not a folder (a cxr train checkpoint_* folder)")
    cfg = load_config(config or [], overrides or [])
    found = resolve_model(cfg, checkpoint or model or run)
    net, _, plan = load_trained(found.checkpoint)
    prepared = PreparedDataset.load(data or plan.data)
    plan.require_labels_of(prepared)
    domain = domain or plan.internal
    if domain not in prepared.domains:
        raise UsageError(f"--domain {domain!r} is not one of {prepared.domains}")
    chosen = [f.strip() for f in findings.split(",") if f.strip()] if findings else prepared.domain_findings(domain)
    console.print(f"scoring the {prepared.num_samples(domain, split):,} {domain} {split} images, then Grad-CAM "
                  f"of the top {top} for {len(chosen)} findings", highlight=False)
    scores = score_split(net.to(device), prepared, domain, split, device=device)
    result = explain_top_images(net, plan.label_space, prepared, domain, split, scores, chosen, top, out,
                                progress=lambda line: console.print(f"  {line}", highlight=False))
    console.print(f"wrote {len(result.sheets)} contact sheets, {len(result.index)} overlays and "
                  f"{out / INDEX_FILE}", highlight=False)
    if found.run_id is not None:
        client_for(cfg).log_artifacts(found.run_id, str(out), EXPLAIN_ARTIFACT_DIR)
        console.print(f"logged under {EXPLAIN_ARTIFACT_DIR}/ of MLflow run {found.run_id}", highlight=False)
    else:
        console.print("not logged to MLflow: no run in the store has this checkpoint", highlight=False)


@verb
def diagnose(
    run: Annotated[str, typer.Option(help="A cxr train run on generated data, by MLflow run id or run name.")],
    truth: Annotated[Optional[list[str]], typer.Option(help="DOMAIN=FILE: a domain's truth.csv (default: beside the dataset the run's data were prepared from).")] = None,
    probe_images: Annotated[int, typer.Option(help="Test images per domain for the TAT probe.")] = 400,
    config: ConfigFiles = None,
    overrides: Overrides = None,
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
    import pandas as pd

    from orchestration.evaluation.diagnostics import diagnose_run, log_diagnosis
    from orchestration.settings.tracking import client_for, resolve_run_id

    files = {}
    for item in truth or []:
        domain, sep, file = item.partition("=")
        if not sep or not domain or not file:
            raise UsageError(f"--truth {item!r}: expected DOMAIN=FILE, e.g. --truth chexpert=raw/chexpert/truth.csv")
        files[domain] = Path(file)
    cfg = load_config(config or [], overrides or [])
    client = client_for(cfg)
    run_id = resolve_run_id(client, cfg.mlflow.experiment, run)
    diagnosis = diagnose_run(client, run_id, truth_files=files, probe_images=probe_images)
    for note in diagnosis.notes:
        console.print(f"note: {note}", highlight=False)
    if not diagnosis.ensemble.empty:
        by_epoch = diagnosis.ensemble.groupby("epoch")[["z_auc", "p_auc", "pass_share", "pass_right"]].mean()
        _print_frame(by_epoch, "TE / UTE on the external training images, mean over the internal-only findings "
                               "(z: ensemble targets, p: the network's predictions, against the truth)")
        _print_frame(diagnosis.ensemble.set_index(["epoch", "finding"]), "per finding")
    if diagnosis.probe:
        _print_frame(pd.DataFrame({"probe AUC": diagnosis.probe}),
                     "TAT: internal vs external by each common finding's features (held-out AUC; 0.5 = invariant)")
    log_diagnosis(client, run_id, diagnosis)
    console.print(f"logged to MLflow run {run_id} (metrics and artifacts diagnostics/)", highlight=False)


@verb
def compare(
    data: Annotated[Path, typer.Option(help="The prepared dataset whose labels score both models.")],
    predictions: Annotated[Optional[list[Path]], typer.Option(help="Two files written by cxr predict: A, then B.")] = None,
    run: Annotated[Optional[list[str]], typer.Option(help="Two training runs (id or name), A then B: their logged test predictions.")] = None,
    split: Annotated[str, typer.Option(help="The split both were scored on.")] = "test",
    domain: Annotated[Optional[str], typer.Option(help="The domain compared. Default: the internal one.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap replicates for the intervals of Δ.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    stats_json: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here.")] = None,
    config: ConfigFiles = None,
    overrides: Overrides = None,
) -> None:
    """Model B against model A on the images both scored: per finding AUC_A, AUC_B, Δ = B − A with a
    paired-bootstrap 95% interval, DeLong's p and Holm's p across findings; Δ and its interval for
    Mean, Mean_Com and Mean_Int. A difference whose interval holds 0 may be noise."""
    from data_prep.prepared import PreparedDataset
    from orchestration.evaluation.comparison import compare_predictions, comparison_table, run_test_predictions
    from orchestration.evaluation.prediction import read_predictions

    if bool(predictions) == bool(run) or len(predictions or run or []) != 2:
        raise UsageError("give two models: --predictions A.parquet --predictions B.parquet, or --run A --run B")
    cfg = load_config(config or [], overrides or [])
    prepared = PreparedDataset.load(data)
    frames = ([read_predictions(p) for p in predictions] if predictions
              else [run_test_predictions(cfg, r, prepared) for r in run])
    result = compare_predictions(*frames, prepared, domain=domain, split=split, bootstrap=bootstrap, seed=seed)
    _print_frame(comparison_table(result), f"B against A on {result.stats['num_images']:,} images "
                                           f"({result.domain}, {result.split}); {bootstrap} paired replicates")
    if result.only_in_a or result.only_in_b:
        console.print(f"[yellow]note:[/] left out: {result.only_in_a} images only A scored, "
                      f"{result.only_in_b} only B scored", highlight=False)
    if stats_json:
        stats_json.write_text(json.dumps(result.stats, indent=1))


@verb
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
    from orchestration.evaluation.report import write_report
    from orchestration.settings.tracking import client_for

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per section instead
    cfg = load_config(config or [], overrides or [])
    outcome = write_report(client_for(cfg), experiment or cfg.mlflow.experiment, out, parent,
                           progress=lambda line: console.print(line, highlight=False))
    for section in outcome.sections:
        runs = len(section.section.runs)
        console.print(f"{section.section.title}: {len(section.table)} table rows from {runs} runs, "
                      f"{len(section.excluded)} not averaged in, {len(section.figures)} figures", highlight=False)
    console.print(f"report: {outcome.markdown} and {outcome.html}", highlight=False)
    if outcome.logged_to:
        console.print(f"also logged under report/ of MLflow run(s) {', '.join(outcome.logged_to)}", highlight=False)


@verb
def clean() -> None:
    """Stop the Ray processes that cxr commands killed with SIGKILL (kill -9, the OOM killer) left
    running. A local Ray ends with the command that started it, except then: its agents live on.
    Every local Ray start does this too. Deletes no files but its own records of those sessions."""
    from orchestration.settings.runtime import stop_orphaned_ray

    stopped = stop_orphaned_ray()
    for session, count in stopped:
        console.print(f"stopped {count} process(es) of the Ray session {session}, left by a killed cxr command",
                      highlight=False, soft_wrap=True)
    if not stopped:
        console.print("no Ray processes left by killed cxr commands", highlight=False)


def main() -> None:
    # Everything this process prints passes the masking: MLflow's own lines ("View run at URI",
    # its warnings) and Ray's carry the tracking URI, credentials included.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskedStream(lambda: out), MaskedStream(lambda: err)
    app()


if __name__ == "__main__":
    sys.exit(main())
