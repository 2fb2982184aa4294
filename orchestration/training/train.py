"""`cxr train` on Ray Train: the driver (`run_training`) and the function each worker runs
(`train_loop_per_worker`), in the shape of Ray's own TorchTrainer examples.

Driver: open (or resume) the MLflow run, start Ray Train's TorchTrainer, log the artifacts, end the
run with the status that happened. The same run name again resumes: Ray Train restarts from the
run's latest checkpoint under `train.storage_path/<run name>`, and the same MLflow run continues.

Worker: plain PyTorch between Ray's edges (the dataset shards, `ray.train.report`, checkpoints).
Each step takes an equal batch from every domain; an epoch is `plan.steps_per_epoch` steps. Random
numbers are reseeded from (seed, rank, epoch) at each epoch start, so a run resumed at an epoch
boundary draws the same numbers as one never stopped.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
import yaml
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from ray.data import FileShuffleConfig
from ray.train.torch import TorchTrainer

from cxrcommon.errors import first_line
from cxrmodel.inference import ProbabilityModel
from cxrmodel.metrics import SUMMARIES, figure_name
from data_prep.prepared import IMAGE_COLUMN, PreparedDataset
from orchestration.evaluation.scoring import Predictions, auc_table, report_for, roc_figure, score_split
from orchestration.settings.config import Config, check_run_name
from orchestration.settings.masking import mask_text, masked
from orchestration.settings.plan import TrainingPlan, plan_document
from orchestration.settings.runtime import check_resources, check_shared_storage, exit_on_signals, init_ray, say
from orchestration.settings.schema import (
    CHAMPION,
    CHECKPOINT_TAG,
    CONFIG_ARTIFACT,
    DATA_SUMMARY_ARTIFACT,
    ENSEMBLE_DIR,
    ENSEMBLE_EPOCH_FILE,
    EPOCH_METRIC,
    EXPLAIN_ARTIFACT_DIR,
    MODEL_ARTIFACT,
    PLAN_ARTIFACT,
    SUMMARY_ARTIFACT,
    TEST_AUC_ARTIFACT,
    TEST_PREDICTIONS_ARTIFACT,
    TEST_ROC_ARTIFACT,
    TEST_SUMMARY_METRICS,
    best_metric,
    loss_metric,
    split_prefix,
    summary_metric,
    train_metric,
)
from orchestration.settings.tracking import MetricLogger, mlflow_client, open_run, register_and_promote, tracking_uri
from orchestration.training.checkpoint import (
    SUMMARY_FILE,
    TEST_FILE,
    Progress,
    load_trained,
    read_test_predictions,
    restore_checkpoint,
    write_checkpoint,
)
from orchestration.training.configured import Method, configured_method
from orchestration.training.feed import DomainBatches, InternalShare, Prefetched


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
    callbacks: list | None = None,
) -> TrainingOutcome:
    """Train as `plan` (from `plan_training`) says; `handle_signals` (main thread only) ends the
    MLflow run KILLED on SIGTERM / SIGINT; `callbacks` go to Ray Train (a sweep passes Tune's)."""
    run_name = check_run_name(run_name or config.train.run_name or default_run_name())
    uri = tracking_uri(config)
    client = mlflow_client(uri)
    run_id, _ = open_run(client, config, run_name, tags=tags, parent_run_id=parent_run_id)
    storage = config.train.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    system_metrics = SystemMetricsMonitor(run_id, tracking_uri=uri)
    system_metrics.start()
    try:
        client.log_dict(run_id, plan_document(config, plan), PLAN_ARTIFACT)
        init_ray(address)
        check_shared_storage({"prepared dataset": plan.data, "train.storage_path": storage}, uri)
        check_resources(worker_resources(config), config.train.min_workers or config.train.workers,
                        config.train.placement)
        trainer = _make_trainer(config, plan, uri, run_id, run_name, storage, callbacks or [])

        def killed(signal_name: str) -> None:
            client.set_terminated(run_id, status="KILLED")
            print(f"stopped by {signal_name}: MLflow run {run_id} ended KILLED; run the same command "
                  "to resume", file=sys.stderr, flush=True)

        with exit_on_signals(killed, handle_signals):
            result = trainer.fit()
        undelivered = undelivered_metrics_file(storage, run_name)
        if undelivered is not None and undelivered.exists():
            print(f"[{run_name}] some metrics could not reach the MLflow server at {mask_text(uri)} during training; "
                  f"they are kept in {undelivered} (one JSON object per step)", file=sys.stderr, flush=True)
        client.set_tag(run_id, CHECKPOINT_TAG, result.checkpoint.path)  # what `cxr predict --run` loads
        with result.checkpoint.as_directory() as directory:
            _log_artifacts(client, run_id, config, plan, Path(directory))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        system_metrics.finish()
    client.set_terminated(run_id, "FINISHED")
    return TrainingOutcome(run_id, run_name, dict(result.metrics), result.checkpoint.path)


def undelivered_metrics_file(storage: str, run_name: str) -> Path | None:
    """Where rank 0 keeps metrics the tracking server never took: in the run's storage when local,
    else (None) a private temporary file on rank 0's node, named in its console line."""
    if "://" in storage:
        return None
    return Path(storage) / run_name / "undelivered_metrics.jsonl"


def training_datasets(config: Config, plan: TrainingPlan) -> dict[str, ray.data.Dataset]:
    """One stream per training domain, its shard files in an order reshuffled at each execution
    (seeded). The internal domain's stream goes whole to every worker, which keeps its share of each
    pass (`feed.InternalShare`); the external ones are split among the workers and restart when they
    run out. No all-to-all step holds the first batch until a whole domain is read: rows are in
    random order within files (`cxr prepare`) and mixed again by the worker's shuffle buffer."""
    prepared = PreparedDataset.load(plan.data)
    # Rank 0 prints progress lines; per-operator bars of every domain's stream would bury them.
    ray.data.DataContext.get_current().enable_progress_bars = False
    columns = ["sample_id", IMAGE_COLUMN, *plan.label_space]
    return {
        f"train_{d}": ray.data.read_parquet(
            [str(p) for p in prepared.shard_files(d, "train")], columns=columns, partitioning=None,
            shuffle=FileShuffleConfig(seed=config.train.seed, reseed_after_execution=True),
        )
        for d in plan.domains
    }


def data_config(config: Config, plan: TrainingPlan) -> ray.train.DataConfig:
    """Ray's ingest defaults, the external streams split among the workers; with
    `train.reproducible_order`, each stream's blocks are handed over in file order (not in the order
    reads finish), so one worker sees the same batches for the same seed. Several workers still
    share the external blocks in the order they ask for them."""
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = config.train.reproducible_order
    return ray.train.DataConfig(datasets_to_split=[f"train_{d}" for d in plan.domains[1:]],
                                execution_options=options)


def worker_batches(config: Config, plan: TrainingPlan, prepared: PreparedDataset, *, rank: int, world: int,
                   first_epoch: int) -> DomainBatches:
    """This worker's training batches from its dataset shards (inside a Ray Train worker)."""
    share = InternalShare(prepared.read_columns(plan.internal, "train", ["sample_id"]).column("sample_id").to_numpy(),
                          rank=rank, world=world, seed=config.train.seed)
    shards = [ray.train.get_dataset_shard(f"train_{d}") for d in plan.domains]
    return DomainBatches(plan.domains, plan.label_space, shards, share=share, per_domain=plan.per_domain_batch,
                         image_size=prepared.image_size, shuffle_buffer=config.train.shuffle_buffer,
                         seed=_seed(config.train.seed, rank, -2), steps_per_epoch=config.train.steps_per_epoch,
                         first_epoch=first_epoch)


def _scaling(config: Config) -> ray.train.ScalingConfig:
    train = config.train
    workers = (train.min_workers, train.workers) if train.min_workers is not None else train.workers
    return ray.train.ScalingConfig(num_workers=workers, use_gpu=train.gpu, resources_per_worker=worker_resources(config),
                                   placement_strategy=train.placement)


def worker_resources(config: Config) -> dict[str, float]:
    train = config.train
    cpus = train.cpus_per_worker or (1.0 if train.gpu else 0.5)  # fractional: leave CPUs to Ray Data
    return {"CPU": cpus, **({"GPU": 1} if train.gpu else {}), **train.worker_resources}


def _make_trainer(
    config: Config, plan: TrainingPlan, uri: str, run_id: str, run_name: str, storage: str, callbacks: list
) -> TorchTrainer:
    local_storage = "://" not in storage
    undelivered = undelivered_metrics_file(storage, run_name)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"), "plan": plan.to_dict(), "tracking_uri": uri, "run_id": run_id,
            "run_name": run_name, "pid_dir": str(Path(storage) / run_name / "workers") if local_storage else None,
            "undelivered": str(undelivered) if undelivered else None,
            # The driver's MLflow retry settings (no credentials: this dict is stored with the run).
            "mlflow_http_env": {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST_")},
        },
        scaling_config=_scaling(config),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets=training_datasets(config, plan),
        dataset_config=data_config(config, plan),
    )


def _log_artifacts(client: MlflowClient, run_id: str, config: Config, plan: TrainingPlan, checkpoint: Path) -> None:
    """The final checkpoint's figures, the resolved config, a data summary and (optionally) the model."""
    prepared = PreparedDataset.load(plan.data)
    manifest = prepared.manifest
    client.log_text(run_id, yaml.safe_dump(masked(config.model_dump(mode="json")), sort_keys=False), CONFIG_ARTIFACT)
    client.log_dict(run_id, {
        "data": plan.data, "format_version": manifest.format_version, "image_size": manifest.image_size,
        "label_space": manifest.label_space, "training_domains": plan.domains, "common": plan.common,
        "internal_only": plan.internal_only,
        "domains": {d: info.model_dump(exclude={"counts"}) for d, info in manifest.domains.items()},
        "skipped_images": len(manifest.skipped),
    }, DATA_SUMMARY_ARTIFACT)
    client.log_text(run_id, (checkpoint / SUMMARY_FILE).read_text(), SUMMARY_ARTIFACT)
    client.log_artifact(run_id, str(checkpoint / TEST_FILE), str(Path(TEST_PREDICTIONS_ARTIFACT).parent))
    test = Predictions(**read_test_predictions(checkpoint))
    report = report_for(test, plan)
    client.log_text(run_id, auc_table(report, test, plan).to_csv(index=False), TEST_AUC_ARTIFACT)
    client.log_figure(run_id, roc_figure(test, plan.label_space, report, f"{plan.internal} test split"),
                      TEST_ROC_ARTIFACT)
    if config.mlflow.log_model or config.train.explain_top:
        net = load_trained(checkpoint)[0]
    if config.train.explain_top and len(test.sample_id):
        _log_explanations(client, run_id, net, plan, prepared, test, config.train.explain_top)
    if config.mlflow.log_model:
        _log_model(client.tracking_uri, run_id, net, manifest.image_size)
    if config.mlflow.register_model:
        version, promoted = register_and_promote(client, config.mlflow.register_model, run_id,
                                                 config.train.select_metric)
        print(f"registered model {config.mlflow.register_model} version {version}"
              + (f"; alias {CHAMPION} now points to it" if promoted else f"; {CHAMPION} stays (it scores better)"),
              flush=True)


def _log_explanations(client: MlflowClient, run_id: str, net: torch.nn.Module, plan: TrainingPlan,
                      prepared: PreparedDataset, test: Predictions, top: int) -> None:
    """Grad-CAM contact sheets of the best model for the internal test split (`cxr explain`'s)."""
    from orchestration.evaluation.grad_cam import explain_top_images

    with tempfile.TemporaryDirectory() as folder:
        explain_top_images(net, plan.label_space, prepared, plan.internal, "test", test,
                           plan.evaluated, top, Path(folder), overlays=False)
        client.log_artifacts(run_id, folder, EXPLAIN_ARTIFACT_DIR)


def _log_model(uri: str, run_id: str, net: torch.nn.Module, image_size: int) -> None:
    """The best network as an mlflow.pytorch model taking uint8 images (the one fluent MLflow call:
    log_model writes only to an active run)."""
    model = ProbabilityModel(net)
    # Two images: an example of one would fix the exported graph's batch size to 1.
    example = np.zeros((2, image_size, image_size), np.uint8)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model, name=MODEL_ARTIFACT, input_example=example,
            signature=mlflow.models.infer_signature(example, output), pip_requirements=["torch"],
        )


# --- the worker ---------------------------------------------------------------------------------

def train_loop_per_worker(loop_config: dict) -> None:
    config = Config.model_validate(loop_config["config"])
    plan = TrainingPlan(**loop_config["plan"])
    os.environ.update(loop_config["mlflow_http_env"])
    prepared = PreparedDataset.load(plan.data)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type != "cuda":
        # Ray gives a fractional-CPU worker one thread; the node's cores belong to its workers.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    if loop_config["pid_dir"]:
        _write_pid(Path(loop_config["pid_dir"]), rank)

    _reseed(config.train.seed, 0, -1)  # identical initial weights on every rank
    method = configured_method(config, plan, device,
                          wrap=lambda net: ray.train.torch.prepare_model(net, move_to_device=False))
    progress, best_state = Progress(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress, best_state = restore_checkpoint(Path(directory), method, device)
    spill = loop_config["undelivered"]
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"],
                          spill_file=Path(spill) if spill else None) if rank == 0 else None
    world = context.get_world_size()
    batches = worker_batches(config, plan, prepared, rank=rank, world=world, first_epoch=progress.epoch)
    feed = Prefetched(batches.next, depth=config.train.prefetch_batches, pin_memory=device.type == "cuda")
    h_schedule = config.method.h_schedule.build()
    # One pass over the internal split: more steps after an elastic restart on fewer workers.
    epochs, steps_per_epoch = config.train.epochs, batches.steps_per_epoch
    total_steps = epochs * steps_per_epoch
    scoring = dict(batch_size=config.train.eval_batch_size, device=device, autocast_dtype=method.autocast_dtype,
                   channels_last=method.acceleration.channels_last)
    run = f"[{loop_config['run_name']}]"  # starts every progress line: a sweep's trials run side by side
    loop_started = time.perf_counter()
    if logger:
        # After an elastic restart on fewer workers the global batch shrinks; the history shows when.
        logger.log({train_metric("workers"): world, train_metric("global_batch"): world * plan.per_domain_batch * len(plan.domains)},
                   progress.global_step)
        one_pass = f", one pass over {plan.internal}'s training split" if batches.exact else ""
        say(f"{run} training {plan.domains} for {epochs} epochs of {steps_per_epoch} steps "
            f"(batch {plan.per_domain_batch} per domain per worker, {world} worker(s){one_pass})"
            + (f"; resumed after epoch {progress.epoch}" if checkpoint else ""))

    for epoch in range(progress.epoch, epochs):
        _reseed(config.train.seed, rank, epoch)
        method.step.model.train()
        for i in range(steps_per_epoch):
            h = h_schedule(progress.global_step / total_steps)
            out = method.step(*feed.next(), h=h)
            progress.global_step += 1
            if i == 0:  # img/s counts from here: the first step waits for the feed (and compiles)
                started, first_step = time.perf_counter(), progress.global_step
                if logger and method.acceleration.compile and epoch == progress.epoch:
                    say(f"{run} first step with torch.compile warm-up took {started - loop_started:.1f} s")
            if logger and progress.global_step % config.train.log_every_steps == 0:
                losses = {k: v.item() for k, v in out.losses.items()}
                lr = method.optimizers.network.param_groups[0]["lr"]
                logger.log({**{loss_metric(k): v for k, v in losses.items()}, train_metric("lr"): lr, train_metric("h"): h},
                           progress.global_step)
                say(f"{run} epoch {epoch + 1}/{epochs} step {i + 1}/{steps_per_epoch}: "
                    + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
                    + _speed(len(out.probs), time.perf_counter() - started, progress.global_step - first_step,
                             total_steps - progress.global_step))
            every = config.train.val_every_steps
            if every and progress.global_step % every == 0 and i < steps_per_epoch - 1:
                _, best_state = _validate(method, prepared, plan, config, progress, best_state, scoring, logger, run)
        if method.ensemble is not None:
            method.ensemble.end_epoch()
            if logger and config.train.ensemble_history:
                _log_ensemble_epoch(loop_config, method, plan, epoch + 1, h)
        method.optimizers.lr_schedule.step()
        progress.epoch = epoch + 1
        metrics, best_state = _validate(method, prepared, plan, config, progress, best_state, scoring, logger, run)
        if logger:
            best = {best_metric(config.train.select_metric): progress.best_metric} if progress.best_step >= 0 else {}
            logger.log({EPOCH_METRIC: progress.epoch, **best}, progress.global_step)
        _report(rank, method, progress, best_state, config, plan,
                {EPOCH_METRIC: progress.epoch, "global_step": progress.global_step, **metrics})

    feed.close()
    # The best model on the internal test split.
    if best_state is not None:
        method.network.load_state_dict({k: v.to(device) for k, v in best_state.items()})
    test = score_split(method.network, prepared, plan.internal, "test", tencrop=config.train.test_tencrop, **scoring)
    report = report_for(test, plan)
    test_metrics = report.as_metrics(split_prefix("test"))
    if logger:
        logger.log(test_metrics, progress.global_step)
        say(f"{run} test ({plan.internal}, best model from step {progress.best_step}): "
            f"{_summary(test_metrics, 'test')}")
        if logger.close():
            say(f"{run} {logger.undelivered} metric values could not reach MLflow; kept in {logger.spill_file}")
    # The final report carries the best validation metrics: what a sweep ranks this run by.
    best_val = next((h for h in progress.history if h["step"] == progress.best_step), {})
    _report(rank, method, progress, best_state, config, plan, {
        **{k: v for k, v in best_val.items() if k != "step"}, EPOCH_METRIC: progress.epoch,
        "global_step": progress.global_step, "final": True, **test_metrics, "test_undefined": report.undefined,
    }, test=test)


def _log_ensemble_epoch(loop_config: dict, method: Method, plan: TrainingPlan, epoch: int, h: float) -> None:
    """Rank 0, after the fold: per sample seen this epoch, its ensemble targets z and its mean
    prediction p over the epoch, for the ensemble's findings, and H at the epoch's last step. An
    MLflow outage costs this epoch's record, not the run."""
    ids, mean = method.ensemble.last_epoch
    columns = [plan.label_space.index(f) for f in plan.ensemble]
    z, _ = method.ensemble.targets(ids)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ENSEMBLE_EPOCH_FILE.format(epoch=epoch)
        np.savez_compressed(path, sample_id=ids.cpu().numpy(), findings=np.array(plan.ensemble),
                            z=z[:, columns].cpu().numpy(), p=mean[:, columns].cpu().numpy(), h=h)
        try:
            mlflow_client(loop_config["tracking_uri"]).log_artifact(loop_config["run_id"], str(path), ENSEMBLE_DIR)
        except Exception as exc:  # noqa: BLE001 - diagnostics never stop training
            say(f"[{loop_config['run_name']}] the epoch-{epoch} ensemble record did not reach MLflow: "
                f"{mask_text(first_line(exc, 200))}")


def _validate(method: Method, prepared: PreparedDataset, plan: TrainingPlan, config: Config, progress: Progress,
              best_state: dict | None, scoring: dict, logger: MetricLogger | None, run: str,
              ) -> tuple[dict, dict | None]:
    """Score the internal val split; returns its metrics and the best weights so far (these ones
    when they beat the best, which `progress` then records)."""
    scored = score_split(method.network, prepared, plan.internal, "val", **scoring)
    metrics = report_for(scored, plan).as_metrics(split_prefix("val"))
    value = metrics.get(config.train.select_metric)
    if value is not None and value > progress.best_metric:
        progress.best_metric, progress.best_step = value, progress.global_step
        best_state = {k: v.detach().cpu().clone() for k, v in method.network.state_dict().items()}
    progress.history.append({"step": progress.global_step, **metrics})
    if logger:
        logger.log({**metrics, "epoch_float": progress.global_step / plan.steps_per_epoch}, progress.global_step)
        say(f"{run} step {progress.global_step}: val {_summary(metrics, 'val')}; "
            f"best {config.train.select_metric} {progress.best_metric:.4f} (step {progress.best_step})")
    return metrics, best_state


def _report(rank: int, method: Method, progress: Progress, best_state: dict | None, config: Config,
            plan: TrainingPlan, metrics: dict, test: Predictions | None = None) -> None:
    """Report to Ray Train: every rank reports, rank 0 attaches the checkpoint."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if rank != 0:
        ray.train.report(numeric)
        return
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoint(Path(directory), method, progress, best_state, metrics, config, plan,
                         test=vars(test) if test is not None else None)
        ray.train.report(numeric, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % 2**31


def _reseed(seed: int, rank: int, epoch: int) -> None:
    value = _seed(seed, rank, epoch)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _summary(metrics: dict[str, float], split: str) -> str:
    """e.g. "mean_auc 0.8123, mean_com_auc 0.8011, mean_int_auc 0.8200" from a split's metrics."""
    names = {figure_name(name): summary_metric(split, name) for name in SUMMARIES.values()}
    return ", ".join(f"{short} {metrics[full]:.4f}" for short, full in names.items() if full in metrics)


def _speed(batch: int, seconds: float, steps: int, steps_left: int) -> str:
    """' | img/s | ETA' over `steps` timed steps (none yet: nothing to say)."""
    if steps == 0:
        return ""
    per_step = seconds / steps
    return f" | {batch / per_step:.1f} img/s/worker | ETA {_duration(per_step * steps_left)}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"


def _write_pid(folder: Path, rank: int) -> None:
    """Which process, on which Ray node, is which rank: for operators (and the failure tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
    (folder / f"rank{rank}.node").write_text(ray.get_runtime_context().get_node_id())
