"""What every reader shares: the `SourceTable` it returns, the `Reader` it declares, and the helpers
for label tables (CSV reading, required columns and files, CheXpert-style label values, views,
official splits).

A `SourceTable` holds one row per image with columns `image_id` (the dataset's own id), `path`
(absolute image path, or None where the image was not found), `patient_id`, `split`
("train" / "val" / "test", "train_val" for NIH's official train+val list, or None when the
dataset has no official split), the SUBGROUP_COLUMNS (sex, age, view; missing where the dataset does
not say) and one int8 column per finding the dataset labels (1 / 0 / -2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from cxrcommon.errors import DataPrepError
from cxrmodel.labels import NEGATIVE, POSITIVE, UNKNOWN
from data_prep.findings import canonical_name, in_label_order, is_no_finding
from data_prep.split import patients_crossing_splits

if TYPE_CHECKING:
    from data_prep.config import SourceConfig


# Who and how each image shows, where the dataset says (else missing): what `cxr evaluate --by` cuts
# results by. sex "F" / "M", age in years (0-120), view "PA" / "AP" / "LATERAL".
SUBGROUP_COLUMNS = ("sex", "age", "view")
_SEXES = {"f": "F", "female": "F", "m": "M", "male": "M"}
_VIEWS = {"pa": "PA", "ap": "AP", "lateral": "LATERAL", "lat": "LATERAL", "ll": "LATERAL", "rl": "LATERAL",
          "l": "LATERAL"}


def subgroup_columns(index: pd.Index, *, sex: pd.Series | None = None, age: pd.Series | None = None,
                     view: pd.Series | None = None) -> dict[str, pd.Series]:
    """The SUBGROUP_COLUMNS from a dataset's own spellings (M / Male, 57 / "57.0", PA / Lateral);
    anything else, or a column the dataset lacks, is missing (<NA> / NaN)."""
    def mapped(values: pd.Series | None, table: dict[str, str]) -> pd.Series:
        if values is None:
            return pd.Series(pd.NA, index=index, dtype="string")
        return values.astype(str).str.strip().str.lower().map(table).astype("string")

    years = pd.Series(np.nan, index=index, dtype=np.float32) if age is None else \
        pd.to_numeric(age, errors="coerce").astype(np.float32)
    return {"sex": mapped(sex, _SEXES), "age": years.where((years >= 0) & (years <= 120)),
            "view": mapped(view, _VIEWS)}


@dataclass
class SourceTable:
    name: str
    findings: list[str]
    rows: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def _dataset_folder(path: Path) -> Path:
    return path


@dataclass(frozen=True)
class Reader:
    """One raw dataset format: what `kind: <kind>` in prepare.sources reads and how."""

    kind: str
    read: Callable[[SourceConfig, bool], SourceTable]  # (source, find_images) -> its table
    layout: str  # the files it expects: the help of cxr prepare's --<kind> option
    # Where its option and the dataset it names come among the others (the paper's two first).
    order: int = 100
    settings: tuple[str, ...] = ()  # SourceConfig settings only this kind reads
    blank: Literal["negative", "unknown"] = "unknown"  # what a blank label cell means by default
    folder_flag: bool = True  # cxr prepare has a --<kind> FOLDER option (csv has --csv NAME=FILE)
    # The folder its image paths must stay in, from the configured path.
    root: Callable[[Path], Path] = _dataset_folder


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataPrepError(f"{path}: cannot be read as CSV: {exc}") from exc


def require_columns(df: pd.DataFrame, required: list[str], path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataPrepError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}"
        )


def csv_line(index: int) -> int:
    """CSV line number of a 0-based data row (line 1 is the header)."""
    return int(index) + 2


def table_file(folder: Path, stem: str) -> Path | None:
    """folder/stem.csv, or its gzipped twin."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).exists():
            return folder / name
    return None


def required_file(folder: Path, stem: str, what: str) -> Path:
    path = table_file(folder, stem)
    if path is None:
        raise DataPrepError(f"{folder}: no {stem}.csv or {stem}.csv.gz ({what})")
    return path


def check_official_patients(patients: pd.Series, split: pd.Series, where: str) -> None:
    crossing = patients_crossing_splits(patients, split)
    if crossing:
        raise DataPrepError(
            f"{where}: patient {crossing[0]!r} appears in more than one official split "
            f"({len(crossing)} such patients); official splits must be patient-disjoint"
        )


FRONTAL_VIEWS = {"PA", "AP", "AP_HORIZONTAL", "AP AXIAL", "PA LLD", "AP LLD"}
LATERAL_VIEWS = {"LATERAL", "LL", "L", "RL", "LAO", "RAO"}


def view_filter(views: pd.Series, wanted: str) -> pd.Series:
    """Rows to keep for `views: all|frontal|lateral`, from a view-position column."""
    if wanted == "all":
        return pd.Series(True, index=views.index)
    upper = views.str.strip().str.upper()
    return upper.isin(FRONTAL_VIEWS if wanted == "frontal" else LATERAL_VIEWS)


def ignored_warning(source: SourceConfig, where: Path, ignored: list[str]) -> list[str]:
    if not ignored:
        return []
    return [f"{source.name}: labels without a canonical finding in {where.name} are ignored (map them with "
            f"label_map to use them): {', '.join(sorted(ignored))}"]


def label_columns(
    source: SourceConfig, df: pd.DataFrame, columns: list[str], csv_path: Path, rows: pd.DataFrame
) -> list[str]:
    """Add one int8 column per mapped finding to `rows`; return the findings in canonical order."""
    names: dict[str, str] = {}
    for column in columns:
        if is_no_finding(column):
            continue
        name = canonical_name(column, source.label_map, where=f"{csv_path} column {column!r}")
        if name is not None:
            names[column] = name
    return chexpert_style_values(source, df, names, csv_path, rows)


def chexpert_style_values(
    source: SourceConfig, df: pd.DataFrame, names: dict[str, str], csv_path: Path, rows: pd.DataFrame
) -> list[str]:
    """Columns of 1 / 0 / -1 / blank (CheXpert's labeler) -> one int8 column per finding in `rows`,
    by the source's `uncertain` and `blank` policies; returns the findings in canonical order."""
    uncertain = {"ones": POSITIVE, "zeros": NEGATIVE, "ignore": UNKNOWN}[source.uncertain]
    blank = {"negative": NEGATIVE, "unknown": UNKNOWN}[source.blank_value]
    seen: dict[str, str] = {}
    for column, name in names.items():
        if name in seen:
            raise DataPrepError(f"{csv_path}: columns {seen[name]!r} and {column!r} both map to finding {name!r}")
        seen[name] = column
    for column, name in names.items():
        raw = df[column].str.strip()
        numeric = pd.to_numeric(raw, errors="coerce")
        valid = (raw == "") | numeric.isin([1.0, 0.0, -1.0])
        if not valid.all():
            bad = valid.index[~valid][0]
            raise DataPrepError(
                f"{csv_path} line {csv_line(bad)} column {column!r}: value {df[column][bad]!r} "
                "is not one of 1, 0, -1 or blank"
            )
        values = np.select(
            [raw == "", numeric == 1.0, numeric == 0.0], [blank, POSITIVE, NEGATIVE], default=uncertain
        )
        rows[name] = values.astype(np.int8)
    return in_label_order(names.values())
