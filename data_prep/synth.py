"""`cxr synth`: NIH-, CheXpert- and in-house-like datasets in the exact on-disk formats of the real ones.

The images carry learnable signal. Every finding of Table I has its own pattern at its own place
(a blob, ring, stripes, checkerboard, cross or square frame of its own size, on a 5x5 grid over the
chest); a present finding draws its pattern.
Each dataset has its own look (contrast, gamma, noise, size, file format), and findings a dataset
does not label still appear in its images, as in real data: domain and label discrepancy to mine.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from cxrcommon.errors import DataPrepError
from data_prep.findings import CANONICAL_FINDINGS

NIH_FINDINGS = CANONICAL_FINDINGS[:14]
NIH_SPELLING = {"Pleural Thickening": "Pleural_Thickening"}
CHEXPERT_COLUMNS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
INHOUSE_FINDINGS = (
    "Fibrosis", "Hernia", "Infiltration", "Pleural Thickening", "Mass", "Nodule", "Atelectasis",
    "Cardiomegaly", "Consolidation", "Effusion", "Pneumonia", "Pneumothorax", "Fracture",
    "Tuberculosis",
)
RELABELLED_FILE = "google2019_nih-chest-xray-labels.csv"
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


@dataclass(frozen=True)
class Look:
    """A dataset's appearance."""

    contrast: float
    gamma: float
    noise: float
    brightness: float


LOOKS = {
    "nih": Look(contrast=1.0, gamma=1.0, noise=0.03, brightness=0.0),
    "chexpert": Look(contrast=0.8, gamma=1.4, noise=0.06, brightness=0.08),
    "inhouse": Look(contrast=1.15, gamma=0.8, noise=0.02, brightness=-0.05),
}


SHAPES = ("blob", "ring", "horizontal stripes", "vertical stripes", "checkerboard", "cross", "square frame")
SHAPE_RADII = (0.3, 0.36, 0.42)  # of a grid cell: finding k has shape k % 7 at radius k % 3 (21 pairs)


def finding_cell(k: int) -> tuple[int, int]:
    """(row, column) on the 5x5 grid where canonical finding k draws its pattern."""
    return k // 5, k % 5


def finding_pattern(k: int, size: int, *, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                    period_scale: float = 1.0) -> np.ndarray:
    """(size, size) float32 template of canonical finding k, values in [0, 1]: its shape at its grid
    cell, moved by `offset` (in cells), its radius times `scale`, its stripe period times `period_scale`.

    Each finding has a shape no other finding has (one of 7 shapes at one of 3 sizes) at its own grid
    cell, so a model can tell findings apart by what it sees, as radiologists do, not only by where:
    a heat map then has a place to point at (tests/test_explain.py)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cell = 1.0 / 5
    period = 0.25 * cell * period_scale
    row, column = finding_cell(k)
    dx, dy = xx - (column + 0.5 + offset[0]) * cell, yy - (row + 0.5 + offset[1]) * cell
    r, radius = np.hypot(dx, dy), SHAPE_RADII[k % 3] * cell * scale
    disc = r < radius
    shape = SHAPES[k % 7]
    if shape == "blob":
        p = np.exp(-((r / radius) ** 2))
    elif shape == "ring":
        p = np.exp(-(((r - 0.75 * radius) / (0.08 * cell * period_scale)) ** 2))
    elif shape == "horizontal stripes":
        p = (np.cos(dy * 2 * np.pi / period) > 0) * disc
    elif shape == "vertical stripes":
        p = (np.cos(dx * 2 * np.pi / period) > 0) * disc
    elif shape == "checkerboard":
        p = (np.cos(dx * 2 * np.pi / period) * np.cos(dy * 2 * np.pi / period) > 0) * disc
    elif shape == "cross":
        p = ((np.abs(dx) < 0.25 * radius) & (np.abs(dy) < radius)) | ((np.abs(dy) < 0.25 * radius) & (np.abs(dx) < radius))
    else:  # square frame
        p = (np.maximum(np.abs(dx), np.abs(dy)) < radius) & (np.maximum(np.abs(dx), np.abs(dy)) > 0.6 * radius)
    return p.astype(np.float32)


def _finding_patterns(size: int) -> np.ndarray:
    """(21, size, size): every canonical finding's template, unmoved."""
    return np.stack([finding_pattern(k, size) for k in range(len(CANONICAL_FINDINGS))])


def chest(size: int, rng: np.random.Generator) -> np.ndarray:
    """A plain chest-like background: two darker lung fields, a brighter mediastinum."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    jitter = rng.normal(0, 0.02, 2)
    lungs = np.exp(-(((xx - 0.3 - jitter[0]) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
        -(((xx - 0.7 - jitter[1]) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2)
    )
    return (0.65 - 0.35 * lungs).astype(np.float32)


def with_look(image: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """A drawn image as a dataset's scanner shows it: its contrast, brightness, gamma and noise, in [0, 1]."""
    image = (image - 0.5) * look.contrast + 0.5 + look.brightness
    image = np.clip(image, 0, 1) ** look.gamma
    image += rng.normal(0, look.noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


class DefaultImages:
    """The default look's image maker (an `ImageMaker`): each finding's pattern on a chest, in a look."""

    def __init__(self, size: int, look: Look, rng: np.random.Generator):
        self.size, self.look, self.rng = size, look, rng
        self.patterns = _finding_patterns(size)

    def make(self, present: np.ndarray) -> np.ndarray:
        """Float image in [0, 1] showing the findings in the boolean vector `present` (21,)."""
        image = chest(self.size, self.rng)
        image += 0.3 * np.tensordot(present.astype(np.float32), self.patterns, axes=1)
        return with_look(image, self.look, self.rng)


class ImageMaker(Protocol):
    def make(self, present: np.ndarray) -> np.ndarray:
        """A float image in [0, 1] showing the findings in the boolean vector `present` (21,)."""


@dataclass
class Drawing:
    """A generated dataset's content, row i for image i: `present` (n, 21) what the image shows (the
    truth, written to truth.csv), `labelled` (n, 21) what its label table says (label noise flips
    some), `maker.make(present[i])` draws it."""

    present: np.ndarray
    labelled: np.ndarray
    maker: ImageMaker


def default_drawing(n: int, size: int, look: Look, rng: np.random.Generator) -> Drawing:
    present = _presence(rng, n)
    return Drawing(present, present, DefaultImages(size, look, rng))


TRUTH_FILE = "truth.csv"


def _write_truth(folder: Path, image_ids: list[str], present: np.ndarray) -> None:
    """Every finding drawn in every image, labelled or not, keyed by the image's id in its label
    table (`cxr prepare` never reads this file; `cxr diagnose` does)."""
    with open(folder / TRUTH_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", *CANONICAL_FINDINGS])
        writer.writerows([image_id, *present[i].astype(int).tolist()] for i, image_id in enumerate(image_ids))


def _write(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image, params or [])
    assert ok, path
    path.write_bytes(data.tobytes())


def _presence(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 21) booleans; each finding has its own prevalence between 10% and 35%."""
    prevalence = np.linspace(0.10, 0.35, len(CANONICAL_FINDINGS))
    rng.shuffle(prevalence)
    present = rng.random((n, len(CANONICAL_FINDINGS))) < prevalence
    # Every finding present at least once and absent at least once, even in tiny sets.
    columns = np.arange(len(CANONICAL_FINDINGS))
    present[columns % n, columns] = True
    present[(columns + n // 2) % n, columns] = False
    return present


def _patients(rng: np.random.Generator, n: int, images_per_patient: tuple[int, int] = (1, 3)) -> list[int]:
    """Patient number per image: between images_per_patient[0] and [1] images each, in order."""
    low, high = images_per_patient
    patients, p = [], 0
    while len(patients) < n:
        p += 1
        patients.extend([p] * int(rng.integers(low, high + 1)))
    return patients[:n]


def _column(name: str) -> int:
    return CANONICAL_FINDINGS.index(name)


def synth_nih(out: Path, n: int, size: int, rng: np.random.Generator,
              images_per_patient: tuple[int, int] = (1, 3), drawing: Drawing | None = None) -> None:
    drawing = drawing or default_drawing(n, size, LOOKS["nih"], rng)
    present, labelled, maker = drawing.present, drawing.labelled, drawing.maker
    patients = _patients(rng, n, images_per_patient)
    rows, follow = [], {}
    for i in range(n):
        p = patients[i]
        follow[p] = follow.get(p, -1) + 1
        name = f"{p:08d}_{follow[p]:03d}.png"
        labels = [NIH_SPELLING.get(f, f) for f in NIH_FINDINGS if labelled[i, _column(f)]]
        image = (maker.make(present[i]) * 255).round().astype(np.uint8)
        if i % 25 == 7:  # the real release has a few RGBA PNGs
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
        _write(out / "images_001" / "images" / name, image)
        rows.append(
            [name, "|".join(labels) or "No Finding", follow[p], p, int(rng.integers(20, 90)),
             "MF"[i % 2], "PA" if i % 3 else "AP", 2500 + i % 500, 2048 + i % 700, 0.143, 0.143]
        )
    with open(out / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        f.write(NIH_HEADER + "\n")
        csv.writer(f, lineterminator="\n").writerows(rows)
    # Official lists are patient-disjoint: a fifth of the patients are test patients.
    test_patients = {p for p in set(patients) if p % 5 == 0}
    names = [r[0] for r in rows]
    (out / "test_list.txt").write_text("\n".join(x for x, r in zip(names, rows) if r[3] in test_patients) + "\n")
    (out / "train_val_list.txt").write_text(
        "\n".join(x for x, r in zip(names, rows) if r[3] not in test_patients) + "\n"
    )
    _write_relabelled(out / RELABELLED_FILE, rows, present, test_patients)
    _write_truth(out, names, present)


def _write_relabelled(path: Path, rows: list[list], present: np.ndarray, test_patients: set[int]) -> None:
    """Google's relabelled NIH subsets: every official test image, and a validation set drawn from
    every fourth train+val patient. The experts see the truth the images show."""
    covers = {
        "Fracture": ("Fracture",), "Pneumothorax": ("Pneumothorax",),
        "Airspace opacity": ("Edema", "Consolidation", "Pneumonia", "Atelectasis", "Infiltration"),
        "Nodule or mass": ("Mass", "Nodule"),
    }
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Image Index", "Patient ID", "Follow-up #", "View Position", *covers, "Set Id"])
        for i, row in enumerate(rows):
            name, follow, patient, view = row[0], row[2], row[3], row[6]
            if patient not in test_patients and patient % 4:
                continue
            answers = ["YES" if present[i, [_column(c) for c in cs]].any() else "NO" for cs in covers.values()]
            writer.writerow([name, patient, follow, view, *answers,
                             "test" if patient in test_patients else "validation"])


def _chexpert_value(rng: np.random.Generator, present: bool, allow_uncertain: bool) -> str:
    if present:
        return "-1.0" if allow_uncertain and rng.random() < 0.15 else "1.0"
    if allow_uncertain and rng.random() < 0.5:
        return ""  # not mentioned: the most common CheXpert cell
    return "0.0"


def chexpert_valid_size(n: int) -> int:
    return max(n // 10, 4)


def synth_chexpert(out: Path, n: int, size: int, rng: np.random.Generator, drawing: Drawing | None = None) -> None:
    """`n` train.csv images and a tenth as many in valid.csv (its labels are experts': the
    drawing's labels for those rows should be the truth)."""
    folder = out / "CheXpert-v1.0-small"
    n_valid = chexpert_valid_size(n)
    drawing = drawing or default_drawing(n + n_valid, size, LOOKS["chexpert"], rng)
    present, labelled, maker = drawing.present, drawing.labelled, drawing.maker
    ids = []
    # CheXpert-small images are 320 px on their short side, portrait: keep that shape.
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *CHEXPERT_COLUMNS]
    patients = _patients(rng, n + n_valid)
    first_valid_patient = patients[n - 1] + 1
    for part, indices in (("train", range(n)), ("valid", range(n, n + n_valid))):
        rows, study = [], {}
        for i in indices:
            p = patients[i] if part == "train" else first_valid_patient + (i - n)
            study[p] = study.get(p, 0) + 1
            lateral = part == "train" and i % 7 == 3
            view = "view2_lateral.jpg" if lateral else "view1_frontal.jpg"
            rel = f"CheXpert-v1.0-small/{part}/patient{p:05d}/study{study[p]}/{view}"
            image = maker.make(present[i])
            if lateral:
                image = np.ascontiguousarray(image[:, ::-1] * 0.9)
            image = cv2.resize(image, (size, int(size * 1.2)), interpolation=cv2.INTER_LINEAR)
            _write(out / rel, (image * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
            ids.append(rel)
            values = [
                _chexpert_value(rng, bool(labelled[i, _column("Effusion" if c == "Pleural Effusion" else c)]), part == "train")
                for c in CHEXPERT_COLUMNS
            ]
            no_finding = "" if "1.0" in values or "-1.0" in values else "1.0"
            rows.append([rel, "Female" if i % 2 else "Male", int(rng.integers(20, 90)),
                         "Lateral" if lateral else "Frontal", "" if lateral else "AP", no_finding, *values])
        with open(folder / f"{part}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    _write_truth(out, ids, present)


def synth_inhouse(out: Path, n: int, size: int, rng: np.random.Generator, image_format: str = "dicom") -> None:
    """A hospital export: DICOM (a mix of the encodings PACS produce, see `write_dicom`) or
    16-bit PNGs holding 12-bit data."""
    present = _presence(rng, n)
    maker = DefaultImages(size, LOOKS["inhouse"], rng)
    patients = _patients(rng, n)
    rows = []
    for i in range(n):
        image = maker.make(present[i])
        if image_format == "dicom":
            rel = f"images/IH{i:06d}.dcm"
            write_dicom(out / rel, image, dicom_variant(i), f"IH-P{patients[i]:05d}", pixels=i != n - 1)
        else:
            rel = f"images/IH{i:06d}.png"
            _write(out / rel, (image * 4095).round().astype(np.uint16))
        values = [
            "" if rng.random() < 0.02 else str(int(present[i, _column(f)])) for f in INHOUSE_FINDINGS
        ]
        rows.append([rel, f"IH-P{patients[i]:05d}", *values])
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "patient_id", *INHOUSE_FINDINGS])
        writer.writerows(rows)
    _write_truth(out, [r[0] for r in rows], present)


def dicom_variant(i: int) -> dict:
    """How in-house image i is encoded: MONOCHROME1 (every 3rd), 12 or 16 bits stored, a rescale
    (every 4th), a window (every 5th), RLE or JPEG 2000 lossless (every 6th each)."""
    return {
        "photometric": "MONOCHROME1" if i % 3 == 1 else "MONOCHROME2",
        "bits": 12 if i % 2 == 0 else 16,
        "rescale": (0.5, -1024.0) if i % 4 == 3 else None,  # slope, intercept
        "window": i % 5 == 2,
        "syntax": {4: RLELossless, 5: JPEG2000Lossless}.get(i % 6, ExplicitVRLittleEndian),
    }


def write_dicom(path: Path, image: np.ndarray, variant: dict, patient: str, *, pixels: bool = True) -> None:
    """`image` (floats in [0, 1], bright = dense) as a DX file encoded as `variant` (see
    `dicom_variant`) says; without `pixels`, a file with no PixelData (as a PACS export of a
    report would be)."""
    top = 2 ** variant["bits"] - 1
    shown = 1.0 - image if variant["photometric"] == "MONOCHROME1" else image  # MONOCHROME1: dense is dark
    stored = (shown * top).round().astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient, path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.ViewPosition = "DX", patient, "PA"
    if pixels:
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, variant["photometric"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, variant["bits"], variant["bits"] - 1, 0
        slope, intercept = variant["rescale"] or (1.0, 0.0)
        if variant["rescale"]:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
        if variant["window"]:  # the middle 80% of the stored range, in modality units
            low, high = (0.1 * top) * slope + intercept, (0.9 * top) * slope + intercept
            ds.WindowCenter, ds.WindowWidth = (low + high) / 2, high - low
        ds.PixelData = stored.tobytes()
        if variant["syntax"] != ExplicitVRLittleEndian:
            ds.compress(variant["syntax"], stored)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


MIMIC_COLUMNS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)


def _hex_id(rng: np.random.Generator, digits: int) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), digits))


def _write_gz_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def synth_mimic(out: Path, n: int, size: int, rng: np.random.Generator) -> None:
    """MIMIC-CXR-JPG 2.0.0: labels per study from the CheXpert and NegBio labelers, the official
    split and the metadata (views) per image, JPEGs under files/p<2>/p<subject>/s<study>/. The
    last study has no label row, as a few real ones do."""
    maker = DefaultImages(size, LOOKS["chexpert"], rng)
    studies, subject, study = [], 10000000, 50000000
    while sum(len(images) for _, _, images in studies) < n:
        subject += int(rng.integers(1, 40))
        for _ in range(int(rng.integers(1, 3))):  # one or two studies per subject
            study += int(rng.integers(1, 500))
            studies.append((subject, study, ["PA", "LATERAL"][: int(rng.integers(1, 3))]))
    present = _presence(rng, len(studies))
    chexpert_rows, negbio_rows, split_rows, meta_rows, k = [], [], [], [], 0
    shown = []  # per image: its study's findings
    for j, (subject_id, study_id, views) in enumerate(studies):
        values = [_chexpert_value(rng, bool(present[j, _column("Effusion" if c == "Pleural Effusion" else c)]), True)
                  if c != "No Finding" else "" for c in MIMIC_COLUMNS]
        values[MIMIC_COLUMNS.index("No Finding")] = "" if {"1.0", "-1.0"} & set(values) else "1.0"
        if j < len(studies) - 1:
            chexpert_rows.append([subject_id, study_id, *values])
            negbio_rows.append([subject_id, study_id, *["1.0" if v == "-1.0" else v for v in values]])
        split = "test" if subject_id % 10 == 0 else "validate" if subject_id % 10 == 1 else "train"
        for view in views:
            if k == n:
                break
            k += 1
            dicom_id = _hex_id(rng, 40)
            view_position = view if view == "LATERAL" or k % 11 else "AP"
            image = maker.make(present[j])
            if view == "LATERAL":
                image = np.ascontiguousarray(image[:, ::-1] * 0.9)
            s = str(subject_id)
            _write(out / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / f"{dicom_id}.jpg",
                   (image * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
            split_rows.append([dicom_id, study_id, subject_id, split])
            shown.append(present[j])
            meta_rows.append([dicom_id, subject_id, study_id, "CHEST (PA AND LAT)", view_position, size, size])
    _write_gz_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *MIMIC_COLUMNS], chexpert_rows)
    _write_gz_csv(out / "mimic-cxr-2.0.0-negbio.csv.gz", ["subject_id", "study_id", *MIMIC_COLUMNS], negbio_rows)
    _write_gz_csv(out / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_gz_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id",
                  "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"], meta_rows)
    _write_truth(out, [r[0] for r in split_rows], np.array(shown))


VINDR_COLUMNS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other diseases", "No finding",
)
# What each VinDr column shows in the drawn image (None: drawn nowhere, present at random).
_VINDR_DRAWN = {
    "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Consolidation": ("Consolidation",),
    "Edema": ("Edema",), "Emphysema": ("Emphysema",), "Infiltration": ("Infiltration",),
    "Lung Opacity": ("Lung Opacity",), "Nodule/Mass": ("Nodule", "Mass"), "Pleural effusion": ("Effusion",),
    "Pleural thickening": ("Pleural Thickening",), "Pneumothorax": ("Pneumothorax",),
    "Pulmonary fibrosis": ("Fibrosis",), "Pneumonia": ("Pneumonia",), "Tuberculosis": ("Tuberculosis",),
    "Clavicle fracture": ("Fracture",), "Rib fracture": ("Fracture",),
}


def synth_vindr(out: Path, n: int, size: int, rng: np.random.Generator) -> None:
    """VinDr-CXR 1.0.0: three radiologists' image labels per training image (they disagree now and
    then), a consensus per test image, DICOM files under train/ and test/."""
    present = _presence(rng, n)
    maker = DefaultImages(size, LOOKS["nih"], rng)
    n_test = max(n // 5, 2)
    train_rows, test_rows, image_ids = [], [], []
    for i in range(n):
        truth = []
        for column in VINDR_COLUMNS[:-1]:
            drawn = _VINDR_DRAWN.get(column)
            shown = present[i, [_column(c) for c in drawn]].any() if drawn else rng.random() < 0.1
            if column in ("Clavicle fracture", "Rib fracture"):  # one fracture, at one of two places
                shown = shown and (column == "Rib fracture") == bool(i % 2)
            truth.append(int(shown))
        image_id = _hex_id(rng, 32)
        image_ids.append(image_id)
        test = i >= n - n_test
        write_dicom(out / ("test" if test else "train") / f"{image_id}.dicom", maker.make(present[i]), dicom_variant(i),
                     image_id)
        if test:
            test_rows.append([image_id, *truth, int(not any(truth))])
            continue
        for rad in rng.choice(17, 3, replace=False):
            read = [int(t if rng.random() < 0.9 else 1 - t) if t or rng.random() < 0.3 else 0 for t in truth]
            train_rows.append([image_id, f"R{rad + 1}", *read, int(not any(read))])
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    _write_truth(out, image_ids, present)
    for name, rows, header in (("image_labels_train.csv", train_rows, ["image_id", "rad_id", *VINDR_COLUMNS]),
                               ("image_labels_test.csv", test_rows, ["image_id", *VINDR_COLUMNS])):
        with open(out / "annotations" / name, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


PADCHEST_HEADER = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Labels", "Localizations", "MethodLabel",
)
# PadChest's spelling of the canonical findings it draws, and terms of its own (ignored by default).
_PADCHEST_TERMS = {
    "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
    "Edema": "pulmonary edema", "Emphysema": "emphysema", "Fibrosis": "pulmonary fibrosis", "Hernia": "hiatal hernia",
    "Infiltration": "infiltrates", "Pleural Thickening": "pleural thickening", "Mass": "mass", "Nodule": "nodule",
    "Effusion": "pleural effusion", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
    "Fracture": "rib fracture", "Tuberculosis": "tuberculosis",
}
_PADCHEST_OWN_TERMS = ("aortic elongation", "scoliosis", "chronic changes", "kyphosis")


def synth_padchest(out: Path, n: int, size: int, rng: np.random.Generator) -> None:
    """PadChest: one gzipped table, Labels as Python-style lists (with PadChest's stray leading
    spaces), 16-bit PNGs under numbered ImageDir folders."""
    present = _presence(rng, n)
    maker = DefaultImages(size, LOOKS["inhouse"], rng)
    patients = _patients(rng, n)
    projections = ("PA", "PA", "L", "AP", "AP_horizontal", "COSTAL")
    rows = []
    for i in range(n):
        image_id = f"{_hex_id(rng, 24)}.png"
        folder = str(i % 4)
        _write(out / folder / image_id, (maker.make(present[i]) * 65535).round().astype(np.uint16))
        terms = [t for f, t in _PADCHEST_TERMS.items() if present[i, _column(f)]]
        terms += [t for t in _PADCHEST_OWN_TERMS if rng.random() < 0.1]
        terms = [(" " if rng.random() < 0.3 else "") + t for t in terms] or ["normal"]
        projection = projections[i % len(projections)]
        rows.append([image_id, folder, "20140101", _hex_id(rng, 16), f"P{patients[i]:06d}", "1950", "M",
                     "['POSTEROANTERIOR']", projection, "Manual review of DICOM fields", str(terms), "[]",
                     "Physician" if i % 4 else "RNN_model"])
    _write_gz_csv(out / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", list(PADCHEST_HEADER), rows)
    _write_truth(out, [r[0] for r in rows], present)


INHOUSE_FORMATS = ("dicom", "png16")
SOURCES = ("nih", "chexpert", "inhouse", "mimic", "vindr", "padchest")
DEFAULT_SOURCES = ("nih", "chexpert", "inhouse")


def synthesize(out: Path, *, images_per_source: int = 300, image_size: int = 256, seed: int = 0,
               inhouse_format: str = "dicom", sources: tuple[str, ...] = DEFAULT_SOURCES) -> dict[str, Path]:
    """Write out/<source> for each of `sources`; return each dataset's folder."""
    if inhouse_format not in INHOUSE_FORMATS:
        raise DataPrepError(f"--inhouse-format must be one of {', '.join(INHOUSE_FORMATS)} (got {inhouse_format!r})")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise DataPrepError(f"--sources {','.join(sources)}: each must be one of {', '.join(SOURCES)}")
    if images_per_source < 20:
        raise DataPrepError(f"--images-per-source must be at least 20 (got {images_per_source})")
    if image_size < 32:
        raise DataPrepError(f"--image-size must be at least 32 (got {image_size})")
    writers = {"nih": synth_nih, "chexpert": synth_chexpert, "mimic": synth_mimic, "vindr": synth_vindr,
               "padchest": synth_padchest, "inhouse": lambda *a: synth_inhouse(*a, image_format=inhouse_format)}
    folders = {}
    for name in sources:
        folders[name] = out / name
        folders[name].mkdir(parents=True, exist_ok=True)
        # Seeded by the dataset's place in SOURCES: adding a dataset leaves the others' files as they were.
        writers[name](folders[name], images_per_source, image_size, np.random.default_rng([seed, SOURCES.index(name)]))
    return folders


def prepare_command(folders: dict[str, Path], inhouse_format: str) -> tuple[list[str], str]:
    """What to tell the user after writing `folders`: remarks, and the cxr prepare command that reads them."""
    flags = [f"--{name} {folder}" if name != "inhouse" else f"--csv inhouse={folder / 'labels.csv'}"
             for name, folder in folders.items()]
    notes = []
    if "inhouse" in folders and inhouse_format == "dicom":
        notes.append("the in-house set holds one DICOM file without pixel data: cxr prepare lists it as skipped")
        flags.append("--max-bad-fraction 0.01")
    internal = "" if "nih" in folders else f" --internal {next(iter(folders))}"
    return notes, f"cxr prepare {' '.join(flags)}{internal} --out PREPARED_DIR"
