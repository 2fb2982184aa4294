"""`cxr predict` and `cxr evaluate`: probabilities from a trained run, and AUC tables from them.

A checkpoint of `cxr train` describes itself (its config and plan), so it loads without the
command line that made it; `--run RUN_ID` finds a run's checkpoint through its MLflow tag.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from cxrmodel.metrics import AucReport, auc_report
from data_prep.labels import exclusive_findings
from data_prep.prepared import PreparedDataset
from data_prep.split import SPLITS
from orchestration.config import Config, ConfigError
from orchestration.evaluation import predict_split
from orchestration.plan import TrainingPlan
from orchestration.train import CHECKPOINT_TAG
from orchestration.train_loop import BEST_MODEL_FILE, RUN_FILE, STATE_FILE, build_network

META = ("image_id", "domain")


def checkpoint_of_run(client: MlflowClient, run_id: str) -> Path:
    path = client.get_run(run_id).data.tags.get(CHECKPOINT_TAG)
    if not path:
        raise ConfigError(f"MLflow run {run_id} has no {CHECKPOINT_TAG} tag: it is not a finished cxr train run")
    return Path(path)


def load_trained(checkpoint: str | Path) -> tuple[torch.nn.Module, Config, TrainingPlan]:
    """The best network of a `cxr train` checkpoint folder, in eval mode, with its config and plan."""
    directory = Path(checkpoint)
    if not (directory / RUN_FILE).exists():
        raise ConfigError(f"{directory} is not a cxr train checkpoint (no {RUN_FILE}); pass a checkpoint_* folder")
    described = json.loads((directory / RUN_FILE).read_text())
    try:
        config, plan = Config.model_validate(described["config"]), TrainingPlan(**described["plan"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{directory / RUN_FILE} was written by another version of cxr-orchestra ({exc}); "
                          "train the model again with this version") from None
    net = build_network(config, plan)
    best = directory / BEST_MODEL_FILE
    state = torch.load(best, map_location="cpu") if best.exists() else \
        torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)["model"]
    net.load_state_dict(state)
    return net.eval(), config, plan


def predict(
    net: torch.nn.Module, plan: TrainingPlan, prepared: PreparedDataset, *, split: str = "test",
    domains: list[str] | None = None, tencrop: bool = False, batch_size: int = 64, device: str = "cpu",
) -> pd.DataFrame:
    """One row per image: image_id, domain, then one probability column per finding."""
    if plan.label_space != prepared.label_space:
        raise ConfigError(
            f"the model was trained on label space {plan.label_space}, the prepared data has "
            f"{prepared.label_space}: predict on data prepared the same way"
        )
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    frames = []
    net = net.to(device)
    for domain in domains or prepared.domains:
        if domain not in prepared.domains:
            raise ConfigError(f"--domain {domain!r} is not one of {prepared.domains}")
        scored = predict_split(net, prepared, domain, split, batch_size=batch_size, device=device, tencrop=tencrop)
        ids = prepared.read_columns(domain, split, ["sample_id", "image_id"]).to_pandas()
        image_id = ids.set_index("sample_id")["image_id"].reindex(scored.sample_id).to_numpy()
        frame = pd.DataFrame(scored.probs, columns=plan.label_space)
        frame.insert(0, "domain", domain)
        frame.insert(0, "image_id", image_id)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_table(frame: pd.DataFrame, out: Path) -> None:
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise ConfigError(f"--out {out}: the extension decides the format, .parquet or .csv")


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(f"predictions file {path} does not exist")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in META if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; expected image_id, domain, then one column per finding")
    return frame


def evaluate_predictions(frame: pd.DataFrame, prepared: PreparedDataset) -> tuple[dict[str, AucReport], dict[str, int]]:
    """Per domain of the predictions: AUC of each finding that domain labels, against the prepared
    labels (found by image_id in any split). Returns the reports and, per domain, how many
    predicted images the prepared data does not have."""
    space = prepared.label_space
    unknown = [f for f in space if f not in frame.columns]
    if unknown:
        raise ConfigError(f"predictions lack finding column(s) {unknown} of the prepared label space")
    reports, unmatched = {}, {}
    for domain, rows in frame.groupby("domain", sort=False):
        if domain not in prepared.domains:
            raise ConfigError(f"predictions name domain {domain!r}; the prepared data has {prepared.domains}")
        labels = pd.concat(
            [prepared.read_columns(domain, s, ["image_id", *space]).to_pandas() for s in SPLITS], ignore_index=True
        ).set_index("image_id")
        known = rows["image_id"].isin(labels.index)
        unmatched[domain] = int((~known).sum())
        rows = rows[known]
        y = labels.loc[rows["image_id"], space].to_numpy(np.int8)
        own = prepared.domain_findings(domain)
        others = [prepared.domain_findings(d) for d in prepared.domains if d != domain]
        reports[domain] = auc_report(
            rows[space].to_numpy(np.float32), y, space, evaluated=own,
            common=prepared.common, internal_only=exclusive_findings(own, others),
        )
    return reports, unmatched


def report_table(reports: dict[str, AucReport], label_space: list[str]) -> pd.DataFrame:
    """Findings (rows) x domains (columns) AUC, then Mean, Mean_Com, Mean_Int."""
    table = pd.DataFrame({d: {f: r.auc.get(f, np.nan) for f in label_space} for d, r in reports.items()})
    table = table.dropna(how="all")
    summary = pd.DataFrame({d: {"Mean": r.mean, "Mean_Com": r.mean_com, "Mean_Int": r.mean_int}
                            for d, r in reports.items()})
    return pd.concat([table, summary]).astype(float)


def log_evaluation(tracking_uri: str, experiment: str, name: str, metrics: dict[str, float], table: pd.DataFrame,
                   params: dict[str, str], evaluates: str | None) -> str:
    """A new MLflow run holding an evaluation, linked to the training run it evaluates (if known)."""
    from orchestration.tracking import experiment_id

    client = MlflowClient(tracking_uri)
    tags = {"cxr.kind": "evaluation", "mlflow.runName": name}
    if evaluates:
        tags["cxr.evaluates"] = evaluates
    run = client.create_run(experiment_id(client, experiment), tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for name, value in metrics.items():
        client.log_metric(run.info.run_id, name, value)
    client.log_text(run.info.run_id, table.to_csv(), "evaluation/auc.csv")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
