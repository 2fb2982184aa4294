"""The MLflow Model Registry on a real local store: a new version per registration, the alias
`champion` moving only to a model whose best validation metric beats the champion's."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from orchestration.evaluation.models import ModelReference, resolve_model
from orchestration.settings.config import ConfigError, load_config
from orchestration.settings.schema import CHAMPION, CHECKPOINT_TAG
from orchestration.settings.tracking import register_and_promote


def _run(client: MlflowClient, exp: str, best: float, checkpoint: str) -> str:
    """A finished run with its best validation metric and a (tiny) logged model."""
    import mlflow
    import torch

    run = client.create_run(exp, tags={CHECKPOINT_TAG: checkpoint}).info.run_id
    client.log_metric(run, "best/val_mean_auc", best)
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run):
        mlflow.pytorch.log_model(torch.nn.Linear(1, 1), name="model", input_example=torch.zeros(2, 1).numpy(),
                                 pip_requirements=["torch"])
    return run


def test_champion_moves_only_to_a_better_model(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cxr-orchestra", artifact_location=str(tmp_path / "artifacts"))
    first = _run(client, exp, 0.71, str(tmp_path / "ckpt1"))
    worse = _run(client, exp, 0.69, str(tmp_path / "ckpt2"))
    better = _run(client, exp, 0.75, str(tmp_path / "ckpt3"))
    assert register_and_promote(client, "cxr", first, "val_mean_auc") == ("1", True)
    assert register_and_promote(client, "cxr", worse, "val_mean_auc") == ("2", False)
    assert client.get_model_version_by_alias("cxr", CHAMPION).run_id == first
    assert register_and_promote(client, "cxr", better, "val_mean_auc") == ("3", True)
    assert client.get_model_version_by_alias("cxr", CHAMPION).run_id == better
    bare = client.create_run(exp).info.run_id
    with pytest.raises(ConfigError, match=f"MLflow run {bare} logged no model named 'model'"):
        register_and_promote(client, "cxr", bare, "val_mean_auc")
    # Registered by the logged model's own URI: MLflow had nothing to warn about on the console.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mlflow")], caplog.text

    config = load_config([], [f"mlflow.tracking_uri={uri}"])
    assert resolve_model(config, "models:/cxr@champion") == ModelReference(tmp_path / "ckpt3", better, "cxr", "3")
    assert resolve_model(config, "models:/cxr/2") == ModelReference(tmp_path / "ckpt2", worse, "cxr", "2")
    # A checkpoint folder is traced back to its run; an unknown one has none.
    (tmp_path / "ckpt1").mkdir()
    (tmp_path / "elsewhere").mkdir()
    assert resolve_model(config, str(tmp_path / "ckpt1")) == ModelReference(tmp_path / "ckpt1", first)
    assert resolve_model(config, str(tmp_path / "elsewhere")).run_id is None


def test_registering_needs_the_logged_model():
    with pytest.raises(ConfigError, match="mlflow.register_model needs mlflow.log_model=true"):
        load_config([], ["mlflow.register_model=cxr", "mlflow.log_model=false"])
