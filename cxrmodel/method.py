"""The one factory that wires the paper's method: network -> optimizers -> temporal ensemble ->
training step, from plain values (`MethodSpec`) and the speed switches (`Acceleration`).

Pure PyTorch, so the GPU benchmark and check script build exactly what `cxr train` builds on a
machine with torch alone; `orchestration.training.configured` turns a config and a training plan into a spec.

    method = build_method(spec, "cuda", Acceleration.for_device("cuda"))
    out = method.step(images_uint8, labels, domain, sample_id, h=0.3)
    torch.save(method_state(method), "state.pt")   # saved from the uncompiled network
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import torch

from cxrmodel import paper
from cxrmodel.losses import UteReduction
from cxrmodel.network import CXRNet, HeadKind
from cxrmodel.optimizers import make_optimizers
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import TrainingStep

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CompileScope = Literal["network", "step"]


@dataclass(frozen=True)
class MethodSpec:
    """What to train, as plain values. Defaults: the paper's method (Table VI row g)."""

    num_findings: int
    common: tuple[int, ...]  # indices of the findings every domain labels
    num_domains: int
    alpha: tuple[float, ...]  # eq. 1, per finding
    beta: tuple[float, ...]  # eq. 1, N_c / P_c per finding
    num_samples: int  # rows of the temporal ensemble (sample ids 0..num_samples-1)
    num_classes: int | None = None  # eq. 1's C: findings the trained domains label (None: all)
    ensemble_findings: tuple[bool, ...] | None = None  # findings with ensemble targets (None: all)
    domain_beta: tuple[tuple[float, ...], ...] | None = None  # (D, C) β per domain: the multi_task head
    head: HeadKind = "task_specific"
    adversarial: bool = True
    lambda_tat: float = paper.LAMBDA_TAT
    temporal_ensemble: bool = True  # also needed for hard labels: they come from the ensemble
    uncertainty: bool = True
    hard_labels: bool = False
    lambda_ute: float = paper.LAMBDA_UTE
    ute_reduction: UteReduction = "mean"  # Laine & Aila's 1/(B·C); "per_sample_sum" the older choice
    gamma: float = paper.GAMMA
    branch_features: int = 128
    discriminator_hidden: int = 128
    weights: str | None = None  # a local torchvision / densenet121_ibn_a file
    lr: float = paper.LR
    lr_milestones: tuple[int, ...] = paper.LR_MILESTONES
    lr_decay: float = paper.LR_DECAY
    discriminator_lr: float = paper.DISCRIMINATOR_LR
    random_crop: bool = False


@dataclass(frozen=True)
class Acceleration:
    """How fast the step runs; never what it computes (beyond bf16 rounding)."""

    bf16: bool = False  # autocast the forward pass to bfloat16
    channels_last: bool = False
    compile: bool = False  # torch.compile what the step trains with (not the network saved or scored)
    compile_mode: CompileMode = "default"
    compile_backend: str = "inductor"  # tests trace with "eager" to stay fast on a CPU
    compile_scope: CompileScope = "network"  # or "step": forward, losses and both optimizer updates
    fused_adam: bool = False  # one fused kernel for Adam's update (CUDA only)
    cudnn_benchmark: bool = False  # let cuDNN pick the fastest convolution for the fixed shapes

    @classmethod
    def for_device(cls, device: torch.device | str, **overrides) -> Acceleration:
        """Everything on for a GPU (what the GPU benchmark measured to help), nothing on a CPU."""
        on_gpu = torch.device(device).type == "cuda"
        defaults = dict(bf16=on_gpu, channels_last=on_gpu, compile=on_gpu, fused_adam=on_gpu, cudnn_benchmark=on_gpu)
        return cls(**{**defaults, **{k: v for k, v in overrides.items() if v is not None}})


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 arithmetic runs in hardware here: on CUDA GPUs, and on CPUs with AVX512-BF16
    or AMX. Without them oneDNN emulates it, and a bf16-autocast step is several times slower than fp32
    (7x on a 2-core AVX2 machine)."""
    if torch.device(device).type == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private: absent means no
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


class Optimizers(NamedTuple):
    network: torch.optim.Adam
    discriminators: torch.optim.RMSprop | None  # None without an adversary
    lr_schedule: torch.optim.lr_scheduler.MultiStepLR  # steps once per epoch


@dataclass
class Method:
    network: CXRNet  # uncompiled and unwrapped: state dicts and evaluation use it
    optimizers: Optimizers
    ensemble: TemporalEnsemble | None
    step: TrainingStep  # trains `network` through the wrapper (DDP) and torch.compile, when asked
    acceleration: Acceleration = field(default_factory=Acceleration)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.acceleration.bf16 else None


def build_network(spec: MethodSpec) -> CXRNet:
    """The network alone, e.g. to load trained weights into."""
    return CXRNet(
        spec.num_findings, list(spec.common), spec.num_domains,
        head=spec.head, adversarial=spec.adversarial, lambda_tat=spec.lambda_tat,
        branch_features=spec.branch_features, discriminator_hidden=spec.discriminator_hidden,
        in_channels=1, weights=spec.weights,
    )


def build_method(
    spec: MethodSpec, device: torch.device | str = "cpu", acceleration: Acceleration | None = None, *,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> Method:
    """Everything one worker trains with, on `device`; `wrap` (e.g. Ray Train's prepare_model)
    wraps the network the step trains, before torch.compile."""
    device = torch.device(device)
    speed = acceleration or Acceleration()
    if speed.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    network = build_network(spec).to(device)
    if speed.channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizers = Optimizers(*make_optimizers(
        network, lr=spec.lr, lr_milestones=spec.lr_milestones, lr_decay=spec.lr_decay,
        discriminator_lr=spec.discriminator_lr, fused=speed.fused_adam,
    ))
    ensemble = (TemporalEnsemble(spec.num_samples, spec.num_findings, spec.gamma, device)
                if spec.temporal_ensemble else None)
    trained = wrap(network) if wrap else network
    # CUDA graphs replay one shape each: static shapes (an exact epoch's steps differ by a row).
    compiling = dict(mode=speed.compile_mode, backend=speed.compile_backend,
                     dynamic=False if speed.compile_mode == "reduce-overhead" else None)
    if speed.compile and speed.compile_scope == "network":
        trained = torch.compile(trained, **compiling)
    covered = spec.ensemble_findings if spec.ensemble_findings is not None else (True,) * spec.num_findings
    step = TrainingStep(
        trained, optimizers.network, optimizers.discriminators,
        alpha=torch.tensor(spec.alpha), beta=torch.tensor(spec.domain_beta or spec.beta),
        num_domains=spec.num_domains, num_classes=spec.num_classes,
        ensemble=ensemble, ensemble_findings=torch.tensor(covered),
        lambda_tat=spec.lambda_tat, lambda_ute=spec.lambda_ute, ute_reduction=spec.ute_reduction,
        uncertainty=spec.uncertainty,
        hard_labels=spec.hard_labels,
        random_crop=spec.random_crop, autocast_dtype=torch.bfloat16 if speed.bf16 else None,
        channels_last=speed.channels_last,
        compile_options=compiling if speed.compile and speed.compile_scope == "step" else None,
    )
    return Method(network, optimizers, ensemble, step, speed)


def method_state(method: Method) -> dict:
    """Everything to continue training, from the uncompiled network (no `_orig_mod.` keys)."""
    optimizers = method.optimizers
    return {
        "model": method.network.state_dict(),
        "optimizer": optimizers.network.state_dict(),
        "discriminator_optimizer": optimizers.discriminators.state_dict() if optimizers.discriminators else None,
        "lr_schedule": optimizers.lr_schedule.state_dict(),
        "ensemble": method.ensemble.state_dict() if method.ensemble else None,
    }


def load_method_state(method: Method, state: dict) -> None:
    """The inverse of `method_state`, into a method built from the same spec (compiled or not)."""
    method.network.load_state_dict(state["model"])
    method.optimizers.network.load_state_dict(state["optimizer"])
    if method.optimizers.discriminators is not None:
        method.optimizers.discriminators.load_state_dict(state["discriminator_optimizer"])
    method.optimizers.lr_schedule.load_state_dict(state["lr_schedule"])
    if method.ensemble is not None:
        method.ensemble.load_state_dict(state["ensemble"])
