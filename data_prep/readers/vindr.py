"""VinDr-CXR: annotations/image_labels_{train,test}.csv (three reads per training image, the
consensus for test images), DICOMs under train/ and test/; label_maps/vindr.yaml maps its labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrcommon.errors import DataPrepError
from cxrmodel.labels import NEGATIVE, POSITIVE
from data_prep.findings import in_label_order, load_preset
from data_prep.readers.common import (
    Reader,
    SourceTable,
    csv_line,
    ignored_warning,
    read_csv,
    require_columns,
    required_file,
)

if TYPE_CHECKING:
    from data_prep.config import SourceConfig


def read_vindr(source: SourceConfig, find_images: bool) -> SourceTable:
    """Three reads per training image merged by `vote`, the consensus for test images; DICOM
    images at train/<image_id>.dicom and test/<image_id>.dicom. No patient ids exist."""
    root = source.path
    preset = load_preset("vindr")
    parts, findings, ignored = [], None, []
    for split, official in (("train", "train_val"), ("test", "test")):
        path = required_file(root / "annotations", f"image_labels_{split}", f"VinDr-CXR {split} labels")
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
    return SourceTable(source.name, findings, rows, warnings + ignored_warning(source, root / "annotations",
                                                                               sorted(set(ignored))))


READER = Reader("vindr", read_vindr, order=3,
                layout="VinDr-CXR folder (annotations/image_labels_{train,test}.csv, train/, test/ DICOMs).",
                settings=("vote",))


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
