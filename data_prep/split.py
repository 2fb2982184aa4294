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
    """Each patient's position (0, 1, ...) in a seeded pseudo-random order of the patients."""
    unique = patients.unique()
    keys = [hashlib.sha256(f"{seed}:{p}".encode()).digest() for p in unique]
    rank = np.empty(len(unique), np.int64)
    rank[np.argsort(keys, kind="stable")] = np.arange(len(unique))
    return patients.map(dict(zip(unique, rank)))


def _count(fraction: float, n_patients: int) -> int:
    """round(fraction * n) patients, at least one when fraction > 0."""
    return 0 if fraction <= 0 or n_patients == 0 else max(round(fraction * n_patients), 1)


def assign_splits(
    rows: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """Final split per row from the reader's `split` column.

    Official splits (train / val / test) stay. "train_val" (NIH's official list, CheXpert's
    train.csv) is divided into train / val by patient with `val_fraction`; rows without a split get
    train / val / test by patient.
    """
    split = rows["split"].copy().astype(object)
    train_val = split == "train_val"
    if train_val.any():
        patients = rows["patient_id"][train_val]
        rank = _patient_rank(patients, seed)
        split[train_val] = np.where(rank < _count(val_fraction, patients.nunique()), "val", "train")
    missing = split.isna()
    if missing.any():
        patients = rows["patient_id"][missing]
        rank = _patient_rank(patients, seed)
        n_test = _count(test_fraction, patients.nunique())
        n_val = _count(val_fraction, patients.nunique())
        split[missing] = np.select([rank < n_test, rank < n_test + n_val], ["test", "val"], default="train")
    return split


def patients_crossing_splits(patients: pd.Series, split: pd.Series) -> list[str]:
    """Patients that appear in more than one split (must be empty)."""
    per_patient = pd.DataFrame({"p": patients, "s": split}).groupby("p")["s"].nunique()
    return sorted(map(str, per_patient[per_patient > 1].index))


def split_counts(split: pd.Series) -> dict[str, int]:
    counts = split.value_counts()
    return {s: int(counts.get(s, 0)) for s in SPLITS}
