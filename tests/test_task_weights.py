"""Eq. 1's α and β (task weighting) from class counts, against numbers worked out by hand (that a
plan, which holds them, is made without torch: test_plan's dry run)."""

import pytest

from cxrmodel.task_weights import domain_betas, finding_weights


def test_finding_weights():
    space = ["Nodule", "Effusion", "Edema"]
    balance = {"Nodule": {"positive": 10, "negative": 90}, "Effusion": {"positive": 25, "negative": 75},
               "Edema": {"positive": 0, "negative": 0}}
    alpha, beta = finding_weights(space, ["Effusion"], balance, alpha=3.0)
    assert alpha == [1.0, 3.0, 1.0]
    assert beta == [9.0, 3.0, 1.0]  # N/P; a finding no trained domain labels -> 1
    alpha, _ = finding_weights(space, ["Effusion"], balance, task_weighting=False)
    assert alpha == [1.0, 1.0, 1.0]
    alpha, _ = finding_weights(space, ["Effusion"], balance, alpha_overrides={"Nodule": 2.0})
    assert alpha == [2.0, 3.0, 1.0]
    with pytest.raises(ValueError, match=r"unknown finding\(s\) \['Nodle'\]"):
        finding_weights(space, ["Effusion"], balance, alpha_overrides={"Nodle": 2.0})
    # Labelled (5 negatives) but never positive: β would be 5/0.
    balance["Edema"] = {"positive": 0, "negative": 5}
    with pytest.raises(ValueError, match="'Edema' has no positive training image"):
        finding_weights(space, ["Effusion"], balance)


def test_multi_task_betas_per_domain():
    pooled = [2.0, 3.0, 5.0]
    balance = {"nih": {"A": {"positive": 1, "negative": 47}, "B": {"positive": 4, "negative": 8}},
               "chexpert": {"A": {"positive": 5, "negative": 10}, "B": {"positive": 0, "negative": 0}}}
    # Common finding A gets each domain's own N / P (47, 2); B and C are not common: pooled.
    assert domain_betas(["A", "B", "C"], ["A"], balance, pooled) == [[47.0, 3.0, 5.0], [2.0, 3.0, 5.0]]
    assert pooled == [2.0, 3.0, 5.0]  # the pooled row is copied, not changed
    with pytest.raises(ValueError, match="'B' has no positive training image in domain 'nih'"):
        domain_betas(["A", "B"], ["A", "B"], {"nih": {"A": balance["nih"]["A"], "B": {"positive": 0, "negative": 3}}},
                     pooled[:2])

