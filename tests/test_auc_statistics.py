"""DeLong's test worked by hand and against the 1988 definitions computed pairwise; the bootstrap
against a seeded recomputation with explicit resampled index lists; Holm by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrmodel.auc_statistics import bootstrap_aucs, delong_test, holm, percentile_interval, stratified_counts


def test_delong_worked_by_hand():
    """Images 1-3 positive, 4-5 negative.
    A = (0.9, 0.7, 0.4 | 0.5, 0.3), B = (0.8, 0.5, 0.6 | 0.7, 0.2).
    Placements of the positives (share of negatives below): A (1, 1, 1/2), B (1, 1/2, 1/2);
    of the negatives (share of positives above): A (2/3, 1), B (1/3, 1).
    AUC_A = 5/6, AUC_B = 2/3.
    Over the 3 positives (n-1 = 2): var A = 1/12, var B = 1/12, cov = 1/24.
    Over the 2 negatives (n-1 = 1): var A = 1/18, var B = 2/9, cov = 1/9.
    S = S10/3 + S01/2: var A = 1/36 + 1/36 = 1/18, var B = 1/36 + 1/9 = 5/36, cov = 1/72 + 1/18 = 5/72.
    Var(B - A) = 1/18 + 5/36 - 2 * 5/72 = 1/18; z = (-1/6) / sqrt(1/18) = -sqrt(2)/2;
    p = erfc(|z| / sqrt 2) = erfc(1/2) = 0.4795."""
    y = np.array([1, 1, 1, 0, 0])
    result = delong_test(y, np.array([0.9, 0.7, 0.4, 0.5, 0.3]), np.array([0.8, 0.5, 0.6, 0.7, 0.2]))
    assert result.auc_a == pytest.approx(5 / 6) and result.auc_b == pytest.approx(2 / 3)
    assert result.z == pytest.approx(-math.sqrt(2) / 2)
    assert result.p == pytest.approx(math.erfc(0.5)) and result.p == pytest.approx(0.4795, abs=1e-4)


def _delong_pairwise(y, a, b):
    """DeLong et al. (1988) as written: psi(X, Y) over every positive-negative pair, O(m n)."""
    pos, neg = y == 1, y == 0
    def placements(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()
    (v10a, v01a, auc_a), (v10b, v01b, auc_b) = placements(a), placements(b)
    s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
    s = s10 / pos.sum() + s01 / neg.sum()
    z = (auc_b - auc_a) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return auc_a, auc_b, z


def test_delong_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    a = np.round(y * 0.8 + rng.normal(0, 1, 300), 1)  # rounded: many ties
    b = np.round(y * 1.1 + rng.normal(0, 1, 300), 1)
    fast = delong_test(y, a, b)
    auc_a, auc_b, z = _delong_pairwise(y, a, b)
    assert fast.auc_a == pytest.approx(auc_a, abs=1e-12) and fast.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert fast.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert fast.z == pytest.approx(z, rel=1e-9)
    assert fast.p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def test_identical_scores_give_no_difference_and_p_one():
    y = np.array([1, 0, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.1, 0.4, 0.5, 0.8, 0.3, 0.2])
    result = delong_test(y, s, s.copy())
    assert result.auc_a == result.auc_b and result.z == 0.0 and result.p == 1.0
    replicates = bootstrap_aucs(y, [s, s.copy()], 200, seed=1)
    assert np.array_equal(replicates[0], replicates[1])


def test_bootstrap_replicates_are_the_auc_of_each_seeded_resample():
    """The same generator, drawn the same way, gives index lists per class; sklearn's AUC on each
    resample is the replicate."""
    rng = np.random.default_rng(3)
    y = (rng.random(80) < 0.35).astype(int)
    a, b = y + rng.normal(0, 1, 80), y * 0.5 + rng.normal(0, 1, 80)
    replicates = bootstrap_aucs(y, [a, b], 150, seed=11)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    redraw = np.random.default_rng(11)
    for start in range(0, 150, 100):
        size = min(100, 150 - start)
        pos_idx = redraw.integers(0, len(positives), (size, len(positives)))
        neg_idx = redraw.integers(0, len(negatives), (size, len(negatives)))
        for r in range(size):
            images = np.concatenate([positives[pos_idx[r]], negatives[neg_idx[r]]])
            for k, s in enumerate((a, b)):
                assert replicates[k, start + r] == pytest.approx(roc_auc_score(y[images], s[images]), abs=1e-12)
    low, high = percentile_interval(replicates[0])
    assert low < roc_auc_score(y, a) < high
    assert (low, high) == tuple(np.percentile(replicates[0], [2.5, 97.5]))


def test_stratified_counts_keep_each_class_size():
    pos, neg = stratified_counts(7, 12, 50, np.random.default_rng(0))
    assert pos.shape == (50, 7) and neg.shape == (50, 12)
    assert (pos.sum(axis=1) == 7).all() and (neg.sum(axis=1) == 12).all()
    assert len({tuple(row) for row in pos}) > 40  # resamples, not copies


def test_holm_by_hand():
    """p = (0.01, 0.04, 0.03, 0.5): sorted 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> 0.09
    (monotone), 0.5*1 = 0.5."""
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}) == pytest.approx(
        {"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    adjusted = holm({"a": 0.01, "b": float("nan")})
    assert adjusted["a"] == 0.01 and math.isnan(adjusted["b"])  # an undefined p is not counted


def test_delong_needs_two_images_of_each_class_unless_the_scores_are_identical():
    y, a, b = np.array([1, 0, 0, 0]), np.array([0.9, 0.2, 0.3, 0.1]), np.array([0.5, 0.6, 0.3, 0.1])
    assert math.isnan(delong_test(y, a, b).p)
    assert delong_test(y, a, a.copy()).p == 1.0
