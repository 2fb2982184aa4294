"""Per-finding ROC AUC (`cxrmodel.roc`) and the paper's summaries: Mean, Mean_Com, Mean_Int.

A finding whose evaluated labels hold only one class (or none) has no AUC: it is reported as
undefined with the reason, and left out of the means, never counted as 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrmodel.labels import POSITIVE, known_labels
from cxrmodel.roc import roc_auc

# The paper's summaries (its table headers) -> their names in code, figures and metrics: Mean over
# every evaluated finding, Mean_Com over the common ones, Mean_Int over the internal-only ones.
SUMMARIES = {"Mean": "mean", "Mean_Com": "mean_com", "Mean_Int": "mean_int"}


@dataclass
class AucReport:
    auc: dict[str, float]  # findings with a defined AUC
    undefined: dict[str, str] = field(default_factory=dict)  # finding -> why there is no AUC
    mean: float | None = None
    mean_com: float | None = None
    mean_int: float | None = None

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metric names, e.g. {'val_mean_auc': .., 'val_auc/Nodule': ..}."""
        out = {prefix + figure_name(name): value for name, value in self.auc.items()}
        for name in SUMMARIES.values():
            value = getattr(self, name)
            if value is not None:
                out[prefix + figure_name(name)] = value
        return out


def figure_name(name: str) -> str:
    """A finding's AUC or a summary under its flat name: Nodule -> auc/Nodule, mean_com -> mean_com_auc."""
    return f"{name}_auc" if name in SUMMARIES.values() else f"auc/{name}"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def auc_report(
    probs: np.ndarray,
    labels: np.ndarray,
    label_space: Sequence[str],
    *,
    evaluated: Sequence[str],
    common: Sequence[str],
    internal_only: Sequence[str],
) -> AucReport:
    """AUC of each finding in `evaluated` over the samples whose label is known (1 or 0).

    probs, labels: (N, C) in label-space order. Mean covers `evaluated`; Mean_Com the evaluated
    common findings; Mean_Int the evaluated internal-only findings."""
    auc, undefined = {}, {}
    for finding in evaluated:
        c = list(label_space).index(finding)
        known = known_labels(labels, c)
        y = labels[known, c]
        positives = int((y == POSITIVE).sum())
        if positives == 0 or positives == len(y):
            undefined[finding] = (
                f"only one class among its {len(y)} labelled samples "
                f"({positives} positive, {len(y) - positives} negative)"
            )
            continue
        auc[finding] = roc_auc(y == POSITIVE, probs[known, c])
    return AucReport(
        auc=auc,
        undefined=undefined,
        mean=_mean(list(auc.values())),
        mean_com=_mean([auc[f] for f in common if f in auc]),
        mean_int=_mean([auc[f] for f in internal_only if f in auc]),
    )
