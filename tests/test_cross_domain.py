"""`cxr cross-domain` (Table II) on real Ray Tune / Train and MLflow: one model per domain, each
tested on every domain; one entry recomputed here from `cxr predict` output and the shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_training
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from data_prep.prepared import PreparedDataset
from orchestration.cli import app
from orchestration.evaluation.prediction import predict_table
from orchestration.settings.schema import CHECKPOINT_TAG
from orchestration.settings.tracking import child_runs, find_sweep
from orchestration.training.checkpoint import load_trained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_domains(prepared_dir, tmp_path_factory):
    """NIH and CheXpert only, from the session's raw sets: one trained model per domain, two runs."""
    from data_prep.config import PrepareConfig, SourceConfig
    from data_prep.join import load_sources
    from data_prep.pipeline import run_prepare

    raw = prepared_dir.parent / "raw"
    config = PrepareConfig(sources=[SourceConfig(name="nih", kind="nih", path=raw / "nih"),
                                    SourceConfig(name="chexpert", kind="chexpert", path=raw / "chexpert")],
                           image_size=32)
    return run_prepare(load_sources(config), config, tmp_path_factory.mktemp("two_domains") / "prepared").root


def test_cross_domain_matrix(two_domains, tmp_path, ray_session):
    prepared_dir = two_domains
    overrides = tiny_training(tmp_path, **{"train.epochs": 1, "train.steps_per_epoch": 2, "train.domains": "null"})
    args = ["cross-domain", "--data", str(prepared_dir), "--sweep-name", "xd", *overrides]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    prepared = PreparedDataset.load(prepared_dir)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = find_sweep(client, "cxr-orchestra", "xd")
    children = child_runs(client, parent.info.run_id)
    assert not client.list_artifacts(children[0].info.run_id, "model")  # mlflow.log_model=false
    trained_on = sorted(c.data.params["train.domains"] for c in children)
    assert trained_on == sorted(f'["{d}"]' for d in prepared.domains)

    matrix_csv = client.download_artifacts(parent.info.run_id, "cross_domain/matrix.csv", str(tmp_path))
    matrix = pd.read_csv(matrix_csv, index_col=0)
    assert list(matrix.index) == prepared.domains and list(matrix.columns) == prepared.domains
    # CheXpert's test split is its official valid.csv (prepare.chexpert_test: valid): every cell of
    # Table II is an AUC, the CheXpert row included.
    raw_chexpert = next(Path(s["path"]) for s in prepared.manifest.config["sources"] if s["kind"] == "chexpert")
    valid_rows = len(pd.read_csv(next(raw_chexpert.rglob("valid.csv"))))
    assert prepared.num_samples("chexpert", "test") == valid_rows > 0
    assert matrix.notna().all().all(), matrix

    # Recompute "trained on chexpert, tested on nih" from the model and the shard labels.
    [chexpert_run] = [c for c in children if c.data.params["train.domains"] == '["chexpert"]']
    net, _, plan = load_trained(chexpert_run.data.tags[CHECKPOINT_TAG])
    probs = predict_table(net, plan, prepared, split="test", domains=["nih"])
    labels = prepared.read_columns("nih", "test", ["image_id", *prepared.common]).to_pandas().set_index("image_id")
    aucs = []
    for finding in prepared.common:
        y = labels.loc[probs["image_id"], finding].to_numpy()
        known = y >= 0
        if len(set(y[known])) == 2:
            aucs.append(roc_auc_score(y[known], probs[finding].to_numpy()[known]))
    assert aucs and matrix.loc["nih", "chexpert"] == pytest.approx(np.mean(aucs))
    metric = client.get_run(parent.info.run_id).data.metrics["cross_domain/train_chexpert/test_nih"]
    assert metric == pytest.approx(np.mean(aucs))

    # cxr report shows the matrix in the sweep's section.
    report = CliRunner().invoke(app, ["report", "--parent", parent.info.run_id, "--out", str(tmp_path / "report"),
                                      f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "### Cross-dataset testing (Table II)" in markdown
    assert f"| nih | {matrix.loc['nih', 'nih']:.4f} | {matrix.loc['nih', 'chexpert']:.4f} |" in markdown

    # Naming the finished sweep again only tests: no new training runs, the same matrix.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "finished already" in again.output
    assert len(child_runs(client, parent.info.run_id)) == len(prepared.domains)
