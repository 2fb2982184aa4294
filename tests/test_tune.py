"""Sweeps with real Ray Tune, Ray Train, Optuna and MLflow: a resume after the sweep's driver was
killed (the Optuna study continues), an ASHA sweep that stops a trial early, and `ray job submit` to
a head this test starts (token auth on). The demo test runs a 2-trial multi-objective Optuna sweep
and checks its Pareto front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, free_port, ray_head, tiny_training, wait_for
from mlflow.tracking import MlflowClient

from orchestration.settings.runtime import TIMELINE_ENV
from orchestration.settings.schema import (
    EARLY_STOPPED_TAG,
    LOST_TRIAL_TAG,
    PARENT_TAG,
    SUMMARY_ARTIFACT,
    SWEEP_TAG,
    TRIAL_TAG,
    best_metric,
    loss_metric,
    train_metric,
)
from orchestration.settings.tracking import child_runs, find_sweep
from orchestration.sweeps.tune import OPTUNA_STUDY_FILE

pytestmark = pytest.mark.slow

FAST = {"train.epochs": 1, "train.steps_per_epoch": 2, "train.workers": 1}


def _parent(client: MlflowClient, sweep: str):
    return find_sweep(client, "cxr-orchestra", sweep)


def _children(client: MlflowClient, parent):
    return child_runs(client, parent.info.run_id)


def _grid(tmp_path: Path, values: tuple) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "grid", "metric": "val_mean_auc", "mode": "max",
        "parameters": {"method.lambda_ute": {"distribution": "choice", "values": list(values)}},
    }))
    return path


def _tune_cli(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", "tune", *args], cwd=log.parent,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def test_resume_after_the_driver_is_killed_continues_the_optuna_study(prepared_dir, tmp_path, ray_session):
    """Three Optuna trials one at a time, the driver killed while the second runs, then --resume.
    A study started afresh would propose the seeded sampler's first value again; the continued one
    holds three distinct values, each told back to it, and the same MLflow runs continue."""
    space = tmp_path / "search.yaml"
    space.write_text(yaml.safe_dump({"kind": "search", "metric": "val_mean_auc", "mode": "max", "parameters": {
        "method.lambda_ute": {"distribution": "uniform", "low": 1, "high": 50}}}))
    address = ray_session.get_runtime_context().gcs_address
    args = ["--space", str(space), "--num-samples", "3", "--data", str(prepared_dir), "--sweep-name", "killed",
            "--address", address, *tiny_training(tmp_path, **{**FAST, "train.steps_per_epoch": 30})]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    log = tmp_path / "first.log"
    first = _tune_cli(args, log)

    def second_trial_training() -> bool:  # a trial saves Tune's state (every 1 s) before its first step
        parent = _parent(client, "killed")
        children = _children(client, parent) if parent is not None else []
        return len(children) == 2 and all(client.get_metric_history(c.info.run_id, loss_metric("cls"))
                                          for c in children)

    wait_for(second_trial_training, 300, "the second trial's first step", first, log)
    first.send_signal(signal.SIGKILL)  # no handler runs: runs are left RUNNING, as after a node loss
    first.wait(timeout=30)
    parent = _parent(client, "killed")
    assert parent.info.status == "RUNNING"
    # A trial that started after Tune last saved the sweep (it saves every second) is lost with the
    # driver: planted here, since the kill cannot aim at that second.
    lost = client.create_run(parent.info.experiment_id, tags={
        PARENT_TAG: parent.info.run_id, TRIAL_TAG: "lost0001", SWEEP_TAG: "killed"}).info.run_id

    log2 = tmp_path / "second.log"
    second = _tune_cli([*args, "--resume"], log2)
    assert second.wait(timeout=400) == 0, log2.read_text()[-3000:]
    assert "continuing the Optuna study of sweep 'killed' from its 1 finished trial(s)" in log2.read_text()
    assert f"trial lost0001 had started after the sweep last saved its state: its MLflow run {lost} ends KILLED" \
        in log2.read_text()
    parent = _parent(client, "killed")
    runs = _children(client, parent)
    assert parent.info.status == "FINISHED"
    lost_runs = [c for c in runs if c.data.tags.get(LOST_TRIAL_TAG) == "true"]
    assert lost in {c.info.run_id for c in lost_runs} and {c.info.status for c in lost_runs} == {"KILLED"}
    children = [c for c in runs if c not in lost_runs]  # the trials the resumed sweep knows
    assert len(children) == 3 and len({c.data.tags[TRIAL_TAG] for c in children}) == 3
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # each child logged its epoch once, resumed or not
        assert [m.value for m in client.get_metric_history(child.info.run_id, "epoch")] == [1.0]

    study_file = tmp_path / "ray_results" / "killed" / OPTUNA_STUDY_FILE
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{study_file}")
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    proposed = sorted(t.params["method.lambda_ute"] for t in told)
    assert len(told) == 3 and len(set(proposed)) == 3, [(t.state, t.params) for t in study.trials]
    assert proposed == pytest.approx(sorted(float(c.data.params["method.lambda_ute"]) for c in children))
    by_value = {round(float(c.data.params["method.lambda_ute"]), 6): c.data.metrics[best_metric("val_mean_auc")]
                for c in children}
    for trial in told:  # the sampler saw each trial's result
        assert trial.values == [pytest.approx(by_value[round(trial.params["method.lambda_ute"], 6)])]


def _first_epoch_value(client: MlflowClient, run, metric: str) -> float:
    """The metric as epoch 1's validation logged it (the value ASHA judged)."""
    end_of_epoch_1 = next(m.step for m in client.get_metric_history(run.info.run_id, "epoch") if m.value == 1)
    return next(m.value for m in client.get_metric_history(run.info.run_id, metric) if m.step == end_of_epoch_1)


def test_asha_stops_a_trial_after_its_first_epoch(prepared_dir, tmp_path, ray_session):
    """Trials A, B, A, one at a time. One worker trains deterministically (it reads its rows in a
    seeded order), so the second A repeats the first one's epoch-1 value, and ASHA (judging at
    epoch 1 against the 75th percentile of the trials before) must stop B if it is below A, else
    the second A: exactly one trial either way. One-worker trials train in the trial's own process
    (no TorchTrainer): each trial's training starts in the process that opened its run."""
    space = tmp_path / "asha.yaml"
    space.write_text(yaml.safe_dump({"kind": "grid", "metric": "val_mean_auc", "mode": "max",
                                     "parameters": {"train.lr": {"distribution": "choice", "values": [3e-3, 1e-6, 3e-3]}}}))
    log = tmp_path / "asha.log"
    args = ["--space", str(space), "--data", str(prepared_dir), "--sweep-name", "asha", "--scheduler", "asha",
            "--address", ray_session.get_runtime_context().gcs_address,
            *tiny_training(tmp_path, **{**FAST, "train.epochs": 3})]
    timeline = tmp_path / "timeline.jsonl"
    assert _tune_cli(args, log, {TIMELINE_ENV: str(timeline)}).wait(timeout=600) == 0, log.read_text()[-3000:]
    events = [json.loads(line) for line in timeline.read_text().splitlines()]
    trial_processes = [e["pid"] for e in events if e["event"] == "ray ready"]
    assert len(trial_processes) == 3
    assert [e["pid"] for e in events if e["event"] == "worker entered"] == trial_processes
    # Tune's own CSV and JSON results, no TensorBoard files: their writer's import loads torch in the driver.
    trial_dirs = [d for d in (tmp_path / "ray_results" / "asha").glob("_trial_*") if d.is_dir()]
    assert len(trial_dirs) == 3 and all((d / "progress.csv").is_file() and (d / "result.json").is_file()
                                        for d in trial_dirs)
    assert not list((tmp_path / "ray_results" / "asha").rglob("events.out.tfevents.*"))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = _parent(client, "asha")
    first, second, third = sorted(_children(client, parent), key=lambda c: c.data.tags[TRIAL_TAG])
    assert [float(c.data.params["train.lr"]) for c in (first, second, third)] == [3e-3, 1e-6, 3e-3]
    a, b, a_again = (_first_epoch_value(client, c, "val_mean_auc") for c in (first, second, third))
    assert a_again == a  # same config, same seed, one worker: the same training
    assert b != a, "B and A tied at epoch 1: ASHA stops neither; choose values of train.lr further apart"
    stopped = second if b < a else third
    assert parent.info.status == "FINISHED"
    for child in (first, second, third):
        epochs = [m.value for m in client.get_metric_history(child.info.run_id, "epoch")]
        assert child.info.status == "FINISHED"
        if child is stopped:
            assert child.data.tags.get(EARLY_STOPPED_TAG) == "true" and epochs == [1.0]
            assert "test_mean_auc" not in child.data.metrics
        else:
            assert EARLY_STOPPED_TAG not in child.data.tags and epochs == [1.0, 2.0, 3.0]
            assert "test_mean_auc" in child.data.metrics  # ran to its end: test metrics and artifacts
            assert SUMMARY_ARTIFACT in {a.path for a in client.list_artifacts(child.info.run_id, "evaluation")}


@pytest.fixture
def token_cluster(tmp_path):
    """A head started here (token auth on) and its dashboard's job API."""
    dashboard = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with ray_head(env, tmp_path, "--node-ip-address=127.0.0.1", f"--dashboard-port={dashboard}",
                  "--dashboard-host=127.0.0.1", "--include-dashboard=true") as (_, env):
        yield f"http://127.0.0.1:{dashboard}", env


def _job(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "ray"), "job", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_a_sweep_on_a_token_cluster(prepared_dir, tmp_path, token_cluster):
    address, env = token_cluster
    # One trial: what is tested here is the job's way onto a token cluster (the resume test runs
    # three; the demo runs a multi-objective Optuna sweep). Its two workers make it the suite's sweep
    # whose trial starts a TorchTrainer (one-worker trials train in the trial's own process).
    sweep = ["--", "python", "-m", "orchestration.cli", "tune", "--space", str(_grid(tmp_path, (30,))),
             "--data", str(prepared_dir), "--sweep-name", "job", *tiny_training(tmp_path, **{**FAST, "train.workers": 2})]
    excludes = '{"excludes": [".venv", ".git", "demo_out", "ray_results", "*.db"]}'

    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    no_token["HOME"] = str(tmp_path)  # so that no ~/.ray/auth_token is found either
    refused = _job(no_token, "submit", "--address", address, "--no-wait", "--working-dir", ".",
                   "--runtime-env-json", excludes, *sweep)
    assert refused.returncode != 0
    assert "AuthenticationError" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr, refused.stderr[-2000:]

    deadline = time.time() + 90
    while True:  # a fresh head's job agent needs a few seconds before it takes jobs
        submitted = _job(env, "submit", "--address", address, "--no-wait", "--working-dir", ".",
                         "--runtime-env-json", excludes, *sweep)
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = next(w.strip("'") for w in submitted.stdout.split() if w.strip("'").startswith("raysubmit_"))

    # Follows the job's log until the job ends: one client process (each `ray job status` poll was a
    # process importing Ray, ~2 s of CPU, on the cores the job trains on).
    logs = _job(env, "logs", "--address", address, "--follow", job_id, timeout=480).stdout
    status = _job(env, "status", "--address", address, job_id).stdout.lower()
    assert f"job '{job_id.lower()}' succeeded" in status, logs[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = _parent(client, "job")
    assert parent.info.status == "FINISHED"
    children = _children(client, parent)
    assert len(children) == 1 and {c.info.status for c in children} == {"FINISHED"}
    assert all("val_mean_auc" in c.data.metrics and c.data.metrics[train_metric("workers")] == 2 for c in children)


def test_concurrent_trials_the_cluster_cannot_hold_together_are_refused_before_any_run(prepared_dir, tmp_path,
                                                                                        ray_session):
    """The session's Ray has 4 CPUs: 2 trials of two 1-CPU workers and a 0.01-CPU driver each (a
    multi-worker trial starts a TorchTrainer) need 4.02, and the last trial would wait forever."""
    from orchestration.settings.config import load_config
    from orchestration.settings.runtime import ClusterResourceError
    from orchestration.sweeps.spaces import load_space
    from orchestration.sweeps.tune import SweepSettings, run_sweep

    space = load_space(str(_grid(tmp_path, (1, 2))))
    base = load_config([], tiny_training(tmp_path, **{**FAST, "train.workers": 2, "train.cpus_per_worker": 1.0}))
    settings = SweepSettings.for_grid(space, "crowded", max_concurrent=2, seeds=1, resume=False)
    with pytest.raises(ClusterResourceError, match=r"--max-concurrent 2 trials, each of 2 training worker\(s\) of "
                       r"1 CPU each and a 0.01-CPU trial driver, need 4.02 CPU, more than the cluster's 4 .*Lower "
                       r"--max-concurrent to 1 or train.cpus_per_worker to 0.99 or less"):
        run_sweep(space, base, prepared_dir, settings)
    assert _parent(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "crowded") is None  # no run left behind
    assert not (tmp_path / "ray_results" / "crowded").exists()
