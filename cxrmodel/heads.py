"""Classification heads on the pooled backbone feature (width N = 1024).

- TaskSpecificHeads (the paper's method): C parallel FC branches N -> N' give one feature f_c per
  finding, then C classifiers N' -> 1. Both are single batched ops, not a loop of C Linears.
- HolisticHead (HAT, Table VI h): one N x C classifier on the holistic feature.
- MultiTaskHead (Table III "Multi-Task"): the task-specific branches plus one more branch and
  classifier per (external domain, common finding); a sample's common findings are scored by its
  own domain's branches. Built like the method's head, so Table III compares losses, not heads.
Each returns (logits (B, C), adversarial features): (B, C, N') per finding for TaskSpecificHeads,
(B, 1, N) for the holistic head; the multi-task head has no adversary.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _uniform_fan_in(tensor: torch.Tensor, fan_in: int) -> None:
    """nn.Linear's default initialisation for one branch's weight or bias."""
    bound = 1 / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class TaskSpecificHeads(nn.Module):
    def __init__(self, in_features: int, num_findings: int, branch_features: int = 128):
        super().__init__()
        self.num_findings, self.branch_features = num_findings, branch_features
        # All C branches as one (N, C*N') matrix: one matmul per step.
        self.branch_weight = nn.Parameter(torch.empty(in_features, num_findings * branch_features))
        self.branch_bias = nn.Parameter(torch.empty(num_findings * branch_features))
        self.classifier_weight = nn.Parameter(torch.empty(num_findings, branch_features))
        self.classifier_bias = nn.Parameter(torch.empty(num_findings))
        for p in (self.branch_weight, self.branch_bias):
            _uniform_fan_in(p, in_features)
        for p in (self.classifier_weight, self.classifier_bias):
            _uniform_fan_in(p, branch_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.addmm(self.branch_bias, x, self.branch_weight)
        features = torch.relu(features).view(x.shape[0], self.num_findings, self.branch_features)
        logits = (features * self.classifier_weight).sum(-1) + self.classifier_bias
        return logits, features


class HolisticHead(nn.Module):
    def __init__(self, in_features: int, num_findings: int):
        super().__init__()
        self.classifier = nn.Linear(in_features, num_findings)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(x), x.unsqueeze(1)


class MultiTaskHead(nn.Module):
    """Branches: one per finding (used by domain 0, the internal one), plus one per external domain
    for each common finding. `domain` picks, per sample, which branch scores each common finding."""

    def __init__(self, in_features: int, num_findings: int, common: list[int], num_domains: int,
                 branch_features: int = 128):
        super().__init__()
        self.num_findings = num_findings
        extra = len(common) * (num_domains - 1)
        self.branches = TaskSpecificHeads(in_features, num_findings + extra, branch_features)
        # column[d, c]: the output column holding finding c for domain d.
        column = torch.arange(num_findings).repeat(num_domains, 1)
        for d in range(1, num_domains):
            for j, c in enumerate(common):
                column[d, c] = num_findings + (d - 1) * len(common) + j
        self.register_buffer("column", column, persistent=False)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, features = self.branches(x)
        return outputs.gather(1, self.column[domain]), features
