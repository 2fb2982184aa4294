"""The paper's losses, on logits, numerically stable.

    L_cls (eq. 1)  = -(1/C) Σ_c α_c [β_c 1[y=1] log p_c + 1[y=0] log(1 - p_c)], averaged over the batch;
                     unknown (-2) labels contribute nothing, but C stays the full label-space size.
    L_tat (eq. 3)  = Σ_{c ∈ ∩l} BCE(D_c(f_c), domain), each task's BCE averaged over the batch.
    L_ute (eq. 6)  = Σ_c 1[y_c = -2, |0.5 - p_c| ≥ H] (p_c - z_c)², averaged over the batch
                     (eq. 5, plain TE, is the same without the H condition).
    L (eq. 7)      = L_cls + λ_tat L_tat + λ_ute L_ute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from cxrmodel.discriminators import domain_targets
from data_prep.labels import NEGATIVE, POSITIVE, UNKNOWN


def finding_weights(
    label_space: Sequence[str],
    common: Sequence[str],
    train_balance: Mapping[str, Mapping[str, int]],
    *,
    alpha: float = 3.0,
    task_weighting: bool = True,
    alpha_overrides: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_c, β_c) per finding. α_c = α for common findings and 1 otherwise (all 1 without TW),
    overrides win; β_c = N_c / P_c on the training set (1 where a finding has no positives)."""
    overrides = dict(alpha_overrides or {})
    unknown = sorted(set(overrides) - set(label_space))
    if unknown:
        raise ValueError(f"alpha override for unknown finding(s) {unknown}; the label space is {list(label_space)}")
    alphas, betas = [], []
    for finding in label_space:
        default = alpha if (task_weighting and finding in common) else 1.0
        alphas.append(float(overrides.get(finding, default)))
        positive, negative = train_balance[finding]["positive"], train_balance[finding]["negative"]
        betas.append(negative / positive if positive > 0 else 1.0)
    return torch.tensor(alphas), torch.tensor(betas)


def partial_label_bce(
    logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """Eq. 1. logits (B, C) float, labels (B, C) in {1, 0, -2}, alpha/beta (C,)."""
    positive = (labels == POSITIVE).to(logits.dtype)
    negative = (labels == NEGATIVE).to(logits.dtype)
    per_finding = alpha * (beta * positive * F.logsigmoid(logits) + negative * F.logsigmoid(-logits))
    return -(per_finding.sum(dim=1) / logits.shape[1]).mean()


def adversarial_loss(domain_logits: torch.Tensor, domain: torch.Tensor, num_domains: int) -> torch.Tensor:
    """Eq. 3 as the discriminators' BCE: domain_logits (B, T, K), domain (B,) indices."""
    targets = domain_targets(domain, num_domains).unsqueeze(1).expand_as(domain_logits)
    bce = F.binary_cross_entropy_with_logits(domain_logits, targets, reduction="none")
    return bce.mean(dim=(0, 2)).sum()


def ensemble_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    has_target: torch.Tensor,
    labels: torch.Tensor,
    *,
    threshold: float | None = None,
    hard_labels: bool = False,
) -> torch.Tensor:
    """Eq. 5 (threshold None), eq. 6 (uncertainty threshold H), or the Hard Label variant.

    probs (B, C) current predictions p_t; targets (B, C) the ensemble's z_t; has_target (B,) False
    for samples the ensemble has not seen yet (their z is undefined: no loss)."""
    mask = (labels == UNKNOWN) & has_target.unsqueeze(1)
    if threshold is not None:
        mask &= (0.5 - probs.detach()).abs() >= threshold
    if hard_labels:
        targets = (targets >= 0.5).to(probs.dtype)
    squared = (probs - targets.detach()) ** 2 * mask.to(probs.dtype)
    return squared.sum(dim=1).mean()
