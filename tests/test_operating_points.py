"""Operating points and the figures at them, against numbers worked out by hand on eight images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrmodel.operating_points import OperatingPoint, figures_at, parse_operating_points

# Positives at 0.9, 0.8, 0.6, 0.3; negatives at 0.7, 0.5, 0.4, 0.2. Called at or above t:
#   t     0.9  0.8  0.7  0.6  0.5  0.4  0.3  0.2
#   sens  .25  .50  .50  .75  .75  .75  1    1
#   spec  1    1    .75  .75  .50  .25  .25  0
#   J     .25  .50  .25  .50  .25  0    .25  0
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
POSITIVE = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)


@pytest.mark.parametrize("text, threshold", [
    ("youden", 0.8),  # J = 0.5 at 0.8 and at 0.6: the higher threshold
    ("sens=0.75", 0.6), ("sens=0.5", 0.8), ("sens=1", 0.3),
    ("spec=0.75", 0.6), ("spec=1.0", 0.8), ("spec=0.5", 0.5),
])
def test_each_point_picks_the_threshold_worked_out_by_hand(text, threshold):
    (point,) = parse_operating_points(text)
    assert point.threshold(POSITIVE, SCORES) == threshold


def test_a_specificity_no_score_reaches_calls_nothing():
    positive = np.array([0, 1, 1], bool)  # the top score is a negative's
    scores = np.array([0.9, 0.5, 0.4])
    t = OperatingPoint("spec", 1.0).threshold(positive, scores)
    assert t > 0.9 and not (scores >= t).any()
    figures = figures_at(positive, scores, t)
    assert figures["specificity"][0] == 1.0 and figures["sensitivity"][0] == 0.0
    assert math.isnan(figures["ppv"][0])  # no positive call: PPV undefined, not 0


def test_figures_at_a_threshold():
    # At 0.8: TP 2, FN 2, TN 4, FP 0.
    figures = figures_at(POSITIVE, SCORES, 0.8)
    value = {name: v for name, (v, _, _) in figures.items()}
    assert value == pytest.approx({"sensitivity": 0.5, "specificity": 1.0, "ppv": 1.0, "npv": 4 / 6,
                                   "f1": 4 / 6})
    assert all(math.isnan(low) for _, low, _ in figures.values())  # no replicates, no interval


def test_bootstrap_intervals_resample_within_each_class():
    figures = figures_at(POSITIVE, SCORES, 0.8, replicates=400, seed=3)
    assert figures["specificity"][1:] == (1.0, 1.0)  # every negative scores below 0.8 in every resample
    value, low, high = figures["sensitivity"]
    assert low < value < high and low >= 0 and high <= 1
    again = figures_at(POSITIVE, SCORES, 0.8, replicates=400, seed=3)
    assert again == figures  # seeded


def test_names_and_bad_specifications():
    points = parse_operating_points("youden, sens=0.90,spec=.95")
    assert [p.name for p in points] == ["youden", "sens90", "spec95"]
    for bad in ("youdn", "sens=1.5", "spec=0", "sens", "ppv=0.9", "youden,youden"):
        with pytest.raises(ValueError, match="youden|twice"):
            parse_operating_points(bad)
