"""The uncertainty threshold H over training, and the paper's optimizers and LR steps.

H falls from `start` to `end` as training progresses (progress 0 -> 1) along a named curve:
constant, linear, cosine, exponential or step. Since |0.5 - p| <= 0.5, 0 <= end <= start <= 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cxrmodel.network import CXRNet

H_SCHEDULES = ("constant", "linear", "cosine", "exponential", "step")
HScheduleName = Literal["constant", "linear", "cosine", "exponential", "step"]

# Paper: Adam 1e-4, x0.1 after epoch 3 and after epoch 6; RMSprop 1e-4 fixed for the discriminators.
PAPER_LR = 1e-4
PAPER_LR_MILESTONES = (3, 6)
PAPER_LR_DECAY = 0.1
PAPER_DISCRIMINATOR_LR = 1e-4


@dataclass(frozen=True)
class HSchedule:
    name: HScheduleName = "linear"
    start: float = 0.4
    end: float = 0.1
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


def make_optimizers(
    model: CXRNet,
    *,
    lr: float = PAPER_LR,
    lr_milestones: tuple[int, ...] = PAPER_LR_MILESTONES,
    lr_decay: float = PAPER_LR_DECAY,
    discriminator_lr: float = PAPER_DISCRIMINATOR_LR,
) -> tuple[torch.optim.Adam, torch.optim.RMSprop | None, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam for the network with the per-epoch step decay, RMSprop (fixed LR) for the discriminators."""
    network = torch.optim.Adam(model.network_parameters(), lr=lr)
    discriminator_params = model.discriminator_parameters()
    discriminators = torch.optim.RMSprop(discriminator_params, lr=discriminator_lr) if discriminator_params else None
    schedule = torch.optim.lr_scheduler.MultiStepLR(network, milestones=list(lr_milestones), gamma=lr_decay)
    return network, discriminators, schedule
