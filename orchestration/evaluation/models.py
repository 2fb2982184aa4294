"""Finding a trained model: the one resolver behind every verb's `--run | --model | --checkpoint`.

A model is a cxr train checkpoint folder; it can be named by that folder, by its training run (MLflow
run id or run name, through the run's `cxr.checkpoint` tag) or by a version of the MLflow Model
Registry (models:/NAME@ALIAS, models:/NAME/VERSION). A checkpoint in an object store (a run trained
with train.storage_path=s3://...) is copied into a private temporary folder first.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cxrcommon.storage import Folder, is_uri
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.tracking import (
    client_for,
    registered_version,
    resolve_run_id,
    run_checkpoint,
    run_of_checkpoint,
)


@dataclass(frozen=True)
class ModelReference:
    checkpoint: Path  # a folder on this machine
    run_id: str | None  # the training run it came from, where the tracking store knows it
    registered_name: str | None = None  # given as models:/NAME@ALIAS or models:/NAME/VERSION
    registered_version: str | None = None
    stored_at: str | None = None  # the object-store URI `checkpoint` is a copy of


def _reference(checkpoint: str, run_id: str, name: str | None = None, version: str | None = None) -> ModelReference:
    if not is_uri(checkpoint):
        return ModelReference(Path(checkpoint), run_id, name, version)
    copy = Path(tempfile.mkdtemp(prefix="cxr-checkpoint-"))  # ours alone (mode 0700), removed at exit
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    Folder.at(checkpoint).download(str(copy))
    return ModelReference(copy, run_id, name, version, stored_at=checkpoint)


def resolve_model(config: Config, model: str | Path) -> ModelReference:
    """A checkpoint folder from any model reference: the folder itself, models:/NAME@ALIAS (or
    models:/NAME/VERSION) of the MLflow Model Registry, or a training run's id or name."""
    client, text = client_for(config), str(model)
    if text.startswith("models:/"):
        version = registered_version(client, text)
        return _reference(run_checkpoint(client, version.run_id), version.run_id, version.name, str(version.version))
    if Path(text).exists():
        return ModelReference(Path(text), run_of_checkpoint(client, config.mlflow.experiment, Path(text)))
    run_id = resolve_run_id(client, config.mlflow.experiment, text)
    return _reference(run_checkpoint(client, run_id), run_id)


def chosen_model(config: Config, *, run: str | None = None, model: str | None = None,
                 checkpoint: Path | None = None, find_run: bool = False) -> ModelReference:
    """The model a verb was given by exactly one of --run, --model and --checkpoint. A checkpoint
    folder is taken as it is, without asking the tracking store for its run unless `find_run`."""
    given = [x for x in (checkpoint, run, model) if x is not None]
    if len(given) != 1:
        raise ConfigError("give the model once: --model, --checkpoint or --run")
    if checkpoint is None:
        return resolve_model(config, given[0])
    if not checkpoint.is_dir():
        raise ConfigError(f"--checkpoint {checkpoint} is not a folder (a cxr train checkpoint_* folder)")
    return resolve_model(config, checkpoint) if find_run else ModelReference(checkpoint, None)
