"""`cxr train` on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head
with one CPU for Ray Data and two 2-CPU nodes with one `trainer_slot` each, the resource the
workers ask for), tracked by a real `mlflow server`:

- two workers spread over the two nodes (placement checked); one node is removed mid-epoch and the
  run goes on elastically on one worker from its last checkpoint, ending as one FINISHED run with
  every epoch and step logged once (a worker lost without its node takes the same path: Ray
  Train restarts the group from the last checkpoint);
- a node that cannot see the prepared dataset (its own mount namespace hides the folder) is named.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from conftest import ROOT, free_port, serve_mlflow, tiny_training, wait_for
from orchestration.tracking import find_run

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    store = tmp_path_factory.mktemp("cluster_mlflow")
    port = free_port()
    server = serve_mlflow(store, port, store / "server.log")
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [nodes.add_node(num_cpus=2, resources={"trainer_slot": 1}) for _ in range(2)]
    try:
        yield nodes, workers, f"http://127.0.0.1:{port}"
    finally:
        nodes.shutdown()
        server.terminate()
        server.wait(timeout=30)


def _train(data: Path, address: str, uri: str, tmp: Path, run_name: str, log: Path, **overrides) -> subprocess.Popen:
    settings = tiny_training(tmp, **{"mlflow.tracking_uri": uri, **overrides})
    # After a node loss Ray Train first retries the old group size, which still looks placeable until
    # the node is known dead, for this long (default 60 s) before going on with fewer workers.
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30"}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "train", "--data", str(data), "--run-name", run_name,
         "--address", address, *settings], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def test_losing_a_node_mid_epoch_continues_on_the_remaining_worker(cluster, prepared_dir, tmp_path):
    nodes, workers, uri = cluster
    log = tmp_path / "train.log"
    steps, epochs = 8, 3
    process = _train(prepared_dir, nodes.address, uri, tmp_path, "elastic", log, **{
        "train.workers": 2, "train.min_workers": 1, "train.max_failures": 1, "train.worker_resources": "{trainer_slot: 1}",
        "train.cpus_per_worker": 1, "train.epochs": epochs, "train.steps_per_epoch": steps})
    client = MlflowClient(uri)
    pids = tmp_path / "ray_results" / "elastic" / "workers"

    def second_epoch_started() -> bool:
        run = find_run(client, "cxr-orchestra", "elastic")
        return run is not None and any(m.step > steps for m in client.get_metric_history(run.info.run_id,
                                                                                          "train/loss_cls"))

    try:
        wait_for(second_epoch_started, 300, "the second epoch", process, log)
        placed = {rank: (pids / f"rank{rank}.node").read_text() for rank in (0, 1)}
        by_id = {node.node_id: node for node in workers}
        assert placed[0] != placed[1] and set(placed.values()) == set(by_id), placed  # one worker per node
        nodes.remove_node(by_id[placed[1]], allow_graceful=False)
        assert process.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        process.kill()
    run = find_run(client, "cxr-orchestra", "elastic")
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id
    assert [m.value for m in client.get_metric_history(run_id, "epoch")] == [1.0, 2.0, 3.0]
    assert sorted(int(m.step) for m in client.get_metric_history(run_id, "train/loss_cls")) == \
        list(range(1, epochs * steps + 1))
    world = sorted(client.get_metric_history(run_id, "train/workers"), key=lambda m: m.step)
    assert [m.value for m in world] == [2.0, 1.0] and world[1].step == steps  # restarted from epoch 1's end
    batch = sorted(client.get_metric_history(run_id, "train/global_batch"), key=lambda m: m.step)
    assert [m.value for m in batch] == [16.0, 8.0]
    assert "test_mean_auc" in run.data.metrics


def test_a_node_that_cannot_see_the_data_is_named(cluster, prepared_dir, tmp_path):
    nodes, _, uri = cluster
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
        process = _train(hidden / "prepared", nodes.address, uri, tmp_path, "blind", log)
        assert process.wait(timeout=120) == 2, log.read_text()[-3000:]
        text = log.read_text()
        assert f"({blind[:8]}) cannot see prepared dataset {hidden / 'prepared'}" in text, text[-3000:]
    finally:
        for child in psutil.Process(node.pid).children(recursive=True):
            child.kill()
        node.kill()
