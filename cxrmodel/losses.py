"""The paper's losses, on logits, numerically stable.

    L_cls (eq. 1)  = -(1/C) Σ_c α_c [β_c 1[y=1] log p_c + 1[y=0] log(1 - p_c)], averaged over the batch;
                     unknown (-2) labels contribute nothing; C counts every finding the trained
                     domains label, known for this sample or not.
    L_tat (eq. 3)  = Σ_{c ∈ ∩l} Σ_d mean_{i ∈ domain d} BCE(D_c(f_c,i), d): one expectation per
                     domain present in the batch, summed (not one mean over the mixed batch).
    L_ute (eq. 6)  = 1/(B·C) Σ_i Σ_{c ∈ E} 1[y_c = -2, |0.5 - p_c| ≥ H] (p_c - z_c)²,
                     E = the findings the ensemble covers (by default the internal-only ones),
                     B the step's batch, C eq. 1's C; eq. 5, plain TE, is the same without the H
                     condition. The 1/(B·C) is the mean squared difference of the work the paper
                     takes TE from (Laine & Aila, "Temporal ensembling", its [22]), whose weight
                     w_max = 30 is the paper's λ_ute; `per_sample_sum` (Σ_c, batch mean) is ~C
                     times larger.
    L (eq. 7)      = L_cls + λ_tat L_tat + λ_ute L_ute.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from cxrmodel.discriminators import domain_targets
from cxrmodel.labels import NEGATIVE, POSITIVE, UNKNOWN


def partial_label_bce(
    logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Eq. 1. logits (B, C) float, labels (B, C) in {1, 0, -2}, alpha (C,), beta (C,) or per sample
    (B, C). `num_classes` is eq. 1's C, the size of the trained domains' label space (default:
    every column)."""
    positive = (labels == POSITIVE).to(logits.dtype)
    negative = (labels == NEGATIVE).to(logits.dtype)
    per_finding = alpha * (beta * positive * F.logsigmoid(logits) + negative * F.logsigmoid(-logits))
    return -(per_finding.sum(dim=1) / (num_classes or logits.shape[1])).mean()


def adversarial_loss(domain_logits: torch.Tensor, domain: torch.Tensor, num_domains: int) -> torch.Tensor:
    """Eq. 3 as the discriminators' BCE: domain_logits (B, T, K), domain (B,) indices.

    Each sample's BCE against its own domain's target (averaged over the K one-vs-rest outputs
    when there are 3+ domains) is averaged within its domain; the per-domain means are summed over
    the domains present, then over the T tasks. With two domains and one output this is exactly
    E_d[-log D] + E_-d[-log(1 - D)], whatever the sizes of the two halves."""
    targets = domain_targets(domain, num_domains).unsqueeze(1).expand_as(domain_logits)
    per_sample = F.binary_cross_entropy_with_logits(domain_logits, targets, reduction="none").mean(dim=2)  # (B, T)
    members = F.one_hot(domain, num_domains).to(per_sample.dtype)  # (B, D)
    sizes = members.sum(dim=0)  # (D,)
    per_domain = members.t() @ per_sample / sizes.clamp_min(1.0).unsqueeze(1)  # (D, T); absent domains 0
    return per_domain.sum()


def ensemble_mask(
    probs: torch.Tensor,
    has_target: torch.Tensor,
    labels: torch.Tensor,
    covered: torch.Tensor,
    *,
    threshold: float | None = None,
) -> torch.Tensor:
    """(B, C) bool: where the ensemble's target applies. An unknown label (-2) of a covered finding
    (covered (C,) bool) of a sample the ensemble has seen (has_target (B,)), and with UTE only
    where the prediction is certain enough: |0.5 - p| ≥ H (eq. 6; a tie is kept)."""
    mask = (labels == UNKNOWN) & covered.unsqueeze(0) & has_target.unsqueeze(1)
    if threshold is not None:
        mask &= (0.5 - probs.detach()).abs() >= threshold
    return mask


UteReduction = Literal["mean", "per_sample_sum"]


def ensemble_loss(probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
                  num_classes: int | None = None, reduction: UteReduction = "mean") -> torch.Tensor:
    """Eq. 5 / 6 over the masked entries of (p - z)²: "mean" divides their sum by B·C (every entry
    of the batch's outputs, unmasked ones counting 0; C = `num_classes`, default every column),
    "per_sample_sum" sums over findings and averages over the batch. probs (B, C) the current
    predictions p_t, targets (B, C) the ensemble's z_t (no gradient), mask from `ensemble_mask`."""
    squared = (probs - targets.detach()) ** 2 * mask.to(probs.dtype)
    if reduction == "per_sample_sum":
        return squared.sum(dim=1).mean()
    return squared.sum() / (probs.shape[0] * (num_classes or probs.shape[1]))


def with_hard_labels(labels: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Table VI row i: the rounded ensemble targets (z ≥ 0.5 -> 1, else 0) of the masked entries
    become labels, so they enter eq. 1's α/β-weighted BCE like real ones."""
    pseudo = torch.where(targets >= 0.5, POSITIVE, NEGATIVE).to(labels.dtype)
    return torch.where(mask, pseudo, labels)
