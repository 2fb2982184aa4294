"""The uncertainty threshold H over training (pure Python: sweeps and configs read it without torch).

H falls from `start` to `end` as training progresses (progress 0 -> 1) along a named curve:
constant, linear, cosine, exponential or step. Since |0.5 - p| <= 0.5, 0 <= end <= start <= 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from cxrmodel import paper

H_SCHEDULES = ("constant", "linear", "cosine", "exponential", "step")
HScheduleName = Literal["constant", "linear", "cosine", "exponential", "step"]

@dataclass(frozen=True)
class HSchedule:
    name: HScheduleName = "linear"
    start: float = paper.H_START
    end: float = paper.H_END
    steps: int = 4  # number of plateaus, for "step"

    def __post_init__(self) -> None:
        if self.name not in H_SCHEDULES:
            raise ValueError(f"unknown H schedule {self.name!r}; allowed: {', '.join(H_SCHEDULES)}")
        if not 0.0 <= self.start <= 0.5:
            raise ValueError(f"H schedule start={self.start} must be within [0, 0.5]")
        if self.name != "constant" and not 0.0 <= self.end <= self.start:
            raise ValueError(f"H schedule end={self.end} must be within [0, start={self.start}] (H decreases)")
        if self.name == "exponential" and self.end <= 0.0:
            raise ValueError("the exponential H schedule needs end > 0")
        if self.steps < 1:
            raise ValueError(f"H schedule steps={self.steps} must be at least 1")

    def __call__(self, progress: float) -> float:
        """H at `progress` in [0, 1] (clamped)."""
        p = min(max(progress, 0.0), 1.0)
        s, e = self.start, self.end
        if self.name == "constant":
            return s
        if self.name == "linear":
            return s + (e - s) * p
        if self.name == "cosine":
            return e + (s - e) * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.name == "exponential":
            return s * (e / s) ** p
        plateau = min(int(p * self.steps), self.steps - 1)
        return s if self.steps == 1 else s + (e - s) * plateau / (self.steps - 1)
