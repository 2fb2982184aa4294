"""The MLflow schema of cxr-orchestra: every tag, param, artifact path and metric name it writes
and reads back. Other modules import these names; none spells a `cxr.` tag or a metric name itself.
Talking to MLflow (lookups, runs, the metric logger) is `tracking`.

Runs carry `cxr.kind`:
- training: one `cxr train` run, or one sweep trial (then a child of its sweep's run). Found again
  by `cxr.run_name` after any restart.
- sweep: the parent run of a `cxr tune` / `ablate` / `cross-domain` sweep (`cxr.sweep_name`).
- evaluation: one `cxr evaluate`, linked to the training run it scores (`cxr.evaluates`).
"""

from __future__ import annotations

import re

from cxrmodel.metrics import SUMMARIES

# --- tags ---------------------------------------------------------------------------------------
KIND_TAG = "cxr.kind"
TRAINING, SWEEP, EVALUATION = "training", "sweep", "evaluation"
RUN_NAME_TAG = "cxr.run_name"
CHECKPOINT_TAG = "cxr.checkpoint"  # the final Ray Train checkpoint folder: what `--run` loads
SWEEP_TAG = "cxr.sweep_name"
SPACE_TAG = "cxr.space"
SPACE_KIND_TAG = "cxr.space_kind"  # search | grid | ablation
TRIAL_TAG = "cxr.trial_id"
SEED_TAG = "cxr.seed"
ROW_TAG = "cxr.ablation_row"
ROW_LABEL_TAG = "cxr.ablation_label"
EARLY_STOPPED_TAG = "cxr.early_stopped"  # "true": the scheduler stopped the trial
LOST_TRIAL_TAG = "cxr.lost_trial"  # "true": started after the sweep last saved its state; --resume ran another
BEST_TRIAL_TAG = "cxr.best_trial_id"
PARETO_TAG = "cxr.pareto_front"  # a multi-objective sweep's front: trial ids, comma-separated
EVALUATES_TAG = "cxr.evaluates"  # the id of the training run an evaluation scores
PARENT_TAG = "mlflow.parentRunId"
MLFLOW_RUN_NAME_TAG = "mlflow.runName"
# The MLflow UI opens an experiment with this kind in its model-training view.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"

# --- params -------------------------------------------------------------------------------------
PRETRAINED_PARAM = "model.pretrained"  # false: trained from random weights, not the paper's ImageNet start
DOMAINS_PARAM = "train.domains"
SEED_PARAM = "train.seed"
# Settings that may change when a run is resumed.
RESUMABLE_CHANGES = {"train.max_failures"}

# --- artifacts ----------------------------------------------------------------------------------
PLAN_ARTIFACT = "plan/plan.json"  # the training plan (`cxr train --dry-run`)
CONFIG_ARTIFACT = "config/resolved_config.yaml"
DATA_SUMMARY_ARTIFACT = "data/manifest_summary.json"
PROVENANCE_ARTIFACT = "provenance/provenance.json"  # git commit and package versions of the training code
SUMMARY_ARTIFACT = "evaluation/summary.json"  # the final metrics of a training run
TEST_AUC_ARTIFACT = "evaluation/test_auc.csv"
TEST_ROC_ARTIFACT = "evaluation/test_roc.png"
# The best model's internal test split: sample_id, probs, labels (what cxr report compares runs by).
TEST_PREDICTIONS_ARTIFACT = "evaluation/test_predictions.npz"
EVALUATION_ARTIFACT = "evaluation/auc.csv"  # of an evaluation run
MODEL_ARTIFACT = "model"
EXPLAIN_ARTIFACT_DIR = "explain"  # Grad-CAM contact sheets (cxr train, cxr explain) and overlays (cxr explain)
SPACE_DIR, TRIALS_DIR, BEST_DIR = "space", "trials", "best"  # of a sweep run
ENSEMBLE_DIR = "diagnostics/ensemble"  # of a run with train.ensemble_history: one file per epoch
ENSEMBLE_EPOCH_FILE = "epoch_{epoch}.npz"  # sample_id, findings, z, p, h
DIAGNOSTICS_DIR = "diagnostics"  # cxr diagnose: ensemble.csv, probe.json and the metrics diagnostics/...
CROSS_DOMAIN_DIR = "cross_domain"  # of a cross-domain sweep run: matrix.csv, matrix.md, per_finding.csv
CROSS_DOMAIN_MATRIX = f"{CROSS_DOMAIN_DIR}/matrix.md"
CROSS_DOMAIN_MATRIX_CSV = f"{CROSS_DOMAIN_DIR}/matrix.csv"
CROSS_DOMAIN_PER_FINDING = f"{CROSS_DOMAIN_DIR}/per_finding.csv"
REPORT_DIR = "report"
DECISIONS_ARTIFACT = "decisions/decisions.json"  # of a training run: cxr calibrate's and --operating-points'
OPERATING_POINTS_ARTIFACT = "evaluation/operating_points.csv"  # of an evaluation run
CALIBRATION_ARTIFACT = "evaluation/calibration.csv"
SUBGROUPS_ARTIFACT = "evaluation/subgroups.csv"
MODEL_CARD_MD, MODEL_CARD_JSON = "model_card/model_card.md", "model_card/model_card.json"  # of a training run
RELIABILITY_ARTIFACT = "evaluation/reliability_{domain}.png"
CHAMPION = "champion"  # the Model Registry alias of a name's best model so far


# --- metric names -------------------------------------------------------------------------------
# A split's AUC figures are AucReport.as_metrics(split_prefix(split)): <split>_auc/<finding> and
# <split>_<summary>_auc for the paper's summaries (cxrmodel.metrics.SUMMARIES: mean, mean_com, mean_int).
def split_prefix(split: str) -> str:
    return f"{split}_"


def auc_metric(split: str, finding: str) -> str:
    """e.g. test_auc/Nodule."""
    return f"{split_prefix(split)}auc/{finding}"


def summary_metric(split: str, summary: str) -> str:
    """e.g. val_mean_com_auc, for summary "mean_com"."""
    return f"{split_prefix(split)}{summary}_auc"


# What a run's best checkpoint and a sweep's trials may be chosen by; the test figures beside them.
SELECTION_METRICS = tuple(summary_metric("val", name) for name in SUMMARIES.values())
TEST_SUMMARY_METRICS = tuple(summary_metric("test", name) for name in SUMMARIES.values())


EPOCH_METRIC = "epoch"  # a training run's epochs done, at each epoch's last step (also what ASHA counts)


def train_metric(name: str) -> str:
    """A training run's step figures: train/loss_<term>, train/lr, train/h, train/workers, train/global_batch."""
    return f"train/{name}"


def loss_metric(term: str) -> str:
    return train_metric(f"loss_{term}")


def best_metric(metric: str) -> str:
    """A training run's best value so far of its selection metric, e.g. best/val_mean_auc."""
    return f"best/{metric}"


# A sweep's parent run: best_<metric> per objective, and its trial counts.
def sweep_best_metric(metric: str) -> str:
    return f"best_{metric}"


TRIALS_ERRORED, TRIALS_TOTAL = "trials_errored", "trials_total"


def cross_domain_metric(trained_on: str, tested_on: str) -> str:
    """Table II's cell, on a cross-domain sweep's parent run."""
    return f"cross_domain/train_{trained_on}/test_{tested_on}"


# An evaluation run's figures: per domain <domain>/<AucReport.as_metrics()> with the bounds of their
# intervals, and clean_<set>/auc/<finding> against Google's relabelled NIH images.
def domain_metric(domain: str, name: str) -> str:
    return f"{domain}/{name}"


def interval_metric(name: str, bound: str) -> str:
    """The low or high bound of an AUC figure's interval: mean_auc -> mean_auc_ci_low, auc/Nodule -> auc_ci_low/Nodule."""
    return name.replace("auc", f"auc_ci_{bound}", 1)


def operating_metric(domain: str, figure: str, point: str, finding: str, bound: str | None = None) -> str:
    """A figure at an operating point, e.g. nih/sens_at_spec90/Effusion, nih/ppv_at_youden_ci_low/Effusion."""
    return f"{domain}/{figure}_at_{point}{f'_ci_{bound}' if bound else ''}/{finding}"


def calibration_metric(domain: str, name: str, finding: str, calibrated: bool = False) -> str:
    """ECE or Brier score of a finding's probabilities, e.g. nih/ece/Effusion, nih/brier_calibrated/Effusion."""
    return f"{domain}/{name}{'_calibrated' if calibrated else ''}/{finding}"


def subgroup_metric(domain: str, by: str, group: str, name: str, finding: str | None = None) -> str:
    """A subgroup's AUC or its gap to the whole split, e.g. nih/subgroup/sex/F/auc/Nodule,
    nih/subgroup/age_band/70plus/auc_gap (the mean over findings: no finding)."""
    return f"{domain}/subgroup/{by}/{group.replace('+', 'plus')}/{name}" + (f"/{finding}" if finding else "")


def temperature_metric(finding: str) -> str:
    """cxr calibrate's fitted temperature of a finding, on the model's training run."""
    return f"calibration/temperature/{finding}"


def clean_metric(set_name: str, name: str) -> str:
    return f"clean_{set_name}/{name}"


EVALUATION_METRIC = re.compile(r"[^/]+/mean(_com|_int)?_auc|clean_[^/]+/auc/.+")


def diagnostics_metric(*parts: str) -> str:
    """cxr diagnose's figures, e.g. diagnostics/ute/z_auc/Nodule, diagnostics/tat/probe_auc_mean."""
    return "/".join((DIAGNOSTICS_DIR, *parts))
