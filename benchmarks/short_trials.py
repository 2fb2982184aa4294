"""Many short trials: one `cxr tune` of a 16-point grid of 2-epoch trials at 32², `--max-concurrent
2` on a fresh local Ray, against the trials' own training time. Each trial's training worker marks
its events in `CXR_TIMELINE`; a trial's own training time is its first step to its test done
(`worker entered` to test done is reported beside it). Reported: the sweep's wall time over the
sum of the trials' own training times (target at most 1.5); `ratio` is 1.5 / that. Last line:
JSON figures.

Each trial trains one worker of the default 0.5 CPU. `--max-concurrent 1` runs the same sweep
one trial at a time, the comparison that says whether running them side by side pays. The trials
log no model unless `--log-model` (the default of `mlflow.log_model`); the seconds from each
trial's test to its run's end are reported beside.

    python benchmarks/short_trials.py [--trials 16] [--max-concurrent 2] [--log-model] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import cxr, report, work_folder  # benchmarks/ is on the path as a script
from startup import lambda_ute_grid, short_run_data, timeline_env

TARGET = 1.5  # wall time over the trials' own training time
TRIAL = ["train.epochs=2", "train.batch_size=16", "train.workers=1", "train.explain_top=0"]


def per_trial(timeline: Path) -> list[dict[str, float]]:
    """Each trial's first time of each event. A trial's training is one process's marks from its
    `worker entered` on: a reused trial process (Tune's reuse_actors) trains several, one after another."""
    trials: list[dict[str, float]] = []
    current: dict[int, dict[str, float]] = {}
    for line in timeline.read_text().splitlines():
        mark = json.loads(line)
        if mark["event"] == "worker entered":
            current[mark["pid"]] = {}
            trials.append(current[mark["pid"]])
        if mark["pid"] in current:
            current[mark["pid"]].setdefault(mark["event"], mark["time"])
    return [events for events in trials if "first step" in events and "test done" in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--log-model", action="store_true", help="each trial logs its model (mlflow.log_model=true)")
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it (default: a temporary one)")
    args = parser.parse_args()
    with work_folder("short_trials", args.keep) as work:
        prepared = short_run_data(work)
        grid = lambda_ute_grid(work / "grid.yaml", list(range(1, args.trials + 1)))
        timeline = work / "timeline.jsonl"
        started = time.time()
        cxr("tune", "--space", str(grid), "--data", str(prepared), "--sweep-name", "short",
            "--max-concurrent", str(args.max_concurrent), *TRIAL, f"mlflow.log_model={str(args.log_model).lower()}",
            f"train.storage_path={work / 'ray_results'}",
            cwd=work, env=timeline_env(work, timeline))
        wall = time.time() - started
        trials = per_trial(timeline)
    if len(trials) != args.trials:
        raise SystemExit(f"{len(trials)} of {args.trials} trials marked their first step and test")
    training = sum(t["test done"] - t["first step"] for t in trials)
    in_worker = sum(t["test done"] - t["worker entered"] for t in trials)
    after_test = [t["run ended"] - t["test done"] for t in trials if "run ended" in t]
    factor = wall / training
    print(f"{args.trials} trials, {args.max_concurrent} at a time: {wall:.0f} s wall; their own training (first "
          f"step to test done) {training:.0f} s in all, {training / len(trials):.1f} s each; worker entered to test "
          f"done {in_worker:.0f} s in all; test done to run ended {sum(after_test):.0f} s in all. Wall over training: "
          f"{factor:.1f} (target {TARGET})")
    report("short_trials", trials=args.trials, max_concurrent=args.max_concurrent, wall_s=round(wall, 1),
           log_model=args.log_model,
           training_s=round(training, 1), worker_s=round(in_worker, 1), after_test_s=round(sum(after_test), 1),
           after_test_each_s=[round(s, 1) for s in after_test], wall_over_training=round(factor, 2),
           ratio=round(TARGET / factor, 3), target=1.0, machine=f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
