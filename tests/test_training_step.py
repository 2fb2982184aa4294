"""The training step: mechanics (both optimizers step, the ensemble records, switches work) and
learning (the full method's loss falls on learnable synthetic images)."""

import numpy as np
import torch

from cxrmodel.losses import finding_weights
from cxrmodel.network import CXRNet
from cxrmodel.schedules import HSchedule, make_optimizers
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import TrainingStep
from data_prep.synth import LOOKS, _ImageMaker

FINDINGS = 8
DOMAIN_FINDINGS = [range(0, 6), range(3, 8)]  # common: 3, 4, 5
COMMON = [3, 4, 5]


def synthetic_domains(per_domain=64, size=64, seed=0):
    """Images with the synth patterns; each domain labels only its own findings (others -2)."""
    rng = np.random.default_rng(seed)
    images, labels, domains = [], [], []
    for d, look in enumerate([LOOKS["nih"], LOOKS["chexpert"]]):
        maker = _ImageMaker(size, look, rng)
        for _ in range(per_domain):
            present = np.zeros(21, bool)
            present[:FINDINGS] = rng.random(FINDINGS) < 0.35
            images.append((maker.make(present) * 255).astype(np.uint8))
            y = np.full(FINDINGS, -2, np.int8)
            for c in DOMAIN_FINDINGS[d]:
                y[c] = present[c]
            labels.append(y)
            domains.append(d)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)), torch.tensor(domains)


def make_step(lambda_tat=0.03, ensemble=True, lr=1e-4, **kwargs):
    torch.manual_seed(0)
    model = CXRNet(FINDINGS, COMMON, 2, adversarial_weight=lambda_tat, branch_features=32, discriminator_hidden=32)
    adam, rmsprop, _ = make_optimizers(model, lr=lr)
    names = [str(i) for i in range(FINDINGS)]
    balance = {n: {"positive": 1, "negative": 2} for n in names}
    alpha, beta = finding_weights(names, [names[c] for c in COMMON], balance, alpha=3.0)
    te = TemporalEnsemble(128, FINDINGS, gamma=0.9) if ensemble else None
    step = TrainingStep(model, adam, rmsprop, alpha=alpha, beta=beta, num_domains=2, ensemble=te,
                        lambda_ute=30.0, **kwargs)
    return model, step, te


def test_one_step_updates_both_sides_and_records_predictions():
    images, labels, domains = synthetic_domains(per_domain=4)
    model, step, te = make_step()
    model.train()
    disc_before = [p.clone() for p in model.discriminator_parameters()]
    head_before = model.head.branch_weight.clone()
    ids = torch.arange(8)
    out = step(images, labels, domains, ids, h=0.3)
    assert set(out.losses) == {"cls", "tat", "ute", "total"}
    assert out.losses["ute"].item() == 0.0  # nothing in the ensemble yet
    assert out.probs.shape == (8, FINDINGS) and not out.probs.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, model.discriminator_parameters()))
    assert not torch.equal(head_before, model.head.branch_weight)
    assert te.epoch_count[:8].tolist() == [1.0] * 8 and te.epoch_count[8:].sum() == 0
    assert torch.allclose(te.epoch_sum[:8], out.probs)


def test_switches_remove_their_losses():
    images, labels, domains = synthetic_domains(per_domain=2)
    torch.manual_seed(0)
    model = CXRNet(FINDINGS, COMMON, 2, adversarial=False, branch_features=16)
    adam, rmsprop, _ = make_optimizers(model)
    assert rmsprop is None
    step = TrainingStep(model, adam, None, alpha=torch.ones(FINDINGS), beta=torch.ones(FINDINGS), num_domains=2)
    out = step(images, labels, domains, torch.arange(4))
    assert set(out.losses) == {"cls", "total"}
    assert out.losses["total"] == out.losses["cls"]


def test_bf16_autocast_and_channels_last_run():
    images, labels, domains = synthetic_domains(per_domain=2)
    model, step, _ = make_step(autocast_dtype=torch.bfloat16, channels_last=True)
    model.train().to(memory_format=torch.channels_last)
    out = step(images, labels, domains, torch.arange(4), h=0.2)
    assert torch.isfinite(out.losses["total"])


def test_full_method_learns_on_synthetic_images():
    """TW + TAT + UTE on: the classification loss falls well below its start within 40 steps."""
    images, labels, domains = synthetic_domains(per_domain=64)
    model, step, te = make_step(lr=5e-4)
    model.train()
    schedule = HSchedule("linear", 0.4, 0.1)
    rng = torch.Generator().manual_seed(0)
    history = []
    steps = 40
    for i in range(steps):
        # An equal batch from each domain, as the paper does.
        batch = torch.cat([torch.randperm(64, generator=rng)[:8], 64 + torch.randperm(64, generator=rng)[:8]])
        out = step(images[batch], labels[batch], domains[batch], batch, h=schedule(i / steps))
        history.append(out.losses["cls"].item())
        if i % 8 == 7:
            te.end_epoch()
    assert te.updates.max() > 0  # the ensemble was in play
    start, end = np.mean(history[:5]), np.mean(history[-5:])
    assert end < 0.6 * start, (start, end)
