"""How well a model's probabilities are calibrated (`cxr evaluate`), and fitting the temperatures
that calibrate them (`cxr calibrate`): cxrmodel.calibration's figures per domain and finding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrcommon.plotting import headless_pyplot
from cxrmodel.calibration import (
    ECE_BINS,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    scaled,
)
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.decisions import CALIBRATED_SUFFIX
from orchestration.evaluation.scoring import labelled_scores
from orchestration.settings.schema import calibration_metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _known(y: np.ndarray, c: int) -> np.ndarray:
    return (y[:, c] == 0) | (y[:, c] == 1)


def calibration_on(frame: pd.DataFrame, prepared: PreparedDataset
                   ) -> tuple[pd.DataFrame, dict[str, float], dict[str, Figure]]:
    """Per domain and finding it labels: ECE and Brier score of the probabilities (and of the
    calibrated ones, when the table has `<finding>_calibrated` columns); the metrics
    <domain>/ece/<finding>, <domain>/brier/<finding> (…_calibrated); a reliability diagram per domain."""
    space = prepared.label_space
    has_calibrated = all(f + CALIBRATED_SUFFIX in frame.columns for f in space)
    rows, metrics, figures = [], {}, {}
    for domain, part in frame.groupby("domain", sort=False):
        y, probs, _ = labelled_scores(part, prepared, domain)
        calibrated = labelled_scores(part, prepared, domain, [f + CALIBRATED_SUFFIX for f in space])[1] \
            if has_calibrated else None
        drawn = []
        for finding in prepared.domain_findings(domain):
            c = space.index(finding)
            known = _known(y, c)
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
    plt = headless_pyplot()
    cols = min(4, len(drawn))
    rows = -(-len(drawn) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (finding, positive, probs, calibrated) in zip(axes.flat, drawn):
        ax.set_visible(True)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.plot(*reliability_bins(positive, probs), "o-", ms=3, label="model")
        if calibrated is not None:
            ax.plot(*reliability_bins(positive, calibrated), "s-", ms=3, label="calibrated")
            ax.legend(fontsize=6)
        ax.set_title(f"{finding}\nECE {expected_calibration_error(positive, probs):.3f}", fontsize=9)
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("observed positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fit_temperatures(rows: pd.DataFrame, prepared: PreparedDataset, domain: str, findings: list[str]
                     ) -> tuple[dict[str, float], pd.DataFrame]:
    """One temperature per finding fitted on `rows` (one domain's validation predictions), for each
    of `findings` whose labels there hold both classes; and a table of ECE / Brier before and after."""
    y, probs, _ = labelled_scores(rows, prepared, domain)
    temperatures, report = {}, []
    for finding in findings:
        c = prepared.label_space.index(finding)
        known = _known(y, c)
        positive = y[known, c] == 1
        if not positive.any() or positive.all():
            continue
        t = fit_temperature(positive, probs[known, c])
        after = scaled(probs[known, c], t)
        temperatures[finding] = t
        report.append({"finding": finding, "temperature": t, "images": int(known.sum()),
                       "ece_before": expected_calibration_error(positive, probs[known, c]),
                       "ece_after": expected_calibration_error(positive, after),
                       "brier_before": brier_score(positive, probs[known, c]),
                       "brier_after": brier_score(positive, after)})
    return temperatures, pd.DataFrame(report)
