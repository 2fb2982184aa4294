"""How sure an AUC is: percentile-bootstrap intervals, and DeLong's test for two correlated ROC
curves (two models scored on the same images).

DeLong, DeLong & Clarke-Pearson (1988), computed with the midrank algorithm of Sun & Xu (2014):
three rankings per curve give every positive's and negative's "placement" (the structural
components), so a test costs O(n log n). The bootstrap resamples images with replacement within
each class (stratified: both classes stay present, in their numbers); a replicate's AUC is
computed from the negatives' cumulative resampling counts in score order, so B replicates cost
O(B n) with no sort per replicate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrmodel.labels import known_labels
from cxrmodel.metrics import SUMMARIES
from cxrmodel.roc import midranks

REPLICATES_PER_CHUNK = 100  # bounds memory: chunk x images counts at a time


# ---------------------------------------------------------------- DeLong

@dataclass(frozen=True)
class DeLong:
    auc_a: float
    auc_b: float
    z: float
    p: float  # two-sided


def structural_components(positive_scores: np.ndarray, negative_scores: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For k curves (rows): AUCs (k,), each positive's placement V10 (k, m) = the share of negatives
    it outranks (ties count half), each negative's V01 (k, n) = the share of positives that
    outrank it. Sun & Xu's midranks: within positives, within negatives, and over both."""
    m, n = positive_scores.shape[1], negative_scores.shape[1]
    tx = midranks(positive_scores)
    ty = midranks(negative_scores)
    tz = midranks(np.concatenate([positive_scores, negative_scores], axis=1))
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLong:
    """Two-sided test of AUC_A = AUC_B for two score vectors on the same images (labels 1 / 0).
    Identical scores give z = 0, p = 1; otherwise fewer than two images of a class leave the
    variance unknown: z and p are NaN."""
    positive = np.asarray(labels).astype(bool)
    scores = np.stack([scores_a, scores_b]).astype(np.float64)
    aucs, v10, v01 = structural_components(scores[:, positive], scores[:, ~positive])
    m, n = v10.shape[1], v01.shape[1]
    if np.array_equal(scores[0], scores[1]):
        return DeLong(float(aucs[0]), float(aucs[1]), 0.0, 1.0)
    if m < 2 or n < 2:
        return DeLong(float(aucs[0]), float(aucs[1]), math.nan, math.nan)
    covariance = np.cov(v10) / m + np.cov(v01) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = aucs[1] - aucs[0]
    if variance <= 1e-15 * max(1.0, covariance[0, 0] + covariance[1, 1]):
        # The two curves move together exactly (e.g. the same scores): no evidence of a difference
        # unless the AUCs differ, which then cannot be noise.
        z = 0.0 if abs(difference) < 1e-15 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    return DeLong(float(aucs[0]), float(aucs[1]), float(z), math.erfc(abs(z) / math.sqrt(2)))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: the k-th smallest p times (number left), kept monotone, at most
    1. Undefined (NaN) p-values are left out and stay NaN."""
    order = sorted((k for k in p_values if not math.isnan(p_values[k])), key=p_values.get)
    adjusted, running = {}, 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p_values[name]))
        adjusted[name] = running
    return {k: adjusted.get(k, math.nan) for k in p_values}


# ---------------------------------------------------------------- bootstrap

def stratified_counts(positives: int, negatives: int, replicates: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """How often each positive and each negative is drawn in each replicate: (B, m) and (B, n),
    every row summing to m and n (a resample of each class with replacement)."""
    return _counts(positives, replicates, rng), _counts(negatives, replicates, rng)


def _counts(size: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    draws = rng.integers(0, size, (replicates, size)) + np.arange(replicates)[:, None] * size
    return np.bincount(draws.ravel(), minlength=replicates * size).reshape(replicates, size)


class WeightedAuc:
    """AUCs of one score vector under many resampling weights: the negatives are sorted once and
    each positive's place among them found once; a replicate then needs one cumulative sum."""

    def __init__(self, positive_scores: np.ndarray, negative_scores: np.ndarray):
        order = np.argsort(negative_scores, kind="stable")
        self.order = order
        sorted_negatives = negative_scores[order]
        self.below = np.searchsorted(sorted_negatives, positive_scores, side="left")
        self.up_to = np.searchsorted(sorted_negatives, positive_scores, side="right")

    def __call__(self, positive_counts: np.ndarray, negative_counts: np.ndarray) -> np.ndarray:
        """(B,) AUCs for weights (B, m) on the positives and (B, n) on the negatives."""
        cumulative = np.zeros((negative_counts.shape[0], negative_counts.shape[1] + 1))
        np.cumsum(negative_counts[:, self.order], axis=1, out=cumulative[:, 1:])
        outranked = cumulative[:, self.below] + 0.5 * (cumulative[:, self.up_to] - cumulative[:, self.below])
        pairs = positive_counts.sum(axis=1) * negative_counts.sum(axis=1)
        return (positive_counts * outranked).sum(axis=1) / pairs


def bootstrap_aucs(labels: np.ndarray, score_sets: list[np.ndarray], replicates: int, seed: int) -> np.ndarray:
    """(len(score_sets), B) AUC replicates, every score set under the same stratified resamples
    (paired, for comparing models on the same images)."""
    positive = np.asarray(labels).astype(bool)
    curves = [WeightedAuc(np.asarray(s, np.float64)[positive], np.asarray(s, np.float64)[~positive])
              for s in score_sets]
    rng = np.random.default_rng(seed)
    out = np.empty((len(score_sets), replicates))
    for start in range(0, replicates, REPLICATES_PER_CHUNK):
        size = min(REPLICATES_PER_CHUNK, replicates - start)
        positive_counts, negative_counts = stratified_counts(int(positive.sum()), int((~positive).sum()), size, rng)
        for k, curve in enumerate(curves):
            out[k, start:start + size] = curve(positive_counts, negative_counts)
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


# ---------------------------------------------------------------- the paper's summaries

def finding_replicates(labels: np.ndarray, score_sets: list[np.ndarray], label_space: list[str],
                       evaluated: list[str], replicates: int, seed: int) -> dict[str, np.ndarray]:
    """Per evaluated finding with both classes among its known labels: (len(score_sets), B) AUC
    replicates over the images whose label is known, resampled within each class. Each finding
    draws from its own seeded stream (seed, finding's position)."""
    out = {}
    for finding in evaluated:
        c = label_space.index(finding)
        known = known_labels(labels, c)
        y = labels[known, c] == 1
        if y.all() or not y.any():
            continue
        seed_of_finding = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
        out[finding] = bootstrap_aucs(y, [s[known, c] for s in score_sets], replicates, seed_of_finding)
    return out


def group_members(evaluated: list[str], common: list[str], internal_only: list[str]) -> dict[str, list[str]]:
    """The findings each of the paper's summaries (SUMMARIES: mean, mean_com, mean_int) averages."""
    mean, mean_com, mean_int = SUMMARIES.values()
    return {mean: list(evaluated), mean_com: [f for f in common if f in evaluated],
            mean_int: [f for f in internal_only if f in evaluated]}


def auc_intervals(labels: np.ndarray, probs: np.ndarray, label_space: list[str], *, evaluated: list[str],
                  common: list[str], internal_only: list[str], replicates: int, seed: int,
                  level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each finding's AUC and of Mean, Mean_Com, Mean_Int (whose b-th
    replicate averages the findings' b-th replicates; findings are resampled independently, so
    the means' intervals leave out the correlation between findings on shared images)."""
    per_finding = {f: r[0] for f, r in finding_replicates(labels, [probs], label_space, evaluated, replicates,
                                                          seed).items()}
    out = {f: percentile_interval(r, level) for f, r in per_finding.items()}
    for group, members in group_members(evaluated, common, internal_only).items():
        present = [per_finding[f] for f in members if f in per_finding]
        if present:
            out[group] = percentile_interval(np.mean(present, axis=0), level)
    return out


def paired_comparison(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, label_space: list[str], *,
                      evaluated: list[str], common: list[str], internal_only: list[str], replicates: int,
                      seed: int) -> dict:
    """Model B against model A on the same images: per finding AUC_A, AUC_B, Δ = B − A, the
    paired-bootstrap 95% interval of Δ, DeLong's p and Holm's p across findings (None where a
    class has fewer than two images); the same Δ and interval for Mean, Mean_Com and Mean_Int.
    The `--stats-json` document of `cxr compare`."""
    paired = finding_replicates(labels, [probs_a, probs_b], label_space, evaluated, replicates, seed)
    findings, p_values = {}, {}
    for finding, replicate in paired.items():
        c = label_space.index(finding)
        known = known_labels(labels, c)
        test = delong_test(labels[known, c] == 1, probs_a[known, c], probs_b[known, c])
        p_values[finding] = test.p
        findings[finding] = {"auc_a": test.auc_a, "auc_b": test.auc_b, "delta": test.auc_b - test.auc_a,
                             "ci95": list(percentile_interval(replicate[1] - replicate[0])),
                             "p_delong": _defined(test.p)}
    for finding, p in holm(p_values).items():
        findings[finding]["p_holm"] = _defined(p)
    means = {}
    for group, members in group_members(evaluated, common, internal_only).items():
        present = [f for f in members if f in findings]
        if not present:
            continue
        a = float(np.mean([findings[f]["auc_a"] for f in present]))
        b = float(np.mean([findings[f]["auc_b"] for f in present]))
        means[group] = {"auc_a": a, "auc_b": b, "delta": b - a,
                        "ci95": list(percentile_interval(mean_delta_replicates(paired, present)))}
    return {"num_images": int(len(labels)), "findings": findings, "means": means}


def _defined(p: float) -> float | None:
    """None (JSON null) for an undefined p-value."""
    return None if math.isnan(p) else p


def mean_delta_replicates(paired: dict[str, np.ndarray], findings: list[str]) -> np.ndarray:
    """(B,) replicates of mean AUC_B − mean AUC_A over `findings`, from `finding_replicates` of
    [A, B]. Replicates of several comparisons on the same images with the same bootstrap seed
    share their resamples, so they may be averaged replicate by replicate (e.g. over seeds)."""
    return np.mean([paired[f][1] - paired[f][0] for f in findings], axis=0)
