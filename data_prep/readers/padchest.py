"""PadChest: one table of images with a Python-style list of label terms each, 16-bit PNGs under
their ImageDir; label_maps/padchest.yaml maps the terms."""

from __future__ import annotations

import ast
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
    view_filter,
)

if TYPE_CHECKING:
    from data_prep.config import SourceConfig


PADCHEST_TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19"


def read_padchest(source: SourceConfig, find_images: bool) -> SourceTable:
    """One row per image, `Labels` a Python-style list of terms (absent = negative); 16-bit PNGs
    at <ImageDir>/<ImageID>; no official split."""
    root = source.path
    path = required_file(root, PADCHEST_TABLE, "the PadChest label table")
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
    df = df[view_filter(df["Projection"], source.views)]
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
    warnings = ignored_warning(source, path, ignored)
    if bad_rows:
        warnings.append(f"{source.name}: {len(bad_rows)} rows with an empty or unparsable Labels cell skipped "
                        f"(first: {path.name} line {csv_line(bad_rows[0])})")
    return SourceTable(source.name, findings, rows.reset_index(drop=True), warnings)


READER = Reader("padchest", read_padchest, order=4,
                layout="PadChest folder (PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz], image folders).",
                settings=("skip_bad_labels",))


def _label_list(cell: str) -> list[str] | None:
    """"['a', ' b']" -> ['a', 'b']; None when empty, not a list of strings, or an empty list."""
    try:
        value = ast.literal_eval(cell.strip()) if cell.strip() else None
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        return None
    return [t.strip() for t in value if t.strip()]
