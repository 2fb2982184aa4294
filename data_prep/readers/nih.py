"""NIH ChestX-ray14: Data_Entry_2017*.csv (findings as `A|B` tokens), the official
train_val_list.txt / test_list.txt, PNGs under images*/."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrcommon.errors import DataPrepError
from cxrmodel.labels import NEGATIVE, POSITIVE
from data_prep.findings import canonical_name, in_label_order, is_no_finding
from data_prep.readers.common import (
    Reader,
    SourceTable,
    check_official_patients,
    csv_line,
    read_csv,
    require_columns,
    subgroup_columns,
)

if TYPE_CHECKING:
    from data_prep.config import SourceConfig

log = logging.getLogger(__name__)


def read_nih(source: SourceConfig, find_images: bool) -> SourceTable:
    root = source.path
    csv_path = _find_nih_csv(root)
    df = read_csv(csv_path)
    require_columns(df, ["Image Index", "Finding Labels", "Patient ID"], csv_path)

    tokens = df["Finding Labels"].str.split("|")
    findings: dict[str, str] = {}  # source token -> canonical
    ignored: set[str] = set()
    exploded = tokens.explode().str.strip()
    for token in exploded.unique():
        if token == "" or is_no_finding(token) or token in findings or token in ignored:
            continue
        first = int(exploded.index[exploded == token][0])
        name = canonical_name(
            token, source.label_map, where=f"{csv_path} line {csv_line(first)} column 'Finding Labels'"
        )
        if name is None:
            ignored.add(token)
        else:
            findings[token] = name

    rows = pd.DataFrame({
        "image_id": df["Image Index"], "patient_id": df["Patient ID"].str.strip(),
        **subgroup_columns(df.index, sex=df.get("Patient Gender"), age=df.get("Patient Age"),
                           view=df.get("View Position")),
    })
    bad_patient = rows["patient_id"] == ""
    if bad_patient.any():
        raise DataPrepError(f"{csv_path} line {csv_line(bad_patient.idxmax())}: empty 'Patient ID'")
    token_sets = tokens.map(lambda ts: {t.strip() for t in ts})
    canonical = in_label_order(findings.values())
    for name in canonical:
        sources_for_name = {t for t, n in findings.items() if n == name}
        present = token_sets.map(lambda ts: not ts.isdisjoint(sources_for_name))
        rows[name] = np.where(present, POSITIVE, NEGATIVE).astype(np.int8)

    rows["split"], warnings = _nih_official_split(root, csv_path, rows)
    rows["path"] = _locate(rows["image_id"], _index_images(root, "images*", (".png",))) if find_images else None
    return SourceTable(source.name, canonical, rows, warnings)


READER = Reader("nih", read_nih, order=0, layout="NIH ChestX-ray14 folder (Data_Entry_2017*.csv, images*/).")


def _find_nih_csv(root: Path) -> Path:
    candidates = sorted(root.glob("Data_Entry_2017*.csv")) + sorted(root.glob("Data_Entry_2017*.csv.gz"))
    if not candidates:
        raise DataPrepError(f"{root}: no Data_Entry_2017*.csv(.gz) found (NIH ChestX-ray14 folder expected)")
    return candidates[-1]


def _index_images(root: Path, folder_glob: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    """File name -> absolute path for images under root/<folder_glob>/ (recursively)."""
    index: dict[str, str] = {}
    for folder in sorted(root.glob(folder_glob)):
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if name.lower().endswith(suffixes):
                    index[name] = os.path.join(dirpath, name)
    return index


def _locate(image_ids: pd.Series, index: dict[str, str]) -> pd.Series:
    return image_ids.map(lambda i: index.get(os.path.basename(i)))


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _nih_official_split(root: Path, csv_path: Path, rows: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    train_val_file, test_file = root / "train_val_list.txt", root / "test_list.txt"
    if not (train_val_file.exists() and test_file.exists()):
        warning = (
            f"{root}: train_val_list.txt / test_list.txt not found; "
            "falling back to a patient-level split"
        )
        log.warning(warning)
        return pd.Series([None] * len(rows), index=rows.index, dtype=object), [warning]
    train_val, test = _read_list(train_val_file), _read_list(test_file)
    both = train_val & test
    if both:
        raise DataPrepError(
            f"{root}: image {sorted(both)[0]!r} is in both train_val_list.txt and test_list.txt"
        )
    split = pd.Series(np.where(rows["image_id"].isin(test), "test", "train_val"), index=rows.index)
    unlisted = ~rows["image_id"].isin(train_val | test)
    warnings = []
    if unlisted.any():
        warning = (
            f"{csv_path}: {int(unlisted.sum())} images are in neither split list "
            f"(e.g. {rows['image_id'][unlisted].iloc[0]!r}); they are treated as train_val"
        )
        log.warning(warning)
        warnings.append(warning)
    check_official_patients(rows["patient_id"], split, f"{root} official split lists")
    return split.astype(object), warnings
