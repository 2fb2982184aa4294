"""`cxr compare`: is model B's AUC really different from model A's on the same test images?

Two prediction tables (files from `cxr predict`, or the test predictions training runs logged)
are matched by image on one domain and split; the statistics (DeLong, paired bootstrap, Holm)
are `cxrmodel.auc_statistics.paired_comparison`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.auc_statistics import paired_comparison
from cxrmodel.metrics import SUMMARIES
from data_prep.prepared import PreparedDataset
from data_prep.split import SPLITS
from orchestration.evaluation.models import resolve_model
from orchestration.evaluation.prediction import read_predictions
from orchestration.evaluation.scoring import Predictions, prediction_frame
from orchestration.settings.config import Config, ConfigError


@dataclass
class Comparison:
    stats: dict  # the --stats-json document
    only_in_a: int  # images of the domain and split that only A scored
    only_in_b: int
    domain: str
    split: str

    def notes(self) -> list[str]:
        if not (self.only_in_a or self.only_in_b):
            return []
        return [f"left out: {self.only_in_a} images only A scored, {self.only_in_b} only B scored"]


def run_test_predictions(config: Config, run: str, prepared: PreparedDataset) -> pd.DataFrame:
    """The internal test split's predictions a training run saved with its final checkpoint."""
    from orchestration.training.checkpoint import read_run_description, read_test_predictions  # torch: runs only

    checkpoint = resolve_model(config, run).checkpoint
    _, plan = read_run_description(checkpoint)
    plan.require_labels_of(prepared, f"run {run!r}")
    return prediction_frame(Predictions(**read_test_predictions(checkpoint)), prepared, plan.internal, "test")


def compare_models(config: Config, data: Path, *, predictions: list[Path] | None, runs: list[str] | None,
                   domain: str | None, split: str, bootstrap: int, seed: int) -> Comparison:
    """B against A, from two prediction files or two models' logged test predictions."""
    if bool(predictions) == bool(runs) or len(predictions or runs or []) != 2:
        raise ConfigError("give two models: --predictions A.parquet --predictions B.parquet, or --run A --run B")
    prepared = PreparedDataset.load(data)
    frames = ([read_predictions(p) for p in predictions] if predictions
              else [run_test_predictions(config, r, prepared) for r in runs])
    return compare_predictions(*frames, prepared, domain=domain, split=split, bootstrap=bootstrap, seed=seed)


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, prepared: PreparedDataset, *, domain: str | None,
                        split: str, bootstrap: int, seed: int) -> Comparison:
    domain = domain or prepared.manifest.internal
    if domain not in prepared.domains:
        raise ConfigError(f"--domain {domain!r} is not one of {prepared.domains}")
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if bootstrap < 1:
        raise ConfigError(f"--bootstrap must be at least 1 (got {bootstrap})")
    space = prepared.label_space
    for name, frame in (("A", a), ("B", b)):
        missing = [f for f in space if f not in frame.columns]
        if missing:
            raise ConfigError(f"predictions {name} lack finding column(s) {missing} of the prepared label space")
    labels = prepared.read_columns(domain, split, ["image_id", *space]).to_pandas().set_index("image_id")
    ids_a = set(a.loc[a["domain"] == domain, "image_id"]) & set(labels.index)
    ids_b = set(b.loc[b["domain"] == domain, "image_id"]) & set(labels.index)
    shared = sorted(ids_a & ids_b)
    if not shared:
        raise ConfigError(f"the two prediction tables share no image of {domain}'s {split} split")
    probs_a = a[a["domain"] == domain].drop_duplicates("image_id").set_index("image_id").loc[shared, space]
    probs_b = b[b["domain"] == domain].drop_duplicates("image_id").set_index("image_id").loc[shared, space]
    stats = paired_comparison(
        labels.loc[shared, space].to_numpy(np.int8), probs_a.to_numpy(np.float64), probs_b.to_numpy(np.float64),
        space, **prepared.finding_groups(domain).members(), replicates=bootstrap, seed=seed,
    )
    return Comparison(stats, len(ids_a - ids_b), len(ids_b - ids_a), domain, split)


def comparison_table(comparison: Comparison) -> pd.DataFrame:
    """Rows: findings, then Mean / Mean_Com / Mean_Int; what `cxr compare` prints."""
    rows = {}
    for name, f in comparison.stats["findings"].items():
        rows[name] = {"AUC A": f["auc_a"], "AUC B": f["auc_b"], "Δ (B-A)": f["delta"],
                      "95% CI of Δ": _interval(f["ci95"]), "p DeLong": f["p_delong"], "p Holm": f["p_holm"]}
    for label, group in SUMMARIES.items():
        if group in comparison.stats["means"]:
            g = comparison.stats["means"][group]
            rows[label] = {"AUC A": g["auc_a"], "AUC B": g["auc_b"], "Δ (B-A)": g["delta"],
                           "95% CI of Δ": _interval(g["ci95"]), "p DeLong": np.nan, "p Holm": np.nan}
    return pd.DataFrame.from_dict(rows, orient="index")


def _interval(bounds: list[float]) -> str:
    return f"[{bounds[0]:+.4f}, {bounds[1]:+.4f}]"
