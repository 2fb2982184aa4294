"""`cxr synth --scenario NAME`: generated data built from stated premises, not from the default look.

A scenario is data (`data_prep/scenarios/<name>.yaml`, or any YAML file of the same shape): per
dataset its size, the prevalence of each finding it labels, its labeler's recall and precision,
its look and how its findings are drawn (blur, texture period, scanner artefacts); and how every
pattern varies (position jitter, size, strength). A finding a dataset does not label is drawn in
its images at the prevalence of the dataset that labels it and never labelled there. The images
and tables are written by `synth`'s NIH and CheXpert writers, in the real formats; each dataset
gets a `truth.csv` with what every image shows.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrcommon.errors import DataPrepError
from cxrcommon.yaml_files import load_yaml
from data_prep.findings import CANONICAL_FINDINGS
from data_prep.synth import (
    SOURCES,
    Drawing,
    Look,
    chest,
    chexpert_valid_size,
    finding_pattern,
    synth_chexpert,
    synth_nih,
    with_look,
)

SCENARIO_DIR = Path(__file__).parent / "scenarios"
WRITERS = {"nih": synth_nih, "chexpert": synth_chexpert}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Labeler(_Strict):
    recall: float = Field(gt=0.0, le=1.0)  # P(labelled | shown)
    precision: float = Field(gt=0.0, le=1.0)  # P(shown | labelled)


class Style(_Strict):
    """How a dataset's scanner draws findings."""

    blur: float = Field(default=0.0, ge=0.0, le=0.2)  # Gaussian sigma of the pattern layer, fraction of the side
    period_scale: float = Field(default=1.0, gt=0.2, le=5.0)  # texture period of stripes, checks and rings
    artefacts: float = Field(default=0.0, ge=0.0, le=1.0)  # share of images with detector lines and a marker


class DatasetSpec(_Strict):
    images: int = Field(ge=20, le=1_000_000)
    prevalence: dict[str, float]  # the findings this dataset labels
    labeler: Labeler
    look: Look
    style: Style = Style()

    @field_validator("prevalence")
    @classmethod
    def _known_findings(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = [f for f in value if f not in CANONICAL_FINDINGS]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; use the canonical names ({', '.join(CANONICAL_FINDINGS)})")
        bad = {f: p for f, p in value.items() if not 0.0 < p < 1.0}
        if bad:
            raise ValueError(f"prevalences must be in (0, 1): {bad}")
        return value


class Strength(_Strict):
    median: float = Field(gt=0.0, le=2.0)
    sigma: float = Field(ge=0.0, le=3.0)


class Variation(_Strict):
    jitter: float = Field(ge=0.0, le=0.5)
    scale: tuple[float, float]
    strength: Strength

    @field_validator("scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1] <= 3.0:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 3, got {list(value)}")
        return value


class Scenario(_Strict):
    image_size: int = Field(ge=32, le=1024)
    datasets: dict[str, DatasetSpec]
    prevalence_floor: float = Field(default=0.0, ge=0.0, lt=0.5)
    variation: Variation

    @model_validator(mode="after")
    def _writable(self) -> Scenario:
        unknown = [d for d in self.datasets if d not in WRITERS]
        if unknown or not self.datasets:
            raise ValueError(f"datasets {unknown or '{}'}: a scenario writes {', '.join(WRITERS)}")
        return self

    def prevalence(self, finding: str, dataset: str) -> float | None:
        """How often `finding` is drawn in `dataset`'s images: its own rate where it labels it, else
        the rate of a dataset that does; None where no dataset labels it (not drawn)."""
        own = self.datasets[dataset].prevalence
        rates = [own[finding]] if finding in own else [d.prevalence[finding] for d in self.datasets.values()
                                                       if finding in d.prevalence]
        return max(rates[0], self.prevalence_floor) if rates else None


def load_scenario(name: str) -> Scenario:
    """A built-in scenario by name, or a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SCENARIO_DIR / f"{name}.yaml"
    if not path.is_file():
        builtin = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
        raise DataPrepError(f"unknown scenario {name!r}: built-in are {', '.join(builtin)}, or give a .yaml file")
    try:
        return Scenario.model_validate(load_yaml(path.read_text(), str(path)) or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DataPrepError(f"scenario {path}: {problems}") from None


class ScenarioImages:
    """Draws one dataset's images: each shown finding's pattern moved, resized and weighted anew
    per image, in the dataset's style, then the dataset's look."""

    def __init__(self, size: int, spec: DatasetSpec, variation: Variation, rng: np.random.Generator):
        self.size, self.spec, self.variation, self.rng = size, spec, variation, rng

    def _artefacts(self, image: np.ndarray) -> None:
        rows = self.rng.integers(0, self.size, int(self.rng.integers(1, 4)))
        image[rows, :] += 0.25  # detector lines
        corner = self.size // 8
        x = 0 if self.rng.random() < 0.5 else self.size - corner
        image[1:1 + corner // 2, x:x + corner] += 0.4  # a side marker

    def make(self, present: np.ndarray) -> np.ndarray:
        size, style, variation, rng = self.size, self.spec.style, self.variation, self.rng
        layer = np.zeros((size, size), np.float32)
        for k in np.flatnonzero(present):
            strength = variation.strength.median * np.exp(variation.strength.sigma * rng.standard_normal())
            layer += strength * finding_pattern(
                int(k), size, offset=tuple(rng.uniform(-variation.jitter, variation.jitter, 2)),
                scale=float(rng.uniform(*variation.scale)), period_scale=style.period_scale)
        if style.blur:
            layer = cv2.GaussianBlur(layer, (0, 0), style.blur * size)
        image = chest(size, rng) + layer
        if rng.random() < style.artefacts:
            self._artefacts(image)
        return with_look(image, self.spec.look, rng)


def draw_dataset(scenario: Scenario, dataset: str, n: int, rng: np.random.Generator, *, clean_rows: int = 0) -> Drawing:
    """What `n` images of `dataset` show and what its labeler says; the last `clean_rows` rows are
    labelled by experts (the truth), as CheXpert's valid.csv is."""
    spec = scenario.datasets[dataset]
    present = np.zeros((n, len(CANONICAL_FINDINGS)), bool)
    labelled = np.zeros_like(present)
    recall, precision = spec.labeler.recall, spec.labeler.precision
    for k, finding in enumerate(CANONICAL_FINDINGS):
        p = scenario.prevalence(finding, dataset)
        if p is None:
            continue
        present[:, k] = rng.random(n) < p
        if finding in spec.prevalence:
            # Spurious positives at the rate that makes `precision` of the labelled ones real.
            spurious = min(1.0, p * recall * (1 - precision) / (precision * (1 - p)))
            draw = rng.random(n)
            labelled[:, k] = np.where(present[:, k], draw < recall, draw < spurious)
    if clean_rows:
        known = [k for k, f in enumerate(CANONICAL_FINDINGS) if f in spec.prevalence]
        labelled[n - clean_rows:, known] = present[n - clean_rows:, known]
    return Drawing(present, labelled, ScenarioImages(scenario.image_size, spec, scenario.variation, rng))


def synthesize_scenario(out: Path, scenario: Scenario, *, seed: int = 0,
                        image_size: int | None = None) -> dict[str, Path]:
    """Write out/<dataset> for each of the scenario's datasets; return each dataset's folder."""
    if image_size is not None:
        scenario = scenario.model_copy(update={"image_size": image_size})
    folders = {}
    for name, spec in scenario.datasets.items():
        folders[name] = out / name
        folders[name].mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, SOURCES.index(name), 1])
        if name == "chexpert":
            valid = chexpert_valid_size(spec.images)
            drawing = draw_dataset(scenario, name, spec.images + valid, rng, clean_rows=valid)
        else:
            drawing = draw_dataset(scenario, name, spec.images, rng)
        WRITERS[name](folders[name], spec.images, scenario.image_size, rng, drawing=drawing)
    return folders
