"""Operating points: the threshold at which a finding is called, and what a clinician gets there.

A point is chosen on one set of scores (the internal domain's validation split) and applied to
others (each test split). Three kinds, as `--operating-points` names them:
- `youden`: the threshold maximising sensitivity + specificity - 1 (Youden's J);
- `sens=0.90`: the highest threshold whose sensitivity is at least 0.90;
- `spec=0.90`: the lowest threshold whose specificity is at least 0.90.
A score at or above the threshold is a positive call. The figures at a threshold get percentile
intervals from the same stratified bootstrap as the AUCs (images resampled within each class).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from cxrmodel.auc_statistics import REPLICATES_PER_CHUNK, percentile_interval, stratified_counts

FIGURES = ("sensitivity", "specificity", "ppv", "npv", "f1")
SHORT_NAMES = {"sensitivity": "sens", "specificity": "spec", "ppv": "ppv", "npv": "npv", "f1": "f1"}
_TARGET = re.compile(r"(sens|spec)=(0?\.\d+|1(\.0*)?)$")


@dataclass(frozen=True)
class OperatingPoint:
    kind: str  # youden | sens | spec
    target: float | None = None  # the sensitivity or specificity asked for

    @property
    def name(self) -> str:
        """youden, sens90, spec95: how metric names and tables call it."""
        return self.kind if self.target is None else f"{self.kind}{round(self.target * 100):g}"

    def threshold(self, positive: np.ndarray, scores: np.ndarray) -> float:
        """The threshold this point picks on scores with labels `positive` (both classes present)."""
        candidates = np.unique(scores)[::-1]  # high to low: calls grow as the threshold falls
        sens, spec = rates_at(positive, scores, candidates)
        if self.kind == "youden":
            return float(candidates[int(np.argmax(sens + spec - 1))])  # the highest among ties
        if self.kind == "sens":
            return float(candidates[int(np.argmax(sens >= self.target - 1e-12))])
        meets = np.nonzero(spec >= self.target - 1e-12)[0]
        # spec falls as the threshold falls; when even the top score is a negative's, only a
        # threshold above every score (no positive call) reaches a specificity of 1.
        return float(candidates[meets[-1]]) if meets.size else float(np.nextafter(candidates[0], np.inf))


def parse_operating_points(text: str) -> list[OperatingPoint]:
    """'youden,sens=0.90,spec=0.90' -> the points, in order; a clear error for anything else."""
    points = []
    for item in (part.strip() for part in text.split(",")):
        if item == "youden":
            points.append(OperatingPoint("youden"))
            continue
        match = _TARGET.match(item)
        if not match or not 0 < float(match.group(2)) <= 1:
            raise ValueError(f"operating point {item!r}: expected youden, sens=X or spec=X with 0 < X <= 1 "
                             "(e.g. youden,sens=0.90,spec=0.90)")
        points.append(OperatingPoint(match.group(1), float(match.group(2))))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"operating points {text!r} name the same point twice")
    return points


def rates_at(positive: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at each threshold (calls: score >= threshold)."""
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    called_pos = pos.size - np.searchsorted(pos, thresholds, side="left")
    called_neg = neg.size - np.searchsorted(neg, thresholds, side="left")
    return called_pos / pos.size, 1.0 - called_neg / neg.size


def figures_from_counts(tp, fn, tn, fp) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 from confusion counts (arrays or numbers); NaN
    where a figure's denominator is 0 (no positive calls: PPV undefined)."""
    tp, fn, tn, fp = (np.asarray(v, np.float64) for v in (tp, fn, tn, fp))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
                "npv": tn / (tn + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def figures_at(positive: np.ndarray, scores: np.ndarray, threshold: float, *, replicates: int = 0,
               seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """Each figure at `threshold`: (value, interval low, interval high); the interval is NaN
    without replicates or where a replicate leaves the figure undefined."""
    called = scores >= threshold
    hit_pos, hit_neg = called[positive], called[~positive]
    value = figures_from_counts(hit_pos.sum(), (~hit_pos).sum(), (~hit_neg).sum(), hit_neg.sum())
    bounds = {name: (math.nan, math.nan) for name in FIGURES}
    if replicates:
        rng = np.random.default_rng(seed)
        samples = {name: [] for name in FIGURES}
        for start in range(0, replicates, REPLICATES_PER_CHUNK):
            size = min(REPLICATES_PER_CHUNK, replicates - start)
            pos_counts, neg_counts = stratified_counts(hit_pos.size, hit_neg.size, size, rng)
            tp, fp = pos_counts @ hit_pos, neg_counts @ hit_neg
            for name, values in figures_from_counts(tp, hit_pos.size - tp, hit_neg.size - fp, fp).items():
                samples[name].append(values)
        for name, chunks in samples.items():
            values = np.concatenate(chunks)
            if not np.isnan(values).any():
                bounds[name] = percentile_interval(values, level)
    return {name: (float(value[name]), *bounds[name]) for name in FIGURES}
