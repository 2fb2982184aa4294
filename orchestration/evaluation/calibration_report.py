"""How well a model's probabilities are calibrated (`cxr evaluate`), and fitting the temperatures
that calibrate them (`cxr calibrate`): cxrmodel.calibration's figures per domain and finding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrcommon.plotting import panel_grid
from cxrmodel.calibration import (
    ECE_BINS,
    TEMPERATURE_BOUNDS,
    brier_score,
    equal_mass_bins,
    expected_calibration_error,
    fit_temperature,
    scaled,
)
from cxrmodel.labels import known_labels
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.decisions import CALIBRATED_SUFFIX
from orchestration.evaluation.scoring import MIN_PER_CLASS, labelled_rows, labelled_scores
from orchestration.settings.schema import calibration_metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def calibration_on(frame: pd.DataFrame, prepared: PreparedDataset
                   ) -> tuple[pd.DataFrame, dict[str, float], dict[str, Figure]]:
    """Per domain and finding it labels: ECE and Brier score of the probabilities (and of the
    calibrated ones, when the table has `<finding>_calibrated` columns); the metrics
    <domain>/ece/<finding>, <domain>/brier/<finding> (…_calibrated); a reliability diagram per domain."""
    space = prepared.label_space
    has_calibrated = all(f + CALIBRATED_SUFFIX in frame.columns for f in space)
    rows, metrics, figures = [], {}, {}
    for domain, part in frame.groupby("domain", sort=False):
        kept, labels, _ = labelled_rows(part, prepared, domain, space)
        y, probs = labels.to_numpy(np.int8), kept[space].to_numpy(np.float32)
        calibrated = kept[[f + CALIBRATED_SUFFIX for f in space]].to_numpy(np.float32) if has_calibrated else None
        drawn = []
        for finding in prepared.domain_findings(domain):
            c = space.index(finding)
            known = known_labels(y, c)
            if not known.any():
                continue
            positive = y[known, c] == 1
            row = {"domain": domain, "finding": finding, "images": int(known.sum()),
                   "ece": expected_calibration_error(positive, probs[known, c]),
                   "brier": brier_score(positive, probs[known, c])}
            if calibrated is not None:
                row["ece_calibrated"] = expected_calibration_error(positive, calibrated[known, c])
                row["brier_calibrated"] = brier_score(positive, calibrated[known, c])
            for name in ("ece", "brier"):
                metrics[calibration_metric(domain, name, finding)] = row[name]
                if calibrated is not None:
                    metrics[calibration_metric(domain, name, finding, calibrated=True)] = row[f"{name}_calibrated"]
            rows.append(row)
            drawn.append((finding, positive, probs[known, c], None if calibrated is None else calibrated[known, c]))
        if drawn:
            figures[domain] = reliability_figure(drawn, f"{domain}: reliability ({ECE_BINS} equal-mass bins)")
    return pd.DataFrame(rows), metrics, figures


def reliability_figure(drawn: list[tuple], title: str) -> Figure:
    """One panel per finding: observed positive rate against mean score per bin, the diagonal
    being perfect calibration; calibrated scores in a second colour when there are any."""
    def draw(ax, item: tuple) -> str:
        finding, positive, probs, calibrated = item
        ax.plot(*equal_mass_bins(positive, probs)[:2], "o-", ms=3, label="model")
        if calibrated is not None:
            ax.plot(*equal_mass_bins(positive, calibrated)[:2], "s-", ms=3, label="calibrated")
            ax.legend(fontsize=6)
        return f"{finding}\nECE {expected_calibration_error(positive, probs):.3f}"

    return panel_grid(drawn, draw, title, x_label="mean predicted probability", y_label="observed positive rate",
                      width=3.0)


def fit_temperatures(rows: pd.DataFrame, prepared: PreparedDataset, domain: str, findings: list[str], *,
                     min_per_class: int = MIN_PER_CLASS) -> tuple[dict[str, float], pd.DataFrame, list[str]]:
    """One temperature per finding fitted on `rows` (one domain's validation predictions), for each
    of `findings` with at least `min_per_class` positives and negatives there; a table of ECE /
    Brier before and after; warnings (findings left at T = 1, temperatures at a bound)."""
    y, probs, _ = labelled_scores(rows, prepared, domain)
    temperatures, report, warnings, too_few = {}, [], [], []
    for finding in findings:
        c = prepared.label_space.index(finding)
        known = known_labels(y, c)
        positive = y[known, c] == 1
        if min(positive.sum(), (~positive).sum()) < min_per_class:
            too_few.append(f"{finding} ({int(positive.sum())}/{int((~positive).sum())})")
            continue
        t = fit_temperature(positive, probs[known, c])
        if np.isclose(t, TEMPERATURE_BOUNDS, rtol=1e-3).any():
            warnings.append(f"{finding}: T = {t:.4g} is at the search's bound (the validation split's scores "
                            f"{'separate its classes perfectly' if t < 1 else 'carry no information'}): too few or "
                            "too easy images to calibrate on")
        after = scaled(probs[known, c], t)
        temperatures[finding] = t
        report.append({"finding": finding, "temperature": t, "images": int(known.sum()),
                       "ece_before": expected_calibration_error(positive, probs[known, c]),
                       "ece_after": expected_calibration_error(positive, after),
                       "brier_before": brier_score(positive, probs[known, c]),
                       "brier_after": brier_score(positive, after)})
    if too_few:
        warnings.insert(0, f"{len(too_few)} finding(s) with fewer than {min_per_class} positives or negatives in the "
                           f"validation split keep T = 1 (positives/negatives): {', '.join(too_few)}")
    return temperatures, pd.DataFrame(report), warnings
