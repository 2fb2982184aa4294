"""`cxr train`: plan and check on the driver, open (or resume) the MLflow run, run Ray Train's
TorchTrainer, log the artifacts, and end the run with the status that happened.

Running the same command again with the same run name resumes: Ray Train restarts from the run's
latest checkpoint under `train.storage_path/<run name>`, and the same MLflow run continues.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import ray.data
import ray.train
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray.train.torch import TorchTrainer

from cxrmodel.inference import ProbabilityModel
from data_prep.prepared import IMAGE_COLUMN, PreparedDataset
from orchestration.config import Config
from orchestration.evaluation import Predictions, auc_table, report_for, roc_figure
from orchestration.plan import TrainingPlan, plan_document, plan_training
from orchestration.runtime import check_shared_storage, exit_on_signals, init_ray
from orchestration.tracking import PLAN_ARTIFACT, open_run, tracking_uri
from orchestration.train_loop import BEST_MODEL_FILE, SUMMARY_FILE, TEST_FILE, build_network, train_loop_per_worker


CHECKPOINT_TAG = "cxr.checkpoint"


@dataclass
class TrainingOutcome:
    run_id: str
    run_name: str
    metrics: dict
    checkpoint: str


def default_run_name() -> str:
    return datetime.now().strftime("train-%Y%m%d-%H%M%S")


def training_datasets(plan: TrainingPlan) -> dict[str, ray.data.Dataset]:
    prepared = PreparedDataset.load(plan.data)
    # Rank 0 prints progress lines; per-operator bars of every domain's stream would bury them.
    ray.data.DataContext.get_current().enable_progress_bars = False
    columns = ["sample_id", IMAGE_COLUMN, *plan.label_space]
    return {
        f"train_{d}": ray.data.read_parquet(
            [str(p) for p in prepared.shard_files(d, "train")], columns=columns, partitioning=None
        ).randomize_block_order()
        for d in plan.domains
    }


def _scaling(config: Config) -> ray.train.ScalingConfig:
    train = config.train
    cpus = train.cpus_per_worker or (1.0 if train.gpu else 0.5)  # fractional: leave CPUs to Ray Data
    resources = {"CPU": cpus, **({"GPU": 1} if train.gpu else {})}
    return ray.train.ScalingConfig(num_workers=train.workers, use_gpu=train.gpu, resources_per_worker=resources)


def _make_trainer(
    config: Config, plan: TrainingPlan, uri: str, run_id: str, run_name: str, storage: str, callbacks: list
) -> TorchTrainer:
    local_storage = "://" not in storage
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"), "plan": plan.to_dict(), "tracking_uri": uri, "run_id": run_id,
            "pid_dir": str(Path(storage) / run_name / "workers") if local_storage else None,
        },
        scaling_config=_scaling(config),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets=training_datasets(plan),
    )


def run_training(
    config: Config, data: str | Path, *, address: str | None = None, run_name: str | None = None,
    parent_run_id: str | None = None, tags: dict[str, str] | None = None, handle_signals: bool = False,
    callbacks: list | None = None,
) -> TrainingOutcome:
    """Train; `handle_signals` (main thread only) ends the MLflow run KILLED on SIGTERM / SIGINT;
    `callbacks` go to Ray Train (a sweep passes Tune's report callback)."""
    plan = plan_training(config, data)  # every check that needs no Ray
    run_name = run_name or config.train.run_name or default_run_name()
    uri = tracking_uri(config)
    client = MlflowClient(uri)
    run_id, resumed = open_run(client, config, run_name, tags=tags, parent_run_id=parent_run_id)
    mlflow.set_tracking_uri(uri)
    storage = config.train.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(run_id=run_id, log_system_metrics=True):
        try:
            mlflow.log_dict(plan_document(config, plan), PLAN_ARTIFACT)
            init_ray(address)
            check_shared_storage({"prepared dataset": plan.data, "train.storage_path": storage}, uri)
            trainer = _make_trainer(config, plan, uri, run_id, run_name, storage, callbacks or [])
            def killed(signal_name: str) -> None:
                client.set_terminated(run_id, status="KILLED")
                print(f"stopped by {signal_name}: MLflow run {run_id} ended KILLED; run the same command "
                      "to resume", file=sys.stderr, flush=True)

            with exit_on_signals(killed, handle_signals):
                result = trainer.fit()
            mlflow.set_tag(CHECKPOINT_TAG, result.checkpoint.path)  # what `cxr predict --run` loads
            _log_artifacts(config, plan, result.checkpoint)
        except BaseException:
            mlflow.end_run("FAILED")
            raise
    return TrainingOutcome(run_id, run_name, dict(result.metrics), result.checkpoint.path)


def _log_artifacts(config: Config, plan: TrainingPlan, checkpoint: ray.train.Checkpoint) -> None:
    prepared = PreparedDataset.load(plan.data)
    mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config/resolved_config.yaml")
    manifest = prepared.manifest
    mlflow.log_dict({
        "data": plan.data, "format_version": manifest["format_version"], "image_size": manifest["image_size"],
        "label_space": manifest["label_space"], "training_domains": plan.domains, "common": plan.common,
        "internal_only": plan.internal_only, "domains": {d: {k: v for k, v in info.items() if k != "counts"}
                                                         for d, info in manifest["domains"].items()},
        "skipped_images": len(manifest["skipped"]),
    }, "data/manifest_summary.json")
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        saved = np.load(directory / TEST_FILE)
        test = Predictions(saved["sample_id"], saved["probs"], saved["labels"])
        best = torch.load(directory / BEST_MODEL_FILE, map_location="cpu")
        mlflow.log_text((directory / SUMMARY_FILE).read_text(), "evaluation/summary.json")
    report = report_for(test, plan.label_space, evaluated=plan.evaluated, common=plan.common,
                        internal_only=plan.internal_only)
    table = auc_table(report, test, plan.label_space, common=plan.common, internal_only=plan.internal_only)
    mlflow.log_text(table.to_csv(index=False), "evaluation/test_auc.csv")
    figure = roc_figure(test, plan.label_space, report, f"{plan.internal} test split")
    mlflow.log_figure(figure, "evaluation/test_roc.png")
    if not config.mlflow.log_model:
        return
    net = build_network(config, plan)
    net.load_state_dict(best)
    model = ProbabilityModel(net)
    # Two images: an example of one would fix the exported graph's batch size to 1.
    example = np.zeros((2, prepared.image_size, prepared.image_size), np.uint8)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(
        model, name="model", input_example=example,
        signature=mlflow.models.infer_signature(example, output), pip_requirements=["torch"],
    )
