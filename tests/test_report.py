"""`cxr report` on a real MLflow store holding runs with known metrics: table values, grouping and
best marks worked out by hand, excluded runs, Fig. 4 curves, artifacts on the parent run."""

from __future__ import annotations

import gc
import io
import weakref

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cxrcommon.plotting import headless_pyplot, panel_grid
from orchestration.cli import app
from orchestration.evaluation.report import collect_sections, result_table
from orchestration.settings.schema import (
    EARLY_STOPPED_TAG,
    EVALUATES_TAG,
    EVALUATION,
    KIND_TAG,
    ROW_LABEL_TAG,
    ROW_TAG,
    RUN_NAME_TAG,
    SPACE_KIND_TAG,
    SPACE_TAG,
    SWEEP,
    SWEEP_TAG,
)

LABEL_SPACE = ["Emphysema", "Hernia", "Atelectasis", "Effusion", "Mass"]
SUMMARY = {"label_space": LABEL_SPACE, "common": ["Atelectasis", "Effusion"], "internal_only": ["Emphysema", "Hernia"]}
# Two seeds of row a, one of row g: test AUC per finding in LABEL_SPACE order.
ROW_A = [[0.8, 0.9, 0.6, 0.5, 0.55], [0.6, 0.7, 0.8, 0.7, 0.65]]
ROW_G = [0.75, 0.85, 0.72, 0.56, 0.9]


def _child(client, exp, parent, name, status, *, row=None, aucs=None, params=None, tags=None):
    all_tags = {"mlflow.parentRunId": parent, RUN_NAME_TAG: name, "mlflow.runName": name, **(tags or {})}
    if row:
        all_tags.update({ROW_TAG: row[0], ROW_LABEL_TAG: row[1]})
    run = client.create_run(exp, run_name=name, tags=all_tags).info.run_id
    for key, value in (params or {}).items():
        client.log_param(run, key, value)
    if aucs:
        for finding, value in zip(LABEL_SPACE, aucs):
            client.log_metric(run, f"test_auc/{finding}", value)
        client.log_metric(run, "test_mean_auc", sum(aucs) / len(aucs))
        client.log_dict(run, SUMMARY, "data/manifest_summary.json")
    if status != "RUNNING":
        client.set_terminated(run, status)
    return run


def _parent(client, exp, name, space, kind):
    tags = {KIND_TAG: SWEEP, SWEEP_TAG: name, SPACE_TAG: space, SPACE_KIND_TAG: kind}
    return client.create_run(exp, run_name=name, tags=tags).info.run_id


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("lab", artifact_location=str(tmp_path / "artifacts"))
    ablation = _parent(client, exp, "abl", "ablation_table6", "ablation")
    for seed, aucs in enumerate(ROW_A):
        _child(client, exp, ablation, f"abl-a{seed}", "FINISHED", row=("a", "Joint"), aucs=aucs)
    _child(client, exp, ablation, "abl-g", "FINISHED", row=("g", "Ours"), aucs=ROW_G)
    _child(client, exp, ablation, "abl-b", "FAILED", row=("b", "Joint + TW"))
    _child(client, exp, ablation, "abl-c", "RUNNING", row=("c", "Joint + TW + TAT"))
    _child(client, exp, ablation, "abl-d", "FINISHED", row=("d", "Joint + TW + TAT + TE"),
           tags={EARLY_STOPPED_TAG: "true"})
    tat = _parent(client, exp, "tat", "fig4_lambda_tat", "grid")
    for value in (0, 0.03):  # λ_tat = 0 is a point of Fig. 4(b): the axis must show it
        _child(client, exp, tat, f"tat-{value}", "FINISHED", aucs=[0.6 + value] * 5,
               params={"method.lambda_tat": str(value), "method.lambda_ute": "30"})
    grid = _parent(client, exp, "ute", "fig4_lambda_ute", "grid")
    for value in (3, 30, 300):
        _child(client, exp, grid, f"ute-{value}", "FINISHED", aucs=[0.5 + value / 1000] * 5,
               params={"method.lambda_ute": str(value), "method.lambda_tat": "0.03"})
    evaluated = _child(client, exp, grid, "x", "FAILED")
    for metrics in ({"nih/mean_auc": 0.7, "nih/auc/Mass": 0.6},
                    {"clean_test/auc/Pneumothorax": 0.8, "clean_test/num_images": 40}):
        evaluation = client.create_run(exp, run_name="evaluate preds.parquet",
                                       tags={KIND_TAG: EVALUATION, EVALUATES_TAG: evaluated})
        for key, value in metrics.items():
            client.log_metric(evaluation.info.run_id, key, value)
    return client, ablation, grid, tmp_path


def test_ablation_table_by_hand_and_excluded_runs(store):
    client, ablation, _, tmp = store
    out = tmp / "report"
    result = CliRunner().invoke(app, ["report", "--experiment", "lab", "--parent", ablation, "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "abl" / "table.csv", header=[0, 1], index_col=0)
    assert list(table.index) == ["a) Joint", "g) Ours"]
    groups = [g for g, _ in table.columns]
    assert groups[:5] == ["internal only", "internal only", "common", "common", "other"]
    a, g = table.loc["a) Joint"], table.loc["g) Ours"]
    assert a[("internal only", "Emphysema")] == pytest.approx(0.7)  # seeds averaged
    assert a[("summary", "Mean_Int")] == pytest.approx((0.7 + 0.8) / 2)
    assert a[("summary", "Mean_Com")] == pytest.approx((0.7 + 0.6) / 2)
    assert a[("summary", "Mean")] == pytest.approx((0.7 + 0.8 + 0.7 + 0.6 + 0.6) / 5)
    assert g[("summary", "Mean_Com")] == pytest.approx((0.72 + 0.56) / 2)
    assert g[("summary", "Mean")] == pytest.approx(sum(ROW_G) / 5)
    assert table.droplevel(0, axis=1)["runs"].to_dict() == {"a) Joint": 2, "g) Ours": 1}

    markdown = (out / "report.md").read_text()
    row_a = next(line for line in markdown.splitlines() if line.startswith("| a) Joint"))
    row_g = next(line for line in markdown.splitlines() if line.startswith("| g) Ours"))
    # a wins Effusion (0.6 > 0.56) and Mean_Com (0.65 > 0.64); g wins everything else.
    assert row_a.count("**") == 4 and "**0.6000**" in row_a and "**0.6500**" in row_a
    assert "**0.7560**" in row_g and "**0.8000**" in row_g
    assert 'class="best"' in (out / "report.html").read_text()

    excluded = pd.read_csv(out / "abl" / "not_averaged.csv").set_index("run")
    assert excluded.loc["abl-b", "status"] == "FAILED"
    assert excluded.loc["abl-c", "why"].startswith("still running")
    assert excluded.loc["abl-d", "why"] == "stopped early by the scheduler"
    assert "ute" not in markdown  # --parent: that sweep only
    logged = {a.path for a in client.list_artifacts(ablation, "report")}
    assert {"report/report.md", "report/report.html", "report/table.csv", "report/not_averaged.csv"} <= logged


def test_whole_experiment_has_fig4_curve_for_the_lambda_grid(store):
    client, _, grid, tmp = store
    out = tmp / "all"
    result = CliRunner().invoke(app, ["report", "--experiment", "lab", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "ute" / "fig4_lambda_ute.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "ute" / "fig4_lambda_tat.png").exists()  # λ_tat is fixed in that grid
    assert not (out / "abl" / "fig4_lambda_ute.png").exists()
    assert (out / "tat" / "fig4_lambda_tat.png").exists()
    markdown = (out / "report.md").read_text()
    assert "## abl (ablation_table6)" in markdown and "## ute (fig4_lambda_ute)" in markdown
    assert "](ute/fig4_lambda_ute.png)" in markdown
    assert "report/fig4_lambda_ute.png" in {a.path for a in client.list_artifacts(grid, "report")}
    evaluations = pd.read_csv(out / "evaluations.csv", header=[0, 1], index_col=0)
    assert len(evaluations) == 2  # two evaluations of one file are two rows
    shown = sorted(str(row.dropna().to_dict()) for _, row in evaluations.iterrows())
    assert shown == [str({("clean_test", "auc/Pneumothorax"): 0.8}), str({("nih", "mean_auc"): 0.7})]
    assert "evaluate preds.parquet of x" in evaluations.index
    table = pd.read_csv(out / "ute" / "table.csv", header=[0, 1], index_col=0)
    assert table[("summary", "Mean")].to_dict() == pytest.approx({"ute-3": 0.503, "ute-30": 0.53, "ute-300": 0.8})


def test_unknown_experiment_is_a_clear_error(store):
    _, _, _, tmp = store
    result = CliRunner().invoke(app, ["report", "--experiment", "nope", "--out", str(tmp / "x")])
    assert result.exit_code == 2 and "no experiment 'nope'" in result.output



def _plan(groups: dict[str, str]) -> dict:
    return {"findings": {f: {"group": g} for f, g in groups.items()}}


def test_groups_come_from_the_joint_rows_plan_and_random_init_rows_are_marked(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("t3", artifact_location=str(tmp_path / "artifacts"))
    parent = _parent(client, exp, "t3", "baselines_table3", "ablation")
    # The Single Dataset row finishes first; its plan calls every NIH finding "internal only".
    single = _child(client, exp, parent, "t3-single", "FINISHED", row=("single_dataset", "Single Dataset"),
                    aucs=ROW_G, params={"train.domains": '["nih"]', "model.pretrained": "true"})
    client.log_dict(single, _plan({f: "internal_only" for f in LABEL_SPACE}), "plan/plan.json")
    joint = _child(client, exp, parent, "t3-joint", "FINISHED", row=("joint_training", "Joint Training"),
                   aucs=ROW_A[0], params={"train.domains": "null", "model.pretrained": "false"})
    client.log_dict(joint, _plan({"Emphysema": "internal_only", "Hernia": "other", "Atelectasis": "common",
                                  "Effusion": "common", "Mass": "internal_only"}), "plan/plan.json")
    table, _ = result_table(client, collect_sections(client, "t3", parent)[0])
    assert [f for g, f in table.columns if g == "internal only"] == ["Emphysema", "Mass"]
    assert [f for g, f in table.columns if g == "common"] == ["Atelectasis", "Effusion"]
    assert list(table.index) == ["single_dataset) Single Dataset", "joint_training) Joint Training †"]
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--experiment", "t3", "--out", str(out)],
                                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert result.exit_code == 0, result.output
    assert "model.pretrained=false" in (out / "report.md").read_text()


def test_ablation_rows_are_compared_with_a_and_g_on_logged_test_predictions(tmp_path):
    """Rows a and b with seeds 0 and 1, g with seed 0; each run logs its test predictions (labels
    with unknowns, b's signal twice a's). ΔMean is recomputed here with scikit-learn."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from orchestration.evaluation.report import row_comparisons
    from orchestration.settings.schema import BEST_TRIAL_TAG, SEED_PARAM, TEST_PREDICTIONS_ARTIFACT, TRIAL_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("lab", artifact_location=str(tmp_path / "artifacts"))
    parent = _parent(client, exp, "abl", "ablation_table6", "ablation")
    rng = np.random.default_rng(0)
    labels = (rng.random((300, len(LABEL_SPACE))) < 0.3).astype(np.int8)
    labels[:40, 1] = -2  # a finding the internal domain leaves unknown for some images
    saved = {}
    for row, signal, seeds in (("a", 1.0, (0, 1)), ("b", 2.0, (0, 1)), ("g", 1.5, (0,))):
        for seed in seeds:
            probs = (labels.clip(0, 1) * signal + rng.normal(0, 1, labels.shape)).astype(np.float32)
            run = _child(client, exp, parent, f"abl-{row}{seed}", "RUNNING", row=(row, row), aucs=[0.7] * 5,
                         params={SEED_PARAM: str(seed)})
            path = tmp_path / f"{row}{seed}" / "test_predictions.npz"
            path.parent.mkdir()
            np.savez(path, sample_id=np.arange(len(labels)), probs=probs, labels=labels)
            client.log_artifact(run, str(path), "evaluation")
            client.set_terminated(run, "FINISHED")
            saved[(row, seed)] = probs
    assert TEST_PREDICTIONS_ARTIFACT == "evaluation/test_predictions.npz"
    [section] = collect_sections(client, "lab")
    table, notes = row_comparisons(client, section, [])
    assert not notes

    def mean_auc(probs):
        return np.mean([roc_auc_score(labels[labels[:, c] >= 0, c], probs[labels[:, c] >= 0, c])
                        for c in range(len(LABEL_SPACE))])

    got = table.set_index(["row", "against"])
    assert set(got.index) == {("b", "a"), ("g", "a"), ("a", "g"), ("b", "g")}
    b_vs_a = got.loc[("b", "a")]
    expected = np.mean([mean_auc(saved[("b", s)]) - mean_auc(saved[("a", s)]) for s in (0, 1)])
    assert b_vs_a["seeds"] == 2 and b_vs_a["ΔMean"] == pytest.approx(expected)
    low, high = (float(x) for x in b_vs_a["95% CI"].strip("[]").split(","))
    assert low < expected < high and low > 0  # twice the signal: clearly better
    assert len(b_vs_a["findings with Holm p < 0.05"].split("/")) == 2
    assert got.loc[("a", "g"), "ΔMean"] == pytest.approx(-got.loc[("g", "a"), "ΔMean"])

    # An Optuna sweep's best trial against the paper default's run with the same seed; a trial that
    # logged no predictions is named.
    search = _parent(client, exp, "opt", "optuna_full", "search")
    best = _child(client, exp, search, "opt-1", "FINISHED", aucs=[0.7] * 5, params={SEED_PARAM: "0"},
                  tags={TRIAL_TAG: "t1"})
    client.log_artifact(best, str(tmp_path / "b0" / "test_predictions.npz"), "evaluation")
    client.set_tag(search, BEST_TRIAL_TAG, "t1")
    default = _parent(client, exp, "default", "paper_default", "ablation")
    plain = _child(client, exp, default, "default-0", "FINISHED", aucs=[0.7] * 5, params={SEED_PARAM: "0"})
    sections = {s.title.split(" ")[0]: s for s in collect_sections(client, "lab")}
    table, notes = row_comparisons(client, sections["opt"], sections["default"].runs)
    assert notes == ["run default-0 logged no test predictions (trained before they were logged): left out of the "
                     "comparisons"] and table.empty
    client.log_artifact(plain, str(tmp_path / "a0" / "test_predictions.npz"), "evaluation")
    table, _ = row_comparisons(client, sections["opt"], sections["default"].runs)
    [found] = table.to_dict("records")
    assert found["row"] == "best trial t1" and found["against"] == "paper default"
    assert found["ΔMean"] == pytest.approx(mean_auc(saved[("b", 0)]) - mean_auc(saved[("a", 0)]))


def test_a_panel_grid_has_a_titled_panel_per_item_and_goes_when_its_last_reference_does():
    """ROC and reliability figures: a sweep's reused trial process draws one per trial, so pyplot
    must not keep them (it keeps every figure it makes until it is closed)."""
    plt = headless_pyplot()
    before = plt.get_fignums()

    def draw(ax, item: str) -> str:
        ax.plot([0, 1], [0, 0.5])
        return f"panel {item}"

    figure = panel_grid(["a", "b", "c", "d", "e"], draw, "five", x_label="x", y_label="y")
    shown = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == [f"panel {item}" for item in "abcde"] and len(figure.axes) == 8
    png = io.BytesIO()
    figure.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")
    assert plt.get_fignums() == before
    gone = weakref.ref(figure)
    del figure, shown
    gc.collect()
    assert gone() is None
