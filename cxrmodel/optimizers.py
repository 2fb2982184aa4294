"""The paper's optimizers: Adam with per-epoch LR steps for the network, RMSprop for the discriminators."""

from __future__ import annotations

import torch

from cxrmodel.network import CXRNet

# Paper: Adam 1e-4, x0.1 after epoch 3 and after epoch 6; RMSprop 1e-4 fixed for the discriminators.
PAPER_LR = 1e-4
PAPER_LR_MILESTONES = (3, 6)
PAPER_LR_DECAY = 0.1
PAPER_DISCRIMINATOR_LR = 1e-4


def make_optimizers(
    model: CXRNet,
    *,
    lr: float = PAPER_LR,
    lr_milestones: tuple[int, ...] = PAPER_LR_MILESTONES,
    lr_decay: float = PAPER_LR_DECAY,
    discriminator_lr: float = PAPER_DISCRIMINATOR_LR,
    fused: bool = False,
) -> tuple[torch.optim.Adam, torch.optim.RMSprop | None, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam for the network with the per-epoch step decay, RMSprop (fixed LR) for the discriminators;
    `fused`: Adam's update as one CUDA kernel (same arithmetic)."""
    network = torch.optim.Adam(model.network_parameters(), lr=lr, fused=fused or None)
    discriminator_params = model.discriminator_parameters()
    discriminators = torch.optim.RMSprop(discriminator_params, lr=discriminator_lr) if discriminator_params else None
    schedule = torch.optim.lr_scheduler.MultiStepLR(network, milestones=list(lr_milestones), gamma=lr_decay)
    return network, discriminators, schedule
