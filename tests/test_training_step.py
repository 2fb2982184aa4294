"""The training step: mechanics (both optimizers step, the ensemble records, switches work) and
learning (the full method's loss falls on learnable synthetic images)."""

import numpy as np
import torch

from cxrmodel.losses import (
    adversarial_loss,
    ensemble_loss,
    ensemble_mask,
    partial_label_bce,
    with_hard_labels,
)
from cxrmodel.network import CXRNet
from cxrmodel.optimizers import make_optimizers
from cxrmodel.schedules import HSchedule
from cxrmodel.task_weights import finding_weights
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import TrainingStep
from data_prep.synth import LOOKS, DefaultImages

FINDINGS = 8
DOMAIN_FINDINGS = [range(0, 6), range(3, 8)]  # common: 3, 4, 5
COMMON = [3, 4, 5]


def synthetic_domains(per_domain=64, size=64, seed=0):
    """Images with the synth patterns; each domain labels only its own findings (others -2)."""
    rng = np.random.default_rng(seed)
    images, labels, domains = [], [], []
    for d, look in enumerate([LOOKS["nih"], LOOKS["chexpert"]]):
        maker = DefaultImages(size, look, rng)
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
    model = CXRNet(FINDINGS, COMMON, 2, lambda_tat=lambda_tat, branch_features=32, discriminator_hidden=32)
    adam, rmsprop, _ = make_optimizers(model, lr=lr)
    names = [str(i) for i in range(FINDINGS)]
    balance = {n: {"positive": 1, "negative": 2} for n in names}
    alpha, beta = map(torch.tensor, finding_weights(names, [names[c] for c in COMMON], balance, alpha=3.0))
    te = TemporalEnsemble(128, FINDINGS, gamma=0.9) if ensemble else None
    internal_only = torch.tensor([c in DOMAIN_FINDINGS[0] and c not in DOMAIN_FINDINGS[1] for c in range(FINDINGS)])
    step = TrainingStep(model, adam, rmsprop, alpha=alpha, beta=beta, num_domains=2, ensemble=te,
                        ensemble_findings=internal_only, lambda_tat=lambda_tat, lambda_ute=30.0, **kwargs)
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


def _conv0_output(step, images, labels, domains):
    """dtype and memory format of the first conv's output during one training step."""
    seen = {}
    model = step.model
    hook = model.backbone.features.conv0.register_forward_hook(lambda m, i, o: seen.update(out=o))
    step(images, labels, domains, torch.arange(len(images)), h=0.2)
    hook.remove()
    return seen["out"].dtype, seen["out"].is_contiguous(memory_format=torch.channels_last), seen["out"].is_contiguous()


def test_bf16_autocast_and_channels_last_take_effect():
    images, labels, domains = synthetic_domains(per_domain=2)
    model, step, _ = make_step(autocast_dtype=torch.bfloat16, channels_last=True)
    model.train().to(memory_format=torch.channels_last)
    assert _conv0_output(step, images, labels, domains) == (torch.bfloat16, True, False)
    model, step, _ = make_step()
    model.train()
    assert _conv0_output(step, images, labels, domains) == (torch.float32, False, True)


# --- one full step against its three gradients, each computed on its own ---------------------

C, COMMON_SMALL, DOMAINS = 4, [1, 2], torch.tensor([0, 0, 0, 1])
ALPHA, BETA = torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([2.0, 1.5, 1.0, 4.0])
LABELS = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1], [-2, 1, 0, -2]], dtype=torch.int8)
INTERNAL_ONLY = torch.tensor([True, False, False, True])  # findings 0 and 3: domain 1 does not label them
TARGET = torch.tensor([0.8, 0.5, 0.5, 0.3])  # the ensemble's z for sample 3; its p is ~0.5 at init


def _symmetric_images(seed=0):
    """A flip leaves them unchanged: the step's random flip then cannot change its gradient."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (4, 32, 32), generator=g, dtype=torch.uint8)
    return torch.where(torch.arange(32) < 16, images, images.flip(-1))


def _step_gradients(lambda_tat=1.0, h=0.0, hard_labels=False, uncertainty=True):
    """(backbone grad, discriminator grad) after one TrainingStep, and the model as it was before."""
    torch.manual_seed(0)
    model = CXRNet(C, COMMON_SMALL, 2, lambda_tat=lambda_tat, branch_features=8, discriminator_hidden=8)
    before = CXRNet(C, COMMON_SMALL, 2, lambda_tat=lambda_tat, branch_features=8, discriminator_hidden=8)
    before.load_state_dict(model.state_dict())
    adam, rmsprop, _ = make_optimizers(model)
    te = TemporalEnsemble(4, C, gamma=0.9)
    te.Z[3], te.updates[3] = (1 - 0.9) * TARGET, 1  # z = Z / (1 - 0.9^1) = TARGET
    step = TrainingStep(model, adam, rmsprop, alpha=ALPHA, beta=BETA, num_domains=2, num_classes=C,
                        ensemble=te, ensemble_findings=INTERNAL_ONLY, lambda_tat=lambda_tat, lambda_ute=30.0,
                        uncertainty=uncertainty, hard_labels=hard_labels)
    model.train()
    step(_symmetric_images(), LABELS, DOMAINS, torch.arange(4), h=h)
    return (model.backbone.features.conv0.weight.grad.clone(), model.discriminators.weights[0].grad.clone(),
            before.train())


def _separate_gradients(model, h=0.0, hard_labels=False):
    """∂L_cls/∂θ, ∂L_tat/∂θ, ∂L_ute/∂θ (θ: first conv) and ∂L_tat/∂φ (φ: first discriminator
    layer), each from its own loss, the discriminators fed the features without any reversal."""
    from cxrmodel.inputs import to_model_input

    theta, phi = model.backbone.features.conv0.weight, model.discriminators.weights[0]
    x = to_model_input(_symmetric_images())
    logits, features = model.head(model.backbone(x))
    probs = torch.sigmoid(logits)
    z = TARGET.expand(4, C).clone().requires_grad_(True)
    has_target = torch.tensor([False, False, False, True])
    mask = ensemble_mask(probs, has_target, LABELS, INTERNAL_ONLY, threshold=h)
    labels = with_hard_labels(LABELS, z.detach(), mask) if hard_labels else LABELS
    l_cls = partial_label_bce(logits, labels, ALPHA, BETA, C)
    l_tat = adversarial_loss(model.discriminators(features[:, COMMON_SMALL]), DOMAINS, 2)
    l_ute = ensemble_loss(probs, z, mask, num_classes=C)
    grad = lambda loss, p: torch.autograd.grad(loss, p, retain_graph=True, allow_unused=True)[0]  # noqa: E731
    assert grad(l_ute, z) is None  # the target is a constant: z gets no gradient
    ute = torch.zeros_like(theta) if hard_labels or not mask.any() else grad(l_ute, theta)
    return grad(l_cls, theta), grad(l_tat, theta), ute, grad(l_tat, phi), mask


def _relative_error(got, expected):
    """|got - expected| / |expected| over the whole tensor (summation order differs by ~1e-6)."""
    return ((got - expected).norm() / expected.norm()).item()


def test_full_step_gradient_is_cls_minus_lambda_tat_plus_lambda_ute():
    backbone, discriminator, before = _step_gradients()
    g_cls, g_tat, g_ute, g_phi, mask = _separate_gradients(before)
    assert mask.sum() == 2  # sample 3's two internal-only findings, the only unknown labels
    assert g_ute.abs().sum() > 0 and g_tat.abs().sum() > 0
    # Backbone: the reversed TAT gradient (-λ_tat, λ_tat = 1) plus the other two.
    assert _relative_error(backbone, g_cls - 1.0 * g_tat + 30.0 * g_ute) < 1e-5
    # Without the reversal (or with its sign flipped) the backbone would get + g_tat instead.
    assert _relative_error(backbone, g_cls + g_tat + 30.0 * g_ute) > 1e-2
    # Discriminators: the plain gradient of their BCE (they learn to tell domains apart).
    assert _relative_error(discriminator, g_phi) < 1e-5


def test_h_and_hard_labels_change_the_gradient_as_expected():
    # H = 0.5 drops every prediction that is not exactly 0 or 1: no ensemble term.
    backbone, _, before = _step_gradients(h=0.5)
    g_cls, g_tat, g_ute, _, mask = _separate_gradients(before, h=0.5)
    assert not mask.any()
    assert _relative_error(backbone, g_cls - g_tat) < 1e-5
    # Hard labels: round(z) = [1, -, -, 0] become labels of sample 3 in eq. 1; no L2 term.
    backbone, _, before = _step_gradients(hard_labels=True, uncertainty=False)
    g_cls, g_tat, _, _, _ = _separate_gradients(before, hard_labels=True)
    assert _relative_error(backbone, g_cls - g_tat) < 1e-5
    soft_cls, _, _, _, _ = _separate_gradients(before)
    assert _relative_error(soft_cls, g_cls) > 1e-3  # the pseudo-labels did enter eq. 1


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


def test_a_beta_per_domain_weighs_each_sample_by_its_own_domains_row():
    """The Multi-Task baseline's (D, C) β: each sample's eq. 1 uses its domain's row."""
    images, labels, domains = synthetic_domains(per_domain=4)

    def cls_loss(beta):
        model, step, _ = make_step(ensemble=False, lambda_tat=0.0)
        step.beta = beta
        model.train()
        torch.manual_seed(5)  # the same flips for every call
        return step(images, labels, domains, torch.arange(8)).losses["cls"].item()

    _, reference, _ = make_step(ensemble=False)
    pooled = reference.beta
    assert cls_loss(torch.stack([pooled, pooled])) == cls_loss(pooled)
    other = pooled.clone()
    other[COMMON] *= 10  # domain 1's own β for the common findings
    per_domain = cls_loss(torch.stack([pooled, other]))
    assert per_domain != cls_loss(pooled)
    assert cls_loss(torch.stack([other, pooled])) not in (per_domain, cls_loss(pooled))  # rows are per domain


class _TinyNet(torch.nn.Module):
    """CXRNet's interface (logits, domain logits through the gradient reversal) at a size that
    torch.compile traces in a second."""

    def __init__(self, findings: int = FINDINGS, lambda_tat: float = 0.03):
        super().__init__()
        from cxrmodel.discriminators import reverse_gradient

        self.reverse, self.lambda_tat = reverse_gradient, lambda_tat
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=4), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(4, findings)
        self.discriminators = torch.nn.Linear(4, len(COMMON))

    def forward(self, x, domain=None):
        from cxrmodel.network import NetOutput

        f = self.features(x)
        return NetOutput(self.classifier(f), self.discriminators(self.reverse(f, self.lambda_tat)).unsqueeze(-1))


def _tiny_step(**kwargs) -> TrainingStep:
    torch.manual_seed(0)
    model = _TinyNet()
    adam = torch.optim.Adam([*model.features.parameters(), *model.classifier.parameters()], lr=1e-2)
    rmsprop = torch.optim.RMSprop(model.discriminators.parameters(), lr=1e-2)
    names = [str(i) for i in range(FINDINGS)]
    alpha, beta = map(torch.tensor, finding_weights(names, [names[c] for c in COMMON],
                                                     {n: {"positive": 1, "negative": 2} for n in names}))
    internal_only = torch.tensor([c in DOMAIN_FINDINGS[0] and c not in DOMAIN_FINDINGS[1] for c in range(FINDINGS)])
    return TrainingStep(model, adam, rmsprop, alpha=alpha, beta=beta, num_domains=2,
                        ensemble=TemporalEnsemble(128, FINDINGS, gamma=0.6), ensemble_findings=internal_only,
                        lambda_tat=0.03, lambda_ute=30.0, **kwargs)


def test_a_compiled_step_computes_what_the_eager_step_does():
    """compile_scope=step: the forward with every loss and both optimizer updates go through
    torch.compile (aot_eager: AOTAutograd's forward/backward split, no code generation); losses,
    weights and the ensemble agree with the eager step's over epochs with a changing H."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    eager, compiled = _tiny_step(), _tiny_step(compile_options={"backend": counter})
    images, labels, domains = synthetic_domains(per_domain=4, size=32)
    sample_id = torch.arange(len(images))
    ute = []
    for epoch, h in enumerate([0.0, 0.02, 0.05]):
        for step in (eager, compiled):
            torch.manual_seed(epoch)  # the same flips: they are drawn outside the compiled part
            out = step(images, labels, domains, sample_id, h=h)
            step.ensemble.end_epoch()
            step.last = out
        for name, value in eager.last.losses.items():
            torch.testing.assert_close(compiled.last.losses[name], value, rtol=1e-5, atol=1e-6)
        ute.append(float(eager.last.losses["ute"]))
    assert ute[0] == 0 and min(ute[1:]) > 0  # the ensemble's term took part once it had targets
    for (name, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(compiled.ensemble.Z, eager.ensemble.Z, rtol=1e-5, atol=1e-6)
    assert counter.frame_count >= 2  # the losses and the updates were compiled, not run eagerly
    frames = counter.frame_count
    compiled(images, labels, domains, sample_id, h=0.1)  # a new H: no recompile
    assert counter.frame_count == frames
