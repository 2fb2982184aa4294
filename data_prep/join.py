"""Join the datasets' canonical rows into one table on the union label space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrcommon.errors import DataPrepError
from cxrmodel.labels import NEGATIVE, POSITIVE, UNKNOWN
from data_prep.config import PrepareConfig
from data_prep.findings import (
    FindingGroups,
    common_findings,
    union_label_space,
)
from data_prep.readers import SourceTable, read_source
from data_prep.readers.common import SUBGROUP_COLUMNS, subgroup_columns
from data_prep.split import assign_splits, patients_crossing_splits, split_counts

META_COLUMNS = ("sample_id", "domain", "image_id", "path", "patient_id", "split", *SUBGROUP_COLUMNS)


@dataclass
class JoinedDataset:
    """All samples of all domains: META_COLUMNS plus one int8 column per finding (1 / 0 / -2)."""

    rows: pd.DataFrame
    label_space: list[str]
    common: list[str]
    domain_findings: dict[str, list[str]]  # in the order the datasets were given
    internal: str
    warnings: list[str]

    @property
    def internal_only(self) -> list[str]:
        """Findings only the internal domain labels (the paper's Mean_Int set)."""
        others = [fs for d, fs in self.domain_findings.items() if d != self.internal]
        return FindingGroups.of(self.domain_findings[self.internal], others, self.label_space).internal_only

    def without(self, sample_ids: set[int]) -> JoinedDataset:
        kept = self.rows[~self.rows["sample_id"].isin(sample_ids)]
        return JoinedDataset(
            kept, self.label_space, self.common, self.domain_findings, self.internal, self.warnings
        )


def load_sources(config: PrepareConfig, *, find_images: bool = True) -> JoinedDataset:
    if not config.sources:
        raise DataPrepError("no datasets given: pass --nih, --chexpert and/or --csv NAME=FILE")
    tables = [read_source(s, find_images=find_images, allow_outside_root=config.allow_outside_root)
              for s in config.sources]
    if config.chexpert_test == "valid":
        for source, table in zip(config.sources, tables):
            if source.kind == "chexpert":
                table.rows["split"] = table.rows["split"].map({"train": "train_val", "val": "test"})
    return join_sources(tables, config)


def join_sources(tables: list[SourceTable], config: PrepareConfig) -> JoinedDataset:
    domain_findings = {t.name: t.findings for t in tables}
    label_space = union_label_space(domain_findings.values())
    common = common_findings(label_space, domain_findings.values())
    parts = []
    for table in tables:
        rows = table.rows.sort_values("image_id", kind="stable").reset_index(drop=True)
        rows["split"] = assign_splits(
            rows,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
        )
        crossing = patients_crossing_splits(rows["patient_id"], rows["split"])
        if crossing:  # cannot happen unless a split rule is broken: refuse rather than leak
            raise DataPrepError(f"dataset {table.name!r}: patient {crossing[0]!r} is in two splits")
        rows["domain"] = table.name
        for column, missing in subgroup_columns(rows.index).items():  # a dataset that does not say
            if column not in rows.columns:
                rows[column] = missing
        for finding in label_space:
            if finding not in rows.columns:
                rows[finding] = np.int8(UNKNOWN)
        parts.append(rows)
    joined = pd.concat(parts, ignore_index=True)
    # Stable across shuffles, shards and restarts: fixed once here, stored in every shard row.
    joined.insert(0, "sample_id", np.arange(len(joined), dtype=np.int64))
    joined = joined[list(META_COLUMNS) + label_space]
    joined[label_space] = joined[label_space].astype(np.int8)
    warnings = [w for t in tables for w in t.warnings]
    return JoinedDataset(joined, label_space, common, domain_findings, config.internal, warnings)


def dataset_stats(joined: JoinedDataset) -> dict:
    """The `--stats-json` document: label space, common set, and per-domain counts."""
    domains = {}
    for name, findings in joined.domain_findings.items():
        rows = joined.rows[joined.rows["domain"] == name]
        domains[name] = {
            "role": "internal" if name == joined.internal else "external",
            "findings": findings,
            "num_images": int(len(rows)),
            "num_patients": int(rows["patient_id"].nunique()),
            "splits": split_counts(rows["split"]),
            "counts": {
                f: {
                    "positive": int((rows[f] == POSITIVE).sum()),
                    "negative": int((rows[f] == NEGATIVE).sum()),
                    "unknown": int((rows[f] == UNKNOWN).sum()),
                }
                for f in joined.label_space
            },
        }
    return {"label_space": joined.label_space, "common": joined.common, "domains": domains}


def train_class_balance(joined: JoinedDataset) -> dict[str, dict[str, dict[str, int]]]:
    """Per domain, P_c and N_c over its training split: a run sums those of the domains it trains
    on (β_c = N_c / P_c in eq. 1)."""
    train = joined.rows[joined.rows["split"] == "train"]
    return {
        domain: {
            f: {"positive": int((rows[f] == POSITIVE).sum()), "negative": int((rows[f] == NEGATIVE).sum())}
            for f in joined.label_space
        }
        for domain in joined.domain_findings
        for rows in [train[train["domain"] == domain]]
    }


def table_one(stats: dict) -> pd.DataFrame:
    """The paper's Table I from `dataset_stats` (or a manifest): positives per finding and dataset
    ('-' where a dataset does not label it; * marks the findings all share), then images, patients
    and images per split."""
    domains = stats["domains"]
    columns = [f"{name} ({d['role']})" for name, d in domains.items()]
    rows = {
        finding + (" *" if finding in stats["common"] else ""): [
            f"{d['counts'][finding]['positive']:,}" if finding in d["findings"] else "-" for d in domains.values()
        ]
        for finding in stats["label_space"]
    }
    rows["images"] = [f"{d['num_images']:,}" for d in domains.values()]
    rows["patients"] = [f"{d['num_patients']:,}" for d in domains.values()]
    for split in ("train", "val", "test"):
        rows[f"{split} images"] = [f"{d['splits'][split]:,}" for d in domains.values()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)
