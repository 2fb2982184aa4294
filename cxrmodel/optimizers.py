"""The paper's optimizers: Adam with per-epoch LR steps for the network, RMSprop for the discriminators."""

from __future__ import annotations

import torch

from cxrmodel import paper
from cxrmodel.network import CXRNet


def make_optimizers(
    model: CXRNet,
    *,
    lr: float = paper.LR,
    lr_milestones: tuple[int, ...] = paper.LR_MILESTONES,
    lr_decay: float = paper.LR_DECAY,
    discriminator_lr: float = paper.DISCRIMINATOR_LR,
    fused: bool = False,
) -> tuple[torch.optim.Adam, torch.optim.RMSprop | None, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam for the network with the per-epoch step decay, RMSprop (fixed LR) for the discriminators;
    `fused`: Adam's update as one CUDA kernel (same arithmetic)."""
    network = torch.optim.Adam(model.network_parameters(), lr=lr, fused=fused or None)
    discriminator_params = model.discriminator_parameters()
    discriminators = torch.optim.RMSprop(discriminator_params, lr=discriminator_lr) if discriminator_params else None
    schedule = torch.optim.lr_scheduler.MultiStepLR(network, milestones=list(lr_milestones), gamma=lr_decay)
    return network, discriminators, schedule
