"""`cxr tune` / `cxr ablate`: Ray Tune over `search_spaces/`, each trial one `cxr train` run.

- search spaces: OptunaSearch (seeded TPE; multi-objective when several metrics are given);
  grids and ablations: every point once (× seeds), as Tune grid searches.
- Each trial is a Tune function that runs one `cxr train` run under a run name derived from its
  trial id, so an interrupted trial resumes from its own checkpoints and continues its own MLflow
  child run. A one-worker trial trains in its own process, reporting to Tune; a multi-worker one
  starts a Ray Train TorchTrainer (the Train V2 pattern, with TuneReportCallback). Tune runs the
  next trial in the finished one's process (reuse_actors): no process start and imports between trials.
- MLflow: one parent run per sweep (tag cxr.sweep_name), one child per trial. `--resume` restores the
  Tune experiment: finished trials are not rerun, the same parent and children continue, and at the
  end no child is left RUNNING (early-stopped trials end FINISHED, errored ones FAILED).
- A search's Optuna study lives in the sweep's folder (SQLite, `OPTUNA_STUDY_FILE`): `--resume`
  continues it, so the sampler proposes from the finished trials' values instead of starting over,
  and `optuna.load_study` or optuna-dashboard can read the search while it runs.
- Tune's restart_errored is never used: with OptunaSearch it corrupts the sweep state.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from cxrcommon.storage import absolute, is_uri
from data_prep.prepared import PreparedDataset
from orchestration.settings.config import Config, ConfigError, check_run_name, flatten_config, load_config
from orchestration.settings.masking import masked
from orchestration.settings.plan import PlanError, plan_training
from orchestration.settings.runtime import (
    check_resources,
    exit_on_signals,
    init_ray,
    on_own_thread,
    release_memory,
    verbose,
)
from orchestration.settings.schema import (
    BEST_DIR,
    BEST_TRIAL_TAG,
    EARLY_STOPPED_TAG,
    EPOCH_METRIC,
    LOST_TRIAL_TAG,
    PARETO_TAG,
    SELECTION_METRICS,
    SPACE_DIR,
    TEST_SUMMARY_METRICS,
    TRIAL_TAG,
    TRIALS_DIR,
    TRIALS_ERRORED,
    TRIALS_TOTAL,
    sweep_best_metric,
)
from orchestration.settings.tracking import (
    child_runs,
    find_sweep,
    mlflow_client,
    open_sweep,
    tracking_uri,
    trial_tags,
)
from orchestration.sweeps.spaces import SweepSpace
from orchestration.training.train import run_training, trains_alone, worker_resources

# A multi-worker trial's driver only waits on its TorchTrainer: a sliver of a CPU, so clusters need no
# custom resource.
TRIAL_DRIVER_RESOURCES = {"cpu": 0.01}
SCHEDULERS = ("asha", "none")
OPTUNA_STUDY_FILE = "optuna_study.db"


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs; checked when made (the space-dependent checks are `check_for`)."""

    sweep_name: str
    num_samples: int = 1
    max_concurrent: int = 1
    scheduler: str = "none"  # asha | none
    metrics: tuple[str, ...] = SELECTION_METRICS[:1]
    seeds: int = 1
    resume: bool = False
    search_seed: int = 0

    def __post_init__(self) -> None:
        check_run_name(self.sweep_name, "sweep name")
        for metric in self.metrics:
            if metric not in SELECTION_METRICS:
                raise ConfigError(f"--metric {metric!r} is not one of {', '.join(SELECTION_METRICS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r}: allowed {', '.join(SCHEDULERS)}")
        if len(self.metrics) > 1 and self.scheduler == "asha":
            raise ConfigError("several metrics (multi-objective) need --scheduler none")
        for name in ("num_samples", "max_concurrent", "seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def for_grid(cls, space: SweepSpace, sweep_name: str, *, max_concurrent: int, seeds: int,
                 resume: bool) -> SweepSettings:
        """A grid runs every row (× seeds) and is judged by its space's metric."""
        return cls(sweep_name=sweep_name, max_concurrent=max_concurrent, metrics=(space.metric,), seeds=seeds,
                   resume=resume)

    def check_for(self, space: SweepSpace) -> None:
        if len(self.metrics) > 1 and space.kind != "search":
            raise ConfigError(f"several metrics (multi-objective) need a kind: search space; {space.path} is "
                              f"a {space.kind}")


def sweep_name(given: str | None, resume: bool, prefix: str) -> str:
    """The given name, or a new timestamped one; resuming needs the name of the sweep to continue."""
    if given:
        return check_run_name(given, "--sweep-name")
    if resume:
        raise ConfigError("--resume needs --sweep-name NAME (the name printed when the sweep started)")
    return datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")


@dataclass
class SweepOutcome:
    parent_run_id: str
    trials: pd.DataFrame
    best_config_path: Path | None
    best_updates: dict

    def shown_trials(self, space: SweepSpace, settings: SweepSettings) -> pd.DataFrame:
        """The trials table as printed: status, what the trial varied, its metrics."""
        described_by = "row" if space.kind == "ablation" else "params"
        columns = list(dict.fromkeys(["status", described_by, *settings.metrics, TEST_SUMMARY_METRICS[0]]))
        return self.trials.set_index("trial_id")[columns]

    def summary(self, settings: SweepSettings, data: Path) -> list[str]:
        """The lines after the trials: the Pareto front, the best trial and its config, the parent run."""
        lines = []
        if len(settings.metrics) > 1:
            front = self.trials[self.trials["pareto"]]
            lines.append(f"Pareto front over {', '.join(settings.metrics)} ({len(front)} of {len(self.trials)} trials): "
                         + "; ".join(f"{r.trial_id} (" + ", ".join(f"{r[m]:.4f}" for m in settings.metrics) + ")"
                                     for _, r in front.iterrows()))
        if self.best_config_path:
            lines += [f"best trial {self.best_updates['trial_id']}: {self.best_updates}",
                      f"its config: {self.best_config_path} (cxr train --data {data} --config {self.best_config_path})"]
        return [*lines, f"MLflow parent run: {self.parent_run_id}"]


def _trial(params: dict, *, base: dict, space: SweepSpace, data: str, sweep_name: str, parent_run_id: str) -> None:
    """One Tune trial: a full `cxr train` run, its MLflow run nested under the sweep's."""
    trial_id = tune.get_context().get_trial_id()
    config = _trial_config(params, base, space)
    params = params.get("point", params)
    row = str(params["row"]) if "row" in params else None
    tags = trial_tags(sweep_name, trial_id, config.train.seed, row, space.row_label(row) if row else "")
    run_training(config, plan_training(config, data), run_name=f"{sweep_name}-{trial_id}",
                 parent_run_id=parent_run_id, tags=tags, in_trial=True)
    release_memory()  # Tune runs the next trial in this process (reuse_actors): ~250 MB a trial otherwise


def _trial_config(params: dict, base: dict, space: SweepSpace) -> Config:
    """A trial's config: the sweep's base with the trial's point (grid and ablation points arrive whole)."""
    # The sweep registers its best trial's model once it is known, not every trial's.
    updates = {**space.trial_updates(params.get("point", params)), "mlflow.register_model": None}
    return load_config(base=base, updates=updates)


def _trial_resources(params: dict, *, base: dict, space: SweepSpace) -> dict[str, float]:
    """What Tune books for a trial: its worker's resources where it trains itself, else a sliver for
    the driver of its TorchTrainer (whose workers book their own). Per trial: a space may vary
    train.workers."""
    config = _trial_config(params, base, space)
    return worker_resources(config) if trains_alone(config) else TRIAL_DRIVER_RESOURCES


def _check_trials(space: SweepSpace, base: Config, data: str, seeds: int) -> list[dict]:
    """Every grid point / the base config must make a valid training plan: checked before Ray."""
    prepared = PreparedDataset.load(data)
    points = space.grid_points(prepared.domains, prepared.internal, seeds) if space.kind != "search" else [{}]
    for point in points:
        try:
            plan_training(load_config(base=base.model_dump(mode="json"), updates=space.trial_updates(point)), data)
        except (ConfigError, PlanError) as exc:
            where = f"row {point['row']!r}" if "row" in point else (str(point) if point else "the base config")
            raise ConfigError(f"{space.path}: {where}: {exc}") from None
    return points


STOPPED_TRIAL_WAIT_S = 10


def _settle_children(client: MlflowClient, parent_run_id: str, trial_status: dict[str, str]) -> None:
    """No child left RUNNING: Tune may stop a trial (ASHA) or lose it without its run ending. A
    trial Tune ended TERMINATED whose run did not finish by itself was stopped by the scheduler:
    its run may still say RUNNING, or FAILED when the stop reached the training as an error first."""
    def stopped(run) -> bool:
        return trial_status.get(run.data.tags.get(TRIAL_TAG, ""), "") == "TERMINATED"

    # Tune returns while a stopped trial's process may still be ending its run (as FAILED): wait for
    # it, so that its write does not land after ours.
    deadline = time.monotonic() + STOPPED_TRIAL_WAIT_S
    while time.monotonic() < deadline and any(
            stopped(r) and r.info.status == "RUNNING" for r in child_runs(client, parent_run_id)):
        time.sleep(0.5)
    for run in child_runs(client, parent_run_id):
        if stopped(run) and run.info.status in ("RUNNING", "FAILED"):
            client.set_tag(run.info.run_id, EARLY_STOPPED_TAG, "true")
            client.set_terminated(run.info.run_id, "FINISHED")
        elif run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")


def _end_lost_trials(client: MlflowClient, parent_run_id: str, known: set[str]) -> None:
    """A trial started after Tune last saved the sweep's state (it saves every second) is not in the
    restored sweep, which runs a new trial in its place: the lost trial's run ends KILLED and tagged,
    so that none is left RUNNING and reports say why it has no result."""
    for run in child_runs(client, parent_run_id):
        trial = run.data.tags.get(TRIAL_TAG)
        if trial in known or run.info.status not in ("RUNNING", "KILLED") or LOST_TRIAL_TAG in run.data.tags:
            continue
        client.set_tag(run.info.run_id, LOST_TRIAL_TAG, "true")
        client.set_terminated(run.info.run_id, "KILLED")
        print(f"trial {trial} had started after the sweep last saved its state: its MLflow run {run.info.run_id} "
              "ends KILLED and a new trial takes its place", flush=True)


def run_sweep(
    space: SweepSpace, base: Config, data: str | Path, settings: SweepSettings, *,
    address: str | None = None, handle_signals: bool = False,
) -> SweepOutcome:
    settings.check_for(space)
    data = absolute(data)
    original_storage = base.train.storage_path
    if is_uri(original_storage):
        raise ConfigError(f"train.storage_path={original_storage}: a sweep keeps its folder (Tune's state, the Optuna "
                          "study's SQLite file) on a local or shared path; give a folder (the data may stay in the store)")
    storage = Path(original_storage).resolve()
    # Trials run in Ray's working directory: give them the store this driver resolved, and keep
    # each trial's Train run checkpoints inside the sweep's folder.
    base = load_config(base=base.model_dump(mode="json"), updates={
        "train.storage_path": str(storage / settings.sweep_name / "train"), "mlflow.tracking_uri": tracking_uri(base),
    })
    points = _check_trials(space, base, data, settings.seeds)
    scheduler = asha_scheduler(base.train.epochs) if settings.scheduler == "asha" else None
    experiment_path = storage / settings.sweep_name

    uri = tracking_uri(base)
    client = mlflow_client(uri)
    parent = find_sweep(client, base.mlflow.experiment, settings.sweep_name)
    if settings.resume:
        if not tune.Tuner.can_restore(str(experiment_path)):
            raise ConfigError(f"nothing to resume: no sweep {settings.sweep_name!r} under {storage}")
        if parent is None:
            raise ConfigError(f"no MLflow parent run of sweep {settings.sweep_name!r} to continue")
    elif experiment_path.exists() or parent is not None:
        raise ConfigError(f"sweep {settings.sweep_name!r} exists already: pass --resume to continue it, or "
                          "choose another --sweep-name")

    init_ray(address)
    # Each trial checks its own training; trials running side by side are checked together here,
    # before the parent run opens (or is reopened).
    concurrent = min(settings.max_concurrent, settings.num_samples if space.kind == "search" else len(points))
    in_trial = trains_alone(base)
    check_resources(worker_resources(base), base.train.min_workers or base.train.workers, base.train.placement,
                    trials=concurrent, trial_driver_cpus=0.0 if in_trial else TRIAL_DRIVER_RESOURCES["cpu"])
    if settings.resume:
        parent_run_id = parent.info.run_id
        client.update_run(parent_run_id, status="RUNNING")
    else:
        parent_run_id = _open_parent(client, base, space, settings)

    if not verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one line per study and trial
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base.model_dump(mode="json"), space=space, data=data,
                             sweep_name=settings.sweep_name, parent_run_id=parent_run_id),
        functools.partial(_trial_resources, base=base.model_dump(mode="json"), space=space),
    )
    # Tune saves its experiment state at most every 10 s by default: a trial started in between is
    # not in it, and --resume would start it again as a new trial beside its orphaned MLflow run.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune adds a TensorBoard logger beside its CSV and JSON ones unless told not to: importing
    # tensorboardX imports torch, ~2.4 s of the sweep's driver before its first trial here. MLflow is
    # this project's record; the CSV and JSON loggers (Tune's own results) are passed explicitly.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if settings.resume:
        tuner = tune.Tuner.restore(str(experiment_path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        _end_lost_trials(client, parent_run_id, {t.trial_id for t in sweep_trials(tuner.get_results())})
        finished = _finished_in_study(experiment_path, settings.sweep_name)
        if finished is not None:
            print(f"continuing the Optuna study of sweep {settings.sweep_name!r} from its {finished} finished "
                  "trial(s)", flush=True)
    else:
        tuner = _new_tuner(trainable, space, settings, data, scheduler, experiment_path,
                           base.train.max_failures if in_trial else 0)

    def killed(signal_name: str) -> None:
        for run in child_runs(client, parent_run_id):
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
        client.set_terminated(parent_run_id, "KILLED")
        print(f"stopped by {signal_name}: sweep runs ended KILLED; continue with --resume", file=sys.stderr, flush=True)

    try:
        with exit_on_signals(killed, handle_signals):
            results = on_own_thread(tuner.fit)
        trials = _trial_table(results, space)
        # The trials no other trial beats on every metric: with one metric, the best trial(s).
        trials["pareto"] = trials["trial_id"].isin(pareto_front(trials, settings.metrics, space.mode)["trial_id"])
        _settle_children(client, parent_run_id, dict(zip(trials["trial_id"], trials["status"])))
        best_path, best_updates = _write_best(results, trials, space, settings, base, experiment_path,
                                              original_storage)
        _log_parent(uri, parent_run_id, trials, experiment_path, best_path, best_updates, settings)
        if base.mlflow.register_model and best_updates:
            _register_best(client, parent_run_id, best_updates["trial_id"], base)
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise
    client.set_terminated(parent_run_id, "FINISHED" if (trials["status"] != "ERROR").any() else "FAILED")
    return SweepOutcome(parent_run_id, trials, best_path, best_updates)


def _register_best(client: MlflowClient, parent_run_id: str, trial_id: str, base: Config) -> None:
    from orchestration.evaluation.model_card import register_version  # torch: this driver trains nothing

    run = next(r for r in child_runs(client, parent_run_id) if r.data.tags.get(TRIAL_TAG) == trial_id)
    print(register_version(client, base.mlflow.register_model, run.info.run_id, base.train.select_metric,
                           f"the best trial's model as {base.mlflow.register_model}"), flush=True)


def _open_parent(client: MlflowClient, base: Config, space: SweepSpace, settings: SweepSettings) -> str:
    params = {
        "space": space.name, "space_kind": space.kind, "num_samples": settings.num_samples,
        "max_concurrent": settings.max_concurrent, "scheduler": settings.scheduler,
        "metric": ",".join(settings.metrics), "seeds": settings.seeds, "search_seed": settings.search_seed,
        **{f"base.{k}": v for k, v in flatten_config(base).items()},
    }
    run_id = open_sweep(client, base.mlflow.experiment, settings.sweep_name, space.name, space.kind, params)
    client.log_artifact(run_id, str(space.path), SPACE_DIR)
    return run_id


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that leaves alone the trials its study has finished. A driver killed after Optuna
    recorded a trial's value and before Tune saved its state (at most a second) reruns that trial
    on --resume, from its last checkpoint; the rerun reports again, and reporting to a finished
    Optuna trial is an error (the study keeps the value it was told first)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._finished_in_study(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not self._finished_in_study(trial_id):
            super().on_trial_complete(trial_id, result, error)

    def _finished_in_study(self, trial_id: str) -> bool:
        proposed = self._ot_trials.get(trial_id)
        if proposed is None:
            return False
        finished = proposed.study.get_trials(deepcopy=False, states=FINISHED_STATES)
        return any(t.number == proposed.number for t in finished)


FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def study_storage(experiment_path: Path) -> optuna.storages.RDBStorage:
    """The search's Optuna study, on disk in the sweep's folder."""
    experiment_path.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{experiment_path / OPTUNA_STUDY_FILE}")


def _finished_in_study(experiment_path: Path, sweep: str) -> int | None:
    """How many trials the sweep's study holds values of; None for a grid (no study)."""
    if not (experiment_path / OPTUNA_STUDY_FILE).exists():
        return None
    study = optuna.load_study(study_name=sweep, storage=study_storage(experiment_path))
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _new_tuner(trainable, space: SweepSpace, settings: SweepSettings, data: str, scheduler: ASHAScheduler | None,
               experiment_path: Path, max_failures: int) -> tune.Tuner:
    """`max_failures`: Tune restarts a trial that trains itself from its last checkpoint (a TorchTrainer's
    workers are restarted by Ray Train)."""
    metrics, modes = list(settings.metrics), [space.mode] * len(settings.metrics)
    single = len(metrics) == 1
    if space.kind == "search":
        sampler = optuna.samplers.TPESampler(seed=settings.search_seed)
        search_alg = ResumableOptunaSearch(space=space.define_by_run, metric=metrics if not single else metrics[0],
                                           mode=modes if not single else modes[0], sampler=sampler,
                                           study_name=settings.sweep_name, storage=study_storage(experiment_path))
        param_space, num_samples = {}, settings.num_samples
    else:
        prepared = PreparedDataset.load(data)
        points = space.grid_points(prepared.domains, prepared.internal, settings.seeds)
        search_alg, num_samples = None, 1
        param_space = {"point": tune.grid_search(points)}
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metrics[0] if single else None, mode=modes[0] if single else None,
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=settings.max_concurrent, reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=settings.sweep_name, storage_path=str(experiment_path.parent),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=[CSVLoggerCallback(), JsonLoggerCallback()]),
    )


def asha_scheduler(epochs: int) -> ASHAScheduler:
    """ASHA judging trials by their epoch reports, at epochs 1, 4, 16, ... below the last one. A
    trial that reaches its last epoch is never stopped: it ends by itself, with its test metrics,
    artifacts and FINISHED run (a stop at the last report would cut those off). Its final report
    repeats the last epoch's number, so ASHA does not judge it again."""
    if epochs < 2:
        raise ConfigError(f"--scheduler asha stops trials between epochs: it needs train.epochs of 2 or more "
                          f"(got {epochs})")
    return ASHAScheduler(time_attr=EPOCH_METRIC, max_t=epochs - 1, grace_period=1, stop_last_trials=False)


def sweep_trials(results: tune.ResultGrid) -> list:
    """Every trial of a finished Tune run, those that errored before reporting anything included
    (the public ResultGrid leaves them out). Ray has no public API for this: the one place that
    reads its private ExperimentAnalysis (tests/test_tune.py checks it on the installed Ray)."""
    analysis = getattr(results, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None)
    if trials is None:
        raise RuntimeError(f"ray {ray.__version__}: ResultGrid._experiment_analysis.trials is gone; "
                           "update orchestration.sweeps.tune.sweep_trials for this Ray version")
    return trials


def _trial_table(results: tune.ResultGrid, space: SweepSpace) -> pd.DataFrame:
    rows = []
    for trial in sweep_trials(results):
        params = trial.config.get("point", trial.config)
        last = trial.last_result or {}
        rows.append({
            "trial_id": trial.trial_id, "status": trial.status, "row": params.get("row", ""),
            "params": yaml.safe_dump(space.trial_updates(params), default_flow_style=True, width=10_000).strip(),
            **{k: last.get(k) for k in (*SELECTION_METRICS, *TEST_SUMMARY_METRICS)},
        })
    return pd.DataFrame(rows)


def pareto_front(trials: pd.DataFrame, metrics: tuple[str, ...], mode: str) -> pd.DataFrame:
    scored = trials.dropna(subset=list(metrics))
    sign = 1 if mode == "max" else -1
    values = scored[list(metrics)].to_numpy() * sign
    keep = [not any((other >= v).all() and (other > v).any() for other in values) for v in values]
    return scored[keep]


def _write_best(results, trials: pd.DataFrame, space: SweepSpace, settings: SweepSettings, base: Config,
                experiment_path: Path, original_storage: str) -> tuple[Path | None, dict]:
    front = trials[trials["pareto"]]
    if front.empty:
        return None, {}
    best = front.loc[front[list(settings.metrics)].sum(axis=1).idxmax() if space.mode == "max"
                     else front[list(settings.metrics)].sum(axis=1).idxmin()]
    trial = next(t for t in sweep_trials(results) if t.trial_id == best["trial_id"])
    updates = space.trial_updates(trial.config.get("point", trial.config))
    config = load_config(base=base.model_dump(mode="json"), updates={
        **updates, "train.storage_path": original_storage, "train.run_name": None, "mlflow.tracking_uri": None,
    })
    path = experiment_path / "best_config.yaml"
    path.write_text(yaml.safe_dump(masked(config.model_dump(mode="json")), sort_keys=False))
    return path, {"trial_id": best["trial_id"], **updates,
                  **{m: float(best[m]) for m in settings.metrics}}


def _log_parent(uri: str, parent_run_id: str, trials: pd.DataFrame, experiment_path: Path,
                best_path: Path | None, best: dict, settings: SweepSettings) -> None:
    client = mlflow_client(uri)
    table = experiment_path / "trials.csv"
    trials.to_csv(table, index=False)
    client.log_artifact(parent_run_id, str(table), TRIALS_DIR)
    if best_path is not None:
        client.log_artifact(parent_run_id, str(best_path), BEST_DIR)
        client.set_tag(parent_run_id, BEST_TRIAL_TAG, best["trial_id"])
    if len(settings.metrics) > 1:
        client.set_tag(parent_run_id, PARETO_TAG, ",".join(trials.loc[trials["pareto"], "trial_id"]))
        for metric in settings.metrics:
            client.log_metric(parent_run_id, sweep_best_metric(metric), best[metric])
    client.log_metric(parent_run_id, TRIALS_ERRORED, int((trials["status"] == "ERROR").sum()))
    client.log_metric(parent_run_id, TRIALS_TOTAL, len(trials))
