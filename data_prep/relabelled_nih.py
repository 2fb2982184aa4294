"""Google's 2019 radiologist relabelling of NIH images (Majkowska et al., Radiology 2020).

The CSV has the NIH `Data_Entry` columns (`Image Index`, `Patient ID`, ...), the four findings
`Fracture`, `Pneumothorax`, `Airspace opacity`, `Nodule or mass` as `YES` / `NO` strings, and a
`Set Id` column telling test rows from validation rows. A blank or `HEDGE` cell is an unknown label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrcommon.errors import DataPrepError
from cxrmodel.labels import NEGATIVE, POSITIVE, UNKNOWN

RELABELLED_FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
IMAGE_COLUMN = "Image Index"
SET_COLUMN = "Set Id"
_VALUES = {"YES": POSITIVE, "NO": NEGATIVE, "HEDGE": UNKNOWN, "": UNKNOWN}
# `--set` name -> the spellings of that set in a `Set Id` column.
SETS = {"test": ("test",), "val": ("val", "valid", "validation", "tune")}


def read_relabelled_nih(path: Path, set_name: str = "test") -> pd.DataFrame:
    """Rows of the `set_name` set: `image_id`, then the four findings as int8 1 / 0 / -2.

    A file without a `Set Id` column is taken whole (Google also ships one file per set)."""
    if set_name not in SETS:
        raise DataPrepError(f"--set {set_name!r}: expected one of {', '.join(SETS)}")
    if not path.is_file():
        raise DataPrepError(f"relabelled NIH file {path} does not exist")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (IMAGE_COLUMN, *RELABELLED_FINDINGS) if c not in table.columns]
    if missing:
        raise DataPrepError(
            f"{path}: missing column(s) {missing}; expected {IMAGE_COLUMN!r}, "
            f"{', '.join(repr(f) for f in RELABELLED_FINDINGS)} and optionally {SET_COLUMN!r}"
        )
    if SET_COLUMN in table.columns:
        spelled = table[SET_COLUMN].str.strip().str.lower()
        known = {s for spellings in SETS.values() for s in spellings}
        bad = table.index[~spelled.isin(known)]
        if len(bad):
            row = bad[0]
            raise DataPrepError(
                f"{path}, row {row + 2}: {SET_COLUMN} {table.at[row, SET_COLUMN]!r} is neither a test set "
                f"nor a validation set; expected one of {sorted(known)}"
            )
        table = table[spelled.isin(SETS[set_name])]
    out = pd.DataFrame({"image_id": table[IMAGE_COLUMN].str.strip()})
    for finding in RELABELLED_FINDINGS:
        cells = table[finding].str.strip().str.upper()
        bad = cells.index[~cells.isin(list(_VALUES))]
        if len(bad):
            row = bad[0]
            raise DataPrepError(
                f"{path}, row {row + 2}, column {finding!r}: {table.at[row, finding]!r} is not YES, NO, HEDGE or blank"
            )
        out[finding] = cells.map(_VALUES).astype(np.int8)
    duplicated = out["image_id"][out["image_id"].duplicated()]
    if not duplicated.empty:
        raise DataPrepError(f"{path}: image {duplicated.iloc[0]!r} appears more than once in the {set_name} set")
    return out.reset_index(drop=True)
