"""Subgroup AUCs and their gaps to the whole split: the paired bootstrap, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from orchestration.evaluation.subgroups import _replicates, parse_keys, subgroup_values
from orchestration.settings.config import ConfigError

POSITIVE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0], bool)
SCORES = np.array([0.9, 0.8, 0.35, 0.2, 0.6, 0.5, 0.1, 0.3, 0.7, 0.4, 0.65, 0.15])


def test_a_subgroup_of_everyone_has_no_gap_in_any_replicate():
    member = np.ones(12, bool)
    auc, whole, sub, gap = _replicates(POSITIVE, SCORES, member, 300, seed=1)
    assert auc == whole == pytest.approx(roc_auc_score(POSITIVE, SCORES))
    assert (gap == 0).all()
    assert not np.isnan(sub).any() and sub.std() > 0.01  # both classes always drawn; the AUC varies


def test_the_subgroup_auc_is_that_of_its_members_and_its_replicates_are_paired():
    member = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0], bool)
    auc, whole, sub, gap = _replicates(POSITIVE, SCORES, member, 400, seed=2)
    assert auc == pytest.approx(roc_auc_score(POSITIVE[member], SCORES[member]))
    assert whole == pytest.approx(roc_auc_score(POSITIVE, SCORES))
    defined = ~np.isnan(sub)
    assert defined.mean() > 0.9  # a resample rarely leaves the subgroup one class short
    assert np.array_equal(np.isnan(gap), ~defined)
    # gap = subgroup AUC - whole AUC of the same resample: subtracting recovers a whole-split
    # replicate, which lies in [0, 1] and varies (the pairing is real, not a constant).
    whole_replicates = sub[defined] - gap[defined]
    assert whole_replicates.min() >= 0 and whole_replicates.max() <= 1 and whole_replicates.std() > 0.01


def test_age_bands_and_keys():
    columns = pd.DataFrame({"age": np.array([5, 39.9, 40, 59, 60, 69.5, 70, 95, np.nan], np.float32)})
    assert subgroup_values(columns, "age_band").tolist() == [
        "0-39", "0-39", "40-59", "40-59", "60-69", "60-69", "70+", "70+", pd.NA]
    assert parse_keys("sex, view") == ["sex", "view"]
    with pytest.raises(ConfigError, match="expected a comma-separated list of sex, age_band, view"):
        parse_keys("sex,race")
