"""Does the method beat Joint Training? Table VI rows a (Joint), b (+ TW) and g (Ours) x seeds,
through the real commands a user runs: `cxr synth`, `cxr prepare`, `cxr ablate`.

The data: `cxr synth`'s NIH-like set (internal) and CheXpert-like set (external). Each finding is
drawn as its own pattern at its own place; the sets differ in contrast, gamma, brightness and noise
(domain shift), and the seven NIH-only findings are drawn in the CheXpert images too, where they
are never labelled (hidden knowledge to mine). Test AUCs are read back from MLflow.

    python benchmarks/method_gain.py [--images 800] [--epochs 4] [--steps-per-epoch N] [--seeds 3] [--out DIR]

Prints mean ± sd of test Mean, Mean_Com and Mean_Int per row, and last one JSON line with
`ratio` = Mean(g) / Mean(a) and `target` 1.0. Takes ~20 minutes on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from orchestration.tracking import ROW_TAG, SWEEP_TAG

ROWS = ("a", "b", "g")
COLUMNS = {"Mean": "test_mean_auc", "Mean_Com": "test_mean_com_auc", "Mean_Int": "test_mean_int_auc"}


def cxr(*args: str, cwd: Path) -> None:
    """One `cxr` command, as a user types it; its output goes to a log file in `cwd`."""
    command = [str(Path(sys.executable).with_name("cxr")), *args]
    with open(cwd / "commands.log", "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"`cxr {args[0]}` failed ({done.returncode}); see {cwd / 'commands.log'}")


def row_results(uri: str, sweep: str) -> dict[str, dict[str, list[float]]]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cxr-orchestra")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'")
    results: dict[str, dict[str, list[float]]] = {row: {c: [] for c in COLUMNS} for row in ROWS}
    for run in runs:
        row = run.data.tags.get(ROW_TAG)
        if row in results and run.info.status == "FINISHED":
            for column, metric in COLUMNS.items():
                results[row][column].append(run.data.metrics[metric])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="images per generated dataset")
    parser.add_argument("--image-size", type=int, default=64, help="side of the prepared images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, help="default: one pass over the NIH training split")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="keep the work folder (data, MLflow store) here")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_method_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        cxr("synth", "--out", "raw", "--images-per-source", str(args.images), "--image-size", "96", cwd=work)
        cxr("prepare", "--nih", "raw/nih", "--chexpert", "raw/chexpert", "--out", "prepared",
            "--image-size", str(args.image_size), cwd=work)
        steps = [f"train.steps_per_epoch={args.steps_per_epoch}"] if args.steps_per_epoch else []
        cxr("ablate", "--grid", "ablation_table6", "--rows", ",".join(ROWS), "--seeds", str(args.seeds),
            "--data", "prepared", "--sweep-name", "method-gain", f"train.epochs={args.epochs}", *steps,
            "mlflow.log_model=false", cwd=work)
        results = row_results(f"sqlite:///{work / 'mlflow.db'}", "method-gain")
        summary = {}
        print(f"test AUC, mean ± sd over {args.seeds} seeds ({args.images} images per dataset, "
              f"{args.image_size} px, {args.epochs} epochs of {args.steps_per_epoch or 'one pass'} steps)")
        print("| row | " + " | ".join(COLUMNS) + " |")
        for row in ROWS:
            values = results[row]
            if len(values["Mean"]) < args.seeds:
                sys.exit(f"row {row}: {len(values['Mean'])} of {args.seeds} runs finished")
            summary[row] = {c: {"mean": round(float(np.mean(v)), 4),
                                "sd": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4)}
                            for c, v in values.items()}
            print(f"| {row} | " + " | ".join(f"{summary[row][c]['mean']:.3f} ± {summary[row][c]['sd']:.3f}"
                                             for c in COLUMNS) + " |")
        ratio = summary["g"]["Mean"]["mean"] / summary["a"]["Mean"]["mean"]
        print(json.dumps({"benchmark": "method_gain", "images_per_dataset": args.images,
                          "image_size": args.image_size, "epochs": args.epochs,
                          "steps_per_epoch": args.steps_per_epoch, "seeds": args.seeds,
                          "rows": summary, "ratio": round(ratio, 4), "target": 1.0}))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
