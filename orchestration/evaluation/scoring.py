"""Scoring a network on prepared data: probabilities per split, AUC reports, AUC tables, ROC curves.

`score_split` reads a split's shards in a fixed order; rank r of a data-parallel group scores every
world-th batch and the pieces are gathered, so every sample is scored exactly once. The functions
after it turn probabilities (a training run's, or a `cxr predict` file) into the paper's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrcommon.plotting import panel_grid
from cxrcommon.storage import absolute
from cxrmodel.auc_statistics import auc_intervals
from cxrmodel.metrics import SUMMARIES, AucReport, auc_report, figure_name
from cxrmodel.roc import roc_curve
from data_prep.prepared import PreparedDataset
from data_prep.split import SPLITS
from orchestration.settings.config import ConfigError
from orchestration.settings.plan import TrainingPlan
from orchestration.settings.schema import domain_metric, interval_metric

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

PREDICTION_COLUMNS = ("image_id", "domain")  # then one probability column per finding
# Positives and negatives a figure of one finding is estimated on, at least, unless told otherwise:
# a subgroup's AUC (cxr evaluate --by), a temperature (cxr calibrate).
MIN_PER_CLASS = 10


@dataclass
class Predictions:
    sample_id: np.ndarray  # (N,)
    probs: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N, C) int8

    def sorted(self) -> Predictions:
        order = np.argsort(self.sample_id, kind="stable")
        return Predictions(self.sample_id[order], self.probs[order], self.labels[order])


def prediction_frame(predictions: Predictions, prepared: PreparedDataset, domain: str, split: str) -> pd.DataFrame:
    """Scores of one domain's split as `cxr predict` writes them: image_id, domain, then one
    probability column per finding of the prepared label space."""
    ids = prepared.read_columns(domain, split, ["sample_id", "image_id"]).to_pandas().set_index("sample_id")
    frame = pd.DataFrame(predictions.probs, columns=prepared.label_space)
    frame.insert(0, "domain", domain)
    frame.insert(0, "image_id", ids["image_id"].reindex(predictions.sample_id).to_numpy())
    return frame


def _gather(parts: Predictions) -> Predictions:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return parts.sorted()
    gathered: list[Predictions | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, parts)
    return Predictions(
        np.concatenate([g.sample_id for g in gathered]),
        np.concatenate([g.probs for g in gathered]),
        np.concatenate([g.labels for g in gathered]),
    ).sorted()


def score_split(
    model: torch.nn.Module,
    prepared: PreparedDataset,
    domain: str,
    split: str,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    tencrop: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Predictions:
    """Probabilities for every sample of one domain's split (gathered over ranks when distributed)."""
    # torch here, not at the top: the commands that only read predictions (model-card, compare,
    # evaluate --predictions) then start without importing it (~2.4 s less here).
    import torch
    import torch.distributed as dist

    from cxrmodel.inference import predict_probs

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    was_training = model.training
    model.eval()
    ids, probs, labels = [], [], []
    for i, (sample_id, images, batch_labels) in enumerate(prepared.iter_uint8_batches(domain, split, batch_size)):
        if i % world != rank:
            continue
        batch = torch.from_numpy(images).to(device, non_blocking=True)
        p = predict_probs(model, batch, tencrop=tencrop, autocast_dtype=autocast_dtype, channels_last=channels_last)
        ids.append(sample_id)
        probs.append(p.cpu().numpy())
        labels.append(batch_labels)
    model.train(was_training)
    c = len(prepared.label_space)
    part = Predictions(
        np.concatenate(ids) if ids else np.empty(0, np.int64),
        np.concatenate(probs) if probs else np.empty((0, c), np.float32),
        np.concatenate(labels) if labels else np.empty((0, c), np.int8),
    )
    return _gather(part)


def report_for(predictions: Predictions, plan: TrainingPlan) -> AucReport:
    """AUC of the findings the plan's internal domain labels, with Mean, Mean_Com and Mean_Int."""
    return auc_report(predictions.probs, predictions.labels, plan.label_space, **plan.groups.members())


def auc_table(report: AucReport, predictions: Predictions, plan: TrainingPlan) -> pd.DataFrame:
    """One row per evaluated finding: group, AUC (blank where undefined, with the reason), counts."""
    rows = []
    for finding in [*report.auc, *report.undefined]:
        y = predictions.labels[:, plan.label_space.index(finding)]
        rows.append({
            "finding": finding, "group": plan.groups.group(finding), "auc": report.auc.get(finding),
            "positives": int((y == 1).sum()), "negatives": int((y == 0).sum()),
            "note": report.undefined.get(finding, ""),
        })
    order = {f: i for i, f in enumerate(plan.label_space)}
    columns = ["finding", "group", "auc", "positives", "negatives", "note"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("finding", key=lambda s: s.map(order)).reset_index(drop=True)


def roc_figure(predictions: Predictions, label_space: list[str], report: AucReport, title: str) -> Figure:
    """A grid of ROC curves, one panel per finding with a defined AUC."""
    def draw(ax, finding: str) -> str:
        c = label_space.index(finding)
        known = predictions.labels[:, c] >= 0
        fpr, tpr = roc_curve(predictions.labels[known, c] == 1, predictions.probs[known, c])
        ax.plot(fpr, tpr, lw=1.5)
        return f"{finding}\nAUC {report.auc[finding]:.3f}"

    return panel_grid(list(report.auc), draw, title, x_label="1 - specificity", y_label="sensitivity")


@dataclass
class DomainScores:
    reports: dict[str, AucReport]
    unmatched: dict[str, int]  # per domain: predicted images the prepared data does not have
    intervals: dict[str, dict[str, tuple[float, float]]]  # per domain: finding / mean group -> 95% CI


def interval_cells(values, lows, highs) -> list[str]:
    """A figure with its 95% interval per cell, "0.912 [0.870, 0.947]"; the value alone where the
    interval is undefined, blank where the value is."""
    return ["" if pd.isna(v) else f"{v:.3f}" if pd.isna(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(values, lows, highs)]


def labelled_rows(rows: pd.DataFrame, prepared: PreparedDataset, domain: str, columns: list[str]
                  ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """One domain's predictions with the prepared rows they name (found by image_id in any split):
    the predictions the data has, the prepared `columns` of the same images in the same order, and
    how many predicted images the data lacks (left out)."""
    if domain not in prepared.domains:
        raise ConfigError(f"predictions name domain {domain!r}; the prepared data has {prepared.domains}")
    known_rows = pd.concat(
        [prepared.read_columns(domain, s, ["image_id", *columns]).to_pandas() for s in SPLITS], ignore_index=True
    ).set_index("image_id")
    known = rows["image_id"].isin(known_rows.index)
    rows = rows[known]
    return rows, known_rows.loc[rows["image_id"], columns], int((~known).sum())


def labelled_scores(rows: pd.DataFrame, prepared: PreparedDataset, domain: str, columns: list[str] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """One domain's predictions against its prepared labels: labels (N, C) int8 and scores (N, C)
    float32 of the prepared label space (scores from `columns`, default the findings' own), and how
    many predicted images the data lacks (left out)."""
    space = prepared.label_space
    rows, labels, unmatched = labelled_rows(rows, prepared, domain, space)
    return labels.to_numpy(np.int8), rows[columns or space].to_numpy(np.float32), unmatched


def evaluate_predictions(frame: pd.DataFrame, prepared: PreparedDataset, *, bootstrap: int = 0,
                         seed: int = 0) -> DomainScores:
    """Per domain of a predictions table: AUC of each finding that domain labels, against the
    prepared labels (found by image_id in any split), and with `bootstrap` replicates their 95%
    percentile intervals (images resampled within each finding's classes)."""
    space = prepared.label_space
    unknown = [f for f in space if f not in frame.columns]
    if unknown:
        raise ConfigError(f"predictions lack finding column(s) {unknown} of the prepared label space")
    scores = DomainScores({}, {}, {})
    for domain, rows in frame.groupby("domain", sort=False):
        y, probs, scores.unmatched[domain] = labelled_scores(rows, prepared, domain)
        groups = prepared.finding_groups(domain).members()
        scores.reports[domain] = auc_report(probs, y, space, **groups)
        if bootstrap:
            scores.intervals[domain] = auc_intervals(y, probs, space, replicates=bootstrap, seed=seed, **groups)
    return scores


def with_intervals(table: pd.DataFrame, intervals: dict[str, dict[str, tuple[float, float]]]) -> pd.DataFrame:
    """An AUC table (rows: findings then Mean / Mean_Com / Mean_Int; columns: domains) as text,
    each cell "0.8412 [0.8301, 0.8519]" where an interval exists."""
    shown = table.astype(object)
    for domain in table.columns:
        for row in table.index:
            value, bounds = table.loc[row, domain], intervals.get(domain, {}).get(SUMMARIES.get(row, row))
            if pd.isna(value):
                shown.loc[row, domain] = ""
            elif bounds is None:
                shown.loc[row, domain] = f"{value:.4f}"
            else:
                shown.loc[row, domain] = f"{value:.4f} [{bounds[0]:.4f}, {bounds[1]:.4f}]"
    return shown


@dataclass
class Evaluation:
    """What `cxr evaluate` prints and logs."""

    table: pd.DataFrame  # rows: findings then summaries; columns: domains or relabelled sets
    metrics: dict[str, float]  # MLflow metrics of the evaluation run
    stats: dict  # the --stats-json document
    warnings: list[str]
    params: dict[str, str]  # MLflow params: what was scored against what
    shown: pd.DataFrame | None = None  # the table as printed, when it carries intervals


def evaluate_on_prepared(frame: pd.DataFrame, data: Path, *, bootstrap: int = 0, seed: int = 0) -> Evaluation:
    """Per domain: AUC of each labelled finding, then Mean, Mean_Com and Mean_Int; with
    `bootstrap` replicates, each with its 95% interval (metrics <domain>/auc_ci_low/<finding>,
    <domain>/mean_auc_ci_low, ... and _high)."""
    prepared = PreparedDataset.load(data)
    scores = evaluate_predictions(frame, prepared, bootstrap=bootstrap, seed=seed)
    reports = scores.reports
    table = pd.DataFrame({d: {f: r.auc.get(f, np.nan) for f in prepared.label_space} for d, r in reports.items()})
    summary = pd.DataFrame({d: {label: getattr(r, name) for label, name in SUMMARIES.items()}
                            for d, r in reports.items()})
    table = pd.concat([table.dropna(how="all"), summary]).astype(float)
    metrics = {domain_metric(d, k): v for d, r in reports.items() for k, v in r.as_metrics().items()}
    intervals = {d: {} for d in reports}
    for d, bounds in scores.intervals.items():
        for name, (low, high) in bounds.items():
            key = figure_name(name)
            metrics[domain_metric(d, interval_metric(key, "low"))] = low
            metrics[domain_metric(d, interval_metric(key, "high"))] = high
            intervals[d][key] = [low, high]
    return Evaluation(
        table=table,
        metrics=metrics,
        stats={"domains": {d: {**r.as_metrics(), "unmatched_images": scores.unmatched[d],
                               **({"ci95": intervals[d], "bootstrap": bootstrap, "seed": seed} if bootstrap else {})}
                           for d, r in reports.items()}},
        warnings=[f"{n} predicted {d} images are not in {data}; left out" for d, n in scores.unmatched.items() if n],
        params={"data": absolute(data), "bootstrap": str(bootstrap), "seed": str(seed)},
        shown=with_intervals(table, scores.intervals) if bootstrap else None,
    )
