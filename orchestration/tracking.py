"""MLflow: one truthful run per training, found again by a deterministic tag after any restart.

- `open_run` finds the run tagged `cxr.run_name=<name>` (resuming it) or creates it, refusing to
  resume with different settings.
- `MetricLogger` (rank 0 of the workers) logs with explicit steps and skips every step an earlier
  attempt already logged, so a restart from an older checkpoint never logs an epoch twice.
- Secrets (tokens, passwords, credentials in URIs) never reach params or tags.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestration.config import Config, ConfigError, flatten_config

RUN_NAME_TAG = "cxr.run_name"
PLAN_ARTIFACT = "plan/plan.json"  # the training plan (`cxr train --dry-run`), logged by every run
PRETRAINED_PARAM = "model.pretrained"  # false: trained from random weights, not the paper's ImageNet start
PARENT_TAG = "mlflow.parentRunId"
# Settings that may change when a run is resumed.
RESUMABLE_CHANGES = {"train.max_failures"}
_SECRET_KEY = re.compile(r"token|password|passwd|secret|credential|api_?key|auth", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def tracking_uri(config: Config) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    return (
        config.mlflow.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    )


def redact(values: dict[str, Any]) -> dict[str, str]:
    """Params / tags safe to store: secret-looking keys masked, credentials cut out of URIs."""
    safe = {}
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if _SECRET_KEY.search(key):
            text = "***"
        safe[key] = _URI_USERINFO.sub("***@", text)[:6000]
    return safe


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


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


def resolve_run_id(client: MlflowClient, experiment: str, run: str) -> str:
    """`run` as an MLflow run id, or else as the name of a training run (`cxr train --run-name`)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run).info.run_id
    except MlflowException:
        named = find_run(client, experiment, run)
    if named is None:
        raise ConfigError(f"no MLflow run with id or run name {run!r} in experiment {experiment!r}")
    return named.info.run_id


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
    all_tags = {RUN_NAME_TAG: run_name, "mlflow.runName": run_name, **redact(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id(client, config.mlflow.experiment), run_name=run_name, tags=all_tags)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id, False


class MetricLogger:
    """Logs metric groups with explicit steps; a step an earlier attempt logged is skipped."""

    def __init__(self, uri: str, run_id: str):
        self.client, self.run_id = MlflowClient(uri), run_id
        self._floor: dict[str, int] = {}

    def _logged_through(self, group: str) -> int:
        if group not in self._floor:
            history = self.client.get_metric_history(self.run_id, f"progress/{group}")
            self._floor[group] = max((int(m.step) for m in history), default=-1)
        return self._floor[group]

    def log(self, group: str, metrics: dict[str, float], step: int) -> bool:
        """Log `metrics` at `step` unless this group was logged at that step or later before."""
        if step <= self._logged_through(group):
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        batch.append(Metric(f"progress/{group}", float(step), now, step))
        self.client.log_batch(self.run_id, metrics=batch)
        return True

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in redact(tags).items()])
