"""Does cost grow linearly with the data? `cxr synth` + `cxr prepare` + one training epoch (32²,
CPU, one worker) at N, 2N and 4N images, each command a fresh process with its own local Ray.

Reports seconds per image at each size (and per stage), `ratio` = seconds per image at 4N over
seconds per image at N (target <= 1.3: no worse than linear, with a margin), and the peak RSS of
the driver (the `cxr` process) and of the Ray Train worker at each size. The temporal ensemble
holds N x C float32 on every worker: the worker's RSS should grow by about that much, no more.

    python benchmarks/scale.py [--n 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from _common import report, work_folder  # benchmarks/ is on the path as a script

CXR = [sys.executable, "-m", "orchestration.cli"]  # run_measured times the command's own process
TARGET = 1.3


def run_measured(args: list[str], log: Path) -> dict:
    """Run one command; its wall time and the peak RSS of the command itself and of any Ray Train
    worker among its descendants (a local Ray's processes are)."""
    process = subprocess.Popen(args, stdout=log.open("a"), stderr=subprocess.STDOUT)
    peaks = {"driver": 0, "worker": 0}

    def poll() -> None:
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peaks["driver"] = max(peaks["driver"], root.memory_info().rss)
                for child in root.children(recursive=True):
                    if "TrainWorker" in " ".join(child.cmdline()):
                        peaks["worker"] = max(peaks["worker"], child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    started = time.perf_counter()
    watcher.start()
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(args[3:5])} failed; see {log}")
    watcher.join()
    return {"seconds": time.perf_counter() - started, "driver_rss_mb": peaks["driver"] / 2**20,
            "worker_rss_mb": peaks["worker"] / 2**20}


def one_size(work: Path, images: int) -> dict:
    per_source = images // 3
    raw, prepared, log = work / "raw", work / "prepared", work / "commands.log"
    synth = run_measured([*CXR, "synth", "--out", str(raw), "--images-per-source", str(per_source),
                          "--image-size", "64", "--seed", "1"], log)
    prepare = run_measured([*CXR, "prepare", "--nih", str(raw / "nih"), "--chexpert", str(raw / "chexpert"),
                            "--csv", f"inhouse={raw / 'inhouse' / 'labels.csv'}", "--out", str(prepared),
                            "--image-size", "32"], log)
    train = run_measured([*CXR, "train", "--data", str(prepared), "--run-name", "scale", "train.epochs=1",
                          "train.batch_size=32", "train.log_every_steps=50", "mlflow.log_model=false",
                          f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                          f"train.storage_path={work / 'ray_results'}"], log)
    total = synth["seconds"] + prepare["seconds"] + train["seconds"]
    return {
        "images": 3 * per_source, "seconds": round(total, 1),
        "seconds_per_image": total / (3 * per_source),
        "stage_seconds": {k: round(v["seconds"], 1) for k, v in (("synth", synth), ("prepare", prepare),
                                                                  ("train_epoch", train))},
        "driver_peak_rss_mb": round(max(synth["driver_rss_mb"], prepare["driver_rss_mb"], train["driver_rss_mb"])),
        "worker_peak_rss_mb": round(train["worker_rss_mb"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="the smallest size, in images (default 2000)")
    args = parser.parse_args()
    sizes = {}
    for multiple in (1, 2, 4):
        with work_folder(f"scale_{multiple}n") as work:
            sizes[f"{multiple}N"] = one_size(work, multiple * args.n)
        figures = sizes[f"{multiple}N"]
        print(f"{figures['images']:>6} images: {figures['seconds']:.0f} s ({figures['stage_seconds']}), "
              f"{1000 * figures['seconds_per_image']:.1f} ms/image, driver {figures['driver_peak_rss_mb']} MB, "
              f"worker {figures['worker_peak_rss_mb']} MB", flush=True)
    ratio = sizes["4N"]["seconds_per_image"] / sizes["1N"]["seconds_per_image"]
    report("scale", n=args.n, sizes=sizes, ratio=round(ratio, 3), target=TARGET)


if __name__ == "__main__":
    main()
