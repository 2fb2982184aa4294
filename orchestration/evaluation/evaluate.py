"""`cxr evaluate`: a model's AUC table against the prepared labels or Google's relabelled NIH images,
with calibration (ECE, Brier, reliability diagrams) and, when asked, operating points; from a
predictions file or predicted here, logged as an MLflow evaluation run linked to the training run
it evaluates. `cxr calibrate`: the temperatures that calibrate a model, fitted on its validation split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrcommon.storage import Folder, absolute
from cxrmodel.operating_points import parse_operating_points
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.calibration_report import calibration_on, fit_temperatures
from orchestration.evaluation.clean_labels import evaluate_on_relabelled
from orchestration.evaluation.decisions import ModelDecisions, read_decisions, write_decisions
from orchestration.evaluation.models import ModelReference, chosen_model
from orchestration.evaluation.operating import choose_thresholds, operating_points_on, shown_operating_points
from orchestration.evaluation.prediction import predict_table, read_predictions
from orchestration.evaluation.scoring import MIN_PER_CLASS, Evaluation, evaluate_on_prepared
from orchestration.evaluation.subgroups import parse_keys, shown_subgroups, subgroup_results
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.schema import (
    CALIBRATION_ARTIFACT,
    DECISIONS_ARTIFACT,
    OPERATING_POINTS_ARTIFACT,
    RELIABILITY_ARTIFACT,
    SUBGROUPS_ARTIFACT,
    temperature_metric,
)
from orchestration.settings.tracking import client_for, log_evaluation, log_metrics_now, resolve_run_id


@dataclass
class Evaluated:
    result: Evaluation
    what: str  # the predictions file or model, as the printed titles name it
    run_id: str  # the evaluation run logged
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # per domain and finding: ECE, Brier
    operating_points: pd.DataFrame = field(default_factory=pd.DataFrame)  # per domain, point and finding
    subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)  # per domain, key, subgroup and finding
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def tables(self, bootstrap: int) -> list[tuple[str, pd.DataFrame]]:
        """The tables `cxr evaluate` prints, with their titles."""
        if self.result.shown is not None:
            out = [(f"AUC of {self.what} [95% interval, {bootstrap} bootstrap replicates]", self.result.shown)]
        else:
            out = [(f"AUC of {self.what}", self.result.table)]
        if len(self.calibration):
            out.append(("Calibration: ECE (equal-mass bins) and Brier score", self.calibration.round(4)))
        if len(self.subgroups):
            out.append((f"Subgroups: Mean AUC and gap to the whole split [95% interval, {bootstrap} replicates]; "
                        "findings listed where the gap's interval excludes 0", shown_subgroups(self.subgroups)))
        if len(self.operating_points):
            out.append((f"Operating points chosen on the validation split [95% interval, {bootstrap} replicates]",
                        shown_operating_points(self.operating_points)))
        return out


@dataclass
class ModelScores:
    """A model's predictions on a prepared dataset, with what is needed to choose on them."""

    found: ModelReference
    prepared: PreparedDataset
    frame: pd.DataFrame  # the split asked for, with the model's decided columns
    val: pd.DataFrame | None  # the internal domain's validation split, when asked for
    internal: str
    evaluated: list[str]
    decisions: ModelDecisions


def model_scores(found: ModelReference, data: Path, *, split: str | None, tencrop: bool, device: str,
                 with_val: bool) -> ModelScores:
    """Load the model once; score `split` of every domain (None: none) and, with `with_val`, the
    internal domain's validation split."""
    from orchestration.training.checkpoint import load_trained  # torch: not for `--predictions`

    net, _, plan = load_trained(found.checkpoint)
    prepared = PreparedDataset.load(data)
    decisions = read_decisions(found.checkpoint, plan.label_space)
    frame = pd.DataFrame()
    if split is not None:
        raw = predict_table(net, plan, prepared, split=split, tencrop=tencrop, device=device)
        frame = decisions.decided(raw, plan.label_space)
    val = predict_table(net, plan, prepared, split="val", domains=[plan.internal], tencrop=tencrop,
                        device=device) if with_val else None
    if val is not None and val.empty:
        raise ConfigError(f"{data}: the {plan.internal} validation split is empty; choosing on it needs images "
                          "(prepare with prepare.val_fraction above 0)")
    return ModelScores(found, prepared, frame, val, plan.internal, plan.evaluated, decisions)


def evaluate_model(config: Config, *, predictions: Path | None, data: Path | None, clean_labels: Path | None,
                   set_name: str, run: str | None, model: str | None, checkpoint: Path | None, split: str,
                   tencrop: bool, device: str, bootstrap: int, seed: int,
                   operating_points: str | None = None, by: str | None = None,
                   subgroup_min: int = MIN_PER_CLASS) -> Evaluated:
    """Score a predictions file, or (without one) the model given by --model / --checkpoint / --run
    on `split` of every domain of `data`. `run` is the training run the evaluation links to; it
    predicts only when neither --model nor --checkpoint is given. With `operating_points`
    (e.g. "youden,sens=0.90"), thresholds are chosen on the internal validation split and saved with
    the model, the first point's making its calls. With `by` (e.g. "sex,age_band"), AUCs per subgroup."""
    predict_here = predictions is None
    if not predict_here and (checkpoint is not None or model is not None):
        raise ConfigError("give --predictions FILE or --checkpoint PATH, not both")
    if predict_here and checkpoint is None and run is None and model is None:
        raise ConfigError("give --predictions FILE, or --checkpoint PATH / --run RUN to predict here")
    if predict_here and data is None:
        raise ConfigError("predicting here needs --data DIR (the prepared images)")
    if not predict_here and (data is None) == (clean_labels is None):
        raise ConfigError("give exactly one of --data DIR (the prepared labels) or --clean-labels FILE")
    points = None
    if operating_points:
        if not predict_here or clean_labels:
            raise ConfigError("--operating-points chooses thresholds on the model's validation split: give the model "
                              "(--run, --model or --checkpoint) and --data, not --predictions or --clean-labels")
        try:
            points = parse_operating_points(operating_points)
        except ValueError as exc:
            raise ConfigError(f"--operating-points: {exc}") from None
    keys = parse_keys(by) if by else None
    if keys and clean_labels:
        raise ConfigError("--by needs the prepared data's subgroups: give --data, not --clean-labels")
    if not predict_here:  # a missing or malformed file is named before the MLflow store is made
        frame, source = read_predictions(predictions), str(predictions.resolve())
    client, experiment = client_for(config), config.mlflow.experiment
    scores = None
    if predict_here:
        by_run = not (model or checkpoint)
        found = chosen_model(config, run=run if by_run else None, model=model, checkpoint=checkpoint,
                             find_run=points is not None)
        # Linked to --run's run (looked up once), else to the run the model came from.
        evaluates = found.run_id if by_run or run is None else resolve_run_id(client, experiment, run)
        what = checkpoint.name if checkpoint else model or run
        scores = model_scores(found, data, split=split, tencrop=tencrop, device=device, with_val=points is not None)
        frame = scores.frame
        source = f"{split} split of {absolute(data)} predicted by {checkpoint or model or run}"
    else:
        evaluates = resolve_run_id(client, experiment, run) if run else None
        what = predictions.name
    if clean_labels:
        result = evaluate_on_relabelled(frame, clean_labels, set_name)
        return Evaluated(result, what, log_evaluation(client, experiment, f"evaluate {what} against relabelled NIH "
                                                      f"({set_name})", result.metrics, result.table.to_csv(),
                                                      {**result.params, "predictions": source}, evaluates))
    result = evaluate_on_prepared(frame, data, bootstrap=bootstrap, seed=seed)
    prepared = scores.prepared if scores else PreparedDataset.load(data)
    calibration, metrics, figures = calibration_on(frame, prepared)
    artifacts = {CALIBRATION_ARTIFACT: calibration.to_csv(index=False),
                 **{RELIABILITY_ARTIFACT.format(domain=d): fig for d, fig in figures.items()}}
    metrics = {**result.metrics, **metrics}
    table, notes, subgroups, warnings = pd.DataFrame(), [], pd.DataFrame(), []
    if keys:
        subgroups, subgroup_metrics, warnings = subgroup_results(frame, prepared, keys, bootstrap=bootstrap, seed=seed,
                                                                min_per_class=subgroup_min)
        metrics.update(subgroup_metrics)
        artifacts[SUBGROUPS_ARTIFACT] = subgroups.to_csv(index=False)
    if points:
        thresholds = choose_thresholds(points, scores.val, prepared, scores.internal, scores.evaluated)
        table, point_metrics = operating_points_on(frame, prepared, thresholds, bootstrap=bootstrap, seed=seed)
        metrics.update(point_metrics)
        artifacts[OPERATING_POINTS_ARTIFACT] = table.to_csv(index=False)
        notes.append(save_decisions(config, scores, thresholds=thresholds, decision_point=points[0].name,
                                    chosen_on=f"val split of {scores.internal} in {absolute(data)}"))
    run_id = log_evaluation(client, experiment, f"evaluate {what}", metrics, result.table.to_csv(),
                            {**result.params, "predictions": source}, evaluates, artifacts)
    return Evaluated(result, what, run_id, calibration, table, subgroups, notes, warnings)


def save_decisions(config: Config, scores: ModelScores, *, thresholds: dict | None = None,
                   decision_point: str = "", chosen_on: str = "", temperatures: dict | None = None,
                   calibrated_on: str = "") -> str:
    """Update the model's decisions file (and its training run's copy); returns what was done."""
    decisions = scores.decisions
    if thresholds is not None:
        decisions.thresholds, decisions.decision_point, decisions.thresholds_chosen_on = (
            thresholds, decision_point, chosen_on)
    if temperatures is not None:
        decisions.temperatures, decisions.calibrated_on = temperatures, calibrated_on
    written = write_decisions(scores.found.checkpoint, decisions)
    path = str(written)
    if scores.found.stored_at:  # a copy of a checkpoint in an object store: the store's folder gets it too
        stored = Folder.at(scores.found.stored_at)
        stored.write_text(written.read_text(), written.name)
        path = stored.name(written.name)
    if scores.found.run_id:
        client = client_for(config)
        client.log_text(scores.found.run_id, written.read_text(), DECISIONS_ARTIFACT)
        if temperatures is not None:
            log_metrics_now(client, scores.found.run_id, {temperature_metric(f): t for f, t in temperatures.items()})
        return f"saved in {path} and to the model's training run {scores.found.run_id} ({DECISIONS_ARTIFACT})"
    return f"saved in {path}"


def calibrate_model(config: Config, found: ModelReference, data: Path | None, *, tencrop: bool, device: str,
                    min_per_class: int = MIN_PER_CLASS) -> tuple[pd.DataFrame, str, list[str]]:
    """Fit one temperature per finding on the internal domain's validation split of `data` (default:
    the data the model was trained on) and save them with the model; the before/after table, what
    was saved, warnings."""
    from orchestration.training.checkpoint import read_run_description

    data = data or read_run_description(found.checkpoint)[1].data
    scores = model_scores(found, data, split=None, tencrop=tencrop, device=device, with_val=True)
    temperatures, table, warnings = fit_temperatures(scores.val, scores.prepared, scores.internal, scores.evaluated,
                                                     min_per_class=min_per_class)
    if not temperatures:
        raise ConfigError(f"{data}: no finding of the {scores.internal} validation split has {min_per_class} "
                          "positives and negatives; nothing to fit a temperature on (--min-per-class lowers it)")
    note = save_decisions(config, scores, temperatures=temperatures,
                          calibrated_on=f"val split of {scores.internal} in {absolute(data)}")
    return table, note, warnings
