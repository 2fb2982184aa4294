"""`cxr predict --images` (Ray Data decode tasks + an actor pool that loads the model once per
actor) against the same decode and model loop in one process, on N generated 1024x1024 PNGs
scored at 64x64 on the CPU. Target: >= 1.5x on 2 cores, `ratio` = loop seconds / Ray seconds.

    python benchmarks/predict_images.py [--images 2000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import report, work_folder  # benchmarks/ is on the path as a script
from train_overhead import prepare  # benchmarks/ is on the path when a benchmark runs as a script

from cxrmodel.inference import predict_probs
from data_prep.images import load_grayscale
from data_prep.synth import LOOKS, DefaultImages
from orchestration.evaluation.image_prediction import BATCH, list_images, predict_images
from orchestration.settings.config import load_config
from orchestration.settings.plan import plan_training
from orchestration.settings.runtime import init_ray
from orchestration.training.checkpoint import load_trained
from orchestration.training.train import run_training

TARGET = 1.5
SIZE = 64
DISTINCT = 24  # distinct pictures; files repeat them so writing N inputs stays quick


def make_pngs(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    maker = DefaultImages(1024, LOOKS["nih"], rng)
    encoded = [cv2.imencode(".png", (maker.make(rng.random(21) < 0.2) * 255).astype(np.uint8))[1].tobytes()
               for _ in range(DISTINCT)]
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:06d}.png").write_bytes(encoded[i % DISTINCT])


def a_trained_checkpoint(work: Path) -> Path:
    """A model trained for two steps at 64² (its speed, not its AUC, is measured)."""
    data = prepare(work, SIZE, images_per_source=60)
    config = load_config([], ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8",
                              "train.domains=[nih, chexpert]", "mlflow.log_model=false",
                              f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                              f"train.storage_path={work / 'ray_results'}"])
    return Path(run_training(config, plan_training(config, data), run_name="for-predict").checkpoint)


def one_process(paths: list[str], checkpoint: Path) -> float:
    torch.set_num_threads(os.cpu_count() or 1)
    net, _, _ = load_trained(checkpoint)
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), BATCH):
            images = np.stack([load_grayscale(p, SIZE) for p in paths[i:i + BATCH]])
            predict_probs(net, torch.from_numpy(images))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    with work_folder("predict") as work:
        init_ray()
        checkpoint = a_trained_checkpoint(work)
        make_pngs(work / "incoming", args.images)
        listed = list_images(work / "incoming")
        for path in listed["path"]:  # warm the page cache for both contenders alike
            Path(path).read_bytes()
        started = time.perf_counter()
        result = predict_images(listed, checkpoint, size=SIZE, tencrop=False, domain="incoming",
                                actors=os.cpu_count() or 1, gpus_per_actor=0.0)
        ray_s = time.perf_counter() - started
        assert len(result.table) == args.images and not result.skipped
        loop_s = one_process(list(listed["path"]), checkpoint)
        print(f"{args.images:,} 1024² PNGs scored at {SIZE}²: cxr predict --images {ray_s:.1f} s "
              f"({args.images / ray_s:,.0f} img/s), one process {loop_s:.1f} s ({args.images / loop_s:,.0f} img/s)")
        report("predict_images", images=args.images, cores=os.cpu_count(), ray_s=round(ray_s, 2),
               loop_s=round(loop_s, 2), ratio=round(loop_s / ray_s, 3), target=TARGET)


if __name__ == "__main__":
    main()
