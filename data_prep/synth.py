"""`cxr synth`: NIH-, CheXpert- and in-house-like datasets in the exact on-disk formats of the real ones.

The images carry learnable signal. Every finding of Table I has its own pattern at its own place
(a bright blob, a ring or stripes on a 5x5 grid over the chest); a present finding draws its pattern.
Each dataset has its own look (contrast, gamma, noise, size, file format), and findings a dataset
does not label still appear in its images, as in real data: domain and label discrepancy to mine.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_prep.errors import DataPrepError
from data_prep.labels import CANONICAL_FINDINGS

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


def _finding_patterns(size: int) -> np.ndarray:
    """(21, size, size) float32 templates, one per canonical finding, values in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cell = 1.0 / 5
    patterns = []
    for k in range(len(CANONICAL_FINDINGS)):
        cx, cy = (k % 5 + 0.5) * cell, (k // 5 + 0.5) * cell
        r = np.hypot(xx - cx, yy - cy)
        kind = k % 3
        if kind == 0:  # blob
            p = np.exp(-((r / (0.32 * cell)) ** 2))
        elif kind == 1:  # ring
            p = np.exp(-(((r - 0.3 * cell) / (0.08 * cell)) ** 2))
        else:  # stripes inside a disc
            p = (np.cos((xx - cx) * 2 * np.pi / (0.25 * cell)) > 0) * (r < 0.38 * cell)
        patterns.append(p.astype(np.float32))
    return np.stack(patterns)


def _chest(size: int, rng: np.random.Generator) -> np.ndarray:
    """A plain chest-like background: two darker lung fields, a brighter mediastinum."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    jitter = rng.normal(0, 0.02, 2)
    lungs = np.exp(-(((xx - 0.3 - jitter[0]) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
        -(((xx - 0.7 - jitter[1]) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2)
    )
    return (0.65 - 0.35 * lungs).astype(np.float32)


class _ImageMaker:
    def __init__(self, size: int, look: Look, rng: np.random.Generator):
        self.size, self.look, self.rng = size, look, rng
        self.patterns = _finding_patterns(size)

    def make(self, present: np.ndarray) -> np.ndarray:
        """Float image in [0, 1] showing the findings in the boolean vector `present` (21,)."""
        image = _chest(self.size, self.rng)
        image += 0.3 * np.tensordot(present.astype(np.float32), self.patterns, axes=1)
        image = (image - 0.5) * self.look.contrast + 0.5 + self.look.brightness
        image = np.clip(image, 0, 1) ** self.look.gamma
        image += self.rng.normal(0, self.look.noise, image.shape).astype(np.float32)
        return np.clip(image, 0, 1)


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
              images_per_patient: tuple[int, int] = (1, 3)) -> None:
    present = _presence(rng, n)
    maker = _ImageMaker(size, LOOKS["nih"], rng)
    patients = _patients(rng, n, images_per_patient)
    rows, follow = [], {}
    for i in range(n):
        p = patients[i]
        follow[p] = follow.get(p, -1) + 1
        name = f"{p:08d}_{follow[p]:03d}.png"
        labels = [NIH_SPELLING.get(f, f) for f in NIH_FINDINGS if present[i, _column(f)]]
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


def synth_chexpert(out: Path, n: int, size: int, rng: np.random.Generator) -> None:
    folder = out / "CheXpert-v1.0-small"
    n_valid = max(n // 10, 4)
    present = _presence(rng, n + n_valid)
    # CheXpert-small images are 320 px on their short side, portrait: keep that shape.
    maker = _ImageMaker(size, LOOKS["chexpert"], rng)
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
            values = [
                _chexpert_value(rng, bool(present[i, _column("Effusion" if c == "Pleural Effusion" else c)]), part == "train")
                for c in CHEXPERT_COLUMNS
            ]
            no_finding = "" if "1.0" in values or "-1.0" in values else "1.0"
            rows.append([rel, "Female" if i % 2 else "Male", int(rng.integers(20, 90)),
                         "Lateral" if lateral else "Frontal", "" if lateral else "AP", no_finding, *values])
        with open(folder / f"{part}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def synth_inhouse(out: Path, n: int, size: int, rng: np.random.Generator) -> None:
    present = _presence(rng, n)
    maker = _ImageMaker(size, LOOKS["inhouse"], rng)
    patients = _patients(rng, n)
    rows = []
    for i in range(n):
        rel = f"images/IH{i:06d}.png"
        # 16-bit PNGs holding 12-bit data, as many hospital exports do.
        _write(out / rel, (maker.make(present[i]) * 4095).round().astype(np.uint16))
        values = [
            "" if rng.random() < 0.02 else str(int(present[i, _column(f)])) for f in INHOUSE_FINDINGS
        ]
        rows.append([rel, f"IH-P{patients[i]:05d}", *values])
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "patient_id", *INHOUSE_FINDINGS])
        writer.writerows(rows)


def synthesize(out: Path, *, images_per_source: int = 300, image_size: int = 256, seed: int = 0) -> dict[str, Path]:
    """Write out/nih, out/chexpert and out/inhouse; return each dataset's folder."""
    if images_per_source < 20:
        raise DataPrepError(f"--images-per-source must be at least 20 (got {images_per_source})")
    if image_size < 32:
        raise DataPrepError(f"--image-size must be at least 32 (got {image_size})")
    folders = {"nih": out / "nih", "chexpert": out / "chexpert", "inhouse": out / "inhouse"}
    writers = {"nih": synth_nih, "chexpert": synth_chexpert, "inhouse": synth_inhouse}
    for k, (name, folder) in enumerate(folders.items()):
        folder.mkdir(parents=True, exist_ok=True)
        writers[name](folder, images_per_source, image_size, np.random.default_rng([seed, k]))
    return folders
