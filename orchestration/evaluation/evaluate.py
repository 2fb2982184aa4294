"""`cxr evaluate`: a model's AUC table against the prepared labels or Google's relabelled NIH images,
from a predictions file or predicted here, logged as an MLflow evaluation run linked to the
training run it evaluates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestration.evaluation.clean_labels import evaluate_on_relabelled
from orchestration.evaluation.models import chosen_model
from orchestration.evaluation.prediction import predict_prepared, read_predictions
from orchestration.evaluation.scoring import Evaluation, evaluate_on_prepared
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.tracking import client_for, log_evaluation, resolve_run_id


@dataclass
class Evaluated:
    result: Evaluation
    what: str  # the predictions file or model, as the printed titles name it
    run_id: str  # the evaluation run logged

    def table(self, bootstrap: int) -> tuple[str, pd.DataFrame]:
        """The AUC table as `cxr evaluate` prints it, with its title."""
        if self.result.shown is not None:
            return f"AUC of {self.what} [95% interval, {bootstrap} bootstrap replicates]", self.result.shown
        return f"AUC of {self.what}", self.result.table


def evaluate_model(config: Config, *, predictions: Path | None, data: Path | None, clean_labels: Path | None,
                   set_name: str, run: str | None, model: str | None, checkpoint: Path | None, split: str,
                   tencrop: bool, device: str, bootstrap: int, seed: int) -> Evaluated:
    """Score a predictions file, or (without one) the model given by --model / --checkpoint / --run
    on `split` of every domain of `data`. `run` is the training run the evaluation links to; it
    predicts only when neither --model nor --checkpoint is given."""
    predict_here = predictions is None
    if not predict_here and (checkpoint is not None or model is not None):
        raise ConfigError("give --predictions FILE or --checkpoint PATH, not both")
    if predict_here and checkpoint is None and run is None and model is None:
        raise ConfigError("give --predictions FILE, or --checkpoint PATH / --run RUN to predict here")
    if predict_here and data is None:
        raise ConfigError("predicting here needs --data DIR (the prepared images)")
    if not predict_here and (data is None) == (clean_labels is None):
        raise ConfigError("give exactly one of --data DIR (the prepared labels) or --clean-labels FILE")
    client, experiment = client_for(config), config.mlflow.experiment
    if predict_here:
        by_run = not (model or checkpoint)
        found = chosen_model(config, run=run if by_run else None, model=model, checkpoint=checkpoint)
        # Linked to --run's run (looked up once), else to the run the model came from.
        evaluates = found.run_id if by_run or run is None else resolve_run_id(client, experiment, run)
        what = checkpoint.name if checkpoint else model or run
        frame = predict_prepared(found.checkpoint, data, split=split, tencrop=tencrop, device=device)
        source = f"{split} split of {data.resolve()} predicted by {checkpoint or model or run}"
    else:
        evaluates = resolve_run_id(client, experiment, run) if run else None
        what = predictions.name
        frame, source = read_predictions(predictions), str(predictions.resolve())
    result = (evaluate_on_relabelled(frame, clean_labels, set_name) if clean_labels
              else evaluate_on_prepared(frame, data, bootstrap=bootstrap, seed=seed))
    against = f" against relabelled NIH ({set_name})" if clean_labels else ""
    run_id = log_evaluation(client, experiment, f"evaluate {what}{against}", result.metrics,
                            result.table.to_csv(), {**result.params, "predictions": source}, evaluates)
    return Evaluated(result, what, run_id)
