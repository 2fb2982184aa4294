"""The model card of a registered model version: what the model is, what it was trained on, how
well it does and where it should not be trusted, built from MLflow alone.

Written when a version is registered (`cxr train` / `cxr tune` with mlflow.register_model) and
again by `cxr model-card` (after `cxr evaluate` / `cxr calibrate` have added their figures), as
`model_card/model_card.md` and `.json` of the version's training run, and as the version's
description in the Model Registry. Every figure in it is read back from the run (test AUCs) or
from the latest evaluation run linked to it (`cxr.evaluates`: per-domain AUCs with intervals,
calibration, operating points, subgroups); none is computed here.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

from cxrmodel.metrics import SUMMARIES, figure_name
from cxrmodel.operating_points import FIGURES
from orchestration.evaluation.scoring import interval_cells
from orchestration.settings.schema import (
    CALIBRATION_ARTIFACT,
    CHAMPION,
    CONFIG_ARTIFACT,
    DATA_SUMMARY_ARTIFACT,
    DECISIONS_ARTIFACT,
    EVALUATES_TAG,
    MODEL_CARD_JSON,
    MODEL_CARD_MD,
    OPERATING_POINTS_ARTIFACT,
    PLAN_ARTIFACT,
    PRETRAINED_PARAM,
    PROVENANCE_ARTIFACT,
    SUBGROUPS_ARTIFACT,
    auc_metric,
    domain_metric,
    interval_metric,
    summary_metric,
)
from orchestration.settings.tracking import download_text, register_and_promote

INTENDED_USE = ("Research use only; not a medical device. Not validated for clinical decisions: its figures come "
                "from the datasets named here, whose labels are partly extracted from reports by NLP and are noisy.")
LIMITATIONS = [
    "Figures hold for images like the test splits named here (scanner, population, view); another hospital's "
    "images can score differently: evaluate on them before relying on it.",
    "Findings an evaluated domain does not label have no figure for that domain.",
    "Subgroups with few positives have wide intervals or are not scored; a missing subgroup is not evidence of "
    "equal performance.",
    "Thresholds were chosen on the internal domain's validation split; their sensitivity and specificity move "
    "with the prevalence and the images of another site.",
]
DESCRIPTION_LIMIT = 5000  # characters of the card kept as the registry's description


@dataclass
class ModelCard:
    document: dict

    def markdown(self) -> str:
        d = self.document
        model, data, training = d["model"], d["data"], d["training"]
        out = [f"# Model card: {model['name']} version {model['version']}", "",
               f"Training run `{model['run_id']}` ({model['run_name']}).", "",
               "## Intended use", "", d["intended_use"], "",
               "## Initialisation", "", d["initialisation"], "",
               "## Data", "",
               f"Prepared data `{data.get('data')}` (manifest sha256 `{data.get('manifest_sha256')}`), "
               f"{data.get('image_size')}² images. Label space: {', '.join(data.get('label_space', []))}.", "",
               f"Common findings (∩l): {', '.join(data.get('common', [])) or 'none'}; "
               f"internal-only: {', '.join(data.get('internal_only', [])) or 'none'}.", ""]
        domains = pd.DataFrame({name: {"role": v.get("role"), "images": v.get("num_images"),
                                       "patients": v.get("num_patients"),
                                       **{f"{s} images": n for s, n in v.get("splits", {}).items()}}
                                for name, v in data.get("domains", {}).items()}).T
        out += [_table(domains.reset_index(names="domain")), "",
                "## Training", "",
                f"Domains trained on: {', '.join(training['domains'])}. Config sha256 `{training['config_sha256']}`; "
                f"git commit `{training['git_commit']}`.", "",
                "Versions: " + ", ".join(f"{k} {v}" for k, v in training["versions"].items()), "",
                "Settings: " + ", ".join(f"{k}={v}" for k, v in training["settings"].items()), "",
                "## Test figures", "",
                f"Internal test split ({training['domains'][0] if training['domains'] else '?'}), from the training "
                "run:", "", _table(pd.DataFrame(d["test"]["internal"].items(), columns=["figure", "value"])), ""]
        evaluation = d.get("evaluation")
        if evaluation:
            out += [f"From evaluation run `{evaluation['run_id']}` ({evaluation['name']}):", "",
                    _table(pd.DataFrame(evaluation["domains"]).T.reset_index(names="domain")), ""]
            for title, key, figures in (("Calibration", "calibration", ()),
                                        ("Operating points (the calls' point)", "operating_points", FIGURES),
                                        ("Subgroups (mean over findings; gap to the whole split)", "subgroups",
                                         ("auc", "gap"))):
                if evaluation.get(key):
                    out += [f"### {title}", "", _table(_with_intervals(pd.DataFrame(evaluation[key]), figures)), ""]
        else:
            out += ["No evaluation run yet: run `cxr evaluate --model models:/NAME/VERSION --data DIR "
                    "--operating-points youden --by sex,age_band,view`, then `cxr model-card` again.", ""]
        decisions = d.get("decisions")
        if decisions:
            out += ["## Decisions", "", f"Calibration temperatures: {decisions.get('temperatures') or 'none'} "
                    f"({decisions.get('calibrated_on') or 'not fitted'}).", "",
                    f"Calls at {decisions.get('decision_point') or '(none)'}: {decisions.get('thresholds', {}).get(decisions.get('decision_point'), {})} "
                    f"on the uncalibrated probability ({decisions.get('thresholds_chosen_on') or ''}).", ""]
        out += ["## Known limitations", "", *[f"- {line}" for line in d["limitations"]], ""]
        return "\n".join(out)


def _with_intervals(frame: pd.DataFrame, figures) -> pd.DataFrame:
    """Each figure with its interval in one cell, "0.812 [0.702, 0.901]" (its _low / _high columns gone)."""
    frame = frame.copy()
    for figure in figures:
        value = frame.pop("auc_gap" if figure == "gap" else figure)
        low, high = frame.pop(f"{figure}_low"), frame.pop(f"{figure}_high")
        frame[figure] = interval_cells(value, low, high)
    return frame


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    frame = frame.astype(object).where(frame.notna(), "")
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _json(client: MlflowClient, run_id: str, path: str) -> dict:
    text = download_text(client, run_id, path)
    return json.loads(text) if text else {}


def _csv(client: MlflowClient, run_id: str, path: str) -> list[dict]:
    text = download_text(client, run_id, path)
    return pd.read_csv(io.StringIO(text)).to_dict("records") if text and text.strip() else []


def _calibration_summary(rows: list[dict]) -> list[dict]:
    """Per domain: the findings' mean ECE and Brier score (per finding: the evaluation run's table)."""
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    figures = [c for c in ("ece", "brier", "ece_calibrated", "brier_calibrated") if c in frame.columns]
    summary = frame.groupby("domain", sort=False).agg(findings=("finding", "count"),
                                                      **{f"mean {c}": (c, "mean") for c in figures})
    return summary.reset_index().to_dict("records")


def latest_evaluation(client: MlflowClient, run_id: str, domains: list[str]):
    """The newest finished evaluation run linked to the training run that scored prepared domains
    (not one against relabelled images only), if any."""
    experiment = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`{EVALUATES_TAG}` = '{run_id}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    mean = figure_name(SUMMARIES["Mean"])
    return next((r for r in runs if any(domain_metric(d, mean) in r.data.metrics for d in domains)), None)


def build_card(client: MlflowClient, run_id: str, name: str, version: str) -> ModelCard:
    run = client.get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    data = _json(client, run_id, DATA_SUMMARY_ARTIFACT)
    plan = _json(client, run_id, PLAN_ARTIFACT)
    provenance = _json(client, run_id, PROVENANCE_ARTIFACT)
    config_text = download_text(client, run_id, CONFIG_ARTIFACT) or ""
    pretrained = params.get(PRETRAINED_PARAM) == "true"
    internal = {f"test AUC {f}": metrics[auc_metric("test", f)] for f in data.get("label_space", [])
                if auc_metric("test", f) in metrics}
    internal.update({f"test {label}": metrics[summary_metric("test", key)] for label, key in SUMMARIES.items()
                     if summary_metric("test", key) in metrics})
    settings = {k: params[k] for k in ("method.task_weighting", "method.adversarial", "method.temporal_ensemble",
                                       "method.uncertainty", "method.lambda_tat", "method.lambda_ute", "method.alpha",
                                       "method.gamma", "train.epochs", "train.lr", "train.batch_size") if k in params}
    document = {
        "model": {"name": name, "version": str(version), "run_id": run_id,
                  "run_name": run.info.run_name},
        "intended_use": INTENDED_USE,
        "initialisation": ("ImageNet weights (model.weights), as the paper." if pretrained else
                           "Random weights: the paper starts from ImageNet; these figures are not comparable with the paper's."),
        "data": data,
        "training": {"domains": data.get("training_domains", plan.get("domains", [])),
                     "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
                     "git_commit": provenance.get("git_commit", "unknown"),
                     "versions": provenance.get("versions", {}), "settings": settings},
        "test": {"internal": internal},
        "decisions": _json(client, run_id, DECISIONS_ARTIFACT) or None,
        "limitations": LIMITATIONS,
    }
    evaluation = latest_evaluation(client, run_id, list(data.get("domains", {})))
    if evaluation is not None:
        em, eid = evaluation.data.metrics, evaluation.info.run_id
        domains = {}
        for domain in data.get("domains", {}):
            row = {}
            for label, key in SUMMARIES.items():
                name_ = domain_metric(domain, figure_name(key))
                if name_ in em:
                    row[label] = em[name_]
                    for bound in ("low", "high"):
                        bound_name = domain_metric(domain, interval_metric(figure_name(key), bound))
                        if bound_name in em:
                            row[f"{label} {bound}"] = em[bound_name]
            if row:
                domains[domain] = row
        decision_point = (document["decisions"] or {}).get("decision_point")
        document["evaluation"] = {
            "run_id": eid, "name": evaluation.info.run_name, "domains": domains,
            "calibration": _calibration_summary(_csv(client, eid, CALIBRATION_ARTIFACT)),
            # The point that makes the model's calls; every point is in the evaluation run's table.
            "operating_points": [r for r in _csv(client, eid, OPERATING_POINTS_ARTIFACT)
                                 if r.get("point") == decision_point],
            "subgroups": [r for r in _csv(client, eid, SUBGROUPS_ARTIFACT) if r.get("finding") == "Mean"],
        }
    return ModelCard(document)


def write_model_card(client: MlflowClient, run_id: str, name: str, version: str) -> ModelCard:
    """Build the card, log it to the run and set it as the version's registry description."""
    card = build_card(client, run_id, name, version)
    text = card.markdown()
    client.log_text(run_id, text, MODEL_CARD_MD)
    client.log_dict(run_id, card.document, MODEL_CARD_JSON)
    description = text if len(text) <= DESCRIPTION_LIMIT else (
        text[:DESCRIPTION_LIMIT] + f"\n\n(cut here: the whole card is the run's artifact {MODEL_CARD_MD})")
    client.update_model_version(name, str(version), description=description)
    return card


def register_version(client: MlflowClient, name: str, run_id: str, metric: str, what: str) -> str:
    """A new version of `name` from the run's logged model, champion if it scores better on `metric`,
    with its model card; returns the line that says so (cxr train, and cxr tune for its best trial)."""
    version, promoted = register_and_promote(client, name, run_id, metric)
    write_model_card(client, run_id, name, version)
    return (f"registered {what} version {version}"
            + (f"; alias {CHAMPION} now points to it" if promoted else f"; {CHAMPION} stays (it scores better)")
            + f"; model card: {MODEL_CARD_MD} of run {run_id}")
