"""Readers of the large public sets beyond NIH and CheXpert: MIMIC-CXR-JPG, VinDr-CXR, PadChest.

Each reads its release's own file layout into a `SourceTable`; which of its labels become which
canonical finding is data (`label_maps/<kind>.yaml`, under the user's `label_map`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.labels import NEGATIVE, POSITIVE
from data_prep.config import SourceConfig
from data_prep.errors import DataPrepError
from data_prep.labels import in_label_order, load_preset
from data_prep.sources import (
    SourceTable,
    check_official_patients,
    chexpert_style_values,
    csv_line,
    read_csv,
    require_columns,
    table_file,
)

FRONTAL_VIEWS = {"PA", "AP", "AP_HORIZONTAL", "AP AXIAL", "PA LLD", "AP LLD"}
LATERAL_VIEWS = {"LATERAL", "LL", "L", "RL", "LAO", "RAO"}


def _view_filter(views: pd.Series, wanted: str) -> pd.Series:
    """Rows to keep for `views: all|frontal|lateral`, from a view-position column."""
    if wanted == "all":
        return pd.Series(True, index=views.index)
    upper = views.str.strip().str.upper()
    return upper.isin(FRONTAL_VIEWS if wanted == "frontal" else LATERAL_VIEWS)


def _ignored_warning(source: SourceConfig, where: Path, ignored: list[str]) -> list[str]:
    if not ignored:
        return []
    return [f"{source.name}: labels without a canonical finding in {where.name} are ignored (map them with "
            f"label_map to use them): {', '.join(sorted(ignored))}"]


def _required_file(folder: Path, stem: str, what: str) -> Path:
    path = table_file(folder, stem)
    if path is None:
        raise DataPrepError(f"{folder}: no {stem}.csv or {stem}.csv.gz ({what})")
    return path


# ---------------------------------------------------------------- MIMIC-CXR-JPG

def read_mimic(source: SourceConfig, find_images: bool) -> SourceTable:
    """Labels per study (every image of the study gets them), the official split and the view
    per image; images at files/p<2 digits>/p<subject>/s<study>/<dicom_id>.jpg."""
    root = source.path
    labels_path = _required_file(root, f"mimic-cxr-2.0.0-{source.labeler}", f"the {source.labeler} labels")
    split_path = _required_file(root, "mimic-cxr-2.0.0-split", "the official split")
    meta_path = _required_file(root, "mimic-cxr-2.0.0-metadata", "views per image")
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

    meta = meta[_view_filter(meta["ViewPosition"], source.views)]
    rows = meta[["dicom_id", "subject_id", "study_id"]].merge(studies, on=["subject_id", "study_id"], how="left",
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

    out = pd.DataFrame({"image_id": rows["dicom_id"], "patient_id": rows["subject_id"], "split": rows["split"]})
    for finding in findings:
        out[finding] = rows[finding].astype(np.int8)
    out["path"] = [
        str(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
        for d, s, t in zip(rows["dicom_id"], rows["subject_id"], rows["study_id"])
    ] if find_images else None
    return SourceTable(source.name, findings, out, warnings)


# ---------------------------------------------------------------- VinDr-CXR

def read_vindr(source: SourceConfig, find_images: bool) -> SourceTable:
    """Three reads per training image merged by `vote`, the consensus for test images; DICOM
    images at train/<image_id>.dicom and test/<image_id>.dicom. No patient ids exist."""
    root = source.path
    preset = load_preset("vindr")
    parts, findings, ignored = [], None, []
    for split, official in (("train", "train_val"), ("test", "test")):
        path = _required_file(root / "annotations", f"image_labels_{split}", f"VinDr-CXR {split} labels")
        df = read_csv(path)
        require_columns(df, ["image_id"], path)
        columns = [c for c in df.columns if c not in ("image_id", "rad_id")]
        names, unlisted = preset.resolve(columns, source.label_map, where=str(path))
        ignored += unlisted
        reads = pd.DataFrame({"image_id": df["image_id"].str.strip()})
        for column in names:
            values = pd.to_numeric(df[column].str.strip(), errors="coerce")
            bad = ~values.isin([0, 1])
            if bad.any():
                raise DataPrepError(f"{path} line {csv_line(bad.idxmax())} column {column!r}: value "
                                    f"{df[column][bad.idxmax()]!r} is not 0 or 1")
            reads[column] = values.astype(np.int64)
        image = _merge_reads(reads, names, source.vote)
        image["split"] = official
        parts.append(image)
        this = in_label_order(names.values())
        if findings is not None and this != findings:
            raise DataPrepError(f"{path}: its findings {this} differ from the training labels' {findings}")
        findings = this
    rows = pd.concat(parts, ignore_index=True)
    rows["patient_id"] = rows["image_id"]
    rows["path"] = [str(root / ("test" if s == "test" else "train") / f"{i}.dicom")
                    for i, s in zip(rows["image_id"], rows["split"])] if find_images else None
    warnings = [f"{source.name}: VinDr-CXR has no patient ids: each image is its own patient, so one patient's "
                "images may fall into both train and val"]
    return SourceTable(source.name, findings, rows, warnings + _ignored_warning(source, root / "annotations",
                                                                               sorted(set(ignored))))


def _merge_reads(reads: pd.DataFrame, names: dict[str, str], vote: str) -> pd.DataFrame:
    """One row per image: a finding (several columns may map to it) is positive in a read when
    any of its columns is; across reads positive when any (vote any) or more than half (majority)."""
    per_read = pd.DataFrame({"image_id": reads["image_id"]})
    for finding in in_label_order(names.values()):
        per_read[finding] = reads[[c for c, n in names.items() if n == finding]].max(axis=1)
    grouped = per_read.groupby("image_id", sort=False)
    positive = grouped.max() if vote == "any" else grouped.sum() * 2 > grouped.count()
    merged = pd.DataFrame(np.where(positive, POSITIVE, NEGATIVE).astype(np.int8), columns=positive.columns)
    merged.insert(0, "image_id", positive.index)
    return merged


# ---------------------------------------------------------------- PadChest

PADCHEST_TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19"


def read_padchest(source: SourceConfig, find_images: bool) -> SourceTable:
    """One row per image, `Labels` a Python-style list of terms (absent = negative); 16-bit PNGs
    at <ImageDir>/<ImageID>; no official split."""
    root = source.path
    path = _required_file(root, PADCHEST_TABLE, "the PadChest label table")
    df = read_csv(path)
    require_columns(df, ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"], path)
    terms, bad_rows = [], []
    for index, cell in df["Labels"].items():
        parsed = _label_list(cell)
        if parsed is None:
            if not source.skip_bad_labels:
                raise DataPrepError(f"{path} line {csv_line(index)} column 'Labels': {cell!r} is not a list of labels "
                                    "like ['pleural effusion', 'cardiomegaly'] (skip such rows with skip_bad_labels: true)")
            bad_rows.append(index)
        terms.append(parsed)
    df = df.assign(terms=terms).drop(index=bad_rows)
    df = df[_view_filter(df["Projection"], source.views)]
    preset = load_preset("padchest")
    names, ignored = preset.resolve(sorted({t for ts in df["terms"] for t in ts}), source.label_map, where=str(path))
    findings = in_label_order(names.values())
    rows = pd.DataFrame({"image_id": df["ImageID"].str.strip(), "patient_id": df["PatientID"].str.strip(),
                         "split": None})
    for finding in findings:
        spellings = {t for t, n in names.items() if n == finding}
        rows[finding] = np.where(df["terms"].map(lambda ts: not spellings.isdisjoint(ts)), POSITIVE, NEGATIVE
                                 ).astype(np.int8)
    rows["path"] = [str(root / d.strip() / i) for d, i in zip(df["ImageDir"], rows["image_id"])] if find_images else None
    warnings = _ignored_warning(source, path, ignored)
    if bad_rows:
        warnings.append(f"{source.name}: {len(bad_rows)} rows with an empty or unparsable Labels cell skipped "
                        f"(first: {path.name} line {csv_line(bad_rows[0])})")
    return SourceTable(source.name, findings, rows.reset_index(drop=True), warnings)


def _label_list(cell: str) -> list[str] | None:
    """"['a', ' b']" -> ['a', 'b']; None when empty, not a list of strings, or an empty list."""
    try:
        value = ast.literal_eval(cell.strip()) if cell.strip() else None
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        return None
    return [t.strip() for t in value if t.strip()]
