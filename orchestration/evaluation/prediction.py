"""`cxr predict`: a trained model's probabilities for every image of a split, as a table.

A model is found by its checkpoint folder, or by its training run (id or run name) through the
run's `cxr.checkpoint` tag. The table (image_id, domain, one column per finding) is what
`cxr evaluate --predictions` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from cxrcommon.errors import DataPrepError
from data_prep.prepared import PreparedDataset
from data_prep.split import SPLITS
from orchestration.evaluation.scoring import PREDICTION_COLUMNS, prediction_frame, score_split
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.plan import TrainingPlan
from orchestration.settings.tracking import (
    client_for,
    registered_run,
    resolve_run_id,
    run_checkpoint,
    run_of_checkpoint,
)
from orchestration.training.checkpoint import read_run_description


@dataclass(frozen=True)
class ModelReference:
    checkpoint: Path
    run_id: str | None  # the training run it came from, where the tracking store knows it


def resolve_model(config: Config, model: str | Path) -> ModelReference:
    """A checkpoint folder from any model reference: the folder itself, models:/NAME@ALIAS (or
    models:/NAME/VERSION) of the MLflow Model Registry, or a training run's id or name."""
    client, text = client_for(config), str(model)
    if text.startswith("models:/"):
        run_id = registered_run(client, text)
    elif Path(text).exists():
        return ModelReference(Path(text), run_of_checkpoint(client, config.mlflow.experiment, Path(text)))
    else:
        run_id = resolve_run_id(client, config.mlflow.experiment, text)
    return ModelReference(run_checkpoint(client, run_id), run_id)


def trained_image_size(checkpoint: Path) -> int:
    """The side of the images a model was trained on: that of its prepared dataset."""
    _, plan = read_run_description(checkpoint)
    try:
        return PreparedDataset.load(plan.data).image_size
    except DataPrepError:
        raise ConfigError(f"the model's prepared data {plan.data} is not readable here: pass --image-size "
                          "(the side it was prepared at)") from None


def predict_table(
    net: torch.nn.Module, plan: TrainingPlan, prepared: PreparedDataset, *, split: str = "test",
    domains: list[str] | None = None, tencrop: bool = False, batch_size: int = 64, device: str = "cpu",
) -> pd.DataFrame:
    """One row per image: image_id, domain, then one probability column per finding."""
    plan.require_labels_of(prepared)
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    frames = []
    net = net.to(device)
    for domain in domains or prepared.domains:
        if domain not in prepared.domains:
            raise ConfigError(f"--domain {domain!r} is not one of {prepared.domains}")
        scored = score_split(net, prepared, domain, split, batch_size=batch_size, device=device, tencrop=tencrop)
        frames.append(prediction_frame(scored, prepared, domain, split))
    return pd.concat(frames, ignore_index=True)


def write_table(frame: pd.DataFrame, out: Path) -> None:
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise ConfigError(f"--out {out}: the extension decides the format, .parquet or .csv")


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(f"predictions file {path} does not exist")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; expected image_id, domain, then one column "
                          "per finding")
    return frame
