"""`cxr evaluate --bootstrap` and `cxr compare` on prediction tables made here from the prepared
labels plus noise (no model needed): intervals and Δ checked against direct recomputation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrmodel.auc_statistics import auc_intervals, delong_test
from data_prep.findings import exclusive_findings
from data_prep.prepared import PreparedDataset
from orchestration.cli import app

pytestmark = pytest.mark.slow


def _predictions(prepared: PreparedDataset, signal: float, seed: int, drop: int = 0) -> pd.DataFrame:
    """Every test image of every domain: probability = sigmoid(signal * label + noise)."""
    rng = np.random.default_rng(seed)
    frames = []
    for domain in prepared.domains:
        table = prepared.read_columns(domain, "test", ["image_id", *prepared.label_space]).to_pandas()
        labels = table[prepared.label_space].to_numpy().clip(0, 1)
        probs = 1 / (1 + np.exp(-(signal * labels + rng.normal(0, 1, labels.shape))))
        frame = pd.DataFrame(probs, columns=prepared.label_space)
        frame.insert(0, "domain", domain)
        frame.insert(0, "image_id", table["image_id"])
        frames.append(frame.iloc[drop:])
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def files(prepared_dir, tmp_path_factory):
    prepared = PreparedDataset.load(prepared_dir)
    out = tmp_path_factory.mktemp("compare")
    paths = {}
    for name, signal, seed, drop in (("a", 1.0, 0, 0), ("b", 3.0, 1, 3)):
        paths[name] = out / f"{name}.parquet"
        _predictions(prepared, signal, seed, drop).to_parquet(paths[name], index=False)
    return prepared, paths


def test_compare_gives_deltas_intervals_and_delong(files, tmp_path):
    prepared, paths = files
    stats_path = tmp_path / "stats.json"
    result = CliRunner().invoke(app, ["compare", "--predictions", str(paths["a"]), "--predictions", str(paths["b"]),
                                      "--data", str(prepared.root), "--bootstrap", "300", "--seed", "2",
                                      "--stats-json", str(stats_path)])
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path.read_text())
    assert set(stats) == {"num_images", "findings", "means"}
    a, b = pd.read_parquet(paths["a"]), pd.read_parquet(paths["b"])
    domain = prepared.manifest.internal
    shared = sorted(set(a.loc[a.domain == domain, "image_id"]) & set(b.loc[b.domain == domain, "image_id"]))
    assert stats["num_images"] == len(shared) == prepared.num_samples(domain, "test") - 3
    assert "left out: 0 images only A scored, 3 only B scored" in result.output.replace("\n", " ") or \
        "3 images only A scored" in result.output.replace("\n", " ")
    labels = prepared.read_columns(domain, "test", ["image_id", *prepared.label_space]).to_pandas().set_index("image_id")
    a, b = (f[f.domain == domain].set_index("image_id").loc[shared] for f in (a, b))
    for finding, figures in stats["findings"].items():
        y = labels.loc[shared, finding].to_numpy()
        known = y >= 0
        assert set(figures) == {"auc_a", "auc_b", "delta", "ci95", "p_delong", "p_holm"}
        assert figures["auc_a"] == pytest.approx(roc_auc_score(y[known], a[finding].to_numpy()[known]))
        assert figures["auc_b"] == pytest.approx(roc_auc_score(y[known], b[finding].to_numpy()[known]))
        assert figures["delta"] == pytest.approx(figures["auc_b"] - figures["auc_a"])
        assert figures["ci95"][0] <= figures["delta"] <= figures["ci95"][1]
        direct = delong_test(y[known], a[finding].to_numpy()[known], b[finding].to_numpy()[known])
        if min(y[known].sum(), (1 - y[known]).sum()) < 2:  # the tiny test split: no variance estimate
            assert np.isnan(direct.p) and figures["p_delong"] is None and figures["p_holm"] is None
        else:
            assert figures["p_delong"] == pytest.approx(direct.p) and figures["p_holm"] >= figures["p_delong"]
    assert set(stats["findings"]) <= set(prepared.domain_findings(domain))
    mean = stats["means"]["mean"]
    assert mean["auc_a"] == pytest.approx(np.mean([f["auc_a"] for f in stats["findings"].values()]))
    assert mean["delta"] > 0 and mean["ci95"][0] > 0  # B's signal is three times A's
    assert set(stats["means"]) == {"mean", "mean_com", "mean_int"}


def test_identical_predictions_differ_by_nothing(files, tmp_path):
    prepared, paths = files
    stats_path = tmp_path / "same.json"
    result = CliRunner().invoke(app, ["compare", "--predictions", str(paths["a"]), "--predictions", str(paths["a"]),
                                      "--data", str(prepared.root), "--bootstrap", "100", "--stats-json", str(stats_path)])
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path.read_text())
    for figures in [*stats["findings"].values(), *stats["means"].values()]:
        assert figures["delta"] == 0 and figures["ci95"] == [0, 0]
    assert {f["p_delong"] for f in stats["findings"].values()} == {1.0}
    refused = CliRunner().invoke(app, ["compare", "--predictions", str(paths["a"]), "--data", str(prepared.root)])
    assert refused.exit_code == 2 and "give two models" in refused.output


def test_evaluate_of_a_missing_file_names_it_and_leaves_no_store(files, tmp_path, monkeypatch):
    prepared, _ = files
    monkeypatch.chdir(tmp_path)  # where the default store, ./mlflow.db, would be made
    result = CliRunner().invoke(app, ["evaluate", "--predictions", "absent.csv", "--data", str(prepared.root)])
    assert result.exit_code == 2 and "predictions file absent.csv does not exist" in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_evaluate_bootstrap_intervals_are_printed_logged_and_reproducible(files, tmp_path):
    prepared, paths = files
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stats_path = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--predictions", str(paths["a"]), "--data", str(prepared.root),
                                      "--bootstrap", "200", "--seed", "5", "--stats-json", str(stats_path),
                                      f"mlflow.tracking_uri={uri}"], env={"COLUMNS": "400"})  # one column per domain
    assert result.exit_code == 0, result.output
    domain = prepared.manifest.internal
    frame = pd.read_parquet(paths["a"])
    rows = frame[frame.domain == domain]
    labels = prepared.read_columns(domain, "test", ["image_id", *prepared.label_space]).to_pandas() \
        .set_index("image_id").loc[rows["image_id"], prepared.label_space].to_numpy(np.int8)
    own = prepared.domain_findings(domain)
    others = [prepared.domain_findings(d) for d in prepared.domains if d != domain]
    expected = auc_intervals(labels, rows[prepared.label_space].to_numpy(np.float32), prepared.label_space,
                             evaluated=own, common=prepared.common, internal_only=exclusive_findings(own, others),
                             replicates=200, seed=5)
    stats = json.loads(stats_path.read_text())["domains"][domain]
    assert stats["ci95"]["mean_auc"] == pytest.approx(list(expected["mean"]))
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("cxr-orchestra").experiment_id])[0]
    finding = next(f for f in own if f in expected)
    assert run.data.metrics[f"{domain}/auc_ci_low/{finding}"] == pytest.approx(expected[finding][0])
    assert run.data.metrics[f"{domain}/mean_auc_ci_high"] == pytest.approx(expected["mean"][1])
    low, high = expected["mean"]
    assert low <= stats["mean_auc"] <= high
    assert f"{stats['mean_auc']:.4f} [{low:.4f}, {high:.4f}]" in result.output
