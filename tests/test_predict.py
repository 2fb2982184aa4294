"""`cxr predict` / `cxr evaluate` on a real (tiny) trained run: rows and ids against the shards,
AUC against scikit-learn on labels read here from the shards."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import tiny_training
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from data_prep.prepared import PreparedDataset
from orchestration.cli import app
from orchestration.settings.config import load_config
from orchestration.settings.plan import plan_training
from orchestration.settings.schema import EVALUATES_TAG
from orchestration.training.train import run_training

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(prepared_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    config = load_config([], tiny_training(tmp, **{"train.epochs": 1, "train.steps_per_epoch": 4,
                                                   "train.ensemble_history": "true"}))
    outcome = run_training(config, plan_training(config, prepared_dir), run_name="for-predict")
    return outcome, tmp


def test_predict_writes_one_row_per_image_with_ids(trained, prepared_dir, tmp_path):
    outcome, _ = trained
    out = tmp_path / "preds.parquet"
    result = runner.invoke(app, ["predict", "--checkpoint", outcome.checkpoint, "--data", str(prepared_dir),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    prepared = PreparedDataset.load(prepared_dir)
    assert list(frame.columns) == ["image_id", "domain", *prepared.label_space]
    for domain in prepared.domains:
        ids = set()
        for path in prepared.shard_files(domain, "test"):
            ids |= set(pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist())
        assert set(frame.loc[frame["domain"] == domain, "image_id"]) == ids
    assert frame[prepared.label_space].to_numpy().min() >= 0 and frame[prepared.label_space].to_numpy().max() <= 1
    assert frame.loc[frame["domain"] == "nih", "image_id"].str.fullmatch(r"\d{8}_\d{3}\.png").all()


def test_evaluate_matches_sklearn_and_run_id_finds_the_checkpoint(trained, prepared_dir, tmp_path, monkeypatch):
    outcome, tmp = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", "--run", outcome.run_id, "--data", str(prepared_dir), "--out", str(out),
                                 "--split", "val", "--domain", "nih"])
    assert result.exit_code == 0, result.output
    table_path = tmp_path / "auc.csv"
    result = runner.invoke(app, ["evaluate", "--predictions", str(out), "--data", str(prepared_dir),
                                 "--csv", str(table_path), "--run", outcome.run_id])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(table_path, index_col=0)
    frame = pd.read_csv(out)
    prepared = PreparedDataset.load(prepared_dir)
    labels = pd.concat([pq.read_table(p).to_pandas() for p in prepared.shard_files("nih", "val")]).set_index("image_id")
    checked = 0
    for finding in prepared.domain_findings("nih"):
        y = labels.loc[frame["image_id"], finding].to_numpy()
        if len(set(y)) == 2:
            assert table.loc[finding, "nih"] == pytest.approx(roc_auc_score(y, frame[finding]))
            checked += 1
    assert checked >= 3
    defined = table["nih"].reindex(prepared.domain_findings("nih")).dropna()  # undefined AUCs are left out
    assert table.loc["Mean", "nih"] == pytest.approx(defined.mean())
    # Logged as an evaluation run linked to the training run.
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cxr-orchestra")
    [evaluation] = client.search_runs([exp.experiment_id], filter_string=f"tags.`{EVALUATES_TAG}` = '{outcome.run_id}'")
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.metrics["nih/mean_auc"] == pytest.approx(table.loc["Mean", "nih"])
    assert [a.path for a in client.list_artifacts(evaluation.info.run_id, "evaluation")] == [
        "evaluation/auc.csv", "evaluation/calibration.csv", "evaluation/reliability_nih.png"]

    # Predicting inside evaluate, the run named by its run name: the same AUC.
    stats_path = tmp_path / "stats.json"
    result = runner.invoke(app, ["evaluate", "--run", "for-predict", "--data", str(prepared_dir), "--split", "val",
                                 "--stats-json", str(stats_path)])
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path.read_text())["domains"]
    assert stats["nih"]["mean_auc"] == pytest.approx(table.loc["Mean", "nih"])
    assert set(stats) == set(prepared.domains) and stats["nih"]["unmatched_images"] == 0
    nothing = runner.invoke(app, ["evaluate", "--data", str(prepared_dir)])
    assert nothing.exit_code == 2 and "give --predictions FILE, or --checkpoint PATH / --run RUN" in nothing.output
    unknown = runner.invoke(app, ["evaluate", "--run", "no-such-run", "--data", str(prepared_dir)])
    assert unknown.exit_code == 2 and "no MLflow run with id or run name 'no-such-run'" in unknown.output


def test_predict_refuses_bad_arguments(trained, prepared_dir, tmp_path):
    outcome, _ = trained
    both = runner.invoke(app, ["predict", "--checkpoint", outcome.checkpoint, "--run", "x", "--data",
                               str(prepared_dir), "--out", str(tmp_path / "p.csv")])
    assert both.exit_code == 2 and "give the model once: --model, --checkpoint or --run" in both.output
    neither = runner.invoke(app, ["predict", "--checkpoint", outcome.checkpoint, "--out", str(tmp_path / "p.csv")])
    assert neither.exit_code == 2 and "give --data DIR (a prepared split) or --images DIR|CSV" in neither.output
    unregistered = runner.invoke(app, ["predict", "--model", "models:/nothing@champion", "--images", str(tmp_path),
                                       "--out", str(tmp_path / "p.csv"), f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    assert unregistered.exit_code == 2 and "models:/nothing@champion: no such registered model version" in \
        unregistered.output
    wrong = runner.invoke(app, ["predict", "--checkpoint", str(tmp_path), "--data", str(prepared_dir),
                                "--out", str(tmp_path / "p.csv")])
    assert wrong.exit_code == 2 and "is not a cxr train checkpoint" in wrong.output
    ext = runner.invoke(app, ["predict", "--checkpoint", outcome.checkpoint, "--data", str(prepared_dir),
                              "--out", str(tmp_path / "p.txt")])
    assert ext.exit_code == 2 and ".parquet or .csv" in ext.output


def test_predict_and_evaluate_find_a_run_in_the_store_their_config_names(trained, prepared_dir, tmp_path,
                                                                         monkeypatch):
    outcome, tmp = trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store, ./mlflow.db, does not hold the run
    config = tmp_path / "store.yaml"
    config.write_text(f"mlflow:\n  tracking_uri: sqlite:///{tmp / 'mlflow.db'}\n")
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", "--run", "for-predict", "--data", str(prepared_dir), "--out", str(out),
                                 "--domain", "nih", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == PreparedDataset.load(prepared_dir).num_samples("nih", "test")
    result = runner.invoke(app, ["evaluate", "--run", "for-predict", "--data", str(prepared_dir),
                                 f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    elsewhere = runner.invoke(app, ["predict", "--run", "for-predict", "--data", str(prepared_dir), "--out", str(out)])
    assert elsewhere.exit_code == 2 and "no MLflow run with id or run name 'for-predict'" in elsewhere.output


def test_predict_images_scores_raw_files_and_lists_the_unusable(trained, prepared_dir, tmp_path, monkeypatch):
    """A folder of raw files: NIH PNGs, in-house DICOMs (one without pixels), a zero-byte file.
    Probabilities equal a one-process loop over the same decode and model; the model is found
    through the MLflow Model Registry (models:/NAME@champion)."""
    import shutil

    import numpy as np
    import torch

    from cxrmodel.inference import predict_probs
    from data_prep.images import load_grayscale
    from orchestration.training.checkpoint import load_trained

    outcome, tmp = trained
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    raw = prepared_dir.parent / "raw"
    folder = tmp_path / "incoming"
    (folder / "dicom").mkdir(parents=True)
    for png in sorted((raw / "nih").rglob("*.png"))[:6]:
        shutil.copy(png, folder / png.name)
    dicoms = sorted((raw / "inhouse" / "images").glob("*.dcm"))
    for dcm in dicoms[:5] + dicoms[-1:]:  # the last one has no pixel data
        shutil.copy(dcm, folder / "dicom" / dcm.name)
    (folder / "empty.png").write_bytes(b"")

    client = MlflowClient(uri)
    client.create_registered_model("cxr-test")
    version = client.create_model_version("cxr-test", source=f"runs:/{outcome.run_id}/model", run_id=outcome.run_id)
    client.set_registered_model_alias("cxr-test", "champion", version.version)

    out = tmp_path / "preds.parquet"
    result = runner.invoke(app, ["predict", "--images", str(folder), "--model", "models:/cxr-test@champion",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    prepared = PreparedDataset.load(prepared_dir)
    assert list(frame.columns) == ["image_id", "domain", *prepared.label_space, "path"]
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads((tmp_path / "preds.skipped.json").read_text())}
    assert set(skipped) == {"empty.png", dicoms[-1].name}
    assert "zero-byte" in skipped["empty.png"] and "no PixelData" in skipped[dicoms[-1].name]
    assert len(frame) == 6 + 5 and (frame["domain"] == "incoming").all()

    net, _, _ = load_trained(outcome.checkpoint)
    images = torch.from_numpy(np.stack([load_grayscale(p, prepared.image_size) for p in frame["path"]]))
    with torch.no_grad():
        expected = predict_probs(net, images).numpy()
    assert np.abs(frame[prepared.label_space].to_numpy() - expected).max() < 1e-5
    assert "11 / 13" not in result.output and "13 / 13" in result.output  # progress, up to every file


def test_diagnose_scores_the_ensemble_and_features_against_the_truth_file(trained, prepared_dir, monkeypatch):
    from orchestration.settings.schema import ENSEMBLE_DIR

    outcome, tmp = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    result = runner.invoke(app, ["diagnose", "--run", "for-predict"])
    assert result.exit_code == 0, result.output
    assert "TE / UTE on the external training images" in result.output and "TAT: internal vs external" in result.output
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(outcome.run_id, ENSEMBLE_DIR)] == [f"{ENSEMBLE_DIR}/epoch_1.npz"]
    table = pd.read_csv(client.download_artifacts(outcome.run_id, "diagnostics/ensemble.csv", str(tmp)))
    prepared = PreparedDataset.load(prepared_dir)
    nih_only = set(prepared.domain_findings("nih")) - set(prepared.domain_findings("chexpert"))
    assert set(table["finding"]) == nih_only and len(nih_only) == 7 and set(table["epoch"]) == {1}
    # Counted here from the truth file: the chexpert training images epoch 1 saw (4 steps x 4 per
    # domain, all distinct within one pass) and how many of them show each finding.
    truth = pd.read_csv(prepared_dir.parent / "raw" / "chexpert" / "truth.csv")  # conftest's synth folder
    ids = prepared.read_columns("chexpert", "train", ["sample_id", "image_id"]).to_pandas()
    with np.load(client.download_artifacts(outcome.run_id, f"{ENSEMBLE_DIR}/epoch_1.npz", str(tmp))) as saved:
        seen = ids[ids["sample_id"].isin(saved["sample_id"])].merge(truth, on="image_id")
    assert len(seen) == 16 and (table["images"] == 16).all()
    for row in table.itertuples():
        assert row.shown == seen[row.finding].sum(), row.finding
    metrics = client.get_run(outcome.run_id).data.metrics
    assert 0.0 <= metrics["diagnostics/ute/pass_share_mean"] <= 1.0
    probe = {k: v for k, v in metrics.items() if k.startswith("diagnostics/tat/probe_auc/")}
    common = set(prepared.domain_findings("nih")) & set(prepared.domain_findings("chexpert"))
    assert set(probe) == {f"diagnostics/tat/probe_auc/{f}" for f in common}


def _shard_labels(prepared: PreparedDataset, domain: str, split: str) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in prepared.shard_files(domain, split)]).set_index("image_id")


def test_calibrate_and_operating_points_travel_with_the_model_into_predict(trained, prepared_dir, tmp_path,
                                                                           monkeypatch):
    """cxr calibrate fits a temperature per finding on the internal validation split; cxr evaluate
    --operating-points chooses thresholds there and scores the test split at them. Both are saved
    in the checkpoint folder and cxr predict applies them. Thresholds and figures are recomputed
    here from the raw predictions and the shards' labels."""
    import shutil

    from cxrmodel.calibration import fit_temperature

    outcome, tmp = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = tmp_path / "model"
    shutil.copytree(outcome.checkpoint, model)  # the shared run's folder stays without decisions
    prepared = PreparedDataset.load(prepared_dir)
    raw = {}
    for split in ("val", "test"):
        out = tmp_path / f"raw_{split}.csv"
        result = runner.invoke(app, ["predict", "--checkpoint", str(model), "--data", str(prepared_dir),
                                     "--out", str(out), "--split", split, "--domain", "nih"])
        assert result.exit_code == 0, result.output
        raw[split] = pd.read_csv(out).set_index("image_id")
    val_labels, test_labels = _shard_labels(prepared, "nih", "val"), _shard_labels(prepared, "nih", "test")

    result = runner.invoke(app, ["calibrate", "--checkpoint", str(model), "--data", str(prepared_dir),
                                 "--min-per-class", "1"])
    assert result.exit_code == 0, result.output
    decisions = json.loads((model / "decisions.json").read_text())
    scored = []
    for finding in prepared.domain_findings("nih"):
        y = val_labels.loc[raw["val"].index, finding].to_numpy()
        if {0, 1} <= set(y):
            scored.append(finding)
            assert decisions["temperatures"][finding] == pytest.approx(
                fit_temperature(y == 1, raw["val"][finding].to_numpy()), rel=1e-4)
    assert scored and set(decisions["temperatures"]) == set(scored)

    result = runner.invoke(app, ["evaluate", "--checkpoint", str(model), "--data", str(prepared_dir),
                                 "--operating-points", "youden,spec=0.8", "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    assert "Operating points chosen on the validation split" in result.output and "ECE" in result.output
    decisions = json.loads((model / "decisions.json").read_text())
    assert decisions["decision_point"] == "youden" and set(decisions["thresholds"]) == {"youden", "spec80"}
    assert decisions["temperatures"]  # calibrate's are kept
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [evaluation] = client.search_runs([client.get_experiment_by_name("cxr-orchestra").experiment_id])
    table = pd.read_csv(client.download_artifacts(evaluation.info.run_id, "evaluation/operating_points.csv", tmp_path))
    checked = 0
    for finding in scored:
        y, p = val_labels.loc[raw["val"].index, finding].to_numpy() == 1, raw["val"][finding].to_numpy()
        candidates = np.unique(p)
        j = [(p[y] >= t).mean() + (p[~y] < t).mean() - 1 for t in candidates]
        best = max(candidates[np.isclose(j, max(j))])  # the highest threshold of the best J
        assert decisions["thresholds"]["youden"][finding] == pytest.approx(best, abs=1e-6)
        # Above every score nothing is called (specificity 1): the choice when ties at the top
        # score hold more than a fifth of the negatives.
        spec_ok = [t for t in [*candidates, np.nextafter(p.max(), np.inf)] if (p[~y] < t).mean() >= 0.8]
        assert decisions["thresholds"]["spec80"][finding] == pytest.approx(min(spec_ok), abs=1e-6)
        yt, pt = test_labels.loc[raw["test"].index, finding].to_numpy(), raw["test"][finding].to_numpy()
        if {0, 1} <= set(yt):
            row = table[(table["point"] == "youden") & (table["finding"] == finding) & (table["domain"] == "nih")]
            called = pt >= best
            assert row["sensitivity"].item() == pytest.approx(called[yt == 1].mean(), abs=1e-6)
            assert row["specificity"].item() == pytest.approx((~called)[yt == 0].mean(), abs=1e-6)
            key = f"nih/sens_at_youden/{finding}"
            assert evaluation.data.metrics[key] == pytest.approx(row["sensitivity"].item())
            checked += 1
    assert checked >= 2

    out = tmp_path / "decided.csv"
    result = runner.invoke(app, ["predict", "--checkpoint", str(model), "--data", str(prepared_dir),
                                 "--out", str(out), "--domain", "nih"])
    assert result.exit_code == 0, result.output
    decided = pd.read_csv(out).set_index("image_id")
    for finding, threshold in decisions["thresholds"]["youden"].items():
        p = raw["test"][finding]
        assert (decided[f"{finding}_call"] == (p >= threshold).astype(int)).all()
        t = decisions["temperatures"].get(finding, 1.0)
        logit = np.log(p.clip(1e-7, 1 - 1e-7)) - np.log1p(-p.clip(1e-7, 1 - 1e-7))
        assert decided[f"{finding}_calibrated"].to_numpy() == pytest.approx(1 / (1 + np.exp(-logit / t)), abs=1e-5)

    (model / "decisions.json").write_text(json.dumps({**decisions, "temperatures": {"Nodule": -1}}))
    hostile = runner.invoke(app, ["predict", "--checkpoint", str(model), "--data", str(prepared_dir), "--out", str(out)])
    assert hostile.exit_code == 2 and "decisions.json: temperature of 'Nodule' is -1" in hostile.output
    refused = runner.invoke(app, ["evaluate", "--predictions", str(out), "--data", str(prepared_dir),
                                  "--operating-points", "youden"])
    assert refused.exit_code == 2 and "--operating-points chooses thresholds on the model's validation split" in \
        refused.output


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # this test's own load
def test_export_runs_outside_pytorch_with_the_models_probabilities(trained, prepared_dir, tmp_path, monkeypatch):
    """Each exported file, loaded here by onnxruntime or torch.jit, gives cxr predict's calibrated
    probabilities on prepared images of another batch size than the export's example; a failed
    check leaves no file."""
    import shutil

    import onnxruntime
    import torch

    outcome, _ = trained
    model = tmp_path / "model"
    shutil.copytree(outcome.checkpoint, model)
    prepared = PreparedDataset.load(prepared_dir)
    temperatures = {f: 0.5 + i / 10 for i, f in enumerate(prepared.label_space)}
    (model / "decisions.json").write_text(json.dumps({"temperatures": temperatures}))
    predicted = tmp_path / "p.csv"
    assert runner.invoke(app, ["predict", "--checkpoint", str(model), "--data", str(prepared_dir),
                               "--out", str(predicted), "--domain", "nih", "--split", "val"]).exit_code == 0
    expected = pd.read_csv(predicted)[[f"{f}_calibrated" for f in prepared.label_space]].to_numpy()
    batches = list(prepared.iter_uint8_batches("nih", "val", 64))
    order = np.argsort(np.concatenate([ids for ids, _, _ in batches]))  # cxr predict's rows: by sample_id
    images = np.concatenate([b for _, b, _ in batches])[order]
    run = {
        "onnx": lambda path: onnxruntime.InferenceSession(str(path)).run(None, {"images": images})[0],
        "torchscript": lambda path: torch.jit.load(str(path))(torch.from_numpy(images)).detach().numpy(),
    }
    for fmt, opset in (("onnx", ["--opset", "17"]), ("torchscript", [])):
        out = tmp_path / fmt
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            result = runner.invoke(app, ["export", "--checkpoint", str(model), "--format", fmt, "--out", str(out),
                                         "--images", "5", *opset])
        assert result.exit_code == 0, result.output
        assert not warned, [f"{w.category.__name__}: {w.message}" for w in warned]  # none about what it checks itself
        assert "checked on 5 prepared images" in result.output
        description = json.loads((out / "export.json").read_text())
        assert description["label_space"] == prepared.label_space and description["output"]["calibrated"]
        assert description["checked"]["max_abs_difference"] <= 1e-4
        got = run[fmt](out / description["file"])
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4, fmt
    import onnx

    assert onnx.load(str(tmp_path / "onnx" / "model.onnx")).opset_import[0].version == 17
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["opset"] == 17

    out = tmp_path / "refused"
    bad = runner.invoke(app, ["export", "--checkpoint", str(model), "--format", "tflite", "--out", str(out)])
    assert bad.exit_code == 2 and "--format 'tflite': expected one of onnx, torchscript" in bad.output
    bad = runner.invoke(app, ["export", "--checkpoint", str(model), "--opset", "21", "--out", str(out)])
    assert bad.exit_code == 2 and "--opset 21: expected an ONNX opset from 7 to 20" in bad.output
    bad = runner.invoke(app, ["export", "--checkpoint", str(model), "--format", "torchscript", "--opset", "17",
                              "--out", str(out)])
    assert bad.exit_code == 2 and "--opset is for --format onnx, not torchscript" in bad.output
    import orchestration.evaluation.export as export  # a check that fails (a tolerance nothing meets)

    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    refused = runner.invoke(app, ["export", "--checkpoint", str(model), "--format", "onnx", "--out", str(out),
                                  "--images", "3"])
    assert refused.exit_code == 2 and "differ from PyTorch's by up to" in refused.output
    assert not (out / "model.onnx").exists()


def _post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _png_header(height: int, width: int) -> bytes:
    """A PNG whose header declares height x width and which ends like a complete file: no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_serve_answers_png_and_dicom_like_predict_and_survives_bad_bodies(trained, prepared_dir, tmp_path):
    """A real Ray Serve application on the session's Ray, real HTTP: probabilities equal cxr
    predict --images' one-process decode + model; calls and calibrated probabilities come from the
    decisions file; bad bodies get 4xx with the reason and the replica keeps answering."""
    import shutil

    import torch
    from conftest import free_port
    from ray import serve

    from cxrmodel.calibration import scaled
    from cxrmodel.inference import predict_probs
    from data_prep.images import load_grayscale
    from orchestration.evaluation.serving import Served, start_serving, stop_serving
    from orchestration.training.checkpoint import load_trained

    outcome, _ = trained
    model = tmp_path / "model"
    shutil.copytree(outcome.checkpoint, model)
    prepared = PreparedDataset.load(prepared_dir)
    space = prepared.label_space
    (model / "decisions.json").write_text(json.dumps({
        "temperatures": {space[0]: 2.0}, "thresholds": {"youden": {space[0]: 0.5, space[1]: 0.3}},
        "decision_point": "youden"}))
    raw = prepared_dir.parent / "raw"
    png, dicom = sorted((raw / "nih").rglob("*.png"))[0], sorted((raw / "inhouse" / "images").glob("*.dcm"))[0]
    served = Served(str(model), prepared.image_size, "cxr-test", "3", "run-x", max_body_bytes=2**20)
    url = start_serving(served, host="127.0.0.1", port=free_port(), replicas=1, gpu=False, cpus=0.5)
    try:
        net = load_trained(model)[0]
        for path in (png, dicom):
            status, answer = _post(f"{url}/predict", path.read_bytes())
            assert status == 200, answer
            assert (answer["model"], answer["version"], answer["run_id"]) == ("cxr-test", "3", "run-x")
            with torch.no_grad():
                expected = predict_probs(net, torch.from_numpy(load_grayscale(str(path), prepared.image_size)[None]))[0]
            got = np.array([answer["findings"][f]["probability"] for f in space])
            assert np.abs(got - expected.numpy()).max() < 1e-5
            first, second = answer["findings"][space[0]], answer["findings"][space[1]]
            assert first["calibrated_probability"] == pytest.approx(float(scaled(np.array([got[0]]), 2.0)[0]), abs=1e-6)
            assert first["call"] == int(got[0] >= 0.5) and second["call"] == int(got[1] >= 0.3)
            assert answer["findings"][space[2]]["call"] is None  # no threshold for it
        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        for body, code, reason in [(b"", 400, "zero-byte"), (text.read_bytes(), 400, "not a PNG, JPEG or DICOM"),
                                   (_png_header(20_000, 20_000), 413, "400,000,000 pixels"),
                                   (b"\0" * (2**20 + 1), 413, "more than the 1,048,576 allowed")]:
            status, answer = _post(f"{url}/predict", body)
            assert status == code and reason in answer["error"], (status, answer)
        assert _post(f"{url}/predict", b"", "GET")[0] == 405 and _post(f"{url}/other", b"x")[0] == 404
        assert _post(f"{url}/healthz", b"", "GET") == (200, {"status": "ok", "model": "cxr-test", "version": "3",
                                                             "run_id": "run-x"})
        assert _post(f"{url}/predict", png.read_bytes())[0] == 200  # still serving
    finally:
        stop_serving()
    assert not serve.status().applications


def test_evaluate_by_subgroup_counts_and_scores_each_subgroup_from_the_shards(trained, prepared_dir, tmp_path,
                                                                              monkeypatch):
    from sklearn.metrics import roc_auc_score

    outcome, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    prepared = PreparedDataset.load(prepared_dir)
    frames = []
    for split in ("train", "val", "test"):  # every nih image: subgroups large enough to score
        out = tmp_path / f"{split}.csv"
        assert runner.invoke(app, ["predict", "--checkpoint", outcome.checkpoint, "--data", str(prepared_dir),
                                   "--out", str(out), "--split", split]).exit_code == 0
        frames.append(pd.read_csv(out))
    predictions = tmp_path / "all.csv"
    frame = pd.concat(frames)
    frame.to_csv(predictions, index=False)
    result = runner.invoke(app, ["evaluate", "--predictions", str(predictions), "--data", str(prepared_dir),
                                 "--by", "sex,age_band,view", "--subgroup-min", "3", "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    assert "Subgroups: Mean AUC and gap" in result.output
    assert "inhouse: the data gives no sex for any image" in result.output  # its CSV has no sex column
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [evaluation] = client.search_runs([client.get_experiment_by_name("cxr-orchestra").experiment_id])
    table = pd.read_csv(client.download_artifacts(evaluation.info.run_id, "evaluation/subgroups.csv", tmp_path),
                        keep_default_na=False, na_values=[""])
    shards = pd.concat([_shard_labels(prepared, "nih", s) for s in ("train", "val", "test")])
    nih = frame[frame["domain"] == "nih"].set_index("image_id")
    sex = shards.loc[nih.index, "sex"]
    checked = 0
    for group in ("F", "M"):
        rows = table[(table["domain"] == "nih") & (table["by"] == "sex") & (table["group"] == group)]
        assert (rows["images"] == int((sex == group).sum())).all()
        for _, row in rows[rows["finding"] != "Mean"].iterrows():
            y = shards.loc[nih.index, row["finding"]]
            known = (y >= 0) & (sex == group)
            assert row["auc"] == pytest.approx(roc_auc_score(y[known], nih.loc[known, row["finding"]]), abs=1e-9)
            whole = roc_auc_score(y[y >= 0], nih.loc[y >= 0, row["finding"]])
            assert row["auc_gap"] == pytest.approx(row["auc"] - whole, abs=1e-9)
            assert row["auc_low"] <= row["auc"] <= row["auc_high"]
            key = f"nih/subgroup/sex/{group}/auc/{row['finding']}"
            assert evaluation.data.metrics[key] == pytest.approx(row["auc"])
            checked += 1
    assert checked >= 2
    bands = table[(table["domain"] == "nih") & (table["by"] == "age_band")]["group"]
    assert set(bands) <= {"0-39", "40-59", "60-69", "70+"} and len(set(bands)) >= 2


def test_the_model_card_holds_the_runs_figures_and_becomes_the_versions_description(trained, prepared_dir,
                                                                                    tmp_path, monkeypatch):
    outcome, tmp = trained
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("cxr-card")
    version = client.create_model_version("cxr-card", source=f"runs:/{outcome.run_id}/model", run_id=outcome.run_id)
    result = runner.invoke(app, ["model-card", "--model", "models:/cxr-card/1", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    before = json.loads((tmp_path / "a" / "model_card.json").read_text())
    metrics = client.get_run(outcome.run_id).data.metrics
    assert before["test"]["internal"]["test Mean"] == metrics["test_mean_auc"]
    for finding in PreparedDataset.load(prepared_dir).domain_findings("nih"):
        if f"test_auc/{finding}" in metrics:
            assert before["test"]["internal"][f"test AUC {finding}"] == metrics[f"test_auc/{finding}"]
    assert before["initialisation"].startswith("Random weights")
    assert len(before["training"]["config_sha256"]) == 64 and before["data"]["manifest_sha256"]
    assert before["training"]["versions"]["torch"]

    result = runner.invoke(app, ["evaluate", "--run", outcome.run_id, "--data", str(prepared_dir), "--by", "sex",
                                 "--subgroup-min", "2", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["model-card", "--model", "models:/cxr-card/1", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    evaluation = client.get_run(card["evaluation"]["run_id"])
    assert evaluation.data.tags["cxr.evaluates"] == outcome.run_id
    for domain, figures in card["evaluation"]["domains"].items():
        assert figures["Mean"] == evaluation.data.metrics[f"{domain}/mean_auc"]
        assert figures["Mean low"] == evaluation.data.metrics[f"{domain}/mean_auc_ci_low"]
    assert {row["domain"] for row in card["evaluation"]["calibration"]} == set(card["evaluation"]["domains"])
    markdown = (tmp_path / "b" / "model_card.md").read_text()
    assert "Research use only; not a medical device" in markdown and "## Known limitations" in markdown
    described = client.get_model_version("cxr-card", version.version).description
    assert described == markdown if len(markdown) <= 5000 else described.startswith(markdown[:5000])
    not_registered = runner.invoke(app, ["model-card", "--model", outcome.run_id])
    assert not_registered.exit_code == 2 and "belongs to a registered version" in not_registered.output
