"""A tracking-server outage does not stop training: metrics wait and arrive when the server is back;
what MLflow's retries cannot deliver is kept in a file, never dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, free_port, serve_mlflow, tiny_training, wait_for
from orchestration.tracking import MetricLogger, find_run


def test_metrics_that_cannot_be_delivered_are_kept_in_the_spill_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    spill = tmp_path / "storage" / "run" / "undelivered_metrics.jsonl"
    logger = MetricLogger(f"http://127.0.0.1:{free_port()}", "0123abcd", spill_file=spill, queue_size=1,
                          retry_s=1.5, retry_every_s=0.5)
    started = time.monotonic()
    for step in (1, 2, 3):
        logger.log({"train/loss_cls": 0.5 / step, "train/h": 0.3}, step)
    assert time.monotonic() - started < 1  # logging never waits for the server
    assert logger.close(timeout=60) == 6
    kept = [json.loads(line) for line in spill.read_text().splitlines()]
    assert sorted(k["step"] for k in kept) == [1, 2, 3]
    assert {k["run_id"] for k in kept} == {"0123abcd"}
    assert next(k for k in kept if k["step"] == 2)["metrics"] == {"train/loss_cls": 0.25, "train/h": 0.3}
    # Step 1 found the queue empty and was retried until the bound; the one-place queue then held
    # step 2 or 3 while step 1 was being retried, so at least one of them found it full.
    reasons = {k["step"]: k["reason"] for k in kept}
    assert reasons[1].startswith("MlflowException")
    assert "the delivery queue was full" in (reasons[2], reasons[3]), reasons


@pytest.mark.slow
def test_training_survives_a_minute_without_its_tracking_server(prepared_dir, tmp_path, ray_session):
    port, store = free_port(), tmp_path / "store"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    server = serve_mlflow(store, port, server_log)
    steps, epochs = 12, 3
    overrides = tiny_training(tmp_path, **{"train.epochs": epochs, "train.steps_per_epoch": steps,
                                           "mlflow.tracking_uri": uri})
    log = tmp_path / "train.log"
    # MLflow's own retries off, so the logger's fixed-interval retries show (the default only adds
    # MLflow's backoff in front of them).
    training = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "train", "--data", str(prepared_dir), "--run-name", "outage",
         "--address", ray_session.get_runtime_context().gcs_address, *overrides],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    client = MlflowClient(uri)
    try:
        def training_logs() -> bool:
            run = find_run(client, "cxr-orchestra", "outage")
            return run is not None and bool(client.get_metric_history(run.info.run_id, "train/loss_cls"))

        wait_for(training_logs, 300, "the first logged step", training, log)
        run_id = find_run(client, "cxr-orchestra", "outage").info.run_id
        server.terminate()
        server.wait(timeout=30)
        time.sleep(60)
        assert training.poll() in (None, 0), log.read_text()[-3000:]  # no crash while the server was away
        server = serve_mlflow(store, port, server_log)
        assert training.wait(timeout=400) == 0, log.read_text()[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        logged = sorted(int(m.step) for m in client.get_metric_history(run_id, "train/loss_cls"))
        assert logged == list(range(1, epochs * steps + 1))  # every step arrived, once
        assert [m.value for m in client.get_metric_history(run_id, "epoch")] == [1.0, 2.0, 3.0]
        assert "test_mean_auc" in run.data.metrics
        assert not (tmp_path / "ray_results" / "outage" / "undelivered_metrics.jsonl").exists()
    finally:
        training.kill()
        server.terminate()
        server.wait(timeout=30)
