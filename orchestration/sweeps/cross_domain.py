"""Table II: every single-domain model of a `cross_domain_table2` sweep tested on every domain.

Each entry is the mean AUC over the findings all prepared domains share, on the tested domain's
test split; with several seeds, the mean over seeds. The matrix is logged to the sweep's parent run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

from data_prep.prepared import PreparedDataset
from orchestration.evaluation.prediction import predict_table
from orchestration.evaluation.scoring import evaluate_predictions
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.schema import (
    CHECKPOINT_TAG,
    CROSS_DOMAIN_MATRIX,
    CROSS_DOMAIN_MATRIX_CSV,
    CROSS_DOMAIN_PER_FINDING,
    DOMAINS_PARAM,
    SEED_PARAM,
    cross_domain_metric,
)
from orchestration.settings.tracking import child_runs, client_for, find_sweep
from orchestration.training.checkpoint import load_trained

SPACE_NAME = "cross_domain_table2"


@dataclass
class CrossDomainResult:
    matrix: pd.DataFrame  # index: tested on, columns: trained on; mean AUC over the common findings
    per_finding: pd.DataFrame  # long: trained_on, tested_on, seed, run_id, finding, auc
    common: list[str]

    @property
    def title(self) -> str:
        return f"mean AUC over the {len(self.common)} common findings (rows: tested on, columns: trained on)"

    def markdown(self) -> str:
        header = "| Testing \\ Training | " + " | ".join(self.matrix.columns) + " |"
        lines = [header, "|" + "---|" * (len(self.matrix.columns) + 1)]
        for tested, row in self.matrix.iterrows():
            lines.append(f"| {tested} | " + " | ".join("" if pd.isna(v) else f"{v:.4f}" for v in row) + " |")
        return "\n".join(lines) + f"\n\nMean AUC over the common findings: {', '.join(self.common)}.\n"


def finished_sweep(config: Config, sweep_name: str, resume: bool) -> str | None:
    """The parent run of `sweep_name` when that sweep finished and is not being resumed: its models
    are tested again instead of trained again."""
    found = find_sweep(client_for(config), config.mlflow.experiment, sweep_name)
    return found.info.run_id if found is not None and found.info.status == "FINISHED" and not resume else None


def score_sweep_models(config: Config, parent_run_id: str, data: str, *, split: str, tencrop: bool,
                      device: str) -> CrossDomainResult:
    """`cross_domain_matrix` of a sweep on the prepared data, logged to its parent run."""
    client = client_for(config)
    result = cross_domain_matrix(client, parent_run_id, PreparedDataset.load(data), split=split, tencrop=tencrop,
                                 device=device)
    log_cross_domain(client, parent_run_id, result)
    return result


def cross_domain_matrix(
    client: MlflowClient, parent_run_id: str, prepared: PreparedDataset, *, split: str = "test",
    tencrop: bool = False, device: str = "cpu",
) -> CrossDomainResult:
    """Predict `split` of every domain with each finished child's best model and score the common findings."""
    children = [r for r in child_runs(client, parent_run_id)
                if r.info.status == "FINISHED" and CHECKPOINT_TAG in r.data.tags]
    if not children:
        raise ConfigError(f"sweep run {parent_run_id} has no finished training runs to test")
    if not prepared.common:
        raise ConfigError(f"the domains of {prepared.root} share no finding: there is nothing to cross-test")
    rows = []
    for run in children:
        trained_on = json.loads(run.data.params.get(DOMAINS_PARAM, "null")) or []
        if len(trained_on) != 1:
            raise ConfigError(f"run {run.info.run_id} was trained on {trained_on or 'all domains'}, not on one "
                              f"domain: --sweep-name must name a {SPACE_NAME} sweep")
        net, _, plan = load_trained(run.data.tags[CHECKPOINT_TAG])
        scores = evaluate_predictions(predict_table(net, plan, prepared, split=split, tencrop=tencrop, device=device),
                                      prepared)
        for tested_on, report in scores.reports.items():
            rows += [{"trained_on": trained_on[0], "tested_on": tested_on, "seed": run.data.params.get(SEED_PARAM),
                      "run_id": run.info.run_id, "finding": f, "auc": report.auc[f]}
                     for f in prepared.common if f in report.auc]
    per_finding = pd.DataFrame(rows, columns=["trained_on", "tested_on", "seed", "run_id", "finding", "auc"])
    # Mean over the common findings per run, then over seeds.
    per_run = per_finding.groupby(["trained_on", "tested_on", "run_id"])["auc"].mean()
    matrix = per_run.groupby(["tested_on", "trained_on"]).mean().unstack("trained_on")
    # A domain without a defined AUC (e.g. an empty test split) keeps its row, blank.
    trained = [d for d in prepared.domains if d in per_finding["trained_on"].values]
    matrix = matrix.reindex(index=prepared.domains, columns=trained)
    matrix.index.name, matrix.columns.name = "tested_on", "trained_on"
    return CrossDomainResult(matrix, per_finding, prepared.common)


def log_cross_domain(client: MlflowClient, parent_run_id: str, result: CrossDomainResult) -> None:
    client.log_text(parent_run_id, result.matrix.to_csv(), CROSS_DOMAIN_MATRIX_CSV)
    client.log_text(parent_run_id, result.markdown(), CROSS_DOMAIN_MATRIX)
    client.log_text(parent_run_id, result.per_finding.to_csv(index=False), CROSS_DOMAIN_PER_FINDING)
    for tested_on, row in result.matrix.iterrows():
        for trained_on, value in row.dropna().items():
            client.log_metric(parent_run_id, cross_domain_metric(trained_on, tested_on), float(value))
