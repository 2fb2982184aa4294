"""ROC AUC and ROC curves from ranks, in numpy alone.

The AUC is the Mann-Whitney statistic: the share of (positive, negative) pairs the positive
outranks, ties counting half, which is the trapezoidal area under the ROC curve. Scikit-learn and
SciPy compute the same numbers, but loading them takes about a second, and every training worker
and sweep trial scores its validation split: that second would be on each run's critical path.
"""

from __future__ import annotations

import numpy as np


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis; tied values share the mean of their ranks (SciPy's
    `rankdata`, method "average"). NaN is refused: it has no rank."""
    values = np.asarray(values)
    if np.isnan(values).any():
        raise ValueError("scores contain NaN: they cannot be ranked")
    n = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    positions = np.broadcast_to(np.arange(n), ordered.shape)
    starts_run = np.ones(ordered.shape, bool)
    starts_run[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends_run = np.ones(ordered.shape, bool)
    ends_run[..., :-1] = starts_run[..., 1:]
    first = np.maximum.accumulate(np.where(starts_run, positions, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends_run, positions, n), -1), axis=-1), -1)
    ranks = np.empty(ordered.shape, float)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean labels `positive` (both classes needed)."""
    positive = np.asarray(positive, bool)
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"an AUC needs both classes: {positives} positive, {negatives} negative")
    rank_sum = midranks(np.asarray(scores, float))[positive].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score taken as the threshold,
    from the highest down, starting at (0, 0)."""
    positive = np.asarray(positive, bool)
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    ordered, hits = np.asarray(scores, float)[order], positive[order]
    cut = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # the last image of each score
    true_positives = np.cumsum(hits)[cut]
    false_positives = cut + 1 - true_positives
    return (np.r_[0.0, false_positives / max(1, (~positive).sum())],
            np.r_[0.0, true_positives / max(1, positive.sum())])
