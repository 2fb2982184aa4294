"""What a training run will do, worked out and checked on the driver before any worker starts.

An impossible setup (too small a batch for the domains, an unknown finding in α overrides, a
missing weights file, a split too small for one batch per worker, ...) is a ConfigError here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from cxrmodel.losses import finding_weights
from data_prep.labels import common_findings, exclusive_findings
from data_prep.prepared import PreparedDataset
from orchestration.config import Config, ConfigError


@dataclass(frozen=True)
class TrainingPlan:
    data: str  # the prepared directory, absolute
    domains: list[str]  # training domains, the internal (evaluated) one first
    label_space: list[str]
    common: list[str]  # ∩l over the training domains
    internal_only: list[str]
    evaluated: list[str]  # findings the internal domain labels: the AUC columns
    per_domain_batch: int
    steps_per_epoch: int
    num_samples: int  # temporal-ensemble rows: max sample_id + 1

    @property
    def internal(self) -> str:
        return self.domains[0]

    @property
    def common_index(self) -> list[int]:
        return [self.label_space.index(f) for f in self.common]

    def to_dict(self) -> dict:
        return asdict(self)


def plan_training(config: Config, data: str | Path) -> TrainingPlan:
    """Load the prepared dataset (format checked) and derive the plan, or say what is wrong."""
    prepared = PreparedDataset.load(data)
    train = config.train
    domains = train.domains or prepared.domains
    unknown = [d for d in domains if d not in prepared.domains]
    if unknown:
        raise ConfigError(f"train.domains: {unknown} not in the prepared dataset, which has {prepared.domains}")
    if len(set(domains)) != len(domains):
        raise ConfigError(f"train.domains lists a domain twice: {domains}")
    # The prepared internal domain is evaluated; a run without it evaluates its first domain.
    internal = prepared.internal if prepared.internal in domains else domains[0]
    domains = [internal] + [d for d in domains if d != internal]

    finding_sets = [prepared.domain_findings(d) for d in domains]
    common = common_findings(prepared.label_space, finding_sets)
    internal_only = exclusive_findings(prepared.domain_findings(internal), finding_sets[1:])
    method = config.method
    if method.adversarial != "none" and len(domains) < 2:
        raise ConfigError(
            f"method.adversarial={method.adversarial!r} needs at least 2 training domains (got {domains}); "
            "set method.adversarial=none for single-dataset training"
        )
    if method.adversarial == "task" and not common:
        raise ConfigError(f"method.adversarial='task' needs common findings; the domains {domains} share none")

    per_domain = train.batch_size // len(domains)
    if per_domain < 1:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is smaller than the number of domains ({len(domains)}): "
            "each step takes an equal batch from every domain"
        )
    for domain in domains:
        rows = prepared.num_samples(domain, "train")
        if rows < per_domain * train.workers:
            raise ConfigError(
                f"domain {domain!r} has {rows} training images, fewer than one batch of {per_domain} "
                f"for each of {train.workers} worker(s); lower train.batch_size or train.workers"
            )
    if prepared.num_samples(internal, "val") == 0:
        raise ConfigError(f"domain {internal!r} has an empty val split: nothing to select the best model on")
    steps = train.steps_per_epoch or prepared.num_samples(internal, "train") // (per_domain * train.workers)

    try:
        finding_weights(
            prepared.label_space, common, prepared.class_balance(),
            alpha=method.alpha, alpha_overrides=method.alpha_overrides,
        )
    except ValueError as exc:
        raise ConfigError(f"method.alpha_overrides: {exc}") from None
    if config.model.weights and not Path(config.model.weights).is_file():
        raise ConfigError(f"model.weights={config.model.weights!r}: no such file (weights are never downloaded)")

    return TrainingPlan(
        data=str(Path(data).resolve()),
        domains=domains,
        label_space=prepared.label_space,
        common=common,
        internal_only=internal_only,
        evaluated=prepared.domain_findings(internal),
        per_domain_batch=per_domain,
        steps_per_epoch=max(steps, 1),
        num_samples=int(prepared.manifest["max_sample_id"]) + 1,
    )
