"""`cxr diagnose`: each part of the method checked against the truth of generated data.

`cxr synth` writes beside every dataset a `truth.csv` holding every finding drawn in every image,
labelled or not. On such data:

- TE / UTE (needs `train.ensemble_history=true`): per epoch and internal-only finding, on the
  external training images (where those findings are never labelled), the AUC of the temporal
  ensemble's targets z against the truth, the same AUC for the network's own predictions p (its
  mean over the epoch), and the share of those entries UTE lets through, |0.5 - p| >= H (H: the
  schedule's value at the epoch's last step), with how often the rounded p is right there;
- TAT: how well a logistic-regression probe tells internal from external images by the
  task-specific feature f_c of each common finding (AUC on held-out images of both domains' test
  splits; 0.5 = the feature does not show the domain). Compare a run with TAT and its twin
  without (Table VI rows c and b, same seed).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrcommon.errors import UserError
from cxrcommon.storage import is_uri
from cxrmodel.inputs import to_model_input
from data_prep.prepared import PreparedDataset
from data_prep.readers import READERS
from data_prep.synth import TRUTH_FILE
from orchestration.settings.config import Config
from orchestration.settings.schema import CHECKPOINT_TAG, DIAGNOSTICS_DIR, ENSEMBLE_DIR, diagnostics_metric
from orchestration.settings.tracking import client_for, resolve_run_id
from orchestration.training.checkpoint import load_trained

MIN_PROBE_IMAGES = 8  # per domain: half fit the probe, half score it
ENSEMBLE_FILE = re.compile(r"epoch_(\d+)\.npz$")


class DiagnoseError(UserError):
    """A run or dataset that cannot be diagnosed; the message says what is missing."""


@dataclass
class EnsembleEpoch:
    """One epoch's ensemble record (see training.worker._log_ensemble_epoch)."""

    epoch: int
    sample_id: np.ndarray  # (n,)
    findings: list[str]
    z: np.ndarray  # (n, F) ensemble targets after the epoch's fold
    p: np.ndarray  # (n, F) the network's mean prediction over the epoch
    h: float

    @classmethod
    def read(cls, epoch: int, path: str | Path) -> EnsembleEpoch:
        with np.load(path, allow_pickle=False) as saved:
            return cls(epoch, saved["sample_id"], [str(f) for f in saved["findings"]], saved["z"], saved["p"],
                       float(saved["h"]))


def truth_table(prepared: PreparedDataset, domain: str, split: str, truth_file: Path) -> pd.DataFrame:
    """The truth of one domain's split, by sample_id: one 0/1 column per canonical finding."""
    try:
        truth = pd.read_csv(truth_file, dtype={"image_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DiagnoseError(f"{truth_file}: not a readable truth table ({exc})") from None
    if "image_id" not in truth.columns:
        raise DiagnoseError(f"{truth_file}: no image_id column; expected the truth.csv `cxr synth` writes")
    ids = prepared.read_columns(domain, split, ["sample_id", "image_id"]).to_pandas()
    joined = ids.merge(truth, on="image_id", how="left", validate="one_to_one")
    missing = joined[joined.columns[2]].isna()
    if missing.any():
        raise DiagnoseError(f"{truth_file}: {int(missing.sum())} of {len(ids)} {domain} {split} images are not in "
                            f"it (e.g. {joined['image_id'][missing].iloc[0]!r}); is it the truth of these data?")
    return joined.drop(columns="image_id").set_index("sample_id").astype(int)


def default_truth_file(prepared: PreparedDataset, domain: str) -> Path:
    """Beside the dataset `cxr prepare` read: the source's folder (or its table's folder)."""
    recorded = prepared.manifest.config  # cxr prepare's whole resolved config, or a bare prepare section
    sources = {s["name"]: s for s in recorded.get("prepare", recorded).get("sources", [])}
    if domain not in sources:
        raise DiagnoseError(f"the manifest of {prepared.root} names no source {domain!r}; give --truth {domain}=FILE")
    path, reader = Path(sources[domain]["path"]), READERS[sources[domain]["kind"]]
    for base in [Path.cwd()] + ([] if is_uri(prepared.root) else [Path(prepared.root).parent]):
        folder = reader.root(path if path.is_absolute() else base / path)  # the dataset's folder, as prepare read it
        if (folder / TRUTH_FILE).is_file():
            return folder / TRUTH_FILE
    raise DiagnoseError(f"no {TRUTH_FILE} found for {domain!r} beside {path} (as prepared); "
                        f"give --truth {domain}=FILE (cxr synth writes one beside every dataset)")


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else float("nan")


def ensemble_diagnostics(epochs: list[EnsembleEpoch], truth: pd.DataFrame, findings: list[str]) -> pd.DataFrame:
    """Per epoch and finding, on the images of `truth` (the external training images) that the
    epoch saw: z and p against the truth, and UTE's pass share."""
    rows = []
    for record in sorted(epochs, key=lambda r: r.epoch):
        on = np.isin(record.sample_id, truth.index.to_numpy())
        ids = record.sample_id[on]
        for finding in findings:
            if finding not in record.findings:
                continue
            c = record.findings.index(finding)
            shown = truth.loc[ids, finding].to_numpy()
            z, p = record.z[on, c], record.p[on, c]
            passing = np.abs(0.5 - p) >= record.h
            right = (p[passing] >= 0.5) == shown[passing].astype(bool)
            rows.append({"epoch": record.epoch, "finding": finding, "images": int(len(ids)),
                         "shown": int(shown.sum()), "z_auc": _auc(shown, z), "p_auc": _auc(shown, p),
                         "h": record.h, "pass_share": float(passing.mean()) if len(p) else float("nan"),
                         "pass_right": float(right.mean()) if len(right) else float("nan")})
    return pd.DataFrame(rows, columns=["epoch", "finding", "images", "shown", "z_auc", "p_auc", "h", "pass_share",
                                       "pass_right"])


@torch.no_grad()
def task_features(net: torch.nn.Module, prepared: PreparedDataset, domain: str, split: str, common: list[int],
                  max_images: int, batch_size: int = 64) -> np.ndarray:
    """(n, len(common), N') task-specific features f_c of up to `max_images` images."""
    out, taken = [], 0
    for _, images, _ in prepared.iter_uint8_batches(domain, split, batch_size):
        x = to_model_input(torch.from_numpy(images[: max_images - taken]))
        out.append(net.task_features(x)[:, common].numpy())
        taken += len(x)
        if taken >= max_images:
            break
    return np.concatenate(out) if out else np.empty((0, len(common), 0), np.float32)


def domain_probe(features: dict[str, np.ndarray], findings: list[str], seed: int = 0) -> dict[str, float]:
    """Per finding, the held-out AUC of a logistic regression telling the first domain's images
    from the second's by that finding's features (fit on half of each domain, scored on the rest)."""
    (a, fa), (b, fb) = features.items()
    domain = np.r_[np.zeros(len(fa)), np.ones(len(fb))]
    scores = {}
    for c, finding in enumerate(findings):
        x = np.concatenate([fa[:, c], fb[:, c]])
        x_fit, x_held, y_fit, y_held = train_test_split(x, domain, test_size=0.5, stratify=domain, random_state=seed)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        probe.fit(x_fit, y_fit)
        scores[finding] = float(roc_auc_score(y_held, probe.predict_proba(x_held)[:, 1]))
    return scores


@dataclass
class Diagnosis:
    ensemble: pd.DataFrame  # ensemble_diagnostics' rows (empty without an ensemble history)
    probe: dict[str, float]  # common finding -> held-out probe AUC
    notes: list[str]

    def tables(self) -> list[tuple[str, pd.DataFrame]]:
        """What `cxr diagnose` prints: (title, table)."""
        tables = []
        if not self.ensemble.empty:
            by_epoch = self.ensemble.groupby("epoch")[["z_auc", "p_auc", "pass_share", "pass_right"]].mean()
            tables += [("TE / UTE on the external training images, mean over the internal-only findings (z: ensemble "
                        "targets, p: the network's predictions, against the truth)", by_epoch),
                       ("per finding", self.ensemble.set_index(["epoch", "finding"]))]
        if self.probe:
            tables.append(("TAT: internal vs external by each common finding's features (held-out AUC; "
                           "0.5 = invariant)", pd.DataFrame({"probe AUC": self.probe})))
        return tables

    def metrics(self) -> list[tuple[str, float, int]]:
        """(name, value, step): per-epoch ensemble figures at step = epoch, the probe at step 0."""
        out = []
        for row in self.ensemble.itertuples():
            for column in ("z_auc", "p_auc", "pass_share", "pass_right"):
                value = getattr(row, column)
                if not np.isnan(value):
                    out.append((diagnostics_metric("ute", column, row.finding), float(value), int(row.epoch)))
        if not self.ensemble.empty:
            for epoch, group in self.ensemble.groupby("epoch"):
                for column in ("z_auc", "p_auc", "pass_share"):
                    if group[column].notna().any():
                        out.append((diagnostics_metric("ute", f"{column}_mean"), float(group[column].mean()), int(epoch)))
        for finding, value in self.probe.items():
            out.append((diagnostics_metric("tat", "probe_auc", finding), value, 0))
        if self.probe:
            out.append((diagnostics_metric("tat", "probe_auc_mean"), float(np.mean(list(self.probe.values()))), 0))
        return out


def _ensemble_history(client: MlflowClient, run_id: str) -> list[EnsembleEpoch]:
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for artifact in client.list_artifacts(run_id, ENSEMBLE_DIR):
            match = ENSEMBLE_FILE.search(artifact.path)
            if match:
                local = client.download_artifacts(run_id, artifact.path, folder)
                records.append(EnsembleEpoch.read(int(match.group(1)), local))
    return records


def diagnose_run(client: MlflowClient, run_id: str, *, truth_files: dict[str, Path] | None = None,
                 probe_images: int = 400) -> Diagnosis:
    run = client.get_run(run_id)
    if CHECKPOINT_TAG not in run.data.tags:
        raise DiagnoseError(f"run {run_id} has no checkpoint (it did not finish training)")
    net, config, plan = load_trained(run.data.tags[CHECKPOINT_TAG])
    prepared = PreparedDataset.load(plan.data)
    truth_files = truth_files or {}
    external = [d for d in plan.domains if d != plan.internal]
    notes, ensemble = [], pd.DataFrame()
    if not external:
        raise DiagnoseError(f"run {run_id} trained on {plan.internal} alone: there is no external domain to diagnose")
    history = _ensemble_history(client, run_id)
    findings = [f for f in plan.ensemble if f in plan.internal_only]
    if not plan.ensemble:
        notes.append("no temporal ensemble in this run: TE / UTE figures skipped")
    elif not history:
        notes.append("no ensemble history logged (train with train.ensemble_history=true): TE / UTE figures skipped")
    else:
        truth = pd.concat([truth_table(prepared, d, "train", truth_files.get(d) or default_truth_file(prepared, d))
                           for d in external])
        ensemble = ensemble_diagnostics(history, truth, findings)
    probe = {}
    if getattr(net, "head_kind", None) != "task_specific":
        notes.append("no task-specific features in this network (holistic or multi-task head): probe skipped")
    else:
        common = [plan.label_space.index(f) for f in plan.common]
        features = {d: task_features(net, prepared, d, "test", common, probe_images)
                    for d in (plan.internal, external[0])}
        small = [d for d, f in features.items() if len(f) < MIN_PROBE_IMAGES]
        if small:
            notes.append(f"fewer than {MIN_PROBE_IMAGES} test images in {small}: probe skipped")
        else:
            probe = domain_probe(features, plan.common, seed=config.train.seed)
    return Diagnosis(ensemble, probe, notes)


def log_diagnosis(client: MlflowClient, run_id: str, diagnosis: Diagnosis) -> None:
    for name, value, step in diagnosis.metrics():
        client.log_metric(run_id, name, value, step=step)
    client.log_text(run_id, diagnosis.ensemble.to_csv(index=False), f"{DIAGNOSTICS_DIR}/ensemble.csv")
    client.log_text(run_id, json.dumps({"probe_auc": diagnosis.probe, "notes": diagnosis.notes}, indent=1),
                    f"{DIAGNOSTICS_DIR}/probe.json")


def diagnose_and_log(config: Config, run: str, *, truth_files: dict[str, Path],
                     probe_images: int) -> tuple[Diagnosis, str]:
    """`cxr diagnose`: diagnose a training run (by id or name) and log the figures to it; returns
    the diagnosis and the run's id."""
    client = client_for(config)
    run_id = resolve_run_id(client, config.mlflow.experiment, run)
    diagnosis = diagnose_run(client, run_id, truth_files=truth_files, probe_images=probe_images)
    log_diagnosis(client, run_id, diagnosis)
    return diagnosis, run_id
