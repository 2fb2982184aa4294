"""Images/s the training feed delivers to the step inside a real Ray Train worker: the worker's
own reads of the prepared shards (as in `cxr train`), the domain batcher and its prefetch thread, with a step that does
nothing, at 320x320 uint8 and two domains. Target: >= 8,000 images/s per worker (4x the GPU step
we aim for), `ratio` = measured / 8,000. Measured with the prefetch thread (the default) and with
batches built on the training thread, in the same worker.

    python benchmarks/train_feed.py [--images-per-domain 4000] [--batch-per-domain 64] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray.train
from _common import report, work_folder  # benchmarks/ is on the path as a script
from ray.train.torch import TorchTrainer
from train_overhead import prepare  # benchmarks/ is on the path when a benchmark runs as a script

from data_prep.prepared import PreparedDataset
from orchestration.settings.config import Config, load_config
from orchestration.settings.plan import TrainingPlan, plan_training
from orchestration.settings.runtime import init_ray
from orchestration.training.feed import Prefetched
from orchestration.training.worker import worker_batches

TARGET = 8000.0
SIZE = 320


def feed_worker(loop_config: dict) -> None:
    """The worker's feed with a no-op step: warm-up, then timed steps, for each prefetch depth."""
    config, plan = Config.model_validate(loop_config["config"]), TrainingPlan(**loop_config["plan"])
    prepared = PreparedDataset.load(plan.data)
    figures = {}
    for depth in (2, 0):
        batches = worker_batches(config, plan, prepared, rank=0, world=1, first_epoch=0)
        feed = Prefetched(batches.next, depth=depth)
        for _ in range(10):
            feed.next()
        started = time.perf_counter()
        images = sum(len(feed.next()[0]) for _ in range(loop_config["steps"]))
        figures[f"prefetch_{depth}"] = images / (time.perf_counter() - started)
        feed.close()
    # Ray Train keeps only metrics reported with a checkpoint; the driver shares this machine's disk.
    Path(loop_config["figures"]).write_text(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-domain", type=int, default=4000)
    parser.add_argument("--batch-per-domain", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    with work_folder("feed") as work:
        init_ray()
        data = prepare(work, SIZE, images_per_source=args.images_per_domain)
        config = load_config([], [f"train.batch_size={2 * args.batch_per_domain}", "train.domains=[nih,chexpert]"])
        plan = plan_training(config, data)
        trainer = TorchTrainer(
            feed_worker,
            train_loop_config={"config": config.model_dump(mode="json"), "plan": plan.to_dict(),
                               "steps": args.steps, "figures": str(work / "figures.json")},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(name="train_feed", storage_path=str(work / "ray_results")),
        )
        trainer.fit()
        figures = json.loads((work / "figures.json").read_text())
        prefetched, inline = figures["prefetch_2"], figures["prefetch_0"]
        print(f"feed at {SIZE}²: {prefetched:,.0f} img/s with prefetch, {inline:,.0f} img/s on the training thread")
        report("train_feed", image_size=SIZE, batch=2 * plan.per_domain_batch, images_per_domain=args.images_per_domain,
               images_per_s=round(prefetched, 1), images_per_s_without_prefetch=round(inline, 1),
               target_images_per_s=TARGET, ratio=round(prefetched / TARGET, 3), target=1.0)


if __name__ == "__main__":
    main()
