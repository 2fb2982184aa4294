"""Talking to MLflow in the terms of `schema`: the store and client of a config, finding runs,
sweeps and registered models again, opening and resuming runs, and logging.

A training run is found again by `cxr.run_name` after any restart: `open_run` resumes it, refusing
other settings, and `MetricLogger` skips every step an earlier attempt already logged. Secrets
(tokens, passwords, credentials in URIs) never reach params or tags.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.settings.config import Config, ConfigError, flatten_config
from orchestration.settings.masking import MASK, is_secret_key, mask_text
from orchestration.settings.schema import (
    CHAMPION,
    CHECKPOINT_TAG,
    EVALUATES_TAG,
    EVALUATION,
    EVALUATION_ARTIFACT,
    EXPERIMENT_KIND_TAG,
    KIND_TAG,
    MLFLOW_RUN_NAME_TAG,
    MODEL_ARTIFACT,
    MODEL_TRAINING_KIND,
    PARENT_TAG,
    PRETRAINED_PARAM,
    RESUMABLE_CHANGES,
    ROW_LABEL_TAG,
    ROW_TAG,
    RUN_NAME_TAG,
    SEED_TAG,
    SPACE_KIND_TAG,
    SPACE_TAG,
    SWEEP,
    SWEEP_TAG,
    TRAINING,
    TRIAL_TAG,
    best_metric,
)


def tracking_uri(config: Config) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    return (
        config.mlflow.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    )


def client_for(config: Config) -> MlflowClient:
    return mlflow_client(tracking_uri(config))


_READY_STORES: set[str] = set()


def mlflow_client(uri: str) -> MlflowClient:
    """A client of the store at `uri`. A SQLite store is created (or migrated) first, once per
    process, holding an exclusive lock on the database file: MLflow creates its tables on first
    use, and two processes doing that at once leave a store every later use fails on."""
    if uri.startswith("sqlite:///") and ":memory:" not in uri and uri not in _READY_STORES:
        import fcntl

        database = Path(uri.removeprefix("sqlite:///").split("?")[0])
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database, "ab") as held:  # SQLite itself locks with fcntl, not flock: no conflict
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                MlflowClient(uri).search_experiments(max_results=1)  # creates or migrates the schema
            finally:
                fcntl.flock(held, fcntl.LOCK_UN)
        _READY_STORES.add(uri)
    return MlflowClient(uri)


def redact(values: dict[str, Any]) -> dict[str, str]:
    """Params / tags safe to store: secret-looking keys masked, credentials cut out of URIs."""
    safe = {}
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        safe[key] = MASK if is_secret_key(key) else mask_text(text)[:6000]
    return safe


# --- lookups ------------------------------------------------------------------------------------
def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id; a new one is created for the MLflow UI's model-training view."""
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})


def existing_experiment_id(client: MlflowClient, experiment: str) -> str:
    """The id of an experiment that must exist already (for reading it)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"MLflow has no experiment {experiment!r} at this tracking URI")
    return exp.experiment_id


def find_tagged_run(client: MlflowClient, experiment: str, tags: dict[str, str]):
    """The run of `experiment` carrying all these tag values, or None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    condition = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], filter_string=condition)
    return runs[0] if runs else None


def find_run(client: MlflowClient, experiment: str, run_name: str):
    """The training run named `run_name` (by its cxr.run_name tag), or None."""
    return find_tagged_run(client, experiment, {RUN_NAME_TAG: run_name})


def find_sweep(client: MlflowClient, experiment: str, sweep_name: str):
    """The sweep's MLflow parent run, or None."""
    return find_tagged_run(client, experiment, {SWEEP_TAG: sweep_name, KIND_TAG: SWEEP})


def runs_of_kind(client: MlflowClient, experiment: str, kind: str) -> list:
    """The experiment's runs tagged `cxr.kind=kind`, oldest first."""
    return client.search_runs([existing_experiment_id(client, experiment)],
                              filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
                              order_by=["attributes.start_time ASC"])


def standalone_training_runs(client: MlflowClient, experiment: str) -> list:
    """Training runs that are no sweep's trial, oldest first (older runs lack cxr.kind)."""
    runs = client.search_runs([existing_experiment_id(client, experiment)], order_by=["attributes.start_time ASC"])
    return [r for r in runs if RUN_NAME_TAG in r.data.tags and PARENT_TAG not in r.data.tags]


def child_runs(client: MlflowClient, parent_run_id: str) -> list:
    """A sweep's trial runs, oldest first."""
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])


def resolve_run_id(client: MlflowClient, experiment: str, run: str) -> str:
    """`run` as an MLflow run id, or else as the name of a training run (`cxr train --run-name`)."""
    try:
        return client.get_run(run).info.run_id
    except MlflowException:
        named = find_run(client, experiment, run)
    if named is None:
        raise ConfigError(f"no MLflow run with id or run name {run!r} in experiment {experiment!r}")
    return named.info.run_id


def register_and_promote(client: MlflowClient, name: str, run_id: str, metric: str) -> tuple[str, bool]:
    """Register run `run_id`'s logged model as a new version of `name`; move the alias `champion`
    to it when the run's best `metric` beats the champion's run (or there is none). Returns the
    version and whether it became champion."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)  # register_model finds the run's logged model there
    try:
        version = mlflow.register_model(logged_model_uri(client, run_id), name).version
    finally:
        mlflow.set_tracking_uri(previous)
    mine = client.get_run(run_id).data.metrics.get(best_metric(metric), float("-inf"))
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        theirs = client.get_run(champion.run_id).data.metrics.get(best_metric(metric), float("-inf"))
    except MlflowException:
        theirs = None
    promoted = theirs is None or mine > theirs
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return str(version), promoted


def logged_model_uri(client: MlflowClient, run_id: str) -> str:
    """models:/ID of the model run `run_id` logged. MLflow 3 keeps a logged model beside its run, not
    among the run's artifacts: given runs:/RUN/model, register_model warns on the console and looks
    the model up this way itself."""
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_ARTIFACT}'", max_results=1)
    if not found:
        raise ConfigError(f"MLflow run {run_id} logged no model named {MODEL_ARTIFACT!r} (mlflow.log_model=false?)")
    return f"models:/{found[0].model_id}"


def registered_version(client: MlflowClient, uri: str):
    """models:/NAME@ALIAS or models:/NAME/VERSION -> that MLflow ModelVersion (name, version, run_id)."""
    name, _, rest = uri.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, rest)
    except MlflowException as exc:
        raise ConfigError(f"{uri}: no such registered model version in {client.tracking_uri} "
                          f"({exc.message.splitlines()[0]})") from None


def run_checkpoint(client: MlflowClient, run_id: str) -> str:
    """The final checkpoint folder of a finished training run: a path, or a URI in an object store."""
    path = client.get_run(run_id).data.tags.get(CHECKPOINT_TAG)
    if not path:
        raise ConfigError(f"MLflow run {run_id} has no {CHECKPOINT_TAG} tag: it is not a finished cxr train run")
    return path


def run_of_checkpoint(client: MlflowClient, experiment: str, checkpoint: Path) -> str | None:
    """The training run whose final checkpoint is `checkpoint`, if the experiment has one."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`{CHECKPOINT_TAG}` = '{checkpoint.resolve()}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def download_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    """An artifact's text, or None when the run has no such artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
        except (OSError, MlflowException):
            return None


# --- writing ------------------------------------------------------------------------------------
def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k[:250], v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def open_run(
    client: MlflowClient, config: Config, run_name: str, *, tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """(run_id, resumed). A new run gets the flattened config as params; a resumed one must match it."""
    params = redact({**flatten_config(config), PRETRAINED_PARAM: str(config.model.weights is not None).lower()})
    existing = find_run(client, config.mlflow.experiment, run_name)
    if existing is not None:
        old = existing.data.params
        changed = sorted(k for k in params if k in old and old[k] != params[k] and k not in RESUMABLE_CHANGES)
        if changed:
            details = "; ".join(f"{k}: {old[k]!r} -> {params[k]!r}" for k in changed[:5])
            raise ConfigError(
                f"run {run_name!r} was started with other settings ({details}); resume it with the "
                "same settings or start a new run with another --run-name"
            )
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, True
    all_tags = {KIND_TAG: TRAINING, RUN_NAME_TAG: run_name, MLFLOW_RUN_NAME_TAG: run_name, **redact(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id(client, config.mlflow.experiment), run_name=run_name, tags=all_tags)
    _log_params(client, run.info.run_id, params)
    return run.info.run_id, False


def trial_tags(sweep_name: str, trial_id: str, seed: int, row: str | None = None, row_label: str = "") -> dict:
    """The tags of one sweep trial's training run."""
    tags = {SWEEP_TAG: sweep_name, TRIAL_TAG: trial_id, SEED_TAG: str(seed)}
    if row is not None:
        tags |= {ROW_TAG: row, ROW_LABEL_TAG: row_label}
    return tags


def open_sweep(client: MlflowClient, experiment: str, sweep_name: str, space_name: str, space_kind: str,
               params: dict[str, Any]) -> str:
    """A new sweep's parent run."""
    run = client.create_run(experiment_id(client, experiment), run_name=sweep_name, tags={
        KIND_TAG: SWEEP, SWEEP_TAG: sweep_name, SPACE_TAG: space_name, SPACE_KIND_TAG: space_kind,
        MLFLOW_RUN_NAME_TAG: sweep_name,
    })
    _log_params(client, run.info.run_id, redact(params))
    return run.info.run_id


def log_metrics_now(client: MlflowClient, run_id: str, metrics: dict[str, float],
                    params: dict[str, str] | None = None) -> None:
    """Metrics at step 0, now (and params, redacted), on a run that exists."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in redact(params or {}).items()])


def log_evaluation(client: MlflowClient, experiment: str, name: str, metrics: dict[str, float], table_csv: str,
                   params: dict[str, str], evaluates: str | None, artifacts: dict[str, Any] | None = None) -> str:
    """A new, finished evaluation run, linked to the training run it evaluates (if known);
    `artifacts`: path -> text, or a matplotlib figure."""
    tags = {KIND_TAG: EVALUATION, MLFLOW_RUN_NAME_TAG: name, **({EVALUATES_TAG: evaluates} if evaluates else {})}
    run_id = client.create_run(experiment_id(client, experiment), tags=tags).info.run_id
    log_metrics_now(client, run_id, metrics, params)
    client.log_text(run_id, table_csv, EVALUATION_ARTIFACT)
    for path, content in (artifacts or {}).items():
        (client.log_text if isinstance(content, str) else client.log_figure)(run_id, content, path)
    client.set_terminated(run_id, "FINISHED")
    return run_id


class MetricLogger:
    """Logs metrics with explicit steps, off the training thread, surviving a tracking-server outage.

    A metric is logged at a step only past the last step it was ever logged at in this run, so a
    restart from an older checkpoint logs nothing twice. `log` only queues (bounded); a thread
    delivers. A request that fails after MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    exponential backoff: its last waits reach a minute or more, so a server that is back can sit
    unused that long) is tried again every `retry_every_s` until the server has been unreachable
    for `retry_s`; new metrics wait in the queue meanwhile. What still cannot be delivered, or finds
    the queue full, is appended to `spill_file` (JSON lines; None: a new private temporary file made
    at the first spill), never dropped; `close` says how many."""

    def __init__(self, uri: str, run_id: str, *, spill_file: Path | None = None, queue_size: int = 10_000,
                 retry_s: float = 600.0, retry_every_s: float = 2.0):
        self.client, self.run_id = MlflowClient(uri), run_id
        self.retry_s, self.retry_every_s = retry_s, retry_every_s
        self._unreachable_since: float | None = None
        self.spill_file = spill_file
        self.undelivered = 0
        self._logged_through: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._in_flight: tuple | None = None
        self._thread = threading.Thread(target=self._deliver, name="cxr-mlflow", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        item = ({k: float(v) for k, v in metrics.items()}, step, int(time.time() * 1000))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._spill(item, "the delivery queue was full")

    def close(self, timeout: float = 300.0) -> int:
        """Deliver what is queued (waiting at most `timeout` s); returns how many metric values went
        to `spill_file` instead."""
        self._queue.put((None, None, None))
        self._thread.join(timeout)
        if self._thread.is_alive():  # still retrying: keep what it holds and what waits behind it
            if self._in_flight is not None:
                self._spill(self._in_flight, "still undelivered when training ended")
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[0] is not None:
                    self._spill(item, "still undelivered when training ended")
        return self.undelivered

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item[0] is None:
                return
            self._in_flight = item
            self._deliver_one(item)
            self._in_flight = None

    def _deliver_one(self, item: tuple) -> None:
        while True:
            try:
                self._send(*item)
                self._unreachable_since = None
                return
            except Exception as exc:  # noqa: BLE001 - any failure: retry within the bound, then keep the values
                now = time.monotonic()
                self._unreachable_since = self._unreachable_since or now
                if now - self._unreachable_since >= self.retry_s:
                    self._spill(item, f"{type(exc).__name__}: {exc}"[:300])
                    return
                time.sleep(self.retry_every_s)

    def _last_step(self, key: str) -> int:
        if key not in self._logged_through:
            history = self.client.get_metric_history(self.run_id, key)
            self._logged_through[key] = max((int(m.step) for m in history), default=-1)
        return self._logged_through[key]

    def _send(self, metrics: dict[str, float], step: int, timestamp: int) -> None:
        batch = [Metric(k, v, timestamp, step) for k, v in metrics.items() if step > self._last_step(k)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
        for metric in batch:
            self._logged_through[metric.key] = step

    def _spill(self, item: tuple, reason: str) -> None:
        metrics, step, timestamp = item
        if self.spill_file is None:  # a fresh file of our own, never a predictable shared name
            fd, name = tempfile.mkstemp(prefix=f"cxr-undelivered-{self.run_id}-", suffix=".jsonl")
            os.close(fd)
            self.spill_file = Path(name)
        self.spill_file.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_file.open("a") as out:
            out.write(json.dumps({"run_id": self.run_id, "step": step, "timestamp": timestamp,
                                  "metrics": metrics, "reason": reason}) + "\n")
        self.undelivered += len(metrics)
