"""The per-worker training function that Ray Train runs. Plain PyTorch in the middle; Ray only at
the edges: the dataset shards, `ray.train.report`, and the checkpoint.

Each step takes an equal batch from every domain; a domain's shard that runs out starts a new
(reshuffled) pass, so small domains cycle. An epoch is `plan.steps_per_epoch` steps (by default one
pass over the internal training split). Random numbers are reseeded from (seed, rank, epoch) at each
epoch start, so a run resumed at an epoch boundary draws the same numbers as one never stopped.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from cxrmodel.network import CXRNet
from cxrmodel.schedules import make_optimizers
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import TrainingStep
from data_prep.prepared import IMAGE_COLUMN, PreparedDataset, images_from_arrow
from orchestration.config import Config
from orchestration.evaluation import Predictions, predict_split, report_for
from orchestration.plan import TrainingPlan
from orchestration.tracking import MetricLogger

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"
TEST_FILE = "test_predictions.npz"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"  # the run's config and plan


def build_network(config: Config, plan: TrainingPlan, *, weights: str | None = None) -> CXRNet:
    method = config.method
    head = "multi_task" if method.multi_task else "holistic" if method.adversarial == "holistic" else "task_specific"
    return CXRNet(
        len(plan.label_space), plan.common_index, len(plan.domains),
        head=head,
        adversarial=method.adversarial != "none",
        adversarial_weight=method.lambda_tat,
        branch_features=config.model.branch_features,
        discriminator_hidden=config.model.discriminator_hidden,
        in_channels=1,
        weights=weights,
    )


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_metric: float = float("-inf")
    best_step: int = -1
    history: list[dict] = field(default_factory=list)  # validation metrics per evaluation


class DomainBatches:
    """Equal batches from every domain's Ray Data stream (a worker's shard, in plan.domains order);
    a finished stream starts a new pass. Rows are drawn at random from a buffer of
    `shuffle_buffer` rows, on top of the shards' own seeded random order."""

    def __init__(self, plan: TrainingPlan, image_size: int, shards: list, shuffle_buffer: int):
        self.plan, self.image_size, self.shards = plan, image_size, shards
        self.shuffle_buffer = max(shuffle_buffer, plan.per_domain_batch)
        self.iterators = [None] * len(self.shards)

    def _pass(self, d: int):
        return iter(self.shards[d].iter_batches(
            batch_size=self.plan.per_domain_batch, batch_format="pyarrow", drop_last=True,
            local_shuffle_buffer_size=self.shuffle_buffer,
        ))

    def _next_table(self, d: int):
        for _ in range(2):
            if self.iterators[d] is None:
                self.iterators[d] = self._pass(d)
            try:
                return next(self.iterators[d])
            except StopIteration:
                self.iterators[d] = None
        raise RuntimeError(f"domain {self.plan.domains[d]!r} yields no full batch of {self.plan.per_domain_batch}")

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, domains, ids = [], [], [], []
        for d in range(len(self.shards)):
            table = self._next_table(d)
            images.append(images_from_arrow(table.column(IMAGE_COLUMN), self.image_size))
            labels.append(np.stack([table.column(f).to_numpy() for f in self.plan.label_space], axis=1))
            domains.append(np.full(table.num_rows, d, np.int64))
            ids.append(table.column("sample_id").to_numpy())
        return (
            torch.from_numpy(np.concatenate(images)),
            torch.from_numpy(np.concatenate(labels).astype(np.int8)),
            torch.from_numpy(np.concatenate(domains)),
            torch.from_numpy(np.concatenate(ids)),
        )


def _reseed(seed: int, rank: int, epoch: int) -> None:
    value = (seed * 1_000_003 + rank * 10_007 + epoch) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _load_checkpoint(checkpoint: ray.train.Checkpoint, net, optimizers, ensemble, device):
    adam, rmsprop, schedule = optimizers
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=False)
        best_path = Path(directory) / BEST_MODEL_FILE
        best_state = torch.load(best_path, map_location="cpu") if best_path.exists() else None
    net.load_state_dict(state["model"])
    adam.load_state_dict(state["optimizer"])
    if rmsprop is not None:
        rmsprop.load_state_dict(state["discriminator_optimizer"])
    schedule.load_state_dict(state["lr_schedule"])
    if ensemble is not None:
        ensemble.load_state_dict(state["ensemble"])
    return Progress(**state["progress"]), best_state


def _say(line: str) -> None:
    """A progress line of rank 0, shown once. Ray Train's patched print would both tee it to a
    wrapped stdout and log it, and the driver would show it twice."""
    print(line, file=sys.__stdout__, flush=True)


def train_loop_per_worker(loop_config: dict) -> None:
    config = Config.model_validate(loop_config["config"])
    plan = TrainingPlan(**loop_config["plan"])
    prepared = PreparedDataset.load(plan.data)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if not on_gpu:
        # Ray gives a fractional-CPU worker one thread; the node's cores belong to its workers.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    bf16 = config.train.bf16 if config.train.bf16 is not None else on_gpu
    channels_last = config.train.channels_last if config.train.channels_last is not None else on_gpu
    autocast = torch.bfloat16 if bf16 else None
    if loop_config["pid_dir"]:
        _write_pid(Path(loop_config["pid_dir"]), rank)

    _reseed(config.train.seed, 0, -1)  # identical initial weights on every rank
    net = build_network(config, plan, weights=config.model.weights).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizers = make_optimizers(
        net, lr=config.train.lr, lr_milestones=tuple(config.train.lr_milestones),
        lr_decay=config.train.lr_decay, discriminator_lr=config.train.discriminator_lr,
    )
    ensemble = (
        TemporalEnsemble(plan.num_samples, len(plan.label_space), config.method.gamma, device)
        if config.method.uses_ensemble else None
    )
    progress, best_state = Progress(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        progress, best_state = _load_checkpoint(checkpoint, net, optimizers, ensemble, device)
    model = ray.train.torch.prepare_model(net, move_to_device=False)

    step = TrainingStep(
        model, optimizers[0], optimizers[1], alpha=torch.tensor(plan.alpha), beta=torch.tensor(plan.beta),
        num_domains=len(plan.domains), num_classes=len(plan.trained),
        ensemble=ensemble, ensemble_findings=torch.tensor(plan.ensemble_mask),
        lambda_ute=config.method.lambda_ute, uncertainty=config.method.uncertainty,
        hard_labels=config.method.hard_labels, random_crop=config.train.random_crop,
        autocast_dtype=autocast, channels_last=channels_last,
    )
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    checkpointer = Checkpointer(rank, net, optimizers, ensemble, config, plan)
    shards = [ray.train.get_dataset_shard(f"train_{d}") for d in plan.domains]
    batches = DomainBatches(plan, prepared.image_size, shards, config.train.shuffle_buffer)
    h_schedule = config.method.h_schedule.build()
    total_steps = config.train.epochs * plan.steps_per_epoch
    evaluate = dict(batch_size=config.train.eval_batch_size, device=device, autocast_dtype=autocast,
                    channels_last=channels_last)

    def validate() -> dict[str, float]:
        nonlocal best_state
        report = report_for(predict_split(net, prepared, plan.internal, "val", **evaluate), plan.label_space,
                            evaluated=plan.evaluated, common=plan.common, internal_only=plan.internal_only)
        metrics = report.as_metrics("val_")
        value = metrics.get(config.train.select_metric)
        if value is not None and value > progress.best_metric:
            progress.best_metric, progress.best_step = value, progress.global_step
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        progress.history.append({"step": progress.global_step, **metrics})
        if logger:
            logger.log("val", {**metrics, "epoch_float": progress.global_step / plan.steps_per_epoch},
                       progress.global_step)
            _say(f"[step {progress.global_step}] val {_summary(metrics, 'val_')}; "
                 f"best {config.train.select_metric} {progress.best_metric:.4f} (step {progress.best_step})")
        return metrics

    if logger:
        _say(f"training {plan.domains} for {config.train.epochs} epochs of {plan.steps_per_epoch} steps "
             f"(batch {plan.per_domain_batch} per domain per worker)"
             + (f"; resumed after epoch {progress.epoch}" if checkpoint else ""))
    for epoch in range(progress.epoch, config.train.epochs):
        _reseed(config.train.seed, rank, epoch)
        model.train()
        started = time.perf_counter()
        for i in range(plan.steps_per_epoch):
            h = h_schedule(progress.global_step / total_steps)
            out = step(*batches.next(), h=h)
            progress.global_step += 1
            if logger and progress.global_step % config.train.log_every_steps == 0:
                losses = {k: v.item() for k, v in out.losses.items()}
                logger.log("train", {
                    **{f"train/loss_{k}": v for k, v in losses.items()},
                    "train/lr": optimizers[0].param_groups[0]["lr"], "train/h": h,
                }, progress.global_step)
                rate = (i + 1) * len(out.probs) / (time.perf_counter() - started)
                _say(f"[epoch {epoch + 1}/{config.train.epochs} step {i + 1}/{plan.steps_per_epoch}] "
                     + " ".join(f"{k} {v:.4f}" for k, v in losses.items()) + f" | {rate:.1f} img/s/worker")
            every = config.train.val_every_steps
            if every and progress.global_step % every == 0 and i < plan.steps_per_epoch - 1:
                validate()
        if ensemble is not None:
            ensemble.end_epoch()
        optimizers[2].step()
        progress.epoch = epoch + 1
        metrics = validate()
        if logger:
            best = {f"best/{config.train.select_metric}": progress.best_metric} if progress.best_step >= 0 else {}
            logger.log("epoch", {"epoch": progress.epoch, **best}, progress.global_step)
        checkpointer.report(progress, best_state, {"epoch": progress.epoch, "global_step": progress.global_step, **metrics})

    # The best model on the internal test split.
    if best_state is not None:
        net.load_state_dict({k: v.to(device) for k, v in best_state.items()})
    test = predict_split(net, prepared, plan.internal, "test", tencrop=config.train.test_tencrop, **evaluate)
    report = report_for(test, plan.label_space, evaluated=plan.evaluated, common=plan.common,
                        internal_only=plan.internal_only)
    test_metrics = report.as_metrics("test_")
    if logger:
        logger.log("test", test_metrics, progress.global_step)
        _say(f"test ({plan.internal}, best model from step {progress.best_step}): {_summary(test_metrics, 'test_')}")
    # The final report carries the best validation metrics: what a sweep ranks this run by.
    best_val = next((h for h in progress.history if h["step"] == progress.best_step), {})
    checkpointer.report(progress, best_state, {
        **{k: v for k, v in best_val.items() if k != "step"}, "epoch": progress.epoch,
        "global_step": progress.global_step, "final": True, **test_metrics, "test_undefined": report.undefined,
    }, test=test)


@dataclass
class Checkpointer:
    """Writes checkpoints and reports to Ray Train: every rank reports, rank 0 attaches the files.

    A checkpoint holds everything to continue (state.pt), the best weights, a summary of its
    metrics, and the run's config and plan, so that it can be loaded on its own (cxr predict)."""

    rank: int
    net: torch.nn.Module
    optimizers: tuple
    ensemble: TemporalEnsemble | None
    config: Config
    plan: TrainingPlan

    def report(self, progress: Progress, best_state: dict | None, metrics: dict, test: Predictions | None = None) -> None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.rank != 0:
            ray.train.report(numeric)
            return
        with tempfile.TemporaryDirectory() as directory:
            directory = Path(directory)
            self._write(directory, progress, best_state, metrics)
            if test is not None:
                np.savez(directory / TEST_FILE, sample_id=test.sample_id, probs=test.probs, labels=test.labels)
            ray.train.report(numeric, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))

    def _write(self, directory: Path, progress: Progress, best_state: dict | None, metrics: dict) -> None:
        adam, rmsprop, schedule = self.optimizers
        torch.save({
            "model": self.net.state_dict(),
            "optimizer": adam.state_dict(),
            "discriminator_optimizer": rmsprop.state_dict() if rmsprop else None,
            "lr_schedule": schedule.state_dict(),
            "ensemble": self.ensemble.state_dict() if self.ensemble else None,
            "progress": progress.__dict__,
        }, directory / STATE_FILE)
        if best_state is not None:
            torch.save(best_state, directory / BEST_MODEL_FILE)
        (directory / SUMMARY_FILE).write_text(json.dumps(metrics, indent=1))
        (directory / RUN_FILE).write_text(json.dumps({
            "config": self.config.model_dump(mode="json"), "plan": self.plan.to_dict(),
        }, indent=1))


def _summary(metrics: dict[str, float], prefix: str) -> str:
    names = ("mean_auc", "mean_com_auc", "mean_int_auc")
    return ", ".join(f"{n} {metrics[prefix + n]:.4f}" for n in names if prefix + n in metrics)


def _write_pid(folder: Path, rank: int) -> None:
    """Which process is which rank: for operators (and the worker-failure test)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
