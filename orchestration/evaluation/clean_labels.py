"""Table VII: AUC of a model's predictions against Google's relabelled NIH subsets.

The relabelled findings are not outputs of the model; as in the paper (section V), each is scored
by the mean probability of the model findings it covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.metrics import AucReport, auc_report, figure_name
from data_prep.relabelled_nih import read_relabelled_nih
from orchestration.evaluation.scoring import Evaluation
from orchestration.settings.config import ConfigError
from orchestration.settings.schema import clean_metric

# Relabelled finding -> the model outputs averaged into its score.
SCORED_BY = {
    "Pneumothorax": ("Pneumothorax",),
    "Airspace opacity": ("Edema", "Consolidation", "Mass", "Nodule", "Pneumonia", "Atelectasis", "Infiltration"),
    "Nodule or mass": ("Mass", "Nodule"),
}


@dataclass
class CleanLabelResult:
    set_name: str
    num_images: int  # relabelled images that have a prediction
    missing: list[str]  # relabelled images without a prediction
    report: AucReport

    def stats(self) -> dict:
        return {
            "set": self.set_name, "num_images": self.num_images, "missing_predictions": len(self.missing),
            "auc": {f: self.report.auc.get(f) for f in SCORED_BY}, "undefined": self.report.undefined,
        }


def evaluate_clean_labels(predictions: pd.DataFrame, labels: pd.DataFrame, set_name: str) -> CleanLabelResult:
    """`predictions`: image_id + one probability column per finding (cxr predict);
    `labels`: image_id + the relabelled findings as 1 / 0 / -2 (read_relabelled_nih)."""
    needed = sorted({o for outputs in SCORED_BY.values() for o in outputs} - set(predictions.columns))
    if needed:
        raise ConfigError(
            f"the predictions lack the output column(s) {needed} that score the relabelled findings "
            f"({', '.join(SCORED_BY)}): predict with a model whose label space has them"
        )
    repeated = predictions["image_id"][predictions["image_id"].duplicated()]
    if not repeated.empty:
        raise ConfigError(f"image {repeated.iloc[0]!r} is predicted more than once: keep one domain and one split")
    scored = predictions.set_index("image_id")
    found = labels["image_id"].isin(scored.index)
    missing = labels.loc[~found, "image_id"].tolist()
    labels = labels[found]
    rows = scored.loc[labels["image_id"]]
    probs = np.stack([rows[list(outputs)].to_numpy(np.float64).mean(axis=1) for outputs in SCORED_BY.values()], axis=1)
    findings = list(SCORED_BY)
    report = auc_report(probs, labels[findings].to_numpy(np.int8), findings, evaluated=findings, common=[],
                        internal_only=[])
    return CleanLabelResult(set_name, len(labels), missing, report)


def evaluate_on_relabelled(frame: pd.DataFrame, clean_labels: Path, set_name: str) -> Evaluation:
    """`cxr evaluate --clean-labels`: the AUC of each relabelled finding on one set (Table VII)."""
    result = evaluate_clean_labels(frame, read_relabelled_nih(clean_labels, set_name), set_name)
    table = pd.DataFrame({f"{set_name} ({result.num_images} images)": {
        f: result.report.auc.get(f, np.nan) for f in SCORED_BY}}).astype(float)
    metrics = {clean_metric(set_name, figure_name(finding)): v for finding, v in result.report.auc.items()}
    metrics[clean_metric(set_name, "num_images")] = result.num_images
    metrics[clean_metric(set_name, "missing_predictions")] = len(result.missing)
    warnings = [f"{f}: no AUC, {why}" for f, why in result.report.undefined.items()]
    if result.missing:
        warnings.append(f"{len(result.missing)} of the {set_name} images in {clean_labels} have no prediction "
                        f"(e.g. {result.missing[0]}); they are not scored")
    params = {"clean_labels": str(Path(clean_labels).resolve()), "set": set_name}
    return Evaluation(table, metrics, result.stats(), warnings, params)
