"""Patient-level splits: official ones are kept, the rest are assigned by a seeded hash of the patient.

Hashing the patient id (instead of shuffling rows) makes the assignment independent of row order
and stable when patients are added: the same patient always lands in the same split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def _patient_rank(patients: pd.Series, seed: int) -> pd.Series:
    """Each patient's position in a seeded pseudo-random order, as a fraction in [0, 1)."""
    unique = patients.unique()
    keys = [hashlib.sha256(f"{seed}:{p}".encode()).digest() for p in unique]
    order = np.argsort(keys, kind="stable")
    rank = np.empty(len(unique))
    rank[order] = np.arange(len(unique)) / len(unique)
    return patients.map(dict(zip(unique, rank)))


def _cut(fraction: float, n_patients: int) -> float:
    """Rank threshold taking round(fraction * n) patients, at least one when fraction > 0."""
    if fraction <= 0 or n_patients == 0:
        return 0.0
    return max(round(fraction * n_patients), 1) / n_patients


def assign_splits(
    rows: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """Final split per row from the reader's `split` column.

    Official splits (train / val / test) stay. NIH's "train_val" is divided into train / val by
    patient with `val_fraction`; rows without a split get train / val / test by patient.
    """
    split = rows["split"].copy().astype(object)
    train_val = split == "train_val"
    if train_val.any():
        rank = _patient_rank(rows["patient_id"][train_val], seed)
        cut = _cut(val_fraction, rows["patient_id"][train_val].nunique())
        split[train_val] = np.where(rank < cut, "val", "train")
    missing = split.isna()
    if missing.any():
        patients = rows["patient_id"][missing]
        rank = _patient_rank(patients, seed)
        test_cut = _cut(test_fraction, patients.nunique())
        val_cut = test_cut + _cut(val_fraction, patients.nunique())
        split[missing] = np.select([rank < test_cut, rank < val_cut], ["test", "val"], default="train")
    return split


def patients_crossing_splits(patients: pd.Series, split: pd.Series) -> list[str]:
    """Patients that appear in more than one split (must be empty)."""
    per_patient = pd.DataFrame({"p": patients, "s": split}).groupby("p")["s"].nunique()
    return sorted(map(str, per_patient[per_patient > 1].index))


def split_counts(split: pd.Series) -> dict[str, int]:
    counts = split.value_counts()
    return {s: int(counts.get(s, 0)) for s in SPLITS}
