"""Settings of `cxr prepare`: which datasets, how their labels are read, how they are split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxrmodel import paper
from data_prep.readers import KIND_SETTINGS, READERS

DEFAULT_MAX_PIXELS = 50_000_000  # 7,071²; real radiographs are up to ~4,300²
DEFAULT_MAX_FILE_BYTES = 512 * 2**20

SourceKind = Literal[tuple(READERS)]  # type: ignore[valid-type]  # one per module of data_prep/readers/


class SourceConfig(BaseModel):
    """One raw dataset. `kind` picks the reader; `csv` is the generic schema for any other set."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # what the dataset is called: its domain in the prepared data
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    kind: SourceKind  # the reader of its files (data_prep/readers/)
    path: Path  # its folder (for csv: the label table or its folder)
    # Source label name -> canonical finding (or null to ignore the column/label).
    label_map: dict[str, str | None] = Field(default_factory=dict)
    # What an uncertain (-1) label becomes: the paper uses U-Ones.
    uncertain: Literal["ones", "zeros", "ignore"] = "ones"
    # What a blank cell means. Default: the reader's (CheXpert, MIMIC: negative, Stanford's convention; others unknown).
    blank: Literal["negative", "unknown"] | None = None
    views: Literal["all", "frontal", "lateral"] = "all"  # which views to keep
    # MIMIC-CXR: which labeler's table (mimic-cxr-2.0.0-<labeler>.csv).
    labeler: Literal["chexpert", "negbio"] = "chexpert"
    # VinDr-CXR: how the three radiologists' reads of a training image become one label.
    vote: Literal["any", "majority"] = "majority"
    # PadChest: an empty or unparsable Labels cell skips the image (counted) instead of stopping.
    skip_bad_labels: bool = False

    @model_validator(mode="after")
    def _settings_of_this_kind(self) -> SourceConfig:
        for setting, kind in KIND_SETTINGS.items():
            if self.kind != kind and getattr(self, setting) != type(self).model_fields[setting].default:
                raise ValueError(f"dataset {self.name!r}: {setting} applies to kind {kind!r} only "
                                 f"(this one is {self.kind!r})")
        return self

    @property
    def blank_value(self) -> Literal["negative", "unknown"]:
        return self.blank if self.blank is not None else READERS[self.kind].blank


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sources: list[SourceConfig] = Field(default_factory=list)
    internal: str = "nih"  # the internal (target) dataset: the one evaluated
    # side of the stored square images (the paper: 320)
    image_size: int = Field(default=paper.IMAGE_SIZE, ge=16, le=4096)
    # Patient-level fallback splits (and NIH's train_val -> train/val, as the paper did).
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    # patients held out for test where a dataset has no official split
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    split_seed: int = 0  # seed of those patient-level splits
    shuffle_seed: int = 0  # the seeded random row order of every (domain, split) in the shards
    max_bad_fraction: float = Field(default=0.001, ge=0.0, le=1.0)  # fail when more images than this share are unusable
    # Rows per Ray Data decode task, and so per shard file (256 rows of 320x320 = 26 MB).
    batch_size: int = Field(default=256, ge=1)
    # Bounds on one image file, checked before decoding it (pixels from the PNG / JPEG / DICOM
    # header, frames included): a larger one is skipped with the reason. A decode allocates at most
    # ~13 bytes per pixel for DICOM, ~3 for 16-bit PNG (tests/test_hostile_images.py): 50 MP -> ~650 MB.
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, ge=1)  # the largest image file read (bytes)
    # CheXpert has no public test set; the paper "adopts the official split". "valid": its official
    # valid.csv images are the test split (Table II's CheXpert row) and train.csv is divided into
    # train / val by patient (val_fraction), as NIH's train_val is; "none": valid.csv is the val
    # split and there is no CheXpert test split.
    chexpert_test: Literal["valid", "none"] = "valid"
    # Image paths from label tables (CSV rows, CheXpert's Path, PadChest's ImageDir) must resolve,
    # symlinks included, inside the dataset's own folder, unless this is true.
    allow_outside_root: bool = False

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"prepare.val_fraction + prepare.test_fraction must be < 1 "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        names = [s.name for s in self.sources]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"prepare.sources: duplicate dataset names {duplicated}")
        if self.sources and self.internal not in names:
            raise ValueError(
                f"prepare.internal={self.internal!r} is not one of the datasets {names}"
            )
        return self


def sources_with_flags(configured: list[SourceConfig], folders: dict[str, Path | None],
                       csv: dict[str, Path]) -> list[SourceConfig]:
    """The config's datasets, then one per `--KIND FOLDER` option (named as its kind), then the
    `--csv NAME=FILE` ones; a --csv dataset keeps the settings the config gave that name."""
    sources = {s.name: s for s in configured}
    for kind, folder in folders.items():
        if folder:
            sources[kind] = SourceConfig(name=kind, kind=kind, path=folder)
    for name, file in csv.items():
        previous = sources.get(name)
        extra = previous.model_dump(exclude={"name", "kind", "path"}, exclude_unset=True) if previous else {}
        sources[name] = SourceConfig(name=name, kind="csv", path=file, **extra)
    return list(sources.values())
