"""Calibration: when the model says 0.8, is it right 80% of the time?

- ECE with equal-mass bins: the images sorted by score and cut into `bins` groups of (nearly)
  equal size; ECE = sum over bins of (bin size / N) * |mean label - mean score|. Equal mass keeps
  every bin populated on the skewed scores of rare findings, where equal-width bins sit empty.
- Brier score: the mean squared difference between score and label.
- Temperature scaling (Guo et al. 2017), one temperature T per finding: p' = sigmoid(logit(p) / T),
  T fitted by minimising the validation split's negative log-likelihood (scipy's bounded scalar
  minimiser on log T). Monotone in p: it changes no AUC and no call at a matching threshold.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10
PROBABILITY_EPS = 1e-7  # probabilities are clipped this far from 0 and 1 before taking logits


def equal_mass_bins(positive: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-mass bin (images sorted by score, cut into `bins` groups of nearly equal size;
    fewer when there are fewer images): mean score, observed positive rate, images."""
    order = np.argsort(scores, kind="stable")
    y, p = np.asarray(positive, np.float64)[order], np.asarray(scores, np.float64)[order]
    parts = np.array_split(np.arange(y.size), min(bins, y.size))
    return (np.array([p[i].mean() for i in parts]), np.array([y[i].mean() for i in parts]),
            np.array([i.size for i in parts]))


def expected_calibration_error(positive: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-mass bins: sum of (bin size / N) * |positive rate - mean score|."""
    mean_score, rate, size = equal_mass_bins(positive, scores, bins)
    return float((size * np.abs(rate - mean_score)).sum() / size.sum())


def brier_score(positive: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean((np.asarray(scores, np.float64) - np.asarray(positive, np.float64)) ** 2))


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    return np.log(p) - np.log1p(-p)


def scaled(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Probabilities after temperature scaling (a temperature per column when an array)."""
    with np.errstate(over="ignore"):  # exp(large) = inf gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-logit(probs) / temperature))


TEMPERATURE_BOUNDS = (float(np.exp(-5.0)), float(np.exp(5.0)))


def fit_temperature(positive: np.ndarray, probs: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS ([e^-5, e^5]) minimising the negative log-likelihood of
    sigmoid(logit(p) / T). A bound is reached when the scores separate the classes perfectly (T
    falls to the lower one) or carry no information (the upper one)."""
    from scipy.optimize import minimize_scalar  # here: inference imports this module, only fitting needs scipy

    z, y = logit(probs), np.asarray(positive, np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # -[y log σ(s) + (1 - y) log(1 - σ(s))] = softplus(s) - y s, computed stably.
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    return float(np.exp(minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x))
