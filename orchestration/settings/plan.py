"""What a training run will do, worked out and checked on the driver before any worker starts.

The plan fixes the domains and their roles, each finding's group and weights (α_c, and β_c from
the training splits of the domains this run trains on), which findings the temporal ensemble
covers, and the step counts. `cxr train --dry-run` prints it; every run logs it as
`plan/plan.json`. An impossible setup (too small a batch for the domains, an unknown finding in α
overrides, a finding never positive in the trained domains, a missing weights file, a split too
small for one batch per worker, ...) is a PlanError here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrcommon.errors import UserError
from cxrcommon.storage import absolute
from cxrmodel.task_weights import domain_betas, finding_weights
from data_prep.findings import FindingGroups
from data_prep.prepared import PreparedDataset

if TYPE_CHECKING:
    from orchestration.settings.config import Config


def pass_steps(rows: int, world: int, per_domain: int) -> int:
    """Steps in which `world` ranks, each taking at most `per_domain` rows a step, go once over
    `rows` rows: the largest rank's share, ceil(rows / world), in batches of `per_domain`."""
    largest_share = -(-rows // world)  # ceil division
    return -(-largest_share // per_domain)


class PlanError(UserError):
    """Settings that the prepared dataset cannot support; the message says which and why."""


@dataclass(frozen=True)
class TrainingPlan:
    data: str  # the prepared directory, absolute
    domains: list[str]  # training domains, the internal (evaluated) one first
    label_space: list[str]  # the prepared label space: the network's outputs
    common: list[str]  # ∩l over the training domains
    internal_only: list[str]
    evaluated: list[str]  # findings the internal domain labels: the AUC columns
    trained: list[str]  # findings some training domain labels; their number is eq. 1's C
    alpha: list[float]  # α_c per finding of label_space
    beta: list[float]  # β_c = N_c / P_c over the training domains' train splits
    positive: list[int]  # P_c
    negative: list[int]  # N_c
    ensemble: list[str]  # findings whose unknown labels get temporal-ensemble targets
    per_domain_batch: int
    steps_per_epoch: int
    num_samples: int  # temporal-ensemble rows: max sample_id + 1
    # The Multi-Task baseline: β per training domain (rows in `domains` order), each domain's branch
    # of a common finding weighted by that domain's own N / P. None: one β per finding.
    domain_beta: list[list[float]] | None = None

    @property
    def internal(self) -> str:
        return self.domains[0]

    @property
    def common_index(self) -> list[int]:
        return [self.label_space.index(f) for f in self.common]

    @property
    def ensemble_mask(self) -> list[bool]:
        return [f in self.ensemble for f in self.label_space]

    @property
    def groups(self) -> FindingGroups:
        """The internal domain's findings grouped against the other training domains."""
        return FindingGroups(self.evaluated, self.common, self.internal_only)

    def require_labels_of(self, prepared: PreparedDataset, model: str = "the model") -> None:
        """Refuse prepared data whose label space is not this network's outputs."""
        if prepared.label_space != self.label_space:
            raise PlanError(f"{model} was trained on label space {self.label_space}, the prepared data has "
                            f"{prepared.label_space}: use data prepared the same way")

    def to_dict(self) -> dict:
        return asdict(self)


def plan_training(config: Config, data: str | Path) -> TrainingPlan:
    """Load the prepared dataset (format checked) and derive the plan, or say what is wrong."""
    prepared = PreparedDataset.load(data)
    train = config.train
    domains = train.domains or prepared.domains
    unknown = [d for d in domains if d not in prepared.domains]
    if unknown:
        raise PlanError(f"train.domains: {unknown} not in the prepared dataset, which has {prepared.domains}")
    if len(set(domains)) != len(domains):
        raise PlanError(f"train.domains lists a domain twice: {domains}")
    # The prepared internal domain is evaluated; a run without it evaluates its first domain.
    internal = prepared.internal if prepared.internal in domains else domains[0]
    domains = [internal] + [d for d in domains if d != internal]

    finding_sets = [prepared.domain_findings(d) for d in domains]
    groups = FindingGroups.of(finding_sets[0], finding_sets[1:], prepared.label_space)
    common, internal_only = groups.common, groups.internal_only
    trained = [f for f in prepared.label_space if any(f in s for s in finding_sets)]
    method = config.method
    if method.adversarial != "none" and len(domains) < 2:
        raise PlanError(
            f"method.adversarial={method.adversarial!r} needs at least 2 training domains (got {domains}); "
            "set method.adversarial=none for single-dataset training"
        )
    if method.adversarial == "task" and not common:
        raise PlanError(f"method.adversarial='task' needs common findings; the domains {domains} share none")

    per_domain = train.batch_size // len(domains)
    if per_domain < 1:
        raise PlanError(
            f"train.batch_size={train.batch_size} is smaller than the number of domains ({len(domains)}): "
            "each step takes an equal batch from every domain"
        )
    for domain in domains:
        rows = prepared.num_samples(domain, "train")
        if rows < per_domain * train.workers:
            raise PlanError(
                f"domain {domain!r} has {rows} training images, fewer than one batch of {per_domain} "
                f"for each of {train.workers} worker(s); lower train.batch_size or train.workers"
            )
    if prepared.num_samples(internal, "val") == 0:
        raise PlanError(f"domain {internal!r} has an empty val split: nothing to select the best model on")
    internal_rows = prepared.num_samples(internal, "train")
    steps = train.steps_per_epoch or pass_steps(internal_rows, train.workers, per_domain)
    if len(domains) == 1 and not train.steps_per_epoch and internal_rows // train.workers < steps:
        raise PlanError(
            f"{internal_rows} training images in batches of {per_domain} on {train.workers} workers leave some "
            "worker a step without images; raise train.batch_size or lower train.workers"
        )

    balance = prepared.class_balance(domains)
    try:
        alpha, beta = finding_weights(
            prepared.label_space, common, balance, alpha=method.alpha,
            task_weighting=method.task_weighting, alpha_overrides=method.alpha_overrides,
        )
        domain_beta = None
        if method.multi_task:
            balances = {d: prepared.class_balance([d]) for d in domains}
            domain_beta = domain_betas(prepared.label_space, common, balances, beta)
    except ValueError as exc:
        raise PlanError(f"training domains {domains}: {exc}") from None
    if config.model.weights and not Path(config.model.weights).is_file():
        raise PlanError(f"model.weights={config.model.weights!r}: no such file (weights are never downloaded)")
    if not method.uses_ensemble:
        ensemble = []
    elif method.ensemble_findings == "internal_only":
        ensemble = internal_only
    else:
        ensemble = trained

    return TrainingPlan(
        data=absolute(data),
        domains=domains,
        label_space=prepared.label_space,
        common=common,
        internal_only=internal_only,
        evaluated=prepared.domain_findings(internal),
        trained=trained,
        alpha=alpha,
        beta=beta,
        positive=[balance[f]["positive"] for f in prepared.label_space],
        negative=[balance[f]["negative"] for f in prepared.label_space],
        ensemble=list(ensemble),
        per_domain_batch=per_domain,
        steps_per_epoch=max(steps, 1),
        num_samples=prepared.manifest.max_sample_id + 1,
        domain_beta=domain_beta,
    )


def plan_document(config: Config, plan: TrainingPlan) -> dict:
    """The plan as `cxr train --plan-json` writes it and every run logs it (`plan/plan.json`)."""
    train, method = config.train, config.method
    h_schedule = method.h_schedule.build()
    schedule = []
    for epoch in range(train.epochs + 1):
        decays = sum(1 for m in train.lr_milestones if m <= epoch)
        schedule.append({
            "epoch": epoch, "step": epoch * plan.steps_per_epoch, "lr": train.lr * train.lr_decay**decays,
            "h": h_schedule(epoch / train.epochs) if method.uncertainty and plan.ensemble else None,
        })
    return {
        "domains": plan.domains,
        "internal": plan.internal,
        "roles": {d: "internal" if d == plan.internal else "external" for d in plan.domains},
        "findings": {
            f: {"group": plan.groups.group(f), "alpha": plan.alpha[c], "positive": plan.positive[c],
                "negative": plan.negative[c], "beta": plan.beta[c], "ensemble": f in plan.ensemble,
                "trained": f in plan.trained, "evaluated": f in plan.evaluated}
            for c, f in enumerate(plan.label_space)
        },
        "steps_per_epoch": plan.steps_per_epoch,
        "per_domain_batch": plan.per_domain_batch,
        "workers": train.workers,
        "epochs": train.epochs,
        "total_steps": train.epochs * plan.steps_per_epoch,
        "schedule": schedule,
    }


def plan_summary(document: dict) -> str:
    """`cxr train --dry-run`'s first lines: the domains and their roles, the steps, the batch."""
    roles = ", ".join(f"{d} ({r})" for d, r in document["roles"].items())
    return (f"training domains: {roles}\n{document['epochs']} epochs x {document['steps_per_epoch']} steps = "
            f"{document['total_steps']} steps; batch {document['per_domain_batch']} per domain per worker, "
            f"{document['workers']} worker(s)")


def plan_tables(document: dict) -> list[tuple[str, pd.DataFrame]]:
    """`cxr train --dry-run`'s tables (title, table) from a plan document: one row per finding, one
    per epoch boundary."""
    findings = pd.DataFrame.from_dict({
        name: {"group": f["group"].replace("_", " ") if f["trained"] else "not trained", "α": f"{f['alpha']:g}",
               "P": f"{f['positive']:,}", "N": f"{f['negative']:,}", "β": f"{f['beta']:.2f}" if f["trained"] else "-",
               "TE/UTE": "yes" if f["ensemble"] else "", "evaluated": "yes" if f["evaluated"] else ""}
        for name, f in document["findings"].items()
    }, orient="index")
    schedule = pd.DataFrame([{"epoch": str(r["epoch"]), "step": f"{r['step']:,}", "Adam LR": f"{r['lr']:.0e}",
                              "H": "-" if r["h"] is None else f"{r['h']:.3f}"} for r in document["schedule"]])
    return [("findings (β = N / P over the training domains' train splits)", findings),
            ("at each epoch boundary", schedule.set_index("epoch"))]
