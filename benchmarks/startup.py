"""Where the seconds of a short run go: one `cxr train` of 2 steps at 32², and one Tune trial of the
same size inside `cxr tune`, each timed from process start to its events (`CXR_TIMELINE`: Ray
ready, worker function entered, first batch, first step, test done, fit returned, run ended) and
to process exit. Median of `--repeats` runs each. Targets on the 2-core machine: the first step within 8 s of
process start, and exit within 5 s of the test; `ratio` is the worse of 8 / first step and
5 / (exit - test done). Last line: JSON figures.

    python benchmarks/startup.py [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import yaml
from _common import cxr, report, work_folder  # benchmarks/ is on the path as a script

from data_prep.synth import synthesize
from orchestration.settings.runtime import TIMELINE_ENV
from orchestration.settings.schema import SELECTION_METRICS

EVENTS = ("ray ready", "worker entered", "first batch", "first step", "test done", "fit returned", "run ended", "exit")
FIRST_STEP_TARGET_S, EXIT_TARGET_S = 8.0, 5.0
RUN = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.workers=1"]


def short_run_data(work: Path) -> Path:
    """NIH and CheXpert sets of 40 generated images each, prepared at 32²: what short runs train on."""
    synthesize(work / "raw", images_per_source=40, image_size=64, seed=0)
    cxr("prepare", "--nih", str(work / "raw" / "nih"), "--chexpert", str(work / "raw" / "chexpert"),
        "--out", str(work / "prepared"), "--image-size", "32", cwd=work)
    return work / "prepared"


def lambda_ute_grid(path: Path, values: list) -> Path:
    path.write_text(yaml.safe_dump({"kind": "grid", "metric": SELECTION_METRICS[0], "mode": "max", "parameters": {
        "method.lambda_ute": {"distribution": "choice", "values": values}}}))
    return path


def timeline_env(work: Path, timeline: Path) -> dict[str, str]:
    """A fresh local Ray per command (no $RAY_ADDRESS), its events in `timeline`, MLflow in `work`."""
    env = {**os.environ, TIMELINE_ENV: str(timeline), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    return env


def timed(args: list[str], work: Path, name: str) -> dict[str, float]:
    """Seconds from the start of `cxr ARGS` to each event's first mark, and to its exit."""
    timeline = work / f"{name}.timeline.jsonl"
    started = time.time()
    cxr(*args, cwd=work, env=timeline_env(work, timeline))
    ended = time.time()
    seen: dict[str, float] = {}
    for line in timeline.read_text().splitlines():
        mark = json.loads(line)
        seen.setdefault(mark["event"], mark["time"] - started)
    return {**seen, "exit": ended - started}


def median_timeline(runs: list[dict[str, float]]) -> dict[str, float]:
    return {event: round(statistics.median(r[event] for r in runs), 2) for event in EVENTS if all(event in r for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it (default: a temporary one)")
    args = parser.parse_args()
    with work_folder("startup", args.keep) as work:
        prepared = short_run_data(work)
        grid = lambda_ute_grid(work / "one_point.yaml", [30])
        common = ["--data", str(prepared), *RUN, f"train.storage_path={work / 'ray_results'}"]
        train = [timed(["train", "--run-name", f"startup-{i}", *common], work, f"train{i}")
                 for i in range(args.repeats)]
        trial = [timed(["tune", "--space", str(grid), "--sweep-name", f"sweep-{i}", *common], work, f"tune{i}")
                 for i in range(args.repeats)]
    train_line, trial_line = median_timeline(train), median_timeline(trial)
    for name, line in (("cxr train", train_line), ("cxr tune (1 trial)", trial_line)):
        print(f"{name}: " + ", ".join(f"{event} {seconds:.1f} s" for event, seconds in line.items()))
    first_step = train_line["first step"]
    wind_down = train_line["exit"] - train_line["test done"]
    report("startup", train=train_line, tune_trial=trial_line, first_step_s=first_step, exit_after_test_s=round(wind_down, 2),
           ratio=round(min(FIRST_STEP_TARGET_S / first_step, EXIT_TARGET_S / wind_down), 3), target=1.0,
           machine=f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
