"""CheXpert: train.csv (and valid.csv) with 1 / 0 / -1 / blank per finding, image paths relative to
the folder's parent (CheXpert-v1.0-small/train/patient…/study…/view….jpg)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrcommon.errors import DataPrepError
from data_prep.readers.common import (
    Reader,
    SourceTable,
    csv_line,
    label_columns,
    read_csv,
    require_columns,
    subgroup_columns,
    table_file,
)

if TYPE_CHECKING:
    from data_prep.config import SourceConfig

_CHEXPERT_META = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_CHEXPERT_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")


def read_chexpert(source: SourceConfig, find_images: bool) -> SourceTable:
    folder = _find_chexpert_folder(source.path)
    parts = [(table_file(folder, "train"), "train")]
    if table_file(folder, "valid"):
        parts.append((table_file(folder, "valid"), "val"))
    tables = [_read_chexpert_csv(source, csv_path, split) for csv_path, split in parts]
    findings = tables[0][1]
    for csv_path, (_, other) in zip([p for p, _ in parts[1:]], tables[1:]):
        if other != findings:
            raise DataPrepError(f"{csv_path}: label columns {other} differ from train.csv's {findings}")
    rows = pd.concat([t[0] for t in tables], ignore_index=True)
    # Paths in the CSVs start with the folder's own name, so they are relative to its parent.
    rows["path"] = [str(folder.parent / p) for p in rows["image_id"]] if find_images else None
    return SourceTable(source.name, findings, rows)


# Stanford's labeler leaves a finding blank when the report does not mention it.
READER = Reader("chexpert", read_chexpert, order=1, layout="CheXpert folder (train.csv) or its parent.",
                blank="negative")


def _find_chexpert_folder(path: Path) -> Path:
    for folder in (path, *(path / name for name in _CHEXPERT_FOLDERS)):
        if table_file(folder, "train"):
            return folder
    raise DataPrepError(
        f"{path}: no CheXpert train.csv here nor in {' or '.join(_CHEXPERT_FOLDERS)}/"
    )


def _read_chexpert_csv(source: SourceConfig, csv_path: Path, split: str) -> tuple[pd.DataFrame, list[str]]:
    df = read_csv(csv_path)
    require_columns(df, ["Path", "Frontal/Lateral"], csv_path)
    columns = [c for c in df.columns if c not in _CHEXPERT_META]
    if source.views != "all":
        df = df[df["Frontal/Lateral"].str.lower() == source.views]
    patient = df["Path"].str.extract(r"(patient\d+)", expand=False)
    if patient.isna().any():
        bad = patient.index[patient.isna()][0]
        raise DataPrepError(
            f"{csv_path} line {csv_line(bad)}: cannot find 'patientNNNNN' in Path {df['Path'][bad]!r}"
        )
    # A lateral film is LATERAL; a frontal one AP or PA as its AP/PA says (a few frontal rows say LL
    # or RL there: missing, not a guess).
    lateral = df["Frontal/Lateral"].str.strip().str.lower() == "lateral"
    ap_pa = df.get("AP/PA", pd.Series("", index=df.index)).str.strip().str.upper()
    view = ap_pa.where(ap_pa.isin(["AP", "PA"]), "").where(~lateral, "lateral")
    rows = pd.DataFrame({"image_id": df["Path"], "patient_id": patient, "split": split,
                         **subgroup_columns(df.index, sex=df.get("Sex"), age=df.get("Age"), view=view)})
    findings = label_columns(source, df, columns, csv_path, rows)
    return rows, findings
