"""`cxr predict --data`: a trained model's probabilities for every image of a prepared split, as a
table (image_id, domain, one column per finding): what `cxr evaluate --predictions` reads back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrcommon.errors import DataPrepError
from data_prep.prepared import PreparedDataset
from data_prep.split import SPLITS
from orchestration.evaluation.decisions import read_decisions
from orchestration.evaluation.scoring import PREDICTION_COLUMNS, prediction_frame, score_split
from orchestration.settings.config import ConfigError
from orchestration.settings.plan import TrainingPlan

if TYPE_CHECKING:  # torch only where a model is loaded: `cxr compare` and `evaluate --predictions` read tables
    import torch


def trained_image_size(checkpoint: Path) -> int:
    """The side of the images a model was trained on: that of its prepared dataset."""
    from orchestration.training.checkpoint import read_run_description

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


def predict_prepared(checkpoint: Path, data: Path, *, split: str = "test", domains: list[str] | None = None,
                     tencrop: bool = False, device: str = "cpu") -> pd.DataFrame:
    """`predict_table` for the model in a checkpoint folder, on a prepared dataset folder, with the
    calibrated probabilities and 0/1 calls of its decisions file when it has one."""
    from orchestration.training.checkpoint import load_trained

    net, _, plan = load_trained(checkpoint)
    frame = predict_table(net, plan, PreparedDataset.load(data), split=split, domains=domains, tencrop=tencrop,
                          device=device)
    return read_decisions(checkpoint, plan.label_space).decided(frame, plan.label_space)


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
