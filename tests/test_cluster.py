"""`cxr train` on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head
with one CPU for Ray Data and two 2-CPU nodes with one `trainer_slot` each, the resource the
workers ask for), tracked by a real `mlflow server`:

- two workers spread over the two nodes (placement checked); one node is removed mid-epoch while
  the tracking server is down for a minute, and the run goes on elastically on one worker from its
  last checkpoint; it ends as one FINISHED run with every epoch and step logged once (a
  worker lost without its node takes the same path: Ray Train restarts the group from the last
  checkpoint); the password in its tracking URI is written down nowhere (console, checkpoints,
  artifacts, params, tags);
- a node that cannot see the prepared dataset (its own mount namespace hides the folder) is named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import free_port, mlflow_up, serve_mlflow, tiny_training, wait_for
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from orchestration.settings.tracking import find_run

pytestmark = [pytest.mark.slow, pytest.mark.ray]


class Tracking:
    """A real `mlflow server` that a test can stop and start again on the same port and store."""

    def __init__(self, store: Path):
        self.store, self.port = store, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = store / "server.log"
        self.server = serve_mlflow(self.store, self.port, self.log, wait=False)  # `up` waits for it

    def up(self) -> None:
        mlflow_up(self.server, self.port, self.log)

    def start(self) -> None:
        self.server = serve_mlflow(self.store, self.port, self.log)

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tracking = Tracking(tmp_path_factory.mktemp("cluster_mlflow"))  # its server starts while the nodes do
    nodes = Cluster(initialize_head=False)
    try:
        # A removed node is declared dead after 3 failed health checks a second apart instead of
        # Ray's 5 of 3-10 s (15-50 s): the one-worker restart comes sooner (31 s after the loss
        # here, against 44 s), so its last epoch trains well inside the tracking server's outage.
        nodes.add_node(num_cpus=1, include_dashboard=False,  # the head
                       _system_config={"health_check_period_ms": 1000, "health_check_timeout_ms": 5000,
                                       "health_check_failure_threshold": 3})
        workers = [nodes.add_node(num_cpus=2, resources={"trainer_slot": 1}) for _ in range(2)]
        tracking.up()
        yield nodes, workers, tracking
    finally:
        nodes.shutdown()
        tracking.stop()


def _train(data: Path, address: str, uri: str, tmp: Path, run_name: str, log: Path, **overrides) -> subprocess.Popen:
    settings = tiny_training(tmp, **{"mlflow.tracking_uri": uri, **overrides})
    # After a node loss Ray Train first retries the old group size, which still looks placeable until
    # the node is known dead (a few seconds here), for this long (default 60 s) before going on with
    # fewer workers.
    # MLflow's own HTTP retries off, so the metric logger's fixed-interval retries show (the default
    # only puts MLflow's backoff in front of them).
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "train", "--data", str(data), "--run-name", run_name,
         "--address", address, *settings], cwd=tmp, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def test_a_lost_node_and_a_minute_without_the_tracking_server_cost_no_metric(cluster, prepared_dir, tmp_path):
    """Two workers on the two nodes; in epoch 2 node B is removed and the MLflow server stopped for
    60 s, then started again on the same store. The run goes on elastically on one worker from
    epoch 1's checkpoint meanwhile: no crash, and every step, epoch and test metric arrives once."""
    nodes, workers, tracking = cluster
    log = tmp_path / "train.log"
    steps, epochs = 8, 3
    # The run's URI carries a password (the server ignores it): it must be written down nowhere.
    with_password = tracking.uri.replace("http://", f"http://alice:{PLANTED}@")
    process = _train(prepared_dir, nodes.address, with_password, tmp_path, "elastic", log, **{
        "train.workers": 2, "train.min_workers": 1, "train.max_failures": 1, "train.worker_resources": "{trainer_slot: 1}",
        "train.cpus_per_worker": 1, "train.epochs": epochs, "train.steps_per_epoch": steps})
    client = MlflowClient(tracking.uri)
    pids = tmp_path / "ray_results" / "elastic" / "workers"

    def history(key: str) -> list:
        run = find_run(client, "cxr-orchestra", "elastic")
        return sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step) if run else []

    try:
        wait_for(lambda: any(m.step > steps for m in history("train/loss_cls")), 300, "the second epoch", process, log)
        placed = {rank: (pids / f"rank{rank}.node").read_text() for rank in (0, 1)}
        by_id = {node.node_id: node for node in workers}
        assert placed[0] != placed[1] and set(placed.values()) == set(by_id), placed  # one worker per node
        # Both at once: the restart on one worker happens while metrics cannot be delivered. What the
        # lost group had queued is logged again by the new one (steps past the last delivered one).
        tracking.stop()
        nodes.remove_node(by_id[placed[1]], allow_graceful=False)
        time.sleep(60)
        assert process.poll() in (None, 0), log.read_text()[-3000:]  # no crash while the server was away
        back = time.time()
        tracking.start()
        assert process.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        process.kill()
    run = find_run(client, "cxr-orchestra", "elastic")
    assert run.info.status == "FINISHED"
    assert [m.value for m in history("epoch")] == [1.0, 2.0, 3.0]
    assert [int(m.step) for m in history("train/loss_cls")] == list(range(1, epochs * steps + 1))
    # Trained meanwhile: the one-worker group's last epoch was stepped (metrics keep their step's time)
    # before the server came back.
    assert [m.step for m in history("train/loss_cls") if m.step > 2 * steps and m.timestamp < back * 1000]
    world = history("train/workers")
    assert [m.value for m in world] == [2.0, 1.0] and world[1].step == steps  # restarted from epoch 1's end
    assert [m.value for m in history("train/global_batch")] == [16.0, 8.0]
    assert "test_mean_auc" in run.data.metrics
    assert not (tmp_path / "ray_results" / "elastic" / "undelivered_metrics.jsonl").exists()
    _assert_written_nowhere(PLANTED, client, run, [log, tmp_path / "ray_results" / "elastic"], tmp_path / "artifacts")
    assert "View run" not in log.read_text()  # MLflow's own line for each run an HTTP store ends: not shown


PLANTED = "planted-Pa55word"


def _assert_written_nowhere(secret: str, client: MlflowClient, run, places: list[Path], download: Path) -> None:
    """Not in the console log, any checkpoint or storage file, any artifact, param or tag of the run."""
    client.download_artifacts(run.info.run_id, "", str(download))
    files = [p for place in [*places, download] for p in ([place] if place.is_file() else place.rglob("*"))
             if p.is_file()]
    assert any(p.name == "run.json" for p in files) and any(p.name == "resolved_config.yaml" for p in files)
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert "http://***@127.0.0.1" in (download / "config" / "resolved_config.yaml").read_text()
    assert secret not in json.dumps({**run.data.params, **run.data.tags})


def test_a_node_that_cannot_see_the_data_is_named(cluster, prepared_dir, tmp_path):
    nodes, _, tracking = cluster
    hidden = tmp_path / "shared"
    shutil.copytree(prepared_dir, hidden / "prepared")
    ray = str(Path(sys.executable).parent / "ray")
    # A node whose processes see an empty tmpfs where `shared` is: a folder this node lacks.
    node = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {hidden} && exec {ray} start --address={nodes.address} --num-cpus=1 --block"],
        stdout=(tmp_path / "node.log").open("w"), stderr=subprocess.STDOUT)
    known = {n["NodeID"] for n in nodes.global_state.node_table() if n["Alive"]}
    try:
        def joined() -> bool:
            return len({n["NodeID"] for n in nodes.global_state.node_table() if n["Alive"]} - known) == 1

        try:
            wait_for(joined, 60, "the node without the data", node, tmp_path / "node.log")
        except AssertionError:
            if node.poll() is not None and "mount" in (tmp_path / "node.log").read_text():
                pytest.skip("this machine cannot make a private mount namespace (unshare --mount)")
            raise
        [blind] = {n["NodeID"] for n in nodes.global_state.node_table() if n["Alive"]} - known
        log = tmp_path / "train.log"
        process = _train(hidden / "prepared", nodes.address, tracking.uri, tmp_path, "blind", log)
        assert process.wait(timeout=120) == 2, log.read_text()[-3000:]
        text = log.read_text()
        assert f"({blind[:8]}) cannot see prepared dataset {hidden / 'prepared'}" in text, text[-3000:]
    finally:
        for child in psutil.Process(node.pid).children(recursive=True):
            child.kill()
        node.kill()
