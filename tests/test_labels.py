import pytest

from data_prep.findings import (
    CANONICAL_FINDINGS,
    FindingGroups,
    LabelNameError,
    canonical_name,
    common_findings,
    is_no_finding,
    union_label_space,
)


def test_table_one_has_21_findings_in_order():
    assert len(CANONICAL_FINDINGS) == 21
    assert CANONICAL_FINDINGS[0] == "Emphysema" and CANONICAL_FINDINGS[-1] == "Tuberculosis"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("Pleural_Thickening", "Pleural Thickening"),
        ("Pleural Effusion", "Effusion"),
        ("Effusion", "Effusion"),
        ("infiltration", "Infiltration"),
        ("Enlarged Cardiomediastinum", "Enlarged Cardiomediastinum"),
        ("Support Devices", "Support Devices"),
    ],
)
def test_source_spellings_map_to_canonical_names(source, expected):
    assert canonical_name(source) == expected


def test_user_label_map_wins_and_can_ignore():
    assert canonical_name("Airspace", {"Airspace": "Lung Opacity"}) == "Lung Opacity"
    assert canonical_name("Effusion", {"effusion": "Pneumonia"}) == "Pneumonia"
    assert canonical_name("Calcification", {"Calcification": None}) is None


def test_unknown_label_names_are_refused_with_location_and_remedy():
    with pytest.raises(LabelNameError, match=r"'Calcification' in labels.csv column 3.*label_map"):
        canonical_name("Calcification", where="labels.csv column 3")


def test_no_finding_is_not_a_finding():
    assert is_no_finding("No Finding") and is_no_finding("no_finding")
    assert not is_no_finding("Nodule")


def test_union_and_common_are_computed_from_the_sets():
    nih = ["Nodule", "Effusion", "Atelectasis"]
    chexpert = ["Effusion", "Atelectasis", "Support Devices"]
    custom = ["Atelectasis", "Effusion", "Calcification"]
    space = union_label_space([nih, chexpert, custom])
    # Table I order first, then user-defined findings.
    assert space == ["Nodule", "Atelectasis", "Effusion", "Support Devices", "Calcification"]
    assert common_findings(space, [nih, chexpert, custom]) == ["Atelectasis", "Effusion"]
    assert common_findings(space, [nih]) == nih_in_order(space, nih)


def nih_in_order(space, findings):
    return [f for f in space if f in findings]


def test_finding_groups_of_a_domain_among_others():
    space = ["Hernia", "Mass", "Nodule", "Edema", "Effusion", "Lung Opacity"]
    nih = ["Hernia", "Mass", "Nodule", "Edema", "Effusion"]
    chexpert = ["Edema", "Effusion", "Lung Opacity"]
    inhouse = ["Nodule", "Effusion"]
    groups = FindingGroups.of(nih, [chexpert, inhouse], space)
    assert groups.common == ["Effusion"] and groups.internal_only == ["Hernia", "Mass"]
    assert [groups.group(f) for f in space] == ["internal_only", "internal_only", "other", "other", "common", "other"]
    assert groups.members() == {"evaluated": nih, "common": ["Effusion"], "internal_only": ["Hernia", "Mass"]}
    # Against CheXpert alone, Nodule is NIH's own and Edema is shared.
    assert FindingGroups.of(nih, [chexpert], space).internal_only == ["Hernia", "Mass", "Nodule"]
    assert FindingGroups.of(nih, [chexpert], space).common == ["Edema", "Effusion"]
