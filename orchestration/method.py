"""The one factory that wires the paper's method from a config and a training plan:
network -> optimizers -> temporal ensemble -> training step (α and β come from the plan).

Training (each Ray Train worker), prediction, the MLflow model export, the benchmarks and the tests
all build through here, so what is measured and tested is what trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from cxrmodel.network import CXRNet
from cxrmodel.optimizers import make_optimizers
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import TrainingStep

if TYPE_CHECKING:
    from orchestration.config import Config
    from orchestration.plan import TrainingPlan


class Optimizers(NamedTuple):
    network: torch.optim.Adam
    discriminators: torch.optim.RMSprop | None  # None without an adversary
    lr_schedule: torch.optim.lr_scheduler.MultiStepLR  # steps once per epoch


@dataclass
class Method:
    network: CXRNet  # unwrapped: state dicts and evaluation use it
    optimizers: Optimizers
    ensemble: TemporalEnsemble | None
    step: TrainingStep  # trains `network` (through the wrapper, e.g. DDP, when one was given)
    autocast_dtype: torch.dtype | None
    channels_last: bool


def build_network(config: Config, plan: TrainingPlan, *, weights: str | None = None) -> CXRNet:
    """The network alone (random or `weights`-initialised), e.g. to load trained weights into."""
    method = config.method
    head = "multi_task" if method.multi_task else "holistic" if method.adversarial == "holistic" else "task_specific"
    return CXRNet(
        len(plan.label_space), plan.common_index, len(plan.domains),
        head=head,
        adversarial=method.adversarial != "none",
        adversarial_weight=method.lambda_tat,
        branch_features=config.model.branch_features,
        discriminator_hidden=config.model.discriminator_hidden,
        in_channels=1,
        weights=weights,
    )


def build_method(
    config: Config, plan: TrainingPlan, device: torch.device | str = "cpu", *,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> Method:
    """Everything one worker trains with, on `device`. bf16 autocast and channels_last follow
    `train.bf16` / `train.channels_last` (unset: on GPUs only); `wrap` (e.g. Ray Train's
    prepare_model) wraps the network the step trains."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    train, method = config.train, config.method
    bf16 = train.bf16 if train.bf16 is not None else on_gpu
    channels_last = train.channels_last if train.channels_last is not None else on_gpu
    network = build_network(config, plan, weights=config.model.weights).to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizers = Optimizers(*make_optimizers(
        network, lr=train.lr, lr_milestones=tuple(train.lr_milestones), lr_decay=train.lr_decay,
        discriminator_lr=train.discriminator_lr,
    ))
    ensemble = (TemporalEnsemble(plan.num_samples, len(plan.label_space), method.gamma, device)
                if method.uses_ensemble else None)
    autocast_dtype = torch.bfloat16 if bf16 else None
    step = TrainingStep(
        wrap(network) if wrap else network, optimizers.network, optimizers.discriminators,
        alpha=torch.tensor(plan.alpha), beta=torch.tensor(plan.beta),
        num_domains=len(plan.domains), num_classes=len(plan.trained),
        ensemble=ensemble, ensemble_findings=torch.tensor(plan.ensemble_mask),
        lambda_ute=method.lambda_ute, uncertainty=method.uncertainty, hard_labels=method.hard_labels,
        random_crop=train.random_crop, autocast_dtype=autocast_dtype, channels_last=channels_last,
    )
    return Method(network, optimizers, ensemble, step, autocast_dtype, channels_last)
