"""`cxr train` with real Ray Train workers and a real MLflow store, on a tiny prepared set.

Few and small on purpose: a 2-worker run (a TorchTrainer, whose start costs ~10 s here), one-worker
runs (one Ray task each) stopped by Ctrl-C and resumed, or killed and restarted, and the input
checks that need no Ray at all.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from conftest import tiny_training, wait_for
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cxrmodel.inference import ProbabilityModel
from orchestration.cli import app
from orchestration.settings.config import load_config
from orchestration.settings.plan import PlanError, plan_training
from orchestration.settings.schema import CHECKPOINT_TAG, RUN_NAME_TAG
from orchestration.settings.tracking import find_run
from orchestration.training import run_artifacts
from orchestration.training.checkpoint import load_trained
from orchestration.training.train import _ArtifactsMeanwhile, run_training

pytestmark = pytest.mark.slow


def _history(client, run_id, key):
    return [(int(m.step), m.value) for m in client.get_metric_history(run_id, key)]


def _latest_checkpoint(storage: Path, run_name: str) -> Path:
    return sorted(p for p in (storage / run_name).glob("checkpoint_*") if p.is_dir())[-1]


def _latest_state(storage: Path, run_name: str) -> dict:
    return torch.load(_latest_checkpoint(storage, run_name) / "state.pt", map_location="cpu", weights_only=True)


def test_two_worker_training_logs_one_finished_run(prepared_dir, tmp_path):
    config = load_config([], tiny_training(tmp_path, **{"train.workers": 2, "mlflow.log_model": "true",
                                                        "mlflow.register_model": "cxr-two",
                                                        "train.explain_top": 2}))
    outcome = run_training(config, plan_training(config, prepared_dir), run_name="two-workers")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.lambda_tat"] == "0.03" and run.data.tags[RUN_NAME_TAG] == "two-workers"
    plan = plan_training(config, prepared_dir)
    steps = 2 * plan.steps_per_epoch
    assert [v for _, v in _history(client, run.info.run_id, "epoch")] == [1.0, 2.0]
    assert [s for s, _ in _history(client, run.info.run_id, "train/loss_cls")] == list(range(1, steps + 1))
    assert [s for s, _ in _history(client, run.info.run_id, "val_mean_auc")] == [steps // 2, steps]
    for key in ("test_mean_auc", "train/loss_tat", "train/loss_ute", "train/h", "train/lr"):
        assert key in run.data.metrics, key
    artifacts = {a.path for folder in ("config", "data", "evaluation", "plan")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"config/resolved_config.yaml", "data/manifest_summary.json", "evaluation/test_auc.csv",
            "evaluation/test_roc.png", "plan/plan.json"} <= artifacts
    # Grad-CAM contact sheets of the best model: one per finding the internal domain labels.
    sheets = {a.path for a in client.list_artifacts(run.info.run_id, "explain")}
    assert sheets == {f"explain/{f}.png" for f in plan.evaluated} | {"explain/explain.csv"}
    assert run.data.params["model.pretrained"] == "false"  # no model.weights: not the paper's ImageNet start
    logged_plan = json.loads(Path(client.download_artifacts(run.info.run_id, "plan/plan.json", str(tmp_path))).read_text())
    assert logged_plan["steps_per_epoch"] == plan.steps_per_epoch and logged_plan["domains"] == plan.domains

    # The temporal ensemble gathered predictions from both ranks: more samples were updated than
    # one rank alone sees in an epoch (steps_per_epoch x per-domain batch x 2 domains).
    state = _latest_state(tmp_path / "ray_results", "two-workers")
    updated = int((state["ensemble"]["updates"] > 0).sum())
    assert updated > plan.steps_per_epoch * plan.per_domain_batch * 2
    assert int(state["ensemble"]["updates"].max()) == 2
    assert state["ensemble"]["epochs"] == 2  # folded once per epoch, by both ranks together

    # The logged model is servable: uint8 images in, one probability per finding out; and it is the
    # run's best network (its program was traced while the run trained, from untrained weights).
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    downloads = tmp_path / "downloads"  # MLflow downloads a model it loads; into the test's own folder
    for folder in ("run", "registered"):
        (downloads / folder).mkdir(parents=True)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model", dst_path=str(downloads / "run"))
    probs = model(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert probs.shape == (3, len(plan.label_space)) and bool(((probs >= 0) & (probs <= 1)).all())
    images = torch.randint(0, 256, (5, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    best = ProbabilityModel(load_trained(run.data.tags[CHECKPOINT_TAG])[0])
    assert torch.allclose(model(images), best(images), rtol=0, atol=1e-6)
    # Registered, and the first version of its name is the champion; it loads by its alias.
    assert client.get_model_version_by_alias("cxr-two", "champion").run_id == run.info.run_id
    registered = mlflow.pytorch.load_model("models:/cxr-two@champion", dst_path=str(downloads / "registered"))
    assert torch.equal(registered(torch.zeros(2, 32, 32, dtype=torch.uint8)), probs[:2])

    # Nothing of the run lives on in this process's Ray: Ray Train's SIGINT handler, installed when fit
    # runs on the main thread, kept its controller actor (and that one's dataset manager) alive.
    wait_for(lambda: not _ray_processes("TrainController", "DatasetManager"), 30, "the run's actors to end")


def _ray_processes(*titles: str) -> list[str]:
    """This user's Ray worker processes titled ray::TITLE..., for any of `titles`."""
    found = []
    for process in psutil.process_iter(["cmdline", "uids"]):
        try:
            line = " ".join(process.info["cmdline"] or [])
        except psutil.Error:
            continue
        if process.info["uids"] and process.info["uids"].real == os.getuid() and \
                any(line.startswith(f"ray::{t}") for t in titles):
            found.append(line)
    return found


def test_an_exception_in_the_workers_ends_the_run_failed(prepared_dir, tmp_path):
    not_weights = tmp_path / "not_weights.pth"
    not_weights.write_text("not a state dict")  # exists, so only a worker finds out
    config = load_config([], tiny_training(tmp_path, **{"model.weights": str(not_weights)}))
    import ray.exceptions

    with pytest.raises(ray.exceptions.RayTaskError, match="_read_state_dict"):
        run_training(config, plan_training(config, prepared_dir), run_name="broken")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert find_run(client, "cxr-orchestra", "broken").info.status == "FAILED"


def test_a_failed_run_starts_no_trace_of_its_model(prepared_dir, tmp_path):
    """The thread that prepares the run's artifacts starts before Ray does; a run that has failed by
    the time the thread would trace the logged model's program (7-10 s of CPU) gets no trace."""
    config = load_config([], tiny_training(tmp_path, **{"mlflow.log_model": "true"}))
    meanwhile = _ArtifactsMeanwhile(config, plan_training(config, prepared_dir))
    meanwhile.abandon()
    meanwhile.start()
    with pytest.raises(CancelledError):
        meanwhile.traced_model.result(timeout=120)


@pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")
def test_the_model_is_traced_on_idle_cores_until_the_run_has_trained(prepared_dir, tmp_path, monkeypatch):
    """The trace runs in the thread's own scheduling class, SCHED_IDLE: at nice 19 the training still
    waited for it, and a 2-step run's first step here took 1.2-1.7 s instead of 0.4 s. Once the run has
    trained, the command waits for it: it goes back to the ordinary class where that is allowed. The
    command's main thread keeps its own class throughout."""
    tracing, hurried = threading.Event(), threading.Event()

    def trace(config, plan) -> list[int]:
        classes = [os.sched_getscheduler(0)]
        tracing.set()
        hurried.wait(60)
        return classes + [os.sched_getscheduler(0)]

    monkeypatch.setattr(run_artifacts, "trace_model", trace)
    config = load_config([], tiny_training(tmp_path, **{"mlflow.log_model": "true"}))
    meanwhile = _ArtifactsMeanwhile(config, plan_training(config, prepared_dir))
    meanwhile.start()
    assert tracing.wait(120)
    meanwhile.hurry()
    hurried.set()
    allowed = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
    assert meanwhile.traced_model.result(timeout=120) == [os.SCHED_IDLE, os.SCHED_OTHER if allowed else os.SCHED_IDLE]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    meanwhile.hurry()  # the thread has ended: nothing to do


def _cli(data: Path, run_name: str, overrides: list[str], address: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "orchestration.cli", "train", "--data", str(data), "--run-name", run_name,
               "--address", address, *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=log.parent, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _checkpoint_epochs(storage: Path, run_name: str) -> list[int]:
    """The epochs of the run's complete checkpoints: progress.json is the file a one-worker run writes last."""
    epochs = []
    for progress in (storage / run_name).glob("checkpoint_*/progress.json"):
        epochs.append(json.loads(progress.read_text())["epoch"])
    return epochs


def test_ctrl_c_ends_killed_and_the_same_command_resumes(prepared_dir, tmp_path, ray_session):
    """Ctrl-C (SIGINT; SIGTERM takes the same way: tests/test_object_store.py) ends the run KILLED
    through cxr's own handler, not Ray Train's graceful abort (which ended it FAILED)."""
    address = ray_session.get_runtime_context().gcs_address
    overrides = tiny_training(tmp_path, **{"train.steps_per_epoch": 30, "train.workers": 1})
    storage, log = tmp_path / "ray_results", tmp_path / "first.log"
    first = _cli(prepared_dir, "resumable", overrides, address, log)
    wait_for(lambda: 1 in _checkpoint_epochs(storage, "resumable"), 240, "the epoch-1 checkpoint", first, log)
    time.sleep(2.0)  # into epoch 2, and time for the controller to register the checkpoint
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert "stopped by SIGINT: MLflow run" in log.read_text()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = find_run(client, "cxr-orchestra", "resumable")
    assert run.info.status == "KILLED"
    epoch1 = _latest_state(storage, "resumable")
    assert json.loads((_latest_checkpoint(storage, "resumable") / "progress.json").read_text())["epoch"] == 1
    assert int(epoch1["ensemble"]["updates"].max()) == 1 and epoch1["ensemble"]["epochs"] == 1

    log2 = tmp_path / "second.log"
    second = _cli(prepared_dir, "resumable", overrides, address, log2)
    assert second.wait(timeout=300) == 0, log2.read_text()[-3000:]
    assert log2.read_text().count("resumed after epoch 1") == 1  # shown, and once (not teed and logged)
    runs = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = 'resumable'")
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert [v for _, v in _history(client, run.info.run_id, "epoch")] == [1.0, 2.0]
    assert [s for s, _ in _history(client, run.info.run_id, "train/loss_cls")] == list(range(1, 61))
    final = _latest_state(storage, "resumable")
    # Optimizer and temporal ensemble continued from epoch 1: a fresh start would show 30 and 1.
    adam_steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert adam_steps == {60}
    assert int(final["ensemble"]["updates"].max()) == 2 and final["ensemble"]["epochs"] == 2
    assert torch.equal(final["ensemble"]["updates"] >= epoch1["ensemble"]["updates"],
                       torch.ones_like(epoch1["ensemble"]["updates"], dtype=torch.bool))


def test_a_killed_one_worker_run_is_restarted_from_its_last_checkpoint(prepared_dir, tmp_path, ray_session):
    """train.max_failures=1: the one-worker task's process is killed (SIGKILL) in epoch 2; Ray runs the
    task again, which resumes after epoch 1 in the same MLflow run and finishes it, no step logged twice."""
    address = ray_session.get_runtime_context().gcs_address
    overrides = tiny_training(tmp_path, **{"train.steps_per_epoch": 30, "train.max_failures": 1})
    storage, log = tmp_path / "ray_results", tmp_path / "train.log"
    process = _cli(prepared_dir, "restarted", overrides, address, log)
    wait_for(lambda: 1 in _checkpoint_epochs(storage, "restarted"), 240, "the epoch-1 checkpoint", process, log)
    worker = psutil.Process(int((storage / "restarted" / "workers" / "rank0.pid").read_text()))
    assert worker.pid != process.pid  # the loop runs in a Ray task's process, not in the command's
    worker.kill()
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert log.read_text().count("resumed after epoch 1") == 1
    assert int((storage / "restarted" / "workers" / "rank0.pid").read_text()) != worker.pid
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = find_run(client, "cxr-orchestra", "restarted")
    assert run.info.status == "FINISHED"
    assert [v for _, v in _history(client, run.info.run_id, "epoch")] == [1.0, 2.0]
    assert [s for s, _ in _history(client, run.info.run_id, "train/loss_cls")] == list(range(1, 61))
    assert len(list((storage / "restarted").glob("checkpoint_*"))) == 2  # the latest two are kept
    assert json.loads((_latest_checkpoint(storage, "restarted") / "progress.json").read_text())["epoch"] == 2


runner = CliRunner()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.domains=null", "train.batch_size=2"], "train.batch_size=2 is smaller than the number of domains \\(3\\)"),
        (["method.alpha_overrides={Nodle: 2}"], "unknown finding\\(s\\) \\['Nodle'\\]"),
        (["method.lambda_tat=-0.1"], "method.lambda_tat=-0.1: Input should be greater than or equal to 0"),
        (["train.domains=[nih, mimic]"], "\\['mimic'\\] not in the prepared dataset"),
        (["train.domains=[chexpert]"], "needs at least 2 training domains"),
        (["model.weights=/nowhere/densenet121.pth"], "no such file"),
    ],
)
def test_impossible_configs_fail_before_workers_start(prepared_dir, tmp_path, overrides, message):
    result = runner.invoke(app, ["train", "--data", str(prepared_dir), *tiny_training(tmp_path), *overrides])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    import re

    assert re.search(message, result.output), result.output
    assert not (tmp_path / "ray_results").exists()  # nothing was started


def test_workers_the_cluster_cannot_hold_are_refused_before_they_start(prepared_dir, tmp_path, ray_session):
    cpus = int(ray_session.cluster_resources()["CPU"])
    started = time.monotonic()
    result = runner.invoke(app, ["train", "--data", str(prepared_dir), "--run-name", "refused",
                                 *tiny_training(tmp_path), f"train.workers={cpus + 1}", "train.cpus_per_worker=1"])
    assert result.exit_code == 2, result.output
    assert f"{cpus + 1} training worker(s) of 1 CPU each cannot be placed: this cluster has room for {cpus}" \
        in result.output
    assert time.monotonic() - started < 30
    assert find_run(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "cxr-orchestra", "refused").info.status \
        == "FAILED"


def test_bad_prepared_dirs_are_refused(prepared_dir, tmp_path):
    for path, message in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "has no manifest.json"),
    ]:
        result = runner.invoke(app, ["train", "--data", str(path), *tiny_training(tmp_path)])
        assert result.exit_code == 2 and message in result.output, result.output
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    result = runner.invoke(app, ["train", "--data", str(old), *tiny_training(tmp_path)])
    assert result.exit_code == 2 and "format_version 0" in result.output and "cxr prepare" in result.output
    with pytest.raises(PlanError):
        plan_training(load_config([], ["train.batch_size=1"]), prepared_dir)


def test_secrets_never_reach_mlflow_params():
    from orchestration.settings.tracking import redact

    safe = redact({"mlflow.tracking_uri": "https://alice:s3cret@mlflow.example/", "x.api_token": "abc", "train.lr": 0.1})
    assert safe["mlflow.tracking_uri"] == "https://***@mlflow.example/"
    assert safe["x.api_token"] == "***" and safe["train.lr"] == "0.1"
    assert not any("s3cret" in v for v in safe.values())
