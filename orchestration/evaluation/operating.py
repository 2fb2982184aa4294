"""`cxr evaluate --operating-points`: thresholds per finding chosen on the internal domain's
validation split, then sensitivity, specificity, PPV, NPV and F1 at each on every test split, with
bootstrap intervals (cxrmodel.operating_points)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrmodel.labels import known_labels
from cxrmodel.operating_points import FIGURES, SHORT_NAMES, OperatingPoint, figures_at
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.scoring import interval_cells, labelled_scores
from orchestration.settings.schema import operating_metric


def _scored_findings(y: np.ndarray, label_space: list[str], findings: list[str]):
    """(finding, column, known-label mask) for each of `findings` with both classes among its known labels."""
    for finding in findings:
        c = label_space.index(finding)
        known = known_labels(y, c)
        if (y[known, c] == 1).any() and (y[known, c] == 0).any():
            yield finding, c, known


def choose_thresholds(points: list[OperatingPoint], rows: pd.DataFrame, prepared: PreparedDataset, domain: str,
                      findings: list[str]) -> dict[str, dict[str, float]]:
    """Point name -> finding -> threshold, chosen on `rows` (one domain's validation predictions)
    for each of `findings` whose labels there hold both classes."""
    y, probs, _ = labelled_scores(rows, prepared, domain)
    chosen = {point.name: {} for point in points}
    for finding, c, known in _scored_findings(y, prepared.label_space, findings):
        for point in points:
            chosen[point.name][finding] = point.threshold(y[known, c] == 1, probs[known, c])
    return chosen


def operating_points_on(frame: pd.DataFrame, prepared: PreparedDataset, thresholds: dict[str, dict[str, float]], *,
                        bootstrap: int, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every domain of a predictions table at every chosen threshold: one row per (domain, point,
    finding) with the threshold, class counts and each figure with its 95% interval; and the
    metrics <domain>/<figure>_at_<point>/<finding> (and _ci_low / _ci_high)."""
    rows, metrics = [], {}
    for domain, part in frame.groupby("domain", sort=False):
        y, probs, _ = labelled_scores(part, prepared, domain)
        labelled = prepared.domain_findings(domain)
        for point, by_finding in thresholds.items():
            findings = [f for f in by_finding if f in labelled]
            for finding, c, known in _scored_findings(y, prepared.label_space, findings):
                positive, threshold = y[known, c] == 1, by_finding[finding]
                seed_of_finding = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
                figures = figures_at(positive, probs[known, c], threshold, replicates=bootstrap, seed=seed_of_finding)
                row = {"domain": domain, "point": point, "finding": finding, "threshold": threshold,
                       "positives": int(positive.sum()), "negatives": int((~positive).sum())}
                for figure in FIGURES:
                    value, low, high = figures[figure]
                    row.update({figure: value, f"{figure}_low": low, f"{figure}_high": high})
                    short = SHORT_NAMES[figure]
                    if not np.isnan(value):
                        metrics[operating_metric(domain, short, point, finding)] = value
                    if not np.isnan(low):
                        metrics[operating_metric(domain, short, point, finding, "low")] = low
                        metrics[operating_metric(domain, short, point, finding, "high")] = high
                rows.append(row)
    return pd.DataFrame(rows), metrics


def shown_operating_points(table: pd.DataFrame) -> pd.DataFrame:
    """The table as printed: each figure "0.912 [0.870, 0.947]"."""
    shown = table[["domain", "point", "finding", "threshold"]].copy()
    shown["threshold"] = shown["threshold"].map(lambda t: f"{t:.4f}")
    for figure in FIGURES:
        shown[SHORT_NAMES[figure]] = interval_cells(table[figure], table[f"{figure}_low"], table[f"{figure}_high"])
    return shown
