"""`cxr evaluate --by sex,age_band,view`: does the model work as well on women, on the over-70s,
on AP films? AUC per finding and their mean in each subgroup of each evaluated split, with the
gap to the whole split.

Intervals come from one stratified bootstrap of the whole split per finding (images resampled
within each class, as for the AUCs): in each replicate the subgroup's AUC is computed on the
subgroup's members of that resample, so the subgroup's AUC and its gap to the whole split are
paired. A gap whose 95% interval excludes 0 is flagged. A finding with fewer than
`min_per_class` (default MIN_PER_CLASS) positives or negatives in a subgroup is not scored there
(a warning says so).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrmodel.auc_statistics import REPLICATES_PER_CHUNK, WeightedAuc, percentile_interval, stratified_counts
from cxrmodel.labels import known_labels
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.scoring import MIN_PER_CLASS, interval_cells, labelled_rows
from orchestration.settings.config import ConfigError
from orchestration.settings.schema import subgroup_metric

AGE_BANDS = ((0, 40, "0-39"), (40, 60, "40-59"), (60, 70, "60-69"), (70, 121, "70+"))
KEYS = ("sex", "age_band", "view")
MEAN = "Mean"


def parse_keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in KEYS]
    if unknown or not keys:
        raise ConfigError(f"--by {text!r}: expected a comma-separated list of {', '.join(KEYS)}")
    return keys


def subgroup_values(columns: pd.DataFrame, key: str) -> pd.Series:
    """Each image's subgroup for `key` (missing where the dataset does not say)."""
    if key != "age_band":
        return columns[key].astype("string")
    age = columns["age"].astype(float)
    bands = pd.Series(pd.NA, index=columns.index, dtype="string")
    for low, high, label in AGE_BANDS:
        bands[(age >= low) & (age < high)] = label
    return bands


def _replicates(positive: np.ndarray, scores: np.ndarray, member: np.ndarray, replicates: int, seed: int
                ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The subgroup's AUC and the whole split's; their replicates (NaN where a resample leaves
    the subgroup one class short)."""
    pos, neg = scores[positive], scores[~positive]
    whole, part = WeightedAuc(pos, neg), WeightedAuc(pos[member[positive]], neg[member[~positive]])
    one = np.ones((1, pos.size)), np.ones((1, neg.size))
    whole_auc = float(whole(*one)[0])
    part_auc = float(part(one[0][:, member[positive]], one[1][:, member[~positive]])[0])
    rng = np.random.default_rng(seed)
    sub, gap = [], []
    for start in range(0, replicates, REPLICATES_PER_CHUNK):
        size = min(REPLICATES_PER_CHUNK, replicates - start)
        pc, nc = stratified_counts(pos.size, neg.size, size, rng)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = part(pc[:, member[positive]], nc[:, member[~positive]])
        sub.append(values)
        gap.append(values - whole(pc, nc))
    return part_auc, whole_auc, np.concatenate(sub) if sub else np.empty(0), np.concatenate(gap) if gap else np.empty(0)


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    return percentile_interval(values) if values.size else (np.nan, np.nan)


def subgroup_results(frame: pd.DataFrame, prepared: PreparedDataset, keys: list[str], *, bootstrap: int,
                     seed: int, min_per_class: int = MIN_PER_CLASS) -> tuple[pd.DataFrame, dict[str, float], list[str]]:
    """One row per (domain, key, subgroup, finding or Mean): images, positives, AUC with its interval,
    the gap to the whole split with its interval and whether that excludes 0; the metrics
    <domain>/subgroup/<key>/<group>/…; warnings for subgroups too small to score."""
    space = prepared.label_space
    rows, metrics, warnings = [], {}, []
    for domain, part in frame.groupby("domain", sort=False):
        kept, shard, _ = labelled_rows(part, prepared, domain, [*space, "sex", "age", "view"])
        y, probs = shard[space].to_numpy(np.int8), kept[space].to_numpy(np.float32)
        findings = list(prepared.domain_findings(domain))
        for key in keys:
            values = subgroup_values(shard.reset_index(drop=True), key)
            if values.isna().all():
                warnings.append(f"{domain}: the data gives no {key} for any image; no {key} subgroups")
                continue
            if values.isna().any():
                warnings.append(f"{domain}: {int(values.isna().sum()):,} of {len(values):,} images have no {key}; "
                                "they are in no subgroup")
            too_small, partly = [], []
            for group in sorted(values.dropna().unique()):
                member_all = (values == group).to_numpy()
                scored, gaps, subs, whole_values, part_values = [], [], [], [], []
                for finding in findings:
                    c = space.index(finding)
                    known = known_labels(y, c)
                    positive, member = y[known, c] == 1, member_all[known]
                    if min((positive & member).sum(), (~positive & member).sum()) < min_per_class:
                        continue
                    finding_seed = int(np.random.SeedSequence([seed, c, KEYS.index(key)]).generate_state(1)[0])
                    auc, whole, sub, gap = _replicates(positive, probs[known, c], member, bootstrap, finding_seed)
                    scored.append(finding)
                    subs.append(sub), gaps.append(gap), part_values.append(auc), whole_values.append(whole)
                    rows.append(_row(domain, key, group, finding, int(member.sum()), int((positive & member).sum()),
                                     auc, sub, auc - whole, gap))
                if not scored:
                    too_small.append(f"{group} ({int(member_all.sum()):,} images)")
                    continue
                mean_sub = np.mean(subs, axis=0) if bootstrap else np.empty(0)
                mean_gap = np.mean(gaps, axis=0) if bootstrap else np.empty(0)
                rows.append(_row(domain, key, group, MEAN, int(member_all.sum()), None, float(np.mean(part_values)),
                                 mean_sub, float(np.mean(part_values) - np.mean(whole_values)), mean_gap))
                left_out = len(findings) - len(scored)
                if left_out:
                    partly.append(f"{group} {left_out}")
            if partly:
                warnings.append(f"{domain}: {key} subgroups, findings not scored for fewer than {min_per_class} "
                                f"positives or negatives: {', '.join(partly)}")
            if too_small:
                warnings.append(f"{domain}: {key} subgroup(s) too small to score (no finding has {min_per_class} "
                                f"positives and negatives in them): {', '.join(too_small)}")
    table = pd.DataFrame(rows)
    for row in rows:
        for name in ("auc", "auc_gap"):
            metrics[subgroup_metric(row["domain"], row["by"], row["group"], name,
                                    None if row["finding"] == MEAN else row["finding"])] = row[name]
    return table, metrics, warnings


def _row(domain, key, group, finding, images, positives, auc, sub, gap, gaps) -> dict:
    low, high = _interval(sub)
    gap_low, gap_high = _interval(gaps)
    return {"domain": domain, "by": key, "group": group, "finding": finding, "images": images,
            "positives": positives, "auc": auc, "auc_low": low, "auc_high": high, "auc_gap": gap,
            "gap_low": gap_low, "gap_high": gap_high,
            "gap_flagged": bool(gap_low > 0 or gap_high < 0) if not np.isnan(gap_low) else False}


def shown_subgroups(table: pd.DataFrame) -> pd.DataFrame:
    """What is printed: the Mean rows, and the findings whose gap is flagged."""
    shown = table[(table["finding"] == MEAN) | table["gap_flagged"]].copy()
    shown["AUC"] = interval_cells(shown["auc"], shown["auc_low"], shown["auc_high"])
    shown["gap"] = interval_cells(shown["auc_gap"], shown["gap_low"], shown["gap_high"])
    shown["flag"] = np.where(shown["gap_flagged"], "gap excludes 0", "")
    return shown[["domain", "by", "group", "finding", "images", "AUC", "gap", "flag"]]
