"""cxrmodel.roc against SciPy and scikit-learn, the references it stands in for, ties included; and
against numbers worked out by hand."""

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from cxrmodel.roc import midranks, roc_auc, roc_curve


def test_midranks_average_ties_like_rankdata_row_by_row():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(4, 50)).astype(float)  # many ties
    np.testing.assert_array_equal(midranks(scores), rankdata(scores, axis=1))
    # By hand: 0.3 is 1st; the two 0.5 share ranks 2 and 3; 0.9 is 4th.
    assert midranks(np.array([0.5, 0.3, 0.9, 0.5])).tolist() == [2.5, 1.0, 4.0, 2.5]


def test_auc_equals_sklearn_with_and_without_ties():
    rng = np.random.default_rng(1)
    for values in (rng.random(300), np.round(rng.random(300), 1)):
        y = rng.random(300) < 0.3
        scores = values + 0.2 * y
        assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    # By hand: of the 2 x 2 pairs, the positive 0.8 beats both negatives, the positive 0.4 ties one
    # (0.4) and loses to the other (0.6): (2 + 0.5) / 4.
    assert roc_auc(np.array([1, 1, 0, 0], bool), np.array([0.8, 0.4, 0.4, 0.6])) == 0.625


def test_curve_passes_through_sklearns_points():
    rng = np.random.default_rng(2)
    y = rng.random(200) < 0.4
    scores = np.round(rng.random(200) + 0.3 * y, 2)
    fpr, tpr = roc_curve(y, scores)
    expected_fpr, expected_tpr, _ = sklearn_roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr)
    np.testing.assert_allclose(tpr, expected_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, scores))


def test_one_class_and_nan_are_refused():
    with pytest.raises(ValueError, match="both classes: 2 positive, 0 negative"):
        roc_auc(np.array([True, True]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([True, False]), np.array([0.1, np.nan]))
