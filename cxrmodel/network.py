"""The whole network: DenseIBN-121 backbone, a head, and (for TAT / HAT) domain discriminators.

The discriminators live inside the module so that one forward/backward under DDP reaches every
parameter; they have their own optimizer (RMSprop), selected by `discriminator_parameters()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from cxrmodel import paper
from cxrmodel.backbone import FEATURES, densenet121_ibn_a
from cxrmodel.discriminators import BatchedDiscriminators, reverse_gradient
from cxrmodel.heads import HolisticHead, MultiTaskHead, TaskSpecificHeads

HeadKind = Literal["task_specific", "holistic", "multi_task"]


class NetOutput(NamedTuple):
    logits: torch.Tensor  # (B, C)
    domain_logits: torch.Tensor | None  # (B, T, K) in training with an adversary, else None


class CXRNet(nn.Module):
    """
    Args:
        num_findings: C, the size of the union label space.
        common: indices of the common findings (∩l), the tasks TAT adapts.
        num_domains: number of datasets; domain 0 is the internal one.
        head: "task_specific" (the method), "holistic" (HAT) or "multi_task" (Table III baseline).
        adversarial: add discriminators (TAT on task features, HAT on the holistic feature).
        lambda_tat: eq. 7's λ_tat, the scale of the reversed gradient reaching the backbone.
    """

    def __init__(
        self,
        num_findings: int,
        common: list[int],
        num_domains: int,
        *,
        head: HeadKind = "task_specific",
        adversarial: bool = True,
        lambda_tat: float = paper.LAMBDA_TAT,
        branch_features: int = 128,
        discriminator_hidden: int = 128,
        in_channels: int = 1,
        weights: str | Path | None = None,
    ):
        super().__init__()
        if adversarial and (num_domains < 2 or (head == "task_specific" and not common)):
            raise ValueError(
                "adversarial training needs at least 2 domains and, for TAT, at least one common "
                f"finding (got {num_domains} domains, {len(common)} common findings)"
            )
        if head == "multi_task" and adversarial:
            raise ValueError("the multi_task head is a baseline without adversarial training")
        self.head_kind = head
        self.lambda_tat = lambda_tat
        self.register_buffer("common", torch.tensor(common, dtype=torch.long), persistent=False)
        self.backbone = densenet121_ibn_a(weights, in_channels)
        if head == "task_specific":
            self.head = TaskSpecificHeads(FEATURES, num_findings, branch_features)
            adversary_input, tasks = branch_features, len(common)
        elif head == "holistic":
            self.head = HolisticHead(FEATURES, num_findings)
            adversary_input, tasks = FEATURES, 1
        elif head == "multi_task":
            self.head = MultiTaskHead(FEATURES, num_findings, common, num_domains, branch_features)
        else:
            raise ValueError(f"unknown head {head!r}; allowed: task_specific, holistic, multi_task")
        self.discriminators = (
            BatchedDiscriminators(tasks, adversary_input, num_domains, discriminator_hidden)
            if adversarial
            else None
        )

    def forward(self, images: torch.Tensor, domain: torch.Tensor | None = None) -> NetOutput:
        pooled = self.backbone(images)
        if self.head_kind == "multi_task":
            if domain is None:  # inference: score as the internal domain
                domain = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
            logits, features = self.head(pooled, domain)
        else:
            logits, features = self.head(pooled)
        domain_logits = None
        if self.discriminators is not None and self.training:
            if self.head_kind == "task_specific":
                features = features[:, self.common]
            domain_logits = self.discriminators(reverse_gradient(features, self.lambda_tat))
        return NetOutput(logits, domain_logits)

    def task_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, N') the task-specific features f_c every finding's classifier reads."""
        if self.head_kind != "task_specific":
            raise ValueError(f"a {self.head_kind} head has no task-specific features")
        return self.head(self.backbone(images))[1]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [] if self.discriminators is None else list(self.discriminators.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminators: what Adam trains."""
        excluded = {id(p) for p in self.discriminator_parameters()}
        return [p for p in self.parameters() if id(p) not in excluded]
