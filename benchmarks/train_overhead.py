"""Steady-state training images/s of `cxr train` (1 Ray Train worker) against a plain PyTorch loop
over the same prepared data, model and training step, with the same torch thread count.

`cxr train`'s rate is read from the timestamps of the per-step loss it logs to MLflow (first to
last logged step), so Ray's start-up is excluded and nothing is instrumented. The plain loop reads
the same shards with pyarrow. Last line: JSON figures.

    python benchmarks/train_overhead.py [--image-size 64] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import report, work_folder  # benchmarks/ is on the path as a script
from mlflow.tracking import MlflowClient

from data_prep.config import PrepareConfig, SourceConfig
from data_prep.join import load_sources
from data_prep.pipeline import run_prepare
from data_prep.prepared import PreparedDataset
from data_prep.synth import synthesize
from orchestration.settings.config import load_config
from orchestration.settings.plan import plan_training
from orchestration.settings.runtime import init_ray
from orchestration.settings.schema import loss_metric
from orchestration.settings.tracking import find_run
from orchestration.training.configured import configured_method
from orchestration.training.train import run_training


def prepare(work: Path, image_size: int, images_per_source: int = 1500) -> Path:
    """Synthetic NIH and CheXpert, prepared at `image_size` (also used by train_feed.py). The
    default keeps domains large enough that no pass ends inside the measured steps."""
    synthesize(work / "raw", images_per_source=images_per_source, image_size=max(image_size, 64), seed=1)
    config = PrepareConfig(sources=[
        SourceConfig(name="nih", kind="nih", path=work / "raw" / "nih"),
        SourceConfig(name="chexpert", kind="chexpert", path=work / "raw" / "chexpert"),
    ], image_size=image_size)
    run_prepare(load_sources(config), config, work / "prepared")
    return work / "prepared"


def ray_rate(config, data: Path, batch: int) -> float:
    outcome = run_training(config, plan_training(config, data), run_name="overhead")
    client = MlflowClient(config.mlflow.tracking_uri)
    run = find_run(client, config.mlflow.experiment, outcome.run_name)
    history = sorted(client.get_metric_history(run.info.run_id, loss_metric("cls")), key=lambda m: m.step)
    first, last = history[0], history[-1]  # from the first logged step (10): past warm-up
    return (last.step - first.step) * batch / ((last.timestamp - first.timestamp) / 1000)


def plain_rate(config, data: Path, steps: int) -> float:
    """The loop a lab would write: the same method (one factory builds both), shards and steps, no Ray."""
    torch.set_num_threads(os.cpu_count() or 1)
    plan = plan_training(config, data)
    prepared = PreparedDataset.load(data)
    method = configured_method(config, plan)
    method.network.train()

    def batches(domain):
        while True:
            yield from prepared.iter_uint8_batches(domain, "train", plan.per_domain_batch)

    streams = [batches(d) for d in plan.domains]
    times = []
    for i in range(steps):
        start = time.perf_counter()
        parts = [next(s) for s in streams]
        ids = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        images = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        domain = torch.cat([torch.full((len(p[0]),), d) for d, p in enumerate(parts)])
        method.step(images, labels, domain, ids, h=0.3)
        times.append(time.perf_counter() - start)
    batch = plan.per_domain_batch * len(plan.domains)
    return batch * (steps - 2) / sum(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with work_folder("train") as work:
        init_ray()
        data = prepare(work, args.image_size)
        config = load_config([], [
            "train.epochs=1", f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch_size}",
            "train.log_every_steps=10", "train.workers=1", f"train.storage_path={work / 'ray_results'}",
            f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        ])
        ray = ray_rate(config, data, args.batch_size)
        plain = plain_rate(config, data, args.steps)
        print(f"cxr train: {ray:.1f} img/s, plain PyTorch loop: {plain:.1f} img/s")
        report("train_overhead", image_size=args.image_size, batch_size=args.batch_size,
               ray_images_per_s=round(ray, 2), plain_images_per_s=round(plain, 2), ratio=round(ray / plain, 3),
               target=0.9)


if __name__ == "__main__":
    main()
