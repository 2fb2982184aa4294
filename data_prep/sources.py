"""One reader per raw dataset format, each returning canonical rows.

A `SourceTable` holds one row per image with columns `image_id` (the dataset's own id), `path`
(absolute image path, or None where the image was not found), `patient_id`, `split`
("train" / "val" / "test", "train_val" for NIH's official train+val list, or None when the
dataset has no official split) and one int8 column per finding the dataset labels (1 / 0 / -2).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.labels import NEGATIVE, POSITIVE, UNKNOWN
from data_prep.config import SourceConfig
from data_prep.errors import DataPrepError
from data_prep.split import SPLITS, patients_crossing_splits
from data_prep.labels import (
    canonical_name,
    in_label_order,
    is_no_finding,
)

log = logging.getLogger(__name__)



@dataclass
class SourceTable:
    name: str
    findings: list[str]
    rows: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def read_source(source: SourceConfig, *, find_images: bool = True, allow_outside_root: bool = False) -> SourceTable:
    """Read one dataset's label table (and, with `find_images`, locate its image files, which must
    lie inside the dataset's folder unless `allow_outside_root`)."""
    if not source.path.exists():
        raise DataPrepError(f"dataset {source.name!r}: {source.path} does not exist")
    from data_prep import public_sets  # its readers build on this module's helpers

    reader = {"nih": _read_nih, "chexpert": _read_chexpert, "csv": _read_generic_csv, "mimic": public_sets.read_mimic,
              "vindr": public_sets.read_vindr, "padchest": public_sets.read_padchest}[source.kind]
    table = reader(source, find_images)
    if table.rows.empty:
        raise DataPrepError(f"dataset {source.name!r} ({source.path}) has no images after filtering")
    duplicated = table.rows["image_id"][table.rows["image_id"].duplicated()]
    if not duplicated.empty:
        raise DataPrepError(
            f"dataset {source.name!r}: duplicate image ids, e.g. {duplicated.iloc[0]!r} "
            f"({len(duplicated)} duplicates)"
        )
    if find_images and not allow_outside_root:
        _refuse_paths_outside(table, dataset_root(source))
    return table


def dataset_root(source: SourceConfig) -> Path:
    """The folder a dataset's image paths must stay in: a generic CSV's own folder, else the dataset folder."""
    return source.path.parent if source.kind == "csv" and not source.path.is_dir() else source.path


def _refuse_paths_outside(table: SourceTable, root: Path) -> None:
    """Paths from a label table (`../../x`, an absolute path, a symlink) that resolve outside `root`
    would read files the dataset does not hold: refused, naming one."""
    prefix = os.path.join(os.path.realpath(root), "")
    real_dirs: dict[str, str] = {}  # each folder resolved once: a dataset has few folders, many files

    def resolved(path: str) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_dirs[folder], name)
        return os.path.realpath(real) if os.path.islink(real) else real

    paths = table.rows["path"].dropna()
    outside = [(i, p, real) for i, p in paths.items() if not (real := resolved(p)).startswith(prefix)]
    if outside:
        index, path, real = outside[0]
        image_id = table.rows["image_id"][index]
        raise DataPrepError(
            f"dataset {table.name!r}: {len(outside)} image path(s) lead outside its folder {root}, e.g. image "
            f"{image_id!r}: {path}" + (f" (-> {real})" if real != os.path.abspath(path) else "")
            + "; refused (a label table may only name files inside its dataset). Move the images in, or set "
            "prepare.allow_outside_root=true if the table is yours"
        )


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


# ---------------------------------------------------------------- NIH ChestX-ray14


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


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _read_nih(source: SourceConfig, find_images: bool) -> SourceTable:
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

    rows = pd.DataFrame(
        {"image_id": df["Image Index"], "patient_id": df["Patient ID"].str.strip()}
    )
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


def check_official_patients(patients: pd.Series, split: pd.Series, where: str) -> None:
    crossing = patients_crossing_splits(patients, split)
    if crossing:
        raise DataPrepError(
            f"{where}: patient {crossing[0]!r} appears in more than one official split "
            f"({len(crossing)} such patients); official splits must be patient-disjoint"
        )


def _locate(image_ids: pd.Series, index: dict[str, str]) -> pd.Series:
    return image_ids.map(lambda i: index.get(os.path.basename(i)))


# ---------------------------------------------------------------- CheXpert

_CHEXPERT_META = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_CHEXPERT_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")


def table_file(folder: Path, stem: str) -> Path | None:
    """folder/stem.csv, or its gzipped twin."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _find_chexpert_folder(path: Path) -> Path:
    for folder in (path, *(path / name for name in _CHEXPERT_FOLDERS)):
        if table_file(folder, "train"):
            return folder
    raise DataPrepError(
        f"{path}: no CheXpert train.csv here nor in {' or '.join(_CHEXPERT_FOLDERS)}/"
    )


def _read_chexpert(source: SourceConfig, find_images: bool) -> SourceTable:
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


def _read_chexpert_csv(source: SourceConfig, csv_path: Path, split: str) -> tuple[pd.DataFrame, list[str]]:
    df = read_csv(csv_path)
    require_columns(df, ["Path", "Frontal/Lateral"], csv_path)
    label_columns = [c for c in df.columns if c not in _CHEXPERT_META]
    if source.views != "all":
        df = df[df["Frontal/Lateral"].str.lower() == source.views]
    patient = df["Path"].str.extract(r"(patient\d+)", expand=False)
    if patient.isna().any():
        bad = patient.index[patient.isna()][0]
        raise DataPrepError(
            f"{csv_path} line {csv_line(bad)}: cannot find 'patientNNNNN' in Path {df['Path'][bad]!r}"
        )
    rows = pd.DataFrame({"image_id": df["Path"], "patient_id": patient, "split": split})
    findings = _label_columns(source, df, label_columns, csv_path, rows)
    return rows, findings


def _label_columns(
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


# ---------------------------------------------------------------- generic CSV

_GENERIC_META = ("path", "patient_id", "split", "image_id")


def _read_generic_csv(source: SourceConfig, find_images: bool) -> SourceTable:
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
    rows = pd.DataFrame({"image_id": image_id, "patient_id": df["patient_id"].str.strip()})
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
    label_columns = [c for c in df.columns if c not in _GENERIC_META]
    findings = _label_columns(source, df, label_columns, csv_path, rows)
    if not findings:
        raise DataPrepError(f"{csv_path}: no finding columns (expected one column per finding it labels)")
    if find_images:
        base = csv_path.parent
        rows["path"] = [p if os.path.isabs(p) else str(base / p) for p in df["path"].str.strip()]
    else:
        rows["path"] = None
    return SourceTable(source.name, findings, rows)
