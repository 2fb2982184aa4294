"""MIMIC-CXR-JPG: mimic-cxr-2.0.0-{chexpert,negbio}.csv (labels per study), -split.csv (the official
split) and -metadata.csv (views per image); which label becomes which finding is label_maps/mimic.yaml."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrcommon.errors import DataPrepError
from data_prep.findings import load_preset
from data_prep.readers.common import (
    Reader,
    SourceTable,
    check_official_patients,
    chexpert_style_values,
    csv_line,
    read_csv,
    require_columns,
    required_file,
    subgroup_columns,
    view_filter,
)

if TYPE_CHECKING:
    from data_prep.config import SourceConfig


def read_mimic(source: SourceConfig, find_images: bool) -> SourceTable:
    """Labels per study (every image of the study gets them), the official split and the view
    per image; images at files/p<2 digits>/p<subject>/s<study>/<dicom_id>.jpg."""
    root = source.path
    labels_path = required_file(root, f"mimic-cxr-2.0.0-{source.labeler}", f"the {source.labeler} labels")
    split_path = required_file(root, "mimic-cxr-2.0.0-split", "the official split")
    meta_path = required_file(root, "mimic-cxr-2.0.0-metadata", "views per image")
    labels = read_csv(labels_path)
    require_columns(labels, ["subject_id", "study_id"], labels_path)
    meta = read_csv(meta_path)
    require_columns(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_path)
    split = read_csv(split_path)
    require_columns(split, ["dicom_id", "split"], split_path)

    preset = load_preset("mimic")
    label_columns = [c for c in labels.columns if c not in ("subject_id", "study_id")]
    names, _ = preset.resolve(label_columns, source.label_map, where=str(labels_path))
    studies = labels[["subject_id", "study_id"]].copy()
    findings = chexpert_style_values(source, labels, names, labels_path, studies)
    doubled = studies.duplicated(["subject_id", "study_id"])
    if doubled.any():
        raise DataPrepError(f"{labels_path} line {csv_line(doubled.idxmax())}: study "
                            f"{studies['study_id'][doubled.idxmax()]!r} is labelled twice")

    meta = meta[view_filter(meta["ViewPosition"], source.views)]
    rows = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].merge(studies, on=["subject_id", "study_id"], how="left",
                                                             indicator=True)
    unlabelled = rows["_merge"] == "left_only"
    warnings = []
    if unlabelled.any():
        warnings.append(f"{source.name}: {int(unlabelled.sum())} images belong to studies without a row in "
                        f"{labels_path.name} (e.g. study {rows['study_id'][unlabelled].iloc[0]}); they are left out")
    rows = rows[~unlabelled].drop(columns="_merge").reset_index(drop=True)

    official = dict(zip(split["dicom_id"], split["split"].str.strip().str.lower()))
    bad = sorted({v for v in official.values() if v not in ("train", "validate", "test")})
    if bad:
        raise DataPrepError(f"{split_path}: split value {bad[0]!r} is not one of train, validate, test")
    rows["split"] = rows["dicom_id"].map(official).replace({"validate": "val"})
    if rows["split"].isna().any():
        missing = rows["dicom_id"][rows["split"].isna()]
        raise DataPrepError(f"{split_path}: image {missing.iloc[0]!r} has no split ({len(missing)} such images)")
    check_official_patients(rows["subject_id"], rows["split"], f"{split_path}")

    # Sex and age are in MIMIC-IV's patients table, not here: missing.
    out = pd.DataFrame({"image_id": rows["dicom_id"], "patient_id": rows["subject_id"], "split": rows["split"],
                        **subgroup_columns(rows.index, view=rows["ViewPosition"])})
    for finding in findings:
        out[finding] = rows[finding].astype(np.int8)
    out["path"] = [
        str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
        for d, s, t in zip(rows["dicom_id"], rows["subject_id"], rows["study_id"])
    ] if find_images else None
    return SourceTable(source.name, findings, out, warnings)


# The CheXpert labeler leaves a finding blank when the report does not mention it.
READER = Reader("mimic", read_mimic, order=2,
                layout="MIMIC-CXR-JPG folder (mimic-cxr-2.0.0-{chexpert,split,metadata}.csv[.gz], files/).",
                settings=("labeler",), blank="negative")
