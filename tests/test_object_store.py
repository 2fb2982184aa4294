"""Data and checkpoints on an object store: a real S3 implementation (moto's server, credentials
checked) on 127.0.0.1, reached through pyarrow's and Ray's own filesystem layer."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from cxrcommon.storage import Folder, StorageError
from orchestration.cli import app
from orchestration.settings.schema import CHECKPOINT_TAG
from orchestration.settings.tracking import find_run
from tests.conftest import free_port, ray_head, tiny_training, wait_for

BUCKET = "cxr-lab"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server that checks signatures; yields the environment a client of it needs."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    # Three unsigned calls make the user and its key; every request after them must be signed.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                import urllib.request

                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                return True
            except OSError:
                return False

        wait_for(up, 60, "moto server", server, log)
        anonymous = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "x",
                     "aws_secret_access_key": "x"}
        iam = boto3.client("iam", **anonymous)
        iam.create_user(UserName="lab")
        key = iam.create_access_key(UserName="lab")["AccessKey"]
        iam.put_user_policy(UserName="lab", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        yield env, client
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_env(s3, monkeypatch):
    env, client = s3
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env, client


runner = CliRunner()


def test_a_missing_bucket_or_refused_credentials_are_named_before_anything_starts(s3_env, tmp_path, monkeypatch):
    env, _ = s3_env
    result = runner.invoke(app, ["train", "--data", "s3://no-such-bucket/prepared", *tiny_training(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "s3://no-such-bucket/prepared" in result.output and "bucket 'no-such-bucket' does not exist" in result.output

    result = runner.invoke(app, ["prepare", "--nih", str(tmp_path), "--out", "s3://no-such-bucket/out"])
    assert result.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in result.output, result.output

    wrong = env["AWS_SECRET_ACCESS_KEY"][::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    result = runner.invoke(app, ["train", "--data", f"s3://{BUCKET}/prepared", *tiny_training(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"s3://{BUCKET}/prepared" in result.output and "credentials" in result.output
    assert wrong not in result.output and env["AWS_ACCESS_KEY_ID"] not in result.output
    assert not (tmp_path / "ray_results").exists()  # refused before a run or Ray started


def test_a_location_that_carries_credentials_is_refused():
    with pytest.raises(StorageError, match="may not carry credentials") as refused:
        Folder.at("s3://AKIAEXAMPLE:hunter2@bucket/prefix")
    assert "hunter2" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)


def _objects(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _cxr(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", *args], cwd=log.parent, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _complete_checkpoint(client, run_folder: str) -> bool:
    """A checkpoint of the run is complete in the store (its progress.json, written last, is there):
    what a resume starts from."""
    return any(k.startswith(f"{run_folder}/checkpoint_") and k.endswith("/progress.json")
               for k in _objects(client, f"{run_folder}/"))


@pytest.mark.slow
def test_prepare_train_resume_predict_round_trip_on_s3(s3, tmp_path):
    """cxr prepare --out s3://..., cxr train --data s3://... with train.storage_path=s3://..., stopped
    after epoch 1 and resumed by the same command, then cxr predict --run --data s3://... ."""
    from data_prep.synth import synthesize

    env_s3, client = s3
    synthesize(tmp_path / "raw", images_per_source=40, image_size=40, seed=5, sources=("nih", "chexpert"))
    data, storage = f"s3://{BUCKET}/prepared", f"s3://{BUCKET}/runs"
    head_env = {**os.environ, **env_s3, "PYTHONUNBUFFERED": "1"}
    with ray_head(head_env, tmp_path, "--include-dashboard=false", num_cpus=2) as (address, env):
        log = tmp_path / "prepare.log"
        prepare = _cxr(["prepare", "--nih", str(tmp_path / "raw/nih"), "--chexpert", str(tmp_path / "raw/chexpert"),
                        "--image-size", "32", "--out", data, "--address", address], env, log)
        assert prepare.wait(timeout=300) == 0, log.read_text()[-3000:]
        keys = _objects(client, "prepared/")
        manifest = json.loads(client.get_object(Bucket=BUCKET, Key="prepared/manifest.json")["Body"].read())
        listed = [f"prepared/{name}" for splits in manifest["shards"].values() for files in splits.values() for name in files]
        assert listed and set(listed) <= set(keys)
        assert not [k for k in keys if "_skipped" in k or ".cxr-prepare-incomplete" in k]
        tables = {  # each domain's and split's rows, read from the store's objects without cxr's reader
            (domain, split): [pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=f"prepared/{name}")["Body"].read()),
                                            columns=["sample_id", "image_id"]).to_pandas() for name in files]
            for domain, splits in manifest["shards"].items() for split, files in splits.items()}
        rows = {key: sum(len(t) for t in parts) for key, parts in tables.items()}
        assert rows[("nih", "train")] == manifest["domains"]["nih"]["splits"]["train"] > 0
        images = sum(1 for p in (tmp_path / "raw").rglob("*") if p.suffix in (".png", ".jpg"))
        assert sum(rows.values()) == manifest["num_samples"] == images - len(manifest["skipped"])

        overrides = [*tiny_training(tmp_path, **{"train.steps_per_epoch": 30, "train.workers": 1}),
                     f"train.storage_path={storage}"]
        train = ["train", "--data", data, "--run-name", "on-s3", "--address", address, *overrides]
        log = tmp_path / "first.log"
        first = _cxr(train, env, log)
        wait_for(lambda: _complete_checkpoint(client, "runs/on-s3"), 240, "the epoch-1 checkpoint", first, log)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        log = tmp_path / "second.log"
        assert _cxr(train, env, log).wait(timeout=300) == 0, log.read_text()[-3000:]
        assert log.read_text().count("resumed after epoch 1") == 1

        mlflow = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        run = find_run(mlflow, "cxr-orchestra", "on-s3")
        assert run.info.status == "FINISHED"
        checkpoint = run.data.tags[CHECKPOINT_TAG]
        assert checkpoint.startswith(f"{storage}/on-s3/checkpoint_")
        assert [m.value for m in mlflow.get_metric_history(run.info.run_id, "epoch")] == [1.0, 2.0]

        out = tmp_path / "predictions.csv"
        log = tmp_path / "predict.log"
        predict = _cxr(["predict", "--run", "on-s3", "--data", data, "--domain", "nih", "--out", str(out),
                        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], env, log)
        assert predict.wait(timeout=300) == 0, log.read_text()[-3000:]
    predicted = pd.read_csv(out)
    assert len(predicted) == rows[("nih", "test")]
    # The final checkpoint holds the best model's internal test predictions: the same model, read back.
    key = checkpoint.removeprefix(f"s3://{BUCKET}/") + "/test_predictions.npz"
    image_of = pd.concat(tables[("nih", "test")]).set_index("sample_id")["image_id"]
    with np.load(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())) as saved:
        probs = predicted.set_index("image_id").loc[image_of[saved["sample_id"]], manifest["label_space"]]
        np.testing.assert_allclose(probs.to_numpy(), saved["probs"], atol=1e-5)
    for text in (p.read_text() for p in tmp_path.glob("*.log")):
        assert env_s3["AWS_SECRET_ACCESS_KEY"] not in text
