"""The config side of the one method factory (`cxrmodel.method`): a config and a training plan
become a `MethodSpec` (what to train) and an `Acceleration` (how fast), and `configured_method` wires
them. Training (each Ray Train worker), prediction, the MLflow model export, the benchmarks and the
tests all build through here, so what is measured and tested is what trains.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import torch

from cxrmodel import method as factory
from cxrmodel.method import Acceleration, Method, MethodSpec
from cxrmodel.network import CXRNet

if TYPE_CHECKING:
    from orchestration.settings.config import Config
    from orchestration.settings.plan import TrainingPlan


def method_spec(config: Config, plan: TrainingPlan) -> MethodSpec:
    method, model, train = config.method, config.model, config.train
    return MethodSpec(
        num_findings=len(plan.label_space), common=tuple(plan.common_index), num_domains=len(plan.domains),
        alpha=tuple(plan.alpha), beta=tuple(plan.beta), num_samples=plan.num_samples,
        domain_beta=tuple(map(tuple, plan.domain_beta)) if plan.domain_beta else None,
        num_classes=len(plan.trained), ensemble_findings=tuple(plan.ensemble_mask),
        head="multi_task" if method.multi_task else "holistic" if method.adversarial == "holistic" else "task_specific",
        adversarial=method.adversarial != "none", lambda_tat=method.lambda_tat,
        temporal_ensemble=method.uses_ensemble, uncertainty=method.uncertainty, hard_labels=method.hard_labels,
        lambda_ute=method.lambda_ute, ute_reduction=method.ute_reduction, gamma=method.gamma,
        branch_features=model.branch_features, discriminator_hidden=model.discriminator_hidden, weights=model.weights,
        lr=train.lr, lr_milestones=tuple(train.lr_milestones), lr_decay=train.lr_decay,
        discriminator_lr=train.discriminator_lr, random_crop=train.random_crop,
    )


def acceleration(config: Config, device: torch.device | str) -> Acceleration:
    """`train.bf16` / `channels_last` / `compile` where set; unset: on GPUs, off on CPUs."""
    train = config.train
    return Acceleration.for_device(device, bf16=train.bf16, channels_last=train.channels_last,
                                   compile=train.compile, compile_mode=train.compile_mode,
                                   compile_scope=train.compile_scope)


def configured_network(config: Config, plan: TrainingPlan) -> CXRNet:
    """The network alone, random (weights to be loaded into it), e.g. to score a checkpoint."""
    return factory.build_network(replace(method_spec(config, plan), weights=None))


def configured_method(
    config: Config, plan: TrainingPlan, device: torch.device | str = "cpu", *,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> Method:
    """Everything one worker trains with, on `device`; `wrap` (e.g. Ray Train's prepare_model)
    wraps the network the step trains."""
    return factory.build_method(method_spec(config, plan), device, acceleration(config, device), wrap=wrap)
