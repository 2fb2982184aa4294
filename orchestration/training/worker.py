"""What each Ray Train worker of `cxr train` runs: plain PyTorch between Ray's touch points, in the
shape of Ray's own TorchTrainer examples. Those touch points are one `RaySession`: the worker's
rank and device, the checkpoint it resumes from, and where its reports go (Ray Train's for a
TorchTrainer's workers; Ray Tune's for a one-worker sweep trial, which trains in the trial's own
process; `RunCheckpoints` for a one-worker `cxr train`, which trains in one Ray task). Each worker
reads its own training rows from the prepared shards (`feed`).

Each step takes an equal batch from every domain; an epoch is one pass over the internal training
split (`feed.InternalShare`). Random numbers are reseeded from (seed, rank, epoch) at each epoch
start, so a run resumed at an epoch boundary draws the same numbers as one never stopped.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
import torch

from cxrcommon.errors import first_line
from cxrmodel.method import native_bf16
from cxrmodel.metrics import SUMMARIES, figure_name
from cxrmodel.schedules import HSchedule
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.scoring import Predictions, report_for, score_split
from orchestration.settings.config import Config
from orchestration.settings.masking import mask_text
from orchestration.settings.plan import TrainingPlan
from orchestration.settings.runtime import mark, say
from orchestration.settings.schema import (
    ENSEMBLE_DIR,
    ENSEMBLE_EPOCH_FILE,
    EPOCH_METRIC,
    best_metric,
    loss_metric,
    split_prefix,
    summary_metric,
    train_metric,
)
from orchestration.settings.tracking import MetricLogger, mlflow_client
from orchestration.training.checkpoint import Progress, restore_checkpoint, write_checkpoint
from orchestration.training.configured import Method, configured_method
from orchestration.training.feed import (
    DomainBatches,
    ExternalPasses,
    InternalPasses,
    InternalShare,
    Prefetched,
    training_columns,
)
from orchestration.training.run_checkpoints import RunCheckpoints

if TYPE_CHECKING:
    from ray.train import Checkpoint

# Ray Train and Tune are imported where a TorchTrainer's worker or a sweep trial starts: a one-worker
# `cxr train` task does without them (~0.5 s of imports before its first step).


def train_loop_per_worker(loop_config: dict) -> None:
    """A TorchTrainer worker's whole run."""
    _train(loop_config, _ray_train_session())


def train_in_trial(loop_config: dict) -> dict:
    """A one-worker sweep trial's run in Tune's trial process; returns the last report's metrics."""
    from ray import tune

    return _train_alone(loop_config, tune.get_checkpoint(), _reporting(tune.report, tune.Checkpoint))


def train_in_task(loop_config: dict, storage: str, run_name: str) -> dict:
    """A one-worker `cxr train` in one Ray task, its checkpoints kept in `storage/<run_name>` by
    `RunCheckpoints`; returns the last report's metrics."""
    checkpoints = RunCheckpoints(storage, run_name)
    return _train_alone(loop_config, checkpoints.latest(), checkpoints.report)


def _train_alone(loop_config: dict, checkpoint: Checkpoint | None, send: Callable[[dict, str | None], None]) -> dict:
    """The loop as the one worker of its run: Ray hands a GPU to the process as its only visible one."""
    gpu = Config.model_validate(loop_config["config"]).train.gpu
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    session = RaySession(0, 1, 1, device, lambda net: net, checkpoint, send)
    _train(loop_config, session)
    return session.last_metrics


def _train(loop_config: dict, session: RaySession) -> None:
    """Set up, train epoch after epoch (each ends in a validation and a report), test the best model."""
    mark("worker entered")
    worker = _set_up(loop_config, session)
    for epoch in range(worker.progress.epoch, worker.epochs):
        h = _one_epoch(worker, epoch)
        _end_epoch(worker, epoch, h)
    _final_test(worker)


@dataclass
class RaySession:
    """Everything the loop asks of Ray; `last_metrics` is what it reported last."""

    rank: int
    world: int
    local_world: int  # this run's workers on this node: they share its cores
    device: torch.device
    wrap: Callable[[torch.nn.Module], torch.nn.Module]  # DDP around the network where there are several workers
    checkpoint: Checkpoint | None  # the latest one after a restart
    send: Callable[[dict, str | None], None]  # (metrics, the checkpoint's local folder or None)
    last_metrics: dict = field(default_factory=dict)

    def report(self, metrics: dict, directory: str | None = None) -> None:
        self.last_metrics = metrics
        self.send(metrics, directory)


def _reporting(report: Callable[..., None], checkpoint_type: type) -> Callable[[dict, str | None], None]:
    """A session's `send` through Ray Train's or Tune's `report`, a folder wrapped as their checkpoint."""
    return lambda metrics, directory: report(
        metrics, checkpoint=checkpoint_type.from_directory(directory) if directory else None)


def _ray_train_session() -> RaySession:
    from ray import train
    from ray.train import torch as ray_torch

    context = train.get_context()
    return RaySession(context.get_world_rank(), context.get_world_size(), context.get_local_world_size(),
                      ray_torch.get_device(), lambda net: ray_torch.prepare_model(net, move_to_device=False),
                      train.get_checkpoint(), _reporting(train.report, train.Checkpoint))


@dataclass
class _Worker:
    """One worker's run: what it trains, with what, and how far it got."""

    loop_config: dict
    config: Config
    plan: TrainingPlan
    prepared: PreparedDataset
    session: RaySession
    method: Method
    progress: Progress
    best_state: dict | None  # the best weights so far (CPU), None before the first validation
    feed: Prefetched
    logger: MetricLogger | None  # rank 0 logs and prints; the other ranks only train
    h_schedule: HSchedule
    first_epoch: int  # where this process started: 0, or the epoch a restart resumed after
    epochs: int
    steps_per_epoch: int
    scoring: dict  # score_split's settings for validation and test
    label: str  # starts every progress line: a sweep's trials run side by side

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def _set_up(loop_config: dict, session: RaySession) -> _Worker:
    config = Config.model_validate(loop_config["config"])
    plan = TrainingPlan(**loop_config["plan"])
    os.environ.update(loop_config["mlflow_http_env"])
    prepared = PreparedDataset.load(plan.data)
    rank, world, device = session.rank, session.world, session.device
    if device.type != "cuda":
        # Ray gives a fractional-CPU worker one thread; the node's cores belong to its workers.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // session.local_world))
    if loop_config["pid_dir"]:
        _write_pid(Path(loop_config["pid_dir"]), rank)

    _reseed(config.train.seed, 0, -1)  # identical initial weights on every rank
    method = configured_method(config, plan, device, wrap=session.wrap)
    progress, best_state = Progress(), None
    checkpoint = session.checkpoint
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress, best_state = restore_checkpoint(Path(directory), method, device)
    spill = loop_config["undelivered"]
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"],
                          spill_file=Path(spill) if spill else None) if rank == 0 else None
    batches = worker_batches(config, plan, prepared, rank=rank, world=world, first_epoch=progress.epoch,
                             steps_done=progress.global_step)
    worker = _Worker(
        loop_config, config, plan, prepared, session, method, progress, best_state,
        feed=Prefetched(batches.next, depth=config.train.prefetch_batches, pin_memory=device.type == "cuda"),
        logger=logger, h_schedule=config.method.h_schedule.build(), first_epoch=progress.epoch,
        epochs=config.train.epochs,
        # One pass over the internal split: more steps after an elastic restart on fewer workers.
        steps_per_epoch=batches.steps_per_epoch,
        scoring=dict(batch_size=config.train.eval_batch_size, device=device, autocast_dtype=method.autocast_dtype,
                     channels_last=method.acceleration.channels_last),
        label=f"[{loop_config['run_name']}]",
    )
    if logger:
        # After an elastic restart on fewer workers the global batch shrinks; the history shows when.
        logger.log({train_metric("workers"): world,
                    train_metric("global_batch"): world * plan.per_domain_batch * len(plan.domains)}, progress.global_step)
        one_pass = f", one pass over {plan.internal}'s training split" if batches.exact else ""
        say(f"{worker.label} training {plan.domains} for {worker.epochs} epochs of {worker.steps_per_epoch} steps "
            f"(batch {plan.per_domain_batch} per domain per worker, {world} worker(s){one_pass})"
            + (f"; resumed after epoch {progress.epoch}" if checkpoint else ""))
        if method.acceleration.bf16 and not native_bf16(device):
            say(f"{worker.label} train.bf16=true on a CPU without native bfloat16 (no AVX512-BF16 or AMX): autocast "
                "is emulated here, several times slower than fp32; train.bf16=false is faster on this machine")
    return worker


def worker_batches(config: Config, plan: TrainingPlan, prepared: PreparedDataset, *, rank: int, world: int,
                   first_epoch: int, steps_done: int = 0) -> DomainBatches:
    """This worker's training batches: its share of the internal split, its parts of the external ones."""
    share = InternalShare(prepared.read_columns(plan.internal, "train", ["sample_id"]).column("sample_id").to_numpy(),
                          rank=rank, world=world, seed=config.train.seed)
    columns, buffer = training_columns(plan.label_space), config.train.shuffle_buffer
    internal = InternalPasses(prepared, plan.internal, columns, share, shuffle_buffer=buffer,
                              seed=_seed(config.train.seed, rank, -2))
    # The file order's seed is the same on every rank (rank 0's): the ranks then read disjoint parts.
    externals = [ExternalPasses(prepared, d, columns, rank=rank, world=world, seed=_seed(config.train.seed, 0, -100 - e),
                                shuffle_seed=_seed(config.train.seed, rank, -3 - e), shuffle_buffer=buffer)
                 for e, d in enumerate(plan.domains[1:])]
    return DomainBatches(plan.domains, plan.label_space, internal, externals, per_domain=plan.per_domain_batch,
                         image_size=prepared.image_size, steps_per_epoch=config.train.steps_per_epoch,
                         first_epoch=first_epoch, steps_done=steps_done)


def _one_epoch(w: _Worker, epoch: int) -> float:
    """The epoch's steps (a validation every train.val_every_steps); returns H at its last step."""
    _reseed(w.config.train.seed, w.rank, epoch)
    w.method.step.model.train()
    loop_started = time.perf_counter()
    first_of_process = epoch == w.first_epoch  # its first step waits for the streams to start (and compiles)
    for i in range(w.steps_per_epoch):
        h = w.h_schedule(w.progress.global_step / w.total_steps)
        batch = w.feed.next()
        if i == 0 and first_of_process:
            mark("first batch")
        out = w.method.step(*batch, h=h)
        w.progress.global_step += 1
        if i == 0:  # img/s counts from here: an epoch's first step waits for the feed
            started, first_step = time.perf_counter(), w.progress.global_step
            if first_of_process:
                mark("first step")
                if w.logger and w.method.acceleration.compile:
                    say(f"{w.label} first step with torch.compile warm-up took {started - loop_started:.1f} s")
        if w.logger and w.progress.global_step % w.config.train.log_every_steps == 0:
            _log_step(w, epoch, i, out.losses, h,
                      _speed(len(out.probs), time.perf_counter() - started, w.progress.global_step - first_step,
                             w.total_steps - w.progress.global_step))
        every = w.config.train.val_every_steps
        if every and w.progress.global_step % every == 0 and i < w.steps_per_epoch - 1:
            _validate(w)
    return h


def _log_step(w: _Worker, epoch: int, i: int, step_losses: dict, h: float, speed: str) -> None:
    losses = {k: v.item() for k, v in step_losses.items()}
    lr = w.method.optimizers.network.param_groups[0]["lr"]
    w.logger.log({**{loss_metric(k): v for k, v in losses.items()}, train_metric("lr"): lr, train_metric("h"): h},
                 w.progress.global_step)
    say(f"{w.label} epoch {epoch + 1}/{w.epochs} step {i + 1}/{w.steps_per_epoch}: "
        + " ".join(f"{k} {v:.4f}" for k, v in losses.items()) + speed)


def _end_epoch(w: _Worker, epoch: int, h: float) -> None:
    """Fold the ensemble, step the LR, validate, and report (rank 0 with a checkpoint)."""
    if w.method.ensemble is not None:
        w.method.ensemble.end_epoch()
        if w.logger and w.config.train.ensemble_history:
            _log_ensemble_epoch(w.loop_config, w.method, w.plan, epoch + 1, h)
    w.method.optimizers.lr_schedule.step()
    w.progress.epoch = epoch + 1
    metrics = _validate(w)
    if w.logger:
        best = {best_metric(w.config.train.select_metric): w.progress.best_metric} if w.progress.best_step >= 0 else {}
        w.logger.log({EPOCH_METRIC: w.progress.epoch, **best}, w.progress.global_step)
    _report(w, {EPOCH_METRIC: w.progress.epoch, "global_step": w.progress.global_step, **metrics})


def _final_test(w: _Worker) -> None:
    """The best model on the internal test split; the last report carries its predictions."""
    w.feed.close()
    if w.best_state is not None:
        w.method.network.load_state_dict({k: v.to(w.device) for k, v in w.best_state.items()})
    test = score_split(w.method.network, w.prepared, w.plan.internal, "test", tencrop=w.config.train.test_tencrop,
                       **w.scoring)
    report = report_for(test, w.plan)
    test_metrics = report.as_metrics(split_prefix("test"))
    mark("test done")
    if w.logger:
        w.logger.log(test_metrics, w.progress.global_step)
        say(f"{w.label} test ({w.plan.internal}, best model from step {w.progress.best_step}): "
            f"{_summary(test_metrics, 'test')}")
        if w.logger.close():
            say(f"{w.label} {w.logger.undelivered} metric values could not reach MLflow; kept in {w.logger.spill_file}")
    # The final report carries the best validation metrics: what a sweep ranks this run by.
    best_val = next((h for h in w.progress.history if h["step"] == w.progress.best_step), {})
    _report(w, {**{k: v for k, v in best_val.items() if k != "step"}, EPOCH_METRIC: w.progress.epoch,
                "global_step": w.progress.global_step, "final": True, **test_metrics, "test_undefined": report.undefined},
            test=test)


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


def _validate(w: _Worker) -> dict:
    """Score the internal val split and keep the best weights so far (`progress` records which);
    returns the split's metrics."""
    scored = score_split(w.method.network, w.prepared, w.plan.internal, "val", **w.scoring)
    metrics = report_for(scored, w.plan).as_metrics(split_prefix("val"))
    progress, select = w.progress, w.config.train.select_metric
    value = metrics.get(select)
    if value is not None and value > progress.best_metric:
        progress.best_metric, progress.best_step = value, progress.global_step
        w.best_state = {k: v.detach().cpu().clone() for k, v in w.method.network.state_dict().items()}
    progress.history.append({"step": progress.global_step, **metrics})
    if w.logger:
        w.logger.log({**metrics, "epoch_float": progress.global_step / w.plan.steps_per_epoch}, progress.global_step)
        say(f"{w.label} step {progress.global_step}: val {_summary(metrics, 'val')}; "
            f"best {select} {progress.best_metric:.4f} (step {progress.best_step})")
    return metrics


def _report(w: _Worker, metrics: dict, test: Predictions | None = None) -> None:
    """Every rank reports; rank 0 attaches the checkpoint."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if w.rank != 0:
        w.session.report(numeric)
        return
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoint(Path(directory), w.method, w.progress, w.best_state, metrics, w.config, w.plan,
                         test=vars(test) if test is not None else None)
        w.session.report(numeric, directory)


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
