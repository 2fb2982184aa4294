"""One training step of the full method, in plain PyTorch. Orchestration calls it once per batch.

    step = TrainingStep(model, adam, rmsprop, alpha=alpha, beta=beta, num_domains=2,
                        ensemble=ensemble, ensemble_findings=internal_only_mask)
    out = step(images_uint8, labels, domain, sample_id, h=schedule(progress))

The backward reaches the discriminators through a gradient reversal (see discriminators.py), so
one backward serves both optimizers; both step every iteration, as in the paper.

With `compile_options`, torch.compile takes the step's two halves around the backward: the forward
with every loss (`_losses`) and both optimizer updates (`_update`). The input's random flip and
crop stay outside, so a compiled step draws the same random numbers as an eager one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrmodel import paper
from cxrmodel.inference import autocast_context
from cxrmodel.inputs import to_model_input
from cxrmodel.losses import (
    UteReduction,
    adversarial_loss,
    ensemble_loss,
    ensemble_mask,
    partial_label_bce,
    with_hard_labels,
)
from cxrmodel.temporal_ensemble import TemporalEnsemble


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]  # detached scalars: cls, tat, ute, total (where switched on)
    probs: torch.Tensor  # (B, C) detached sigmoid outputs


class TrainingStep:
    """
    Args:
        model: a CXRNet, possibly wrapped in DistributedDataParallel.
        optimizer / discriminator_optimizer: Adam over the network, RMSprop over the discriminators
            (None when the model has no adversary).
        alpha, beta: per-finding weights of eq. 1; beta (D, C) gives each domain's samples their
            domain's row (the Multi-Task baseline's per-domain branches).
        num_classes: eq. 1's C, the number of findings the trained domains label (default: all).
        ensemble: the temporal ensemble (None switches TE / UTE off).
        ensemble_findings: (C,) bool, the findings whose unknown labels get ensemble targets
            (the paper: the internal-only ones); default all.
        lambda_tat: eq. 7's λ_tat: the loss it reports (the model's gradient reversal applies it
            to the backbone's gradient).
        lambda_ute: eq. 7's λ_ute, the weight of the ensemble loss.
        uncertainty: apply UTE's threshold H (False = plain TE).
        hard_labels: Table VI i: the rounded ensemble targets enter eq. 1 as labels; no L2 term.
        random_crop: random translation by up to 1/16 of the side (see inputs.py), besides the flip.
        autocast_dtype: e.g. torch.bfloat16 on GPUs; None = full precision.
        compile_options: torch.compile's arguments for the whole step; None: run it eagerly (the
            model itself may be compiled).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        discriminator_optimizer: torch.optim.Optimizer | None,
        *,
        alpha: torch.Tensor,
        beta: torch.Tensor,
        num_domains: int,
        num_classes: int | None = None,
        ensemble: TemporalEnsemble | None = None,
        ensemble_findings: torch.Tensor | None = None,
        lambda_tat: float = paper.LAMBDA_TAT,
        lambda_ute: float = paper.LAMBDA_UTE,
        ute_reduction: UteReduction = "mean",
        uncertainty: bool = True,
        hard_labels: bool = False,
        random_crop: bool = False,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile_options: dict | None = None,
    ):
        self.model, self.optimizer, self.discriminator_optimizer = model, optimizer, discriminator_optimizer
        self.device = next(model.parameters()).device
        self.alpha, self.beta = alpha.to(self.device), beta.to(self.device)
        self.num_domains, self.num_classes = num_domains, num_classes
        self.ensemble, self.lambda_ute, self.ute_reduction = ensemble, lambda_ute, ute_reduction
        covered = torch.ones(len(alpha), dtype=torch.bool) if ensemble_findings is None else ensemble_findings
        self.ensemble_findings = covered.to(self.device)
        self.uncertainty, self.hard_labels = uncertainty, hard_labels
        self.random_crop = random_crop
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last
        self.lambda_tat = lambda_tat
        compiled = (lambda f: torch.compile(f, **compile_options)) if compile_options is not None else (lambda f: f)
        self._losses_run, self._update_run = compiled(self._losses), compiled(self._update)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        domain: torch.Tensor,
        sample_id: torch.Tensor,
        *,
        h: float = 0.0,
    ) -> StepOutput:
        device = self.device
        x = to_model_input(images.to(device, non_blocking=True), flip=True, random_crop=self.random_crop,
                           channels_last=self.channels_last)
        labels = labels.to(device, non_blocking=True)
        domain = domain.to(device, non_blocking=True).long()
        # H as a tensor: a compiled step would otherwise be recompiled for every new value.
        losses, backward, probs = self._losses_run(x, labels, domain, sample_id, torch.tensor(h, device=device))

        self.optimizer.zero_grad(set_to_none=True)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.zero_grad(set_to_none=True)
        backward.backward()
        self._update_run()

        if self.ensemble is not None:
            self.ensemble.record(sample_id, probs)
        return StepOutput({k: v.detach() for k, v in losses.items()}, probs.detach())

    def _losses(self, x: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor, sample_id: torch.Tensor,
                h: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Eq. 7's terms, the sum the backward takes (λ_tat applied by the reversal) and p."""
        with autocast_context(x.device, self.autocast_dtype):
            out = self.model(x, domain)
        logits = out.logits.float()
        probs = torch.sigmoid(logits)

        ute = None
        if self.ensemble is not None:
            z, has_target = self.ensemble.targets(sample_id)
            mask = ensemble_mask(probs, has_target, labels, self.ensemble_findings,
                                 threshold=h if self.uncertainty else None)
            if self.hard_labels:  # Table VI i: pseudo-labels for eq. 1 instead of the L2 term
                labels = with_hard_labels(labels, z, mask)
            else:
                ute = ensemble_loss(probs, z, mask, num_classes=self.num_classes, reduction=self.ute_reduction)
        beta = self.beta[domain] if self.beta.dim() == 2 else self.beta
        losses = {"cls": partial_label_bce(logits, labels, self.alpha, beta, self.num_classes)}
        backward = total = losses["cls"]
        if out.domain_logits is not None:
            losses["tat"] = adversarial_loss(out.domain_logits.float(), domain, self.num_domains)
            backward = backward + losses["tat"]  # reversed and scaled by λ_tat for the backbone
            total = total - self.lambda_tat * losses["tat"]  # eq. 7: L_tat is eq. 3's log-likelihood, -BCE
        if ute is not None:
            losses["ute"] = ute
            backward = backward + self.lambda_ute * ute
            total = total + self.lambda_ute * ute
        losses["total"] = total
        return losses, backward, probs

    def _update(self) -> None:
        self.optimizer.step()
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.step()
