"""Eq. 1's per-finding weights (task weighting, section III-A), as plain numbers from the class counts
of the trained domains' train splits: α_c lifts the common findings, β_c = N_c / P_c balances each
finding's classes. `cxrmodel.losses` takes them as tensors.

No torch here: a training plan holds these numbers, and planning (`cxr train --dry-run`, a sweep's
driver checking every trial's plan) should not pay for loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cxrmodel import paper

ClassCounts = Mapping[str, int]  # {"positive": P, "negative": N}


def finding_weights(
    label_space: Sequence[str],
    common: Sequence[str],
    train_balance: Mapping[str, ClassCounts],
    *,
    alpha: float = paper.ALPHA_COMMON,
    task_weighting: bool = True,
    alpha_overrides: Mapping[str, float] | None = None,
) -> tuple[list[float], list[float]]:
    """(α_c, β_c) per finding. α_c = α for common findings and 1 otherwise (all 1 without TW),
    overrides win; β_c = N_c / P_c counted on the train splits of the domains the run trains on.

    A finding those domains label (N_c > 0) without a single positive is refused: β_c would be
    infinite. A finding none of them labels (P_c = N_c = 0) never enters eq. 1; its β_c is 1."""
    overrides = dict(alpha_overrides or {})
    unknown = sorted(set(overrides) - set(label_space))
    if unknown:
        raise ValueError(f"alpha override for unknown finding(s) {unknown}; the label space is {list(label_space)}")
    alphas, betas = [], []
    for finding in label_space:
        default = alpha if (task_weighting and finding in common) else 1.0
        alphas.append(float(overrides.get(finding, default)))
        positive, negative = train_balance[finding]["positive"], train_balance[finding]["negative"]
        if positive == 0 and negative > 0:
            raise ValueError(
                f"finding {finding!r} has no positive training image in the trained domains "
                f"({negative} negatives): β = N/P is undefined; train with a domain that has positives "
                "or prepare more data"
            )
        betas.append(negative / positive if positive > 0 else 1.0)
    return alphas, betas


def domain_betas(
    label_space: Sequence[str],
    common: Sequence[str],
    per_domain_balance: Mapping[str, Mapping[str, ClassCounts]],
    pooled_beta: Sequence[float],
) -> list[list[float]]:
    """(D, C) β for the Multi-Task baseline (Table III), rows in the order of `per_domain_balance`
    (domain -> finding -> P_c / N_c of its train split): its per-domain
    branches of a common finding are "independent" tasks, each with its own class balance, so
    β_{d,c} = N_{d,c} / P_{d,c} over domain d's train split; a finding one branch serves for every
    domain keeps the pooled β_c."""
    rows = []
    for domain, balance in per_domain_balance.items():
        row = [float(b) for b in pooled_beta]
        for finding in common:
            positive, negative = balance[finding]["positive"], balance[finding]["negative"]
            if positive == 0 and negative > 0:
                raise ValueError(f"finding {finding!r} has no positive training image in domain {domain!r} "
                                 f"({negative} negatives): its own branch's β = N/P is undefined")
            row[list(label_space).index(finding)] = negative / positive if positive else 1.0
        rows.append(row)
    return rows
