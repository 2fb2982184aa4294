"""Does the method beat Joint Training? Table VI rows x seeds, through the real commands a user
runs: `cxr synth`, `cxr prepare`, `cxr ablate`; ΔMean of each row against row a with the 95%
interval `cxr report` gives (paired bootstrap on the same test images, averaged over seeds).

--scenario paper (rows a, b, c, e, g): `cxr synth --scenario paper`, data built from the paper's
premises and calibrated on Tables II and III only (benchmarks/scenario_calibration.py): Table I
prevalences, NLP-like label noise, varied and faint patterns, a shift in how findings look, the
internal-only findings drawn unlabelled in the external images. 64 px, 4 epochs of one pass.

--scenario default (rows a, b, g): `cxr synth`'s default look, where every finding is a clean
pattern and the shift is global intensity only (docs/evidence.md says why it cannot show a gain).

    python benchmarks/method_gain.py [--scenario paper] [--rows a,b,c,e,g] [--seeds 3] [--out DIR]

Prints mean ± sd of test Mean, Mean_Com and Mean_Int per row, ΔMean against a with its interval,
and last one JSON line with `ratio` = Mean(g) / Mean(a) and `target` 1.0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from _common import cxr, report, work_folder  # benchmarks/ is on the path as a script
from mlflow.tracking import MlflowClient

from cxrmodel.metrics import SUMMARIES
from orchestration.evaluation.diagnostics import diagnose_run, log_diagnosis
from orchestration.evaluation.report import collect_sections, row_comparisons
from orchestration.settings.schema import ROW_TAG, SWEEP_TAG, TEST_SUMMARY_METRICS
from orchestration.settings.tracking import find_sweep

COLUMNS = dict(zip(SUMMARIES, TEST_SUMMARY_METRICS))  # "Mean" -> test_mean_auc, ...
DEFAULT_ROWS = {"paper": "a,b,c,e,g", "default": "a,b,g"}
EXPERIMENT = "cxr-orchestra"


def prepare_scenario(work: Path) -> None:
    """`cxr synth --scenario paper` and `cxr prepare` at the scenario's own image size."""
    cxr("synth", "--out", "raw", "--scenario", "paper", cwd=work)
    cxr("prepare", "--nih", "raw/nih", "--chexpert", "raw/chexpert", "--out", "prepared", "--image-size", "64",
        cwd=work)


def train_overrides(epochs: int) -> list[str]:
    """The training budget of the scenario's benchmarks: the paper's LR steps (after epochs 3 and 6
    of 8) scaled to `epochs`, 32 images a step (16 per domain), no model export."""
    milestones = sorted({max(1, round(epochs * 3 / 8)), max(1, round(epochs * 6 / 8))})
    return [f"train.epochs={epochs}", f"train.lr_milestones=[{','.join(map(str, milestones))}]",
            "train.batch_size=32", "mlflow.log_model=false", "train.explain_top=0"]


def row_results(client: MlflowClient, sweep: str, rows: list[str]) -> dict[str, dict[str, list[float]]]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'")
    results: dict[str, dict[str, list[float]]] = {row: {c: [] for c in COLUMNS} for row in rows}
    for run in runs:
        row = run.data.tags.get(ROW_TAG)
        if row in results and run.info.status == "FINISHED":
            for column, metric in COLUMNS.items():
                results[row][column].append(run.data.metrics[metric])
    return results


def against_row_a(client: MlflowClient, sweep: str) -> dict[str, dict]:
    """`cxr report`'s comparison of every row with row a: ΔMean and its 95% interval."""
    section = collect_sections(client, EXPERIMENT, find_sweep(client, EXPERIMENT, sweep).info.run_id)[0]
    comparisons, _ = row_comparisons(client, section, [])
    if comparisons.empty:
        return {}
    found = comparisons[comparisons["against"] == "a"]
    return {r["row"]: {"delta_mean": round(r["ΔMean"], 4),
                       "ci": [float(x) for x in r["95% CI"].strip("[]").split(",")]}
            for r in found.to_dict(orient="records")}


def diagnose_rows(client: MlflowClient, sweep: str, rows: list[str]) -> dict[str, dict[str, float | None]]:
    """`cxr diagnose` (its API) on every finished run of the rows, logged to each run; per row the
    mean over seeds of the probe AUC and of the last epoch's ensemble figures."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'")
    found: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        row = run.data.tags.get(ROW_TAG)
        if row not in rows or run.info.status != "FINISHED":
            continue
        diagnosis = diagnose_run(client, run.info.run_id)
        log_diagnosis(client, run.info.run_id, diagnosis)
        figures = {"probe_auc": float(np.mean(list(diagnosis.probe.values()))) if diagnosis.probe else None}
        if not diagnosis.ensemble.empty:
            last = diagnosis.ensemble[diagnosis.ensemble["epoch"] == diagnosis.ensemble["epoch"].max()]
            figures.update({k: float(last[k].mean()) for k in ("z_auc", "p_auc", "pass_share", "pass_right")})
        found.setdefault(row, []).append(figures)
    return {row: {k: (round(float(np.mean([f[k] for f in seeds if f.get(k) is not None])), 4)
                      if any(f.get(k) is not None for f in seeds) else None)
                  for k in ("probe_auc", "z_auc", "p_auc", "pass_share", "pass_right")}
            for row, seeds in sorted(found.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("paper", "default"), default="paper")
    parser.add_argument("--rows", help="Table VI rows (default: a,b,c,e,g for paper, a,b,g for default)")
    parser.add_argument("--images", type=int, default=800, help="default scenario: images per generated dataset")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, help="default: one pass over the NIH training split")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="keep the work folder (data, MLflow store) here")
    args = parser.parse_args()
    rows = (args.rows or DEFAULT_ROWS[args.scenario]).split(",")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with work_folder("method", args.out, enter=True) as work:
        if args.scenario == "paper":
            prepare_scenario(work)
            budget = [*train_overrides(args.epochs), "train.ensemble_history=true"]
        else:
            cxr("synth", "--out", "raw", "--images-per-source", str(args.images), "--image-size", "96", cwd=work)
            cxr("prepare", "--nih", "raw/nih", "--chexpert", "raw/chexpert", "--out", "prepared",
                "--image-size", "64", cwd=work)
            budget = [f"train.epochs={args.epochs}", "mlflow.log_model=false"]
        steps = [f"train.steps_per_epoch={args.steps_per_epoch}"] if args.steps_per_epoch else []
        cxr("ablate", "--grid", "ablation_table6", "--rows", ",".join(rows), "--seeds", str(args.seeds),
            "--data", "prepared", "--sweep-name", "method-gain", *budget, *steps, cwd=work)
        client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        results = row_results(client, "method-gain", rows)
        deltas = against_row_a(client, "method-gain")
        diagnostics = diagnose_rows(client, "method-gain", rows) if args.scenario == "paper" else {}
        summary = {}
        print(f"scenario {args.scenario}: test AUC on the NIH-like test split, mean ± sd over {args.seeds} seeds "
              f"({args.epochs} epochs of {args.steps_per_epoch or 'one pass'} steps); ΔMean against a with the "
              "95% interval of cxr report")
        print("| row | " + " | ".join(COLUMNS) + " | ΔMean vs a | 95% CI |")
        for row in rows:
            values = results[row]
            if len(values["Mean"]) < args.seeds:
                sys.exit(f"row {row}: {len(values['Mean'])} of {args.seeds} runs finished")
            summary[row] = {c: {"mean": round(float(np.mean(v)), 4),
                                "sd": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4)}
                            for c, v in values.items()}
            summary[row].update(deltas.get(row, {}))
            delta = deltas.get(row)
            print(f"| {row} | " + " | ".join(f"{summary[row][c]['mean']:.3f} ± {summary[row][c]['sd']:.3f}"
                                             for c in COLUMNS)
                  + (f" | {delta['delta_mean']:+.4f} | [{delta['ci'][0]:+.4f}, {delta['ci'][1]:+.4f}] |"
                     if delta else " | | |"))
        if diagnostics:
            print("cxr diagnose against truth.csv, mean over seeds: TAT probe AUC (internal vs external by each common "
                  "finding's features, 0.5 = invariant); last epoch on the external training images, internal-only "
                  "findings: AUC of the ensemble targets z and of the network's p, UTE's pass share and its accuracy")
            print("| row | probe AUC | z AUC | p AUC | pass share | pass right |")
            for row, figures in diagnostics.items():
                print(f"| {row} | " + " | ".join("" if figures.get(k) is None else f"{figures[k]:.3f}"
                                                 for k in ("probe_auc", "z_auc", "p_auc", "pass_share", "pass_right"))
                      + " |")
        ratio = summary["g"]["Mean"]["mean"] / summary["a"]["Mean"]["mean"]
        g = deltas.get("g", {})
        report("method_gain", scenario=args.scenario, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
               seeds=args.seeds, rows=summary, diagnostics=diagnostics, delta_g_a=g.get("delta_mean"), ci=g.get("ci"),
               ratio=round(ratio, 4), target=1.0)


if __name__ == "__main__":
    main()
