"""`cxr synth --scenario`: the paper scenario's premises checked against the paper's own data (the
real NIH and CheXpert label tables hold Table I's counts), its label noise and hidden findings
measured on what it draws, and every generated dataset's truth.csv read back."""

from __future__ import annotations

import csv
import gzip
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cxrcommon.errors import DataPrepError
from data_prep.findings import CANONICAL_FINDINGS
from data_prep.scenario import draw_dataset, load_scenario
from data_prep.synth import NIH_SPELLING, TRUTH_FILE, synthesize
from orchestration.cli import app


def _gz_rows(path):
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


def test_paper_prevalences_are_table_one_as_the_real_tables_count_it(shared_data):
    """NIH: positives / images; CheXpert: positive + uncertain (U-Ones) / images, as Table I."""
    scenario = load_scenario("paper")
    _, nih = _gz_rows(shared_data / "nih" / "Data_Entry_2017_v2020.csv.gz")
    counts = Counter(label for r in nih for label in r[1].split("|"))
    spelled = {f: NIH_SPELLING.get(f, f) for f in scenario.datasets["nih"].prevalence}
    for finding, p in scenario.datasets["nih"].prevalence.items():
        # The 2020 release differs from the paper's by up to 6% of a finding's positives (Pneumonia
        # 1,431 vs Table I's 1,353).
        assert p == pytest.approx(counts[spelled[finding]] / len(nih), rel=0.07), finding
    header, chexpert = _gz_rows(shared_data / "chexpert" / "train.csv.gz")
    frontal = [r for r in chexpert if r[header.index("Frontal/Lateral")] == "Frontal"]
    assert len(frontal) == 191_027
    for finding, p in scenario.datasets["chexpert"].prevalence.items():
        column = header.index("Pleural Effusion" if finding == "Effusion" else finding)
        shown = sum(r[column] in ("1.0", "-1.0") for r in frontal)
        assert p == pytest.approx(shown / len(frontal), rel=0.03), finding
    # Sizes in the paper's proportion: 223,414 / 80,232 training images = 2.78.
    nih_train = scenario.datasets["nih"].images * 0.8 * 0.9  # a fifth of patients test, 10% of the rest val
    assert scenario.datasets["chexpert"].images / nih_train == pytest.approx(223_414 / 80_232, rel=0.05)


def test_drawn_labels_have_the_labelers_recall_and_precision_and_hidden_findings_stay_unlabelled():
    scenario = load_scenario("paper")
    n = 200_000
    nih = draw_dataset(scenario, "nih", n, np.random.default_rng(0))
    chexpert = draw_dataset(scenario, "chexpert", n, np.random.default_rng(1), clean_rows=1000)
    k = CANONICAL_FINDINGS.index("Infiltration")
    shown, said = nih.present[:, k], nih.labelled[:, k]
    assert shown.mean() == pytest.approx(0.1772, abs=0.003)
    assert (said & shown).sum() / shown.sum() == pytest.approx(0.9, abs=0.01)  # recall
    assert (said & shown).sum() / said.sum() == pytest.approx(0.9, abs=0.01)  # precision
    # Hernia: 0.2% in Table I, raised to the 2% floor.
    assert nih.present[:, CANONICAL_FINDINGS.index("Hernia")].mean() == pytest.approx(0.02, abs=0.002)
    # NIH-only findings are drawn in the CheXpert-like images at NIH's rate, and never labelled there.
    for finding in ("Emphysema", "Infiltration", "Mass"):
        k = CANONICAL_FINDINGS.index(finding)
        expected = max(scenario.datasets["nih"].prevalence[finding], scenario.prevalence_floor)
        assert chexpert.present[:, k].mean() == pytest.approx(expected, abs=0.003), finding
        assert not chexpert.labelled[:, k].any(), finding
    # Tuberculosis: no dataset of the scenario labels it, so it is drawn nowhere.
    assert not nih.present[:, CANONICAL_FINDINGS.index("Tuberculosis")].any()
    # CheXpert's valid.csv rows (the last ones) carry the experts' labels: the truth.
    known = [CANONICAL_FINDINGS.index(f) for f in scenario.datasets["chexpert"].prevalence]
    assert np.array_equal(chexpert.labelled[-1000:, known], chexpert.present[-1000:, known])
    assert not np.array_equal(chexpert.labelled[:-1000, known], chexpert.present[:-1000, known])


def _small_scenario(tmp_path):
    small = load_scenario("paper").model_dump(mode="json")
    small["datasets"]["nih"]["images"], small["datasets"]["chexpert"]["images"] = 60, 90
    small["image_size"] = 32
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    return path


def test_scenario_writes_real_formats_and_a_truth_file_per_dataset(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "raw"), "--scenario",
                                      str(_small_scenario(tmp_path)), "--seed", "4"])
    assert result.exit_code == 0, result.output
    nih_truth = pd.read_csv(tmp_path / "raw" / "nih" / TRUTH_FILE)
    entries = pd.read_csv(tmp_path / "raw" / "nih" / "Data_Entry_2017_v2020.csv")
    assert list(nih_truth["image_id"]) == list(entries["Image Index"]) and len(entries) == 60
    assert list(nih_truth.columns[1:]) == list(CANONICAL_FINDINGS)
    # The label table says what the labeler said: mostly the truth, not always.
    said = np.array([[NIH_SPELLING.get(f, f) in labels.split("|") for f in CANONICAL_FINDINGS[:14]]
                     for labels in entries["Finding Labels"]])
    shown = nih_truth[list(CANONICAL_FINDINGS[:14])].to_numpy().astype(bool)
    assert 0.8 < (said == shown).mean() < 1.0
    chexpert_truth = pd.read_csv(tmp_path / "raw" / "chexpert" / TRUTH_FILE)
    train = pd.read_csv(tmp_path / "raw" / "chexpert" / "CheXpert-v1.0-small" / "train.csv")
    valid = pd.read_csv(tmp_path / "raw" / "chexpert" / "CheXpert-v1.0-small" / "valid.csv")
    assert list(chexpert_truth["image_id"]) == list(train["Path"]) + list(valid["Path"])
    # valid.csv is the truth for the findings CheXpert labels (no noise, no uncertain labels).
    truth_valid = chexpert_truth.set_index("image_id").loc[valid["Path"]]
    assert ((valid["Pleural Effusion"] == 1.0).to_numpy() == truth_valid["Effusion"].astype(bool).to_numpy()).all()


def test_default_synth_writes_truth_too_and_prepare_never_reads_it(tmp_path):
    from data_prep.config import PrepareConfig, SourceConfig
    from data_prep.join import load_sources

    folders = synthesize(tmp_path / "raw", images_per_source=24, image_size=32, seed=1,
                         sources=("nih", "chexpert", "inhouse", "mimic", "vindr", "padchest"))
    for name, folder in folders.items():
        truth = pd.read_csv(folder / TRUTH_FILE)
        assert len(truth) >= 24 and truth["image_id"].is_unique, name
    config = PrepareConfig(sources=[SourceConfig(name="nih", kind="nih", path=folders["nih"]),
                                    SourceConfig(name="chexpert", kind="chexpert", path=folders["chexpert"])],
                           image_size=32)
    before = load_sources(config)
    for name in ("nih", "chexpert"):
        (folders[name] / TRUTH_FILE).write_bytes(b"\x00\xff not a table")
    after = load_sources(config)
    assert before.rows.equals(after.rows) and len(after.rows) >= 48


def test_a_bad_scenario_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(_small_scenario(tmp_path).read_text().replace("Emphysema", "Emphysaema"))
    with pytest.raises(DataPrepError, match=r"bad.yaml: datasets.nih.prevalence: .*unknown findings \['Emphysaema'\]"):
        load_scenario(str(path))
    with pytest.raises(DataPrepError, match="unknown scenario 'papr': built-in are paper"):
        load_scenario("papr")
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "raw"), "--scenario", "paper",
                                      "--images-per-source", "50"])
    assert result.exit_code == 2 and "a scenario sets each dataset's size" in result.output
