"""Readers against the real NIH and CheXpert label tables, checked with counts computed here
independently (plain csv module, no pandas, no project code)."""

import csv
import gzip
import json
from collections import Counter

import pandas as pd
import pytest

from data_prep.config import PrepareConfig, SourceConfig
from data_prep.join import dataset_stats, load_sources
from data_prep.readers import read_source


def _rows(path):
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


@pytest.fixture(scope="module")
def nih_independent(shared_data):
    header, rows = _rows(shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz")
    positives = Counter(label for r in rows for label in r[1].split("|") if label != "No Finding")
    return {"rows": rows, "positives": positives, "patients": {r[3] for r in rows}}


@pytest.fixture(scope="module")
def chexpert_independent(shared_data):
    header, rows = _rows(shared_data / "chexpert" / "train.csv.gz")
    return header, rows


@pytest.fixture(scope="module")
def joined(shared_data):
    """NIH and CheXpert joined with the default settings."""
    return load_sources(PrepareConfig(sources=[
        SourceConfig(name="nih", kind="nih", path=shared_data / "nih"),
        SourceConfig(name="chexpert", kind="chexpert", path=shared_data / "chexpert"),
    ]), find_images=False)


@pytest.fixture(scope="module")
def nih_table(shared_data):
    return read_source(SourceConfig(name="nih", kind="nih", path=shared_data / "nih"), find_images=False)


@pytest.fixture(scope="module")
def chexpert_table(shared_data):
    return read_source(SourceConfig(name="chexpert", kind="chexpert", path=shared_data / "chexpert"),
                       find_images=False)


def test_nih_reader_matches_independent_counts(nih_table, nih_independent):
    table = nih_table
    assert len(table.rows) == len(nih_independent["rows"]) == 112_120
    assert table.rows["patient_id"].nunique() == len(nih_independent["patients"]) == 30_805
    assert nih_independent["positives"]["Infiltration"] == 19_894
    assert int(table.rows["Infiltration"].sum()) == 19_894
    # Pleural_Thickening (with the underscore) lands on the canonical name.
    assert int(table.rows["Pleural Thickening"].sum()) == nih_independent["positives"]["Pleural_Thickening"]
    assert len(table.findings) == 14 and "No Finding" not in table.findings
    # The official lists are not in ../shared: a warning and the fallback, not a crash.
    assert any("falling back" in w for w in table.warnings)


def test_chexpert_reader_all_views_u_ones(chexpert_table, chexpert_independent):
    header, rows = chexpert_independent
    col = header.index("Atelectasis")
    expected_positive = sum(r[col] in ("1.0", "-1.0") for r in rows)
    assert expected_positive == 67_115
    table = chexpert_table
    assert len(table.rows) == 223_414
    assert int((table.rows["Atelectasis"] == 1).sum()) == expected_positive
    # "Pleural Effusion" is read as the canonical "Effusion".
    eff = header.index("Pleural Effusion")
    assert int((table.rows["Effusion"] == 1).sum()) == sum(r[eff] in ("1.0", "-1.0") for r in rows)
    assert "No Finding" not in table.findings and len(table.findings) == 13


@pytest.mark.parametrize("policy, uncertain_becomes", [("zeros", 0), ("ignore", -2)])
def test_chexpert_uncertainty_policies(shared_data, chexpert_independent, policy, uncertain_becomes):
    header, rows = chexpert_independent
    col = header.index("Edema")
    n_pos = sum(r[col] == "1.0" for r in rows)
    n_unc = sum(r[col] == "-1.0" for r in rows)
    n_zero = sum(r[col] == "0.0" for r in rows)
    n_blank = sum(r[col] == "" for r in rows)
    table = read_source(
        SourceConfig(name="chexpert", kind="chexpert", path=shared_data / "chexpert",
                     uncertain=policy, blank="unknown"),
        find_images=False,
    )
    values = table.rows["Edema"].value_counts().to_dict()
    expected = Counter({1: n_pos, 0: n_zero, -2: n_blank})
    expected[uncertain_becomes] += n_unc
    assert values == dict(expected)


def test_chexpert_view_filter(shared_data):
    frontal = read_source(
        SourceConfig(name="c", kind="chexpert", path=shared_data / "chexpert", views="frontal"),
        find_images=False,
    )
    lateral = read_source(
        SourceConfig(name="c", kind="chexpert", path=shared_data / "chexpert", views="lateral"),
        find_images=False,
    )
    assert len(frontal.rows) == 191_027 and len(lateral.rows) == 32_387


def test_joined_stats_of_the_real_tables(joined, chexpert_independent):
    stats = dataset_stats(joined)
    json.dumps(stats)  # the --stats-json document is plain JSON
    assert stats["common"] == [
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia", "Pneumothorax"
    ]
    assert len(stats["label_space"]) == 20  # Table I less Tuberculosis
    nih = stats["domains"]["nih"]
    assert nih["role"] == "internal" and stats["domains"]["chexpert"]["role"] == "external"
    assert nih["counts"]["Infiltration"] == {
        "positive": 19_894, "negative": 112_120 - 19_894, "unknown": 0,
    }
    # A finding NIH does not label: every row unknown.
    assert nih["counts"]["Support Devices"] == {"positive": 0, "negative": 0, "unknown": 112_120}
    assert sum(nih["splits"].values()) == 112_120
    header, rows = chexpert_independent
    col = header.index("Atelectasis")
    chexpert = stats["domains"]["chexpert"]["counts"]["Atelectasis"]
    assert chexpert == {
        "positive": sum(r[col] in ("1.0", "-1.0") for r in rows),
        "negative": sum(r[col] in ("0.0", "") for r in rows),  # blank = 0 by default
        "unknown": 0,
    }


def test_beta_of_a_single_dataset_run_comes_from_that_dataset(joined):
    """β_c = N_c / P_c over the trained domains: NIH's Edema is rare (β ≈ 47), CheXpert's common;
    pooling both (what every run did before) would give NIH alone β ≈ 3.5."""
    from data_prep.join import train_class_balance

    balance = train_class_balance(joined)
    train = joined.rows[joined.rows["split"] == "train"]
    for domain in ("nih", "chexpert"):
        rows = train[train["domain"] == domain]
        assert balance[domain]["Edema"] == {"positive": int((rows["Edema"] == 1).sum()),
                                            "negative": int((rows["Edema"] == 0).sum())}
    nih = balance["nih"]["Edema"]
    pooled = {k: nih[k] + balance["chexpert"]["Edema"][k] for k in nih}
    assert 40 < nih["negative"] / nih["positive"] < 55
    assert pooled["negative"] / pooled["positive"] < 5


def test_subgroup_columns_of_the_real_tables(nih_table, chexpert_table, nih_independent, chexpert_independent):
    """sex, age and view as the readers carry them, against the CSV cells counted here. Unknown
    spellings (CheXpert's one 'Unknown' sex, the LL / RL of frontal films) become missing."""
    nih = nih_table.rows
    raw = nih_independent["rows"]  # columns: ..., 4 Patient Age, 5 Patient Gender, 6 View Position
    assert nih["sex"].value_counts().to_dict() == dict(Counter(r[5] for r in raw))
    assert nih["view"].value_counts().to_dict() == dict(Counter(r[6] for r in raw))
    assert (nih["age"].round().astype(int).astype(str).to_numpy() == [r[4] for r in raw]).all()

    header, rows = chexpert_independent
    sex, age, frontal, ap_pa = (header.index(c) for c in ("Sex", "Age", "Frontal/Lateral", "AP/PA"))
    chexpert = chexpert_table.rows  # all views, the default
    expected_sex = Counter({"Male": "M", "Female": "F"}.get(r[sex]) for r in rows)
    assert chexpert["sex"].value_counts(dropna=False).to_dict() == {
        "M": expected_sex["M"], "F": expected_sex["F"], pd.NA: expected_sex[None]}
    views = Counter("LATERAL" if r[frontal] == "Lateral" else r[ap_pa] if r[ap_pa] in ("AP", "PA") else None
                    for r in rows)
    assert views["LATERAL"] == 32_387 and views[None] == 17  # the README's lateral count; 16 LL + 1 RL frontal
    assert chexpert["view"].value_counts(dropna=False).to_dict() == {
        "AP": views["AP"], "PA": views["PA"], "LATERAL": views["LATERAL"], pd.NA: views[None]}
    assert chexpert["age"].max() == max(float(r[age]) for r in rows)


def test_the_official_test_split_by_sex_reaches_the_joined_rows(shared_data, nih_independent, tmp_path):
    """NIH with official lists (written here: patients 1-3000 as the test list): the joined test
    split's sex counts are the CSV's counts over the listed images."""
    import os

    folder = tmp_path / "nih"
    folder.mkdir()
    os.symlink(shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz", folder / "Data_Entry_2017_v2020.csv.gz")
    raw = nih_independent["rows"]
    test = [r for r in raw if int(r[3]) <= 3000]
    (folder / "test_list.txt").write_text("\n".join(r[0] for r in test))
    (folder / "train_val_list.txt").write_text("\n".join(r[0] for r in raw if int(r[3]) > 3000))
    joined = load_sources(PrepareConfig(sources=[SourceConfig(name="nih", kind="nih", path=folder)]),
                          find_images=False)
    rows = joined.rows[joined.rows["split"] == "test"]
    assert rows["sex"].value_counts().to_dict() == dict(Counter(r[5] for r in test))
    assert str(rows["sex"].dtype) == "string" and str(rows["age"].dtype) == "float32"
