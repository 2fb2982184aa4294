"""`cxr diagnose`'s figures on rows small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestration.evaluation.diagnostics import EnsembleEpoch, domain_probe, ensemble_diagnostics


def test_ensemble_figures_match_the_hand_worked_rows():
    # Four external images (ids 10-13) and one internal one (id 3, not in the truth: left out).
    truth = pd.DataFrame({"Mass": [1, 0, 1, 0], "Hernia": [0, 0, 0, 0]}, index=pd.Index([10, 11, 12, 13],
                                                                                          name="sample_id"))
    record = EnsembleEpoch(epoch=2, sample_id=np.array([3, 10, 11, 12, 13]), findings=["Mass", "Hernia"],
                           z=np.array([[0.99, 0.5], [0.9, 0.1], [0.2, 0.1], [0.4, 0.1], [0.6, 0.1]]),
                           p=np.array([[0.99, 0.5], [0.8, 0.2], [0.45, 0.2], [0.3, 0.2], [0.1, 0.2]]), h=0.3)
    table = ensemble_diagnostics([record], truth, ["Mass", "Hernia"]).set_index("finding")
    mass = table.loc["Mass"]
    assert mass["images"] == 4 and mass["shown"] == 2
    # z: positives 0.9, 0.4; negatives 0.2, 0.6 -> 3 of 4 pairs ordered right.
    assert mass["z_auc"] == pytest.approx(0.75)
    # p: positives 0.8, 0.3; negatives 0.45, 0.1 -> 3 of 4.
    assert mass["p_auc"] == pytest.approx(0.75)
    # |0.5 - p| = 0.3, 0.05, 0.2, 0.4 against H = 0.3: images 10 and 13 pass; 0.8 -> 1 and 0.1 -> 0, both right.
    assert mass["pass_share"] == pytest.approx(0.5) and mass["pass_right"] == pytest.approx(1.0)
    # Hernia is shown nowhere: no AUC; |0.5 - 0.2| = 0.3 passes everywhere, and "absent" is right.
    hernia = table.loc["Hernia"]
    assert np.isnan(hernia["z_auc"]) and hernia["pass_share"] == 1.0 and hernia["pass_right"] == 1.0


def test_the_probe_finds_a_domain_in_features_that_show_it_and_not_in_noise():
    rng = np.random.default_rng(0)
    internal, external = rng.normal(size=(300, 2, 8)), rng.normal(size=(300, 2, 8))
    external[:, 0, :3] += 1.5  # finding 0's features carry the domain; finding 1's do not
    auc = domain_probe({"nih": internal, "chexpert": external}, ["Effusion", "Edema"])
    assert auc["Effusion"] > 0.95
    assert abs(auc["Edema"] - 0.5) < 0.1


def test_the_default_truth_file_lies_in_the_folder_prepare_read(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from orchestration.evaluation.diagnostics import DiagnoseError, default_truth_file

    for folder in ("raw/nih", "raw/inhouse", "raw/csvdir"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "truth.csv").write_text("image_id\n")
    sources = [{"name": "nih", "kind": "nih", "path": "raw/nih"},
               {"name": "inhouse", "kind": "csv", "path": "raw/inhouse/labels.csv"},
               {"name": "csvdir", "kind": "csv", "path": "raw/csvdir"},
               {"name": "gone", "kind": "nih", "path": "raw/gone"}]
    prepared = SimpleNamespace(manifest=SimpleNamespace(config={"prepare": {"sources": sources}}),
                               root=tmp_path / "prepared")
    monkeypatch.chdir(tmp_path / "raw")  # relative paths resolve against the prepared folder's parent too
    assert default_truth_file(prepared, "nih") == tmp_path / "raw/nih/truth.csv"
    assert default_truth_file(prepared, "inhouse") == tmp_path / "raw/inhouse/truth.csv"
    assert default_truth_file(prepared, "csvdir") == tmp_path / "raw/csvdir/truth.csv"
    with pytest.raises(DiagnoseError, match="no truth.csv found for 'gone'"):
        default_truth_file(prepared, "gone")
    with pytest.raises(DiagnoseError, match="names no source 'chexpert'"):
        default_truth_file(prepared, "chexpert")
