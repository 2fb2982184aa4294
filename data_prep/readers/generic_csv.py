"""The generic CSV schema for any other dataset: columns path, patient_id, optional image_id, split,
sex (F / M), age (years) and view (PA / AP / lateral), then one column per finding (1 / 0 / -1 / blank)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrcommon.errors import DataPrepError
from data_prep.readers.common import (
    SUBGROUP_COLUMNS,
    Reader,
    SourceTable,
    check_official_patients,
    csv_line,
    label_columns,
    read_csv,
    require_columns,
    subgroup_columns,
)
from data_prep.split import SPLITS

if TYPE_CHECKING:
    from data_prep.config import SourceConfig

_GENERIC_META = ("path", "patient_id", "split", "image_id", *SUBGROUP_COLUMNS)  # the subgroup ones optional


def read_generic_csv(source: SourceConfig, find_images: bool) -> SourceTable:
    csv_path = source.path
    if csv_path.is_dir():
        csv_path = csv_path / "labels.csv"
    if not csv_path.exists():
        raise DataPrepError(f"dataset {source.name!r}: {csv_path} does not exist")
    df = read_csv(csv_path)
    require_columns(df, ["path", "patient_id"], csv_path)
    for column in ("path", "patient_id"):
        empty = df[column].str.strip() == ""
        if empty.any():
            raise DataPrepError(f"{csv_path} line {csv_line(empty.idxmax())}: empty {column!r}")
    image_id = df["image_id"] if "image_id" in df.columns else df["path"]
    rows = pd.DataFrame({"image_id": image_id, "patient_id": df["patient_id"].str.strip(),
                         **subgroup_columns(df.index, **{c: df[c] for c in SUBGROUP_COLUMNS if c in df.columns})})
    if "split" in df.columns:
        split = df["split"].str.strip().str.lower()
        bad = ~split.isin(SPLITS)
        if bad.any():
            first = bad.idxmax()
            raise DataPrepError(
                f"{csv_path} line {csv_line(first)} column 'split': value {df['split'][first]!r} "
                f"is not one of {list(SPLITS)}"
            )
        check_official_patients(rows["patient_id"], split, f"{csv_path} column 'split'")
        rows["split"] = split.astype(object)
    else:
        rows["split"] = None
    findings = label_columns(source, df, [c for c in df.columns if c not in _GENERIC_META], csv_path, rows)
    if not findings:
        raise DataPrepError(f"{csv_path}: no finding columns (expected one column per finding it labels)")
    if find_images:
        base = csv_path.parent
        rows["path"] = [p if os.path.isabs(p) else str(base / p) for p in df["path"].str.strip()]
    else:
        rows["path"] = None
    return SourceTable(source.name, findings, rows)


def _table_folder(path: Path) -> Path:
    """Paths in the table are relative to the CSV file's own folder."""
    return path if path.is_dir() else path.parent


READER = Reader("csv", read_generic_csv, layout="A label table in the generic CSV schema.", folder_flag=False,
                root=_table_folder)
