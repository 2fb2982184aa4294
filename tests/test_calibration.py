"""Calibration figures against hand-worked values; temperature scaling of over-confident logits."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmodel.calibration import brier_score, equal_mass_bins, expected_calibration_error, fit_temperature, scaled

SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
POSITIVE = np.array([0, 0, 1, 0, 1, 0, 1, 1])


def test_ece_with_equal_mass_bins_worked_by_hand():
    # 4 bins of 2: mean scores .15 .35 .65 .85 against positive rates 0 .5 .5 1: each off by .15.
    assert expected_calibration_error(POSITIVE, SCORES, bins=4) == pytest.approx(0.15)
    # 2 bins of 4: .25 against .25, .75 against .75.
    assert expected_calibration_error(POSITIVE, SCORES, bins=2) == pytest.approx(0.0)
    # The bins are by rank, not by value: shuffling the images changes nothing.
    order = np.random.default_rng(0).permutation(8)
    assert expected_calibration_error(POSITIVE[order], SCORES[order], bins=4) == pytest.approx(0.15)
    means, rates, sizes = equal_mass_bins(POSITIVE, SCORES, bins=4)
    assert means == pytest.approx([0.15, 0.35, 0.65, 0.85]) and rates == pytest.approx([0, 0.5, 0.5, 1])
    assert sizes.tolist() == [2, 2, 2, 2]


def test_brier_score_worked_by_hand():
    # (.01 + .04 + .49 + .16 + .16 + .49 + .04 + .01) / 8
    assert brier_score(POSITIVE, SCORES) == pytest.approx(1.4 / 8)


def test_temperature_scaling_lowers_the_ece_of_over_confident_logits_on_held_out_images():
    rng = np.random.default_rng(7)
    true_logits = rng.normal(0, 1.5, 20_000)
    positive = rng.random(20_000) < 1 / (1 + np.exp(-true_logits))
    over_confident = 1 / (1 + np.exp(-3 * true_logits))  # logits 3x too large
    fit, held_out = slice(0, 10_000), slice(10_000, None)
    t = fit_temperature(positive[fit], over_confident[fit])
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(positive[held_out], over_confident[held_out])
    after = expected_calibration_error(positive[held_out], scaled(over_confident[held_out], t))
    assert before > 0.08 and after < before / 3
    # Monotone: the order of the images, hence every AUC and every call at a matching threshold, stays.
    assert (np.diff(scaled(np.sort(over_confident), t)) >= 0).all()


def test_a_calibrated_model_keeps_a_temperature_near_one():
    rng = np.random.default_rng(1)
    probs = rng.random(20_000)
    positive = rng.random(20_000) < probs
    assert fit_temperature(positive, probs) == pytest.approx(1.0, abs=0.06)


def test_the_decisions_file_round_trips_and_hostile_values_are_refused(tmp_path):
    import json

    from orchestration.evaluation.decisions import ModelDecisions, read_decisions, write_decisions
    from orchestration.settings.config import ConfigError

    space = ["Effusion", "Nodule"]
    decisions = ModelDecisions(temperatures={"Effusion": 1.5}, thresholds={"youden": {"Nodule": 0.3}},
                               decision_point="youden")
    write_decisions(tmp_path, decisions)
    assert read_decisions(tmp_path, space) == decisions
    assert read_decisions(tmp_path / "elsewhere", space) == ModelDecisions()  # none yet: nothing decided
    for bad, message in [({"temperatures": {"Effusion": float("nan")}}, "expected a finite number above 0"),
                         ({"temperatures": {"Hernia": 1.0}}, "'Hernia', which the model does not predict"),
                         ({"thresholds": {"youden": {"Nodule": 7}}, "decision_point": "youden"}, "expected a number in"),
                         ({"thresholds": {"youden": {}}, "decision_point": "spec90"}, "is not one of"),
                         ({"temperatures": []}, "temperatures is list, expected a finding -> number table"),
                         ({"decision_point": {"a": 1}}, "decision_point is .*expected text"),
                         ({"temperatures": [], "run": "os.system"}, "not a decisions file")]:
        (tmp_path / "decisions.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            read_decisions(tmp_path, space)
    not_a_folder = tmp_path / "file"  # where no file can be made (a read-only store fails the same way)
    not_a_folder.write_text("")
    with pytest.raises(ConfigError, match="copy the checkpoint folder somewhere writable"):
        write_decisions(not_a_folder, decisions)
