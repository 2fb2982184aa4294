"""Per-sample temporal ensemble of predictions (eq. 4), indexed by the dataset's `sample_id`.

During an epoch, `record` collects each sample's predictions; `end_epoch` folds the epoch's mean
prediction p into Z = γ Z + (1 - γ) p for every sample seen, after summing what all data-parallel
ranks collected. Each sample counts its own updates t, so its bias correction z = Z / (1 - γ^t)
is right however often it was seen (small domains cycle, large ones may be skipped). A sample never
updated has no target (weight 0), which is the paper's Z_1 = 0 without dividing by zero.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cxrmodel import paper


class TemporalEnsemble:
    def __init__(self, num_samples: int, num_findings: int, gamma: float = paper.GAMMA, device: str | torch.device = "cpu"):
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        self.gamma = gamma
        self.Z = torch.zeros(num_samples, num_findings, dtype=torch.float32, device=device)
        self.updates = torch.zeros(num_samples, dtype=torch.int32, device=device)
        self.epochs = 0  # end_epoch calls: one per training epoch
        self.last_epoch: tuple[torch.Tensor, torch.Tensor] | None = None  # (sample ids seen, mean prediction)
        # This epoch's predictions, summed, and how many were summed, per sample.
        self.epoch_sum = torch.zeros_like(self.Z)
        self.epoch_count = torch.zeros(num_samples, dtype=torch.float32, device=device)

    def targets(self, sample_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (B, C), has_target (B,)) for a batch of sample ids."""
        sample_id = sample_id.to(self.Z.device)
        t = self.updates[sample_id]
        has_target = t > 0
        correction = 1.0 - self.gamma ** t.to(torch.float32)
        z = self.Z[sample_id] / correction.clamp_min(1e-12).unsqueeze(1)
        return z, has_target

    @torch.no_grad()
    def record(self, sample_id: torch.Tensor, probs: torch.Tensor) -> None:
        sample_id = sample_id.to(self.Z.device)
        self.epoch_sum.index_add_(0, sample_id, probs.detach().to(self.Z.device, torch.float32))
        self.epoch_count.index_add_(0, sample_id, torch.ones_like(sample_id, dtype=torch.float32))

    @torch.no_grad()
    def end_epoch(self) -> int:
        """Fold this epoch's predictions (from every rank) into Z; return how many samples moved."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.epoch_sum)
            dist.all_reduce(self.epoch_count)
        seen = self.epoch_count > 0
        mean = self.epoch_sum[seen] / self.epoch_count[seen].unsqueeze(1)
        # The epoch's own predictions, for diagnostics (`cxr diagnose`); not part of the state.
        self.last_epoch = (seen.nonzero().squeeze(1), mean)
        self.Z[seen] = self.gamma * self.Z[seen] + (1.0 - self.gamma) * mean
        self.updates[seen] += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
        self.epochs += 1
        return int(seen.sum())

    def state_dict(self) -> dict:
        return {
            "gamma": self.gamma, "epochs": self.epochs, "Z": self.Z.cpu(), "updates": self.updates.cpu(),
            "epoch_sum": self.epoch_sum.cpu(), "epoch_count": self.epoch_count.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["Z"].shape) != tuple(self.Z.shape):
            raise ValueError(
                f"temporal ensemble shape {tuple(state['Z'].shape)} in the checkpoint does not match "
                f"{tuple(self.Z.shape)} (samples x findings) of this dataset"
            )
        self.gamma = float(state["gamma"])
        # Checkpoints from before the count: every epoch updates some sample, so the most updates is it.
        self.epochs = int(state["epochs"]) if "epochs" in state else int(state["updates"].max())
        for name in ("Z", "updates", "epoch_sum", "epoch_count"):
            getattr(self, name).copy_(state[name])
