"""Is the `paper` scenario as hard as the paper's data? Its two calibration targets, measured
through `cxr synth --scenario paper` -> `cxr prepare` -> `cxr cross-domain` (Table II's grid):

- Table III "Single Dataset": the model trained on the internal set alone reaches a test Mean AUC
  between 0.75 and 0.90 (the paper: 0.8152), not 1.0;
- Table II: the model trained on the external set alone, tested on the internal test split, is at
  least 0.10 lower in Mean_Com than the internal-trained one (the paper: "at least 11 points").

The scenario's knobs were set against these two only, never against Table VI.

    python benchmarks/scenario_calibration.py [--seeds 2] [--epochs 4] [--out DIR]

Prints both figures per seed and their mean, and last one JSON line; `ratio` is the fraction of
the two targets met (target 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _common import cxr, report, work_folder  # benchmarks/ is on the path as a script
from method_gain import prepare_scenario, train_overrides
from mlflow.tracking import MlflowClient

from orchestration.settings.schema import CROSS_DOMAIN_PER_FINDING, DOMAINS_PARAM, SEED_PARAM, TEST_SUMMARY_METRICS
from orchestration.settings.tracking import child_runs, find_sweep

SINGLE_RANGE = (0.75, 0.90)
MIN_DROP = 0.10
SWEEP = "calibration"


def figures(uri: str) -> pd.DataFrame:
    """Per seed: the internal-trained model's test Mean and Mean_Com, the external-trained one's
    Mean_Com on the internal test split."""
    client = MlflowClient(uri)
    parent = find_sweep(client, "cxr-orchestra", SWEEP)
    with tempfile.TemporaryDirectory() as folder:
        per_finding = pd.read_csv(client.download_artifacts(parent.info.run_id, CROSS_DOMAIN_PER_FINDING, folder))
    on_nih = per_finding[per_finding["tested_on"] == "nih"].groupby(["trained_on", "seed"])["auc"].mean().unstack(0)
    single = {int(r.data.params[SEED_PARAM]): r.data.metrics[TEST_SUMMARY_METRICS[0]]
              for r in child_runs(client, parent.info.run_id)
              if json.loads(r.data.params[DOMAINS_PARAM]) == ["nih"] and r.info.status == "FINISHED"}
    table = pd.DataFrame({"single_mean": pd.Series(single), "nih_mean_com": on_nih["nih"].values,
                          "chexpert_mean_com_on_nih": on_nih["chexpert"].values}, index=sorted(single))
    table["drop"] = table["nih_mean_com"] - table["chexpert_mean_com_on_nih"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, help="keep the work folder (data, MLflow store) here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with work_folder("calibration", args.out, enter=True) as work:
        prepare_scenario(work)
        cxr("cross-domain", "--data", "prepared", "--seeds", str(args.seeds), "--sweep-name", SWEEP,
            *train_overrides(args.epochs), cwd=work)
        table = figures(f"sqlite:///{work / 'mlflow.db'}")
        print(table.round(4).to_string())
        single, drop = float(table["single_mean"].mean()), float(table["drop"].mean())
        met = [SINGLE_RANGE[0] <= single <= SINGLE_RANGE[1], drop >= MIN_DROP]
        print(f"Single Dataset test Mean {single:.3f} (target {SINGLE_RANGE[0]}-{SINGLE_RANGE[1]}): "
              f"{'met' if met[0] else 'NOT met'}; external-trained Mean_Com on the internal test split "
              f"{drop:.3f} lower (target >= {MIN_DROP}): {'met' if met[1] else 'NOT met'}")
        report("scenario_calibration", scenario="paper", epochs=args.epochs, seeds=args.seeds,
               single_mean=round(single, 4), single_mean_sd=round(float(np.std(table["single_mean"], ddof=1)), 4),
               drop_mean_com=round(drop, 4), drop_sd=round(float(np.std(table["drop"], ddof=1)), 4),
               per_seed=table.round(4).to_dict(orient="index"), ratio=sum(met) / 2, target=1.0)


if __name__ == "__main__":
    main()
