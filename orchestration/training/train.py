"""`cxr train` on Ray Train, the driver: open (or resume) the MLflow run, start Ray Train's
TorchTrainer on `worker.train_loop_per_worker` (each worker reads its own rows of the prepared
shards: `feed`), log the run's artifacts (`run_artifacts`), end the run with the status that
happened. The same run name again resumes: Ray Train restarts from the run's latest checkpoint
under `train.storage_path/<run name>`, and the same MLflow run continues. One worker needs no
TorchTrainer (`trains_alone`): a one-worker `cxr train` runs the same loop in one Ray task, keeping
its checkpoints in the same place itself (`run_checkpoints`); a one-worker sweep trial in its own
process, with Tune keeping its checkpoints.

What needs torch or Ray Train (the loop, the artifacts, the TorchTrainer) is imported where it is
used: a sweep's driver imports this module to book its trials and never trains, and a one-worker
run's task, which unpickles `_train_task` from here, trains without Ray Train or Tune.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from cxrcommon.storage import Folder, absolute, is_uri
from orchestration.settings.config import Config, check_run_name
from orchestration.settings.masking import mask_text
from orchestration.settings.plan import TrainingPlan, plan_document
from orchestration.settings.runtime import (
    check_resources,
    check_shared_storage,
    exit_on_signals,
    init_ray,
    mark,
    on_own_thread,
)
from orchestration.settings.schema import CHECKPOINT_TAG, PLAN_ARTIFACT, TEST_SUMMARY_METRICS
from orchestration.settings.tracking import mlflow_client, open_run, tracking_uri

if TYPE_CHECKING:
    from ray.train import Checkpoint, ScalingConfig
    from ray.train.torch import TorchTrainer


@dataclass
class TrainingOutcome:
    run_id: str
    run_name: str
    metrics: dict
    checkpoint: str

    def test_summary(self) -> dict[str, float]:
        """The best model's Mean, Mean_Com and Mean_Int AUC on the internal test split."""
        return {name: self.metrics[name] for name in TEST_SUMMARY_METRICS if name in self.metrics}


def default_run_name() -> str:
    return datetime.now().strftime("train-%Y%m%d-%H%M%S")


# --- the driver ---------------------------------------------------------------------------------

def run_training(
    config: Config, plan: TrainingPlan, *, address: str | None = None, run_name: str | None = None,
    parent_run_id: str | None = None, tags: dict[str, str] | None = None, handle_signals: bool = False,
    in_trial: bool = False,
) -> TrainingOutcome:
    """Train as `plan` (from `plan_training`) says; `handle_signals` (main thread only) ends the
    MLflow run KILLED on SIGTERM / SIGINT. `in_trial`: this is a Ray Tune trial, which reports to
    Tune (`trains_alone`: a one-worker trial trains in its own process)."""
    run_name = check_run_name(run_name or config.train.run_name or default_run_name())
    uri = tracking_uri(config)
    client = mlflow_client(uri)
    run_id, _ = open_run(client, config, run_name, tags=tags, parent_run_id=parent_run_id)
    storage = absolute(config.train.storage_path)
    if is_uri(storage):
        Folder.at(storage).check_reachable()  # a missing bucket or refused credentials, named before Ray starts
    else:
        Path(storage).mkdir(parents=True, exist_ok=True)
    system_metrics = SystemMetricsMonitor(run_id, tracking_uri=uri)
    system_metrics.start()
    meanwhile = _ArtifactsMeanwhile(config, plan)
    try:
        client.log_dict(run_id, plan_document(config, plan), PLAN_ARTIFACT)
        in_process = in_trial and trains_alone(config)
        if not in_process:  # a trial that trains here would share the GIL with the thread
            meanwhile.start()
        init_ray(address)
        mark("ray ready")
        check_shared_storage({"prepared dataset": plan.data, "train.storage_path": storage}, uri)
        loop_config = _loop_config(config, plan, uri, run_id, run_name, storage)
        if in_process:
            from ray.tune import get_checkpoint

            from orchestration.training.worker import train_in_trial

            metrics = train_in_trial(loop_config)
            final = get_checkpoint()  # the last report's, persisted in the trial's folder
        else:
            check_resources(worker_resources(config), config.train.min_workers or config.train.workers,
                            config.train.placement)

            def killed(signal_name: str) -> None:
                client.set_terminated(run_id, status="KILLED")
                print(f"stopped by {signal_name}: MLflow run {run_id} ended KILLED; run the same command "
                      "to resume", file=sys.stderr, flush=True)

            with exit_on_signals(killed, handle_signals):
                if trains_alone(config):
                    metrics, final = _train_in_one_task(config, loop_config, storage, run_name)
                else:
                    trainer = _make_trainer(config, loop_config, run_name, storage, in_trial)
                    result = on_own_thread(trainer.fit)
                    metrics, final = result.metrics, result.checkpoint
        mark("fit returned")
        meanwhile.hurry()
        undelivered = undelivered_metrics_file(storage, run_name)
        if undelivered is not None and undelivered.exists():
            print(f"[{run_name}] some metrics could not reach the MLflow server at {mask_text(uri)} during training; "
                  f"they are kept in {undelivered} (one JSON object per step)", file=sys.stderr, flush=True)
        checkpoint = checkpoint_location(final, storage)
        client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)  # what --run loads
        from orchestration.training.run_artifacts import log_run_artifacts

        with final.as_directory() as directory:
            log_run_artifacts(client, run_id, config, plan, Path(directory), meanwhile.traced_model)
        if config.mlflow.register_model:
            from orchestration.evaluation.model_card import register_version

            print(register_version(client, config.mlflow.register_model, run_id, config.train.select_metric,
                                   f"model {config.mlflow.register_model}"), flush=True)
    except BaseException:
        meanwhile.abandon()
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        system_metrics.finish()
    client.set_terminated(run_id, "FINISHED")
    mark("run ended")
    return TrainingOutcome(run_id, run_name, dict(metrics), checkpoint)


class _ArtifactsMeanwhile:
    """Work for the run's artifacts done on a thread, on idle cores only (SCHED_IDLE), while Ray starts and
    the workers train: importing what the artifacts need (torch, matplotlib, OpenCV: ~2.5 s here),
    MLflow's once-a-process work before a model's log (`run_artifacts.prepare_model_logging`) and
    tracing the logged model's program (`run_artifacts.trace_model`: 7-10 s here). Started before
    `ray.init`, which mostly waits for the processes it starts, not before the MLflow run opens
    (measured: a later first step)."""

    def __init__(self, config: Config, plan: TrainingPlan):
        self.config, self.plan = config, plan
        self.traced_model: Future | None = None  # set once started, when the run logs its model
        self._abandoned = threading.Event()
        self._thread_id: int | None = None  # the thread's, for the scheduler, while it runs
        self._scheduling = threading.Lock()  # the id is not used once the thread is gone (it could be another's)

    def abandon(self) -> None:
        """The run failed: no trace is started for it (one under way runs out; the thread is a daemon)."""
        self._abandoned.set()

    def hurry(self) -> None:
        """The run has trained: what is left of the thread's work is now waited for, so the thread goes
        back to the ordinary class where the system allows it (root, CAP_SYS_NICE or an RLIMIT_NICE of
        20): on a machine whose cores other work keeps busy, SCHED_IDLE would leave it a fraction of one."""
        with self._scheduling:
            if self._thread_id is not None:
                try:
                    os.sched_setscheduler(self._thread_id, os.SCHED_OTHER, os.sched_param(0))
                except PermissionError:
                    pass

    def start(self) -> None:
        traced = self.traced_model = Future() if self.config.mlflow.log_model else None

        def prepare() -> None:
            try:
                if sys.platform == "linux":
                    # This thread only: runs when a core is idle, and gives it up the moment the training
                    # wakes. At nice 19 the training's threads still waited for it at every op: a 2-step
                    # run's first step took 1.2-1.7 s instead of 0.4 s here.
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                    self._thread_id = threading.get_native_id()
                from orchestration.training.run_artifacts import prepare_model_logging, trace_model

                importlib.import_module("matplotlib.figure")  # for the test's ROC figure
                if self.config.train.explain_top:
                    importlib.import_module("orchestration.evaluation.grad_cam")  # OpenCV, Pillow
                if traced is not None and self._abandoned.is_set():
                    traced.cancel()
                elif traced is not None:
                    prepare_model_logging()
                    traced.set_result(trace_model(self.config, self.plan))
            except BaseException as exc:
                if traced is not None:
                    traced.set_exception(exc)
            finally:
                with self._scheduling:
                    self._thread_id = None

        threading.Thread(target=prepare, name="cxr-artifacts-meanwhile", daemon=True).start()


def checkpoint_location(checkpoint: Checkpoint, storage: str) -> str:
    """Where a checkpoint lies, as a path or, in an object store, a URI (Ray keeps the path in the store)."""
    return f"{storage.split('://', 1)[0]}://{checkpoint.path}" if is_uri(storage) else checkpoint.path


def undelivered_metrics_file(storage: str, run_name: str) -> Path | None:
    """Where rank 0 keeps metrics the tracking server never took: in the run's storage when local,
    else (None) a private temporary file on rank 0's node, named in its console line."""
    if is_uri(storage):
        return None
    return Path(storage) / run_name / "undelivered_metrics.jsonl"


def _scaling(config: Config) -> ScalingConfig:
    from ray.train import ScalingConfig

    train = config.train
    workers = (train.min_workers, train.workers) if train.min_workers is not None else train.workers
    return ScalingConfig(num_workers=workers, use_gpu=train.gpu, resources_per_worker=worker_resources(config),
                         placement_strategy=train.placement)


def worker_resources(config: Config) -> dict[str, float]:
    train = config.train
    # Fractional on CPUs: a worker uses its node's cores through torch threads whatever Ray books.
    cpus = train.cpus_per_worker or (1.0 if train.gpu else 0.5)
    return {"CPU": cpus, **({"GPU": 1} if train.gpu else {}), **train.worker_resources}


def trains_alone(config: Config) -> bool:
    """One worker, not elastic: no TorchTrainer, whose start costs ~9 s here (six actor processes) for
    what one process does by itself. A sweep trial trains in Tune's trial process; `cxr train` in one
    Ray task (`_train_in_one_task`)."""
    return config.train.workers == 1 and config.train.min_workers is None


def _loop_config(config: Config, plan: TrainingPlan, uri: str, run_id: str, run_name: str, storage: str) -> dict:
    """What the training loop is given; Ray Train stores it with the run, so it holds no credentials."""
    undelivered = undelivered_metrics_file(storage, run_name)
    return {
        "config": config.model_dump(mode="json"), "plan": plan.to_dict(), "tracking_uri": uri, "run_id": run_id,
        "run_name": run_name, "pid_dir": str(Path(storage) / run_name / "workers") if not is_uri(storage) else None,
        "undelivered": str(undelivered) if undelivered else None,
        # The driver's MLflow retry settings.
        "mlflow_http_env": {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST_")},
    }


def _train_in_one_task(config: Config, loop_config: dict, storage: str, run_name: str
                       ) -> tuple[dict, Checkpoint]:
    """One worker's loop in one Ray task placed with the worker's resources; Ray runs it again after an
    exception or a lost process, up to train.max_failures times, and each attempt resumes from the
    latest checkpoint. Returns the last report's metrics and the final checkpoint."""
    from orchestration.training.run_checkpoints import RunCheckpoints

    resources, retries = worker_resources(config), config.train.max_failures
    task = ray.remote(_train_task).options(
        num_cpus=resources["CPU"], num_gpus=resources.get("GPU", 0),
        resources={k: v for k, v in resources.items() if k not in ("CPU", "GPU")},
        max_retries=retries, retry_exceptions=retries > 0)
    pending = task.remote(loop_config, storage, run_name)
    importlib.import_module("ray.train")  # the final checkpoint's handle (~0.5 s): imported while the task starts
    metrics = on_own_thread(lambda: ray.get(pending))
    return metrics, RunCheckpoints(storage, run_name).latest()


def _train_task(loop_config: dict, storage: str, run_name: str) -> dict:
    from orchestration.training.worker import train_in_task  # torch and the loop: in the task, not the driver

    return train_in_task(loop_config, storage, run_name)


def _make_trainer(config: Config, loop_config: dict, run_name: str, storage: str, in_trial: bool) -> TorchTrainer:
    """Ray Train's TorchTrainer over the loop; in a sweep trial it reports to Tune."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestration.training.worker import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=_scaling(config),
        run_config=RunConfig(
            name=run_name, storage_path=storage,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()] if in_trial else [],
        ),
    )
