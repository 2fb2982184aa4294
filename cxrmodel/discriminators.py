"""Domain discriminators for TAT (one per common finding) and HAT (one on the holistic feature).

The min-max of eq. 3 is done with a gradient reversal layer: one forward and one backward per step
give the discriminators the gradient that makes them separate domains better, and the feature
generator the same gradient reversed and scaled by λ_tat, i.e. the gradient that makes it confuse
them. This is the exact min-max of the paper's objective (not the non-saturating flipped-label
variant), and both sides update every iteration as the paper says, at the cost of one backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -scale."""
    return _GradientReversal.apply(x, scale)


def num_domain_outputs(num_domains: int) -> int:
    """Two domains: one output, P(internal), exactly eq. 3. More: one-vs-rest output per domain."""
    return 1 if num_domains == 2 else num_domains


def domain_targets(domain: torch.Tensor, num_domains: int) -> torch.Tensor:
    """(B,) domain indices -> (B, K) float targets matching `num_domain_outputs`."""
    if num_domains == 2:
        return (domain == 0).float().unsqueeze(1)
    return F.one_hot(domain, num_domains).float()


class BatchedDiscriminators(nn.Module):
    """T independent discriminators (3 FC layers, 2 LeakyReLU), evaluated as batched matmuls.

    Input (B, T, F): one feature per task. Output (B, T, K) domain logits.
    """

    def __init__(self, num_tasks: int, in_features: int, num_domains: int, hidden: int = 128):
        super().__init__()
        sizes = [in_features, hidden, hidden, num_domain_outputs(num_domains)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(num_tasks, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_tasks, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features.transpose(0, 1)  # (T, B, F)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.leaky_relu(h, 0.2)
        return h.transpose(0, 1)
