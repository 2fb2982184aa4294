"""What a model decides besides its probabilities: the temperatures that calibrate them (`cxr
calibrate`) and the thresholds that turn them into calls (`cxr evaluate --operating-points`).

They travel with the model as `decisions.json` in its checkpoint folder (and as an artifact of its
training run, so of its registered versions): `cxr predict`, `cxr serve` and `cxr export` apply
them when present. Thresholds are on the uncalibrated probability; temperature scaling is monotone,
so a call is the same whichever probability it is read from, and `calibrated_thresholds` gives the
same cut on the calibrated scale (what an exported model's user compares against).

The file may come from someone else: it is JSON, and every value is checked (findings of the model's
label space, finite positive temperatures, thresholds in [0, 1]) before it is used.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.calibration import scaled
from orchestration.settings.config import ConfigError

DECISIONS_FILE = "decisions.json"
CALIBRATED_SUFFIX, CALL_SUFFIX = "_calibrated", "_call"  # columns cxr predict adds per finding


@dataclass
class ModelDecisions:
    temperatures: dict[str, float] = field(default_factory=dict)  # finding -> T
    calibrated_on: str = ""  # what the temperatures were fitted on
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # point name -> finding -> t
    decision_point: str = ""  # the point whose thresholds make the calls: the first one asked for
    thresholds_chosen_on: str = ""

    @property
    def calls(self) -> dict[str, float]:
        return self.thresholds.get(self.decision_point, {})

    def temperature_vector(self, label_space: list[str]) -> np.ndarray:
        return np.array([self.temperatures.get(f, 1.0) for f in label_space])

    def calibrated_thresholds(self) -> dict[str, float]:
        """The decision point's thresholds on the calibrated scale."""
        return {f: float(scaled(np.array([t]), self.temperatures.get(f, 1.0))[0]) if 0 < t < 1 else t
                for f, t in self.calls.items()}

    def decided(self, frame: pd.DataFrame, label_space: list[str]) -> pd.DataFrame:
        """A predictions table with `<finding>_calibrated` (when there are temperatures) and
        `<finding>_call` (0/1, when there are thresholds) columns after the probabilities."""
        out = frame.copy()
        if self.temperatures:
            probs = frame[label_space].to_numpy(np.float64)
            calibrated = scaled(probs, self.temperature_vector(label_space)).astype(np.float32)
            for c, finding in enumerate(label_space):
                out[finding + CALIBRATED_SUFFIX] = np.where(np.isnan(probs[:, c]), np.nan, calibrated[:, c])
        for finding, threshold in self.calls.items():
            out[finding + CALL_SUFFIX] = (frame[finding] >= threshold).astype("Int8").mask(frame[finding].isna())
        return out


def read_decisions(checkpoint: Path, label_space: list[str]) -> ModelDecisions:
    """The model's decisions (none when the folder has no decisions file), checked."""
    path = Path(checkpoint) / DECISIONS_FILE
    if not path.exists():
        return ModelDecisions()
    try:
        raw = json.loads(path.read_text())
        decisions = ModelDecisions(**raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a decisions file of this version ({exc}); run cxr calibrate / "
                          "cxr evaluate --operating-points again") from None
    _check(path, decisions, label_space)
    return decisions


def _check(path: Path, decisions: ModelDecisions, label_space: list[str]) -> None:
    def fail(what: str):
        raise ConfigError(f"{path}: {what}; run cxr calibrate / cxr evaluate --operating-points again")

    for name in ("temperatures", "thresholds"):
        if not isinstance(getattr(decisions, name), dict):
            fail(f"{name} is {type(getattr(decisions, name)).__name__}, expected a finding -> number table")
    for name in ("calibrated_on", "decision_point", "thresholds_chosen_on"):
        if not isinstance(getattr(decisions, name), str):
            fail(f"{name} is {getattr(decisions, name)!r}, expected text")
    for finding, t in decisions.temperatures.items():
        if finding not in label_space:
            fail(f"temperature for {finding!r}, which the model does not predict")
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            fail(f"temperature of {finding!r} is {t!r}, expected a finite number above 0")
    for point, thresholds in decisions.thresholds.items():
        if not isinstance(thresholds, dict):
            fail(f"thresholds of {point!r} are not a finding -> number table")
        for finding, t in thresholds.items():
            if finding not in label_space:
                fail(f"threshold for {finding!r}, which the model does not predict")
            if not isinstance(t, (int, float)) or not 0 <= t <= 1.0000001:
                fail(f"threshold of {finding!r} at {point!r} is {t!r}, expected a number in [0, 1]")
    if decisions.thresholds and decisions.decision_point not in decisions.thresholds:
        fail(f"decision point {decisions.decision_point!r} is not one of {list(decisions.thresholds)}")


def write_decisions(checkpoint: Path, decisions: ModelDecisions) -> Path:
    """Replace the checkpoint folder's decisions file at once (a reader sees the old or the new)."""
    path = Path(checkpoint) / DECISIONS_FILE
    try:
        handle, tmp = tempfile.mkstemp(dir=checkpoint, prefix=".decisions-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(asdict(decisions), out, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot save the decisions with the model in {checkpoint} ({exc.strerror}); copy the "
                          "checkpoint folder somewhere writable and pass --checkpoint COPY") from None
    return path
