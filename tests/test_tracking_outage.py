"""What the metric logger cannot deliver is kept in a file, never dropped, and logging never waits
for the server. (A real training through a minute-long server outage: tests/test_cluster.py.)"""

from __future__ import annotations

import json
import time

from conftest import free_port

from orchestration.settings.tracking import MetricLogger


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
