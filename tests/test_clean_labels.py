"""Table VII: Google's relabelled NIH CSV, composite scores and AUCs worked out by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cxrcommon.errors import DataPrepError
from data_prep.relabelled_nih import read_relabelled_nih
from data_prep.synth import RELABELLED_FILE
from orchestration.cli import app
from orchestration.evaluation.clean_labels import evaluate_clean_labels
from orchestration.settings.config import ConfigError
from orchestration.settings.schema import EVALUATION, KIND_TAG

HEADER = "Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n"
ROWS = [
    "a.png,1,NO,YES,YES,NO,test",
    "b.png,2,NO,NO,NO,YES,test",
    "c.png,3,YES,YES,NO,YES,test",
    "d.png,4,NO,NO,YES,NO,test",
    "e.png,5,NO,HEDGE,NO,NO,test",
    "f.png,6,NO,YES,NO,NO,validation",
    "gone.png,7,NO,NO,YES,YES,test",
]
AIRSPACE = ("Edema", "Consolidation", "Mass", "Nodule", "Pneumonia", "Atelectasis", "Infiltration")


def _csv(tmp_path, rows=ROWS, header=HEADER):
    path = tmp_path / "relabelled.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def _predictions() -> pd.DataFrame:
    """Scores chosen so each AUC is easy to count by hand."""
    frame = pd.DataFrame({"image_id": ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"], "domain": "nih"})
    frame["Pneumothorax"] = [0.9, 0.8, 0.3, 0.1, 0.5, 0.2]
    for name in AIRSPACE:  # airspace score = this column's mean; Mass/Nodule below change it
        frame[name] = [0.6, 0.2, 0.4, 0.3, 0.1, 0.1]
    frame["Mass"] = [0.2, 0.9, 0.1, 0.3, 0.1, 0.1]
    frame["Nodule"] = [0.4, 0.5, 0.7, 0.1, 0.1, 0.1]
    frame["Hernia"] = 0.5  # an output the relabelled findings do not use
    return frame


def test_reader_keeps_one_set_and_maps_yes_no_hedge(tmp_path):
    test = read_relabelled_nih(_csv(tmp_path), "test")
    assert test["image_id"].tolist() == ["a.png", "b.png", "c.png", "d.png", "e.png", "gone.png"]
    assert test["Pneumothorax"].tolist() == [1, 0, 1, 0, -2, 0]
    assert read_relabelled_nih(_csv(tmp_path), "val")["image_id"].tolist() == ["f.png"]
    no_set_column = _csv(tmp_path, [r.rsplit(",", 1)[0] for r in ROWS], HEADER.replace(",Set Id", ""))
    assert len(read_relabelled_nih(no_set_column, "test")) == len(ROWS)


@pytest.mark.parametrize("rows, header, message", [
    (ROWS[:1] + ["b.png,2,NO,maybe,NO,YES,test"], HEADER, "row 3, column 'Pneumothorax': 'maybe' is not YES, NO"),
    (ROWS[:1] + ["b.png,2,NO,NO,NO,YES,train"], HEADER, "row 3: Set Id 'train' is neither"),
    (ROWS[:1] + ROWS[:1], HEADER, "'a.png' appears more than once"),
    (["a.png,1,NO,YES,test"], "Image Index,Patient ID,Fracture,Pneumothorax,Set Id\n",
     "missing column(s) ['Airspace opacity', 'Nodule or mass']"),
])
def test_reader_names_row_and_column_of_bad_input(tmp_path, rows, header, message):
    with pytest.raises(DataPrepError, match=r"relabelled\.csv") as error:
        read_relabelled_nih(_csv(tmp_path, rows, header), "test")
    assert message in str(error.value)


def test_composite_scores_and_auc_by_hand(tmp_path):
    result = evaluate_clean_labels(_predictions(), read_relabelled_nih(_csv(tmp_path), "test"), "test")
    assert result.num_images == 5 and result.missing == ["gone.png"]
    # Pneumothorax (e is HEDGE, left out): positives a=.9, c=.3; negatives b=.8, d=.1
    # pairs won: .9>.8, .9>.1, .3>.1 -> 3/4.
    assert result.report.auc["Pneumothorax"] == pytest.approx(0.75)
    # Airspace opacity = mean of 7 outputs, 5 of them equal to the base column:
    # a: (5*.6+.2+.4)/7=.514, b: (5*.2+.9+.5)/7=.343, c: (5*.4+.1+.7)/7=.4, d: (5*.3+.3+.1)/7=.271,
    # e: (5*.1+.1+.1)/7=.1; positives a, d; negatives b, c, e -> a beats 3, d beats e only -> 4/6.
    assert result.report.auc["Airspace opacity"] == pytest.approx(4 / 6)
    # Nodule or mass = mean(Mass, Nodule): a .3, b .7, c .4, d .2, e .1; positives b, c -> beat a, d, e -> 6/6.
    assert result.report.auc["Nodule or mass"] == pytest.approx(1.0)
    stats = result.stats()
    assert stats["set"] == "test" and stats["num_images"] == 5 and stats["missing_predictions"] == 1


def test_missing_output_column_and_repeated_image_are_refused(tmp_path):
    labels = read_relabelled_nih(_csv(tmp_path), "test")
    with pytest.raises(ConfigError, match=r"lack the output column\(s\) \['Infiltration'\]"):
        evaluate_clean_labels(_predictions().drop(columns="Infiltration"), labels, "test")
    twice = pd.concat([_predictions(), _predictions().iloc[:1]])
    with pytest.raises(ConfigError, match="'a.png' is predicted more than once"):
        evaluate_clean_labels(twice, labels, "test")


def test_cli_writes_stats_json_and_logs_an_evaluation_run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    predictions = tmp_path / "preds.csv"
    _predictions().to_csv(predictions, index=False)
    stats_path = tmp_path / "stats.json"
    result = CliRunner().invoke(app, ["evaluate", "--predictions", str(predictions), "--clean-labels",
                                      str(_csv(tmp_path)), "--stats-json", str(stats_path)])
    assert result.exit_code == 0, result.output
    assert "1 of the test images" in result.output and "gone.png" in result.output
    stats = json.loads(stats_path.read_text())
    assert stats["num_images"] == 5
    assert stats["auc"] == pytest.approx({"Pneumothorax": 0.75, "Airspace opacity": 4 / 6, "Nodule or mass": 1.0})
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("cxr-orchestra").experiment_id])
    assert run.data.tags[KIND_TAG] == EVALUATION and run.data.params["set"] == "test"
    assert run.data.metrics["clean_test/auc/Pneumothorax"] == pytest.approx(0.75)
    assert run.data.metrics["clean_test/missing_predictions"] == 1
    both = CliRunner().invoke(app, ["evaluate", "--predictions", str(predictions), "--clean-labels",
                                    str(_csv(tmp_path)), "--data", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one of --data" in both.output


def test_synth_relabelled_file_agrees_with_the_nih_labels(synth_dir):
    nih = synth_dir / "nih"
    entries = pd.read_csv(nih / "Data_Entry_2017_v2020.csv", usecols=[0, 1, 3], names=["image", "labels", "patient"],
                          header=0).set_index("image")
    test_list = set((nih / "test_list.txt").read_text().split())
    test = read_relabelled_nih(nih / RELABELLED_FILE, "test")
    assert set(test["image_id"]) == test_list
    val = read_relabelled_nih(nih / RELABELLED_FILE, "val")
    assert len(val) > 0 and not set(val["image_id"]) & test_list
    both = pd.concat([test, val]).set_index("image_id")
    has = entries.loc[both.index, "labels"].str.split("|")
    assert (both["Pneumothorax"] == has.map(lambda ls: int("Pneumothorax" in ls))).all()
    assert (both["Nodule or mass"] == has.map(lambda ls: int("Mass" in ls or "Nodule" in ls))).all()
