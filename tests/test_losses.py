"""Each loss against numbers worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from cxrmodel.losses import (
    adversarial_loss,
    ensemble_loss,
    ensemble_mask,
    partial_label_bce,
    with_hard_labels,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25, sigmoid(0) = 0.5


def test_partial_label_bce_by_hand():
    logits = torch.tensor([[0.0, LN3], [LN3, -LN3]])
    labels = torch.tensor([[1, 0], [-2, 1]])
    alpha, beta = torch.tensor([3.0, 1.0]), torch.tensor([2.0, 3.0])
    # sample 1: -(1/2) [3*2*log 0.5 + 1*log(1 - 0.75)] = -(1/2)(-4.1588831 - 1.3862944) = 2.7725887
    # sample 2: finding 0 unknown -> 0; -(1/2) [1*3*log 0.25] = 2.0794415
    # batch mean: (2.7725887 + 2.0794415) / 2 = 2.4260151
    assert partial_label_bce(logits, labels, alpha, beta).item() == pytest.approx(2.4260151, abs=1e-6)


def test_per_sample_betas_in_eq_1():
    # Per-sample β in eq. 1 (the Multi-Task baseline's, one row per domain: test_task_weights), the
    # numbers of test_partial_label_bce_by_hand with sample 2 given its own β row [9, 3]:
    # finding 0 is unknown for it, so only sample 1's row matters: same 2.4260151.
    logits = torch.tensor([[0.0, LN3], [LN3, -LN3]])
    labels = torch.tensor([[1, 0], [-2, 1]])
    per_sample = torch.tensor([[2.0, 3.0], [9.0, 3.0]])
    assert partial_label_bce(logits, labels, torch.tensor([3.0, 1.0]), per_sample).item() == pytest.approx(2.4260151, abs=1e-6)
    # Sample 1 with β_0 = 4 instead of 2: -(1/2)[3*4*log 0.5 + log 0.25] = 4.8520303; mean with 2.0794415
    per_sample[0, 0] = 4.0
    assert partial_label_bce(logits, labels, torch.tensor([3.0, 1.0]), per_sample).item() == pytest.approx(
        (4.8520303 + 2.0794415) / 2, abs=1e-6)


def test_partial_label_bce_all_unknown_is_zero_and_extremes_are_finite():
    logits = torch.tensor([[100.0, -100.0]])
    assert partial_label_bce(logits, torch.tensor([[-2, -2]]), torch.ones(2), torch.ones(2)).item() == 0.0
    # A confident wrong answer: -(1/2) [1*1*log sigmoid(-100)] = 100/2 = 50, finite.
    loss = partial_label_bce(logits, torch.tensor([[-2, 1]]), torch.ones(2), torch.ones(2))
    assert loss.item() == pytest.approx(50.0, rel=1e-6)
    loss_grad = torch.tensor([[100.0, -100.0]], requires_grad=True)
    partial_label_bce(loss_grad, torch.tensor([[0, 1]]), torch.ones(2), torch.ones(2)).backward()
    assert torch.isfinite(loss_grad.grad).all()


def test_partial_label_bce_divides_by_the_trained_label_space():
    # Same numbers as above with C = 3 given: (2.7725887 * 2 / 3 + 2.0794415 * 2 / 3) / 2 = 1.6173434
    logits = torch.tensor([[0.0, LN3], [LN3, -LN3]])
    labels = torch.tensor([[1, 0], [-2, 1]])
    alpha, beta = torch.tensor([3.0, 1.0]), torch.tensor([2.0, 3.0])
    assert partial_label_bce(logits, labels, alpha, beta, num_classes=3).item() == pytest.approx(1.6173434, abs=1e-6)


def test_adversarial_loss_two_domains_by_hand():
    # Eq. 3 is a sum of one expectation per domain. Targets: 1 for the internal domain 0, 0 otherwise.
    # sample 1 (domain 0, logit 0): -log 0.5 = 0.6931472; sample 2 (domain 1, logit ln3): -log 0.25 = 1.3862944
    # per task: 0.6931472 + 1.3862944 = 2.0794415; two identical tasks are summed: 4.1588831
    logits = torch.tensor([[[0.0], [0.0]], [[LN3], [LN3]]])
    assert adversarial_loss(logits, torch.tensor([0, 1]), 2).item() == pytest.approx(4.1588831, abs=1e-6)


def test_adversarial_loss_averages_within_each_domain_when_halves_differ():
    # Domain 0 has 3 samples (logits 0, ln3, -ln3; target 1): -log 0.5, -log 0.75, -log 0.25
    #   = 0.6931472 + 0.2876821 + 1.3862944 = 2.3671237, mean 0.7890412
    # Domain 1 has 1 sample (logit ln3; target 0): -log 0.25 = 1.3862944
    # eq. 3: 0.7890412 + 1.3862944 = 2.1753356 (one mean over the 4 samples would give 0.9383545)
    logits = torch.tensor([0.0, LN3, -LN3, LN3]).view(4, 1, 1)
    assert adversarial_loss(logits, torch.tensor([0, 0, 0, 1]), 2).item() == pytest.approx(2.1753356, abs=1e-6)
    # A batch holding one domain only: just that domain's expectation, log 2.
    assert adversarial_loss(torch.zeros(2, 1, 1), torch.tensor([0, 0]), 2).item() == pytest.approx(math.log(2))


def test_adversarial_loss_three_domains_one_vs_rest():
    # One task, K=3 outputs all 0 (p=0.5): each sample's BCE is log 2 (mean over its 3 outputs);
    # one sample per domain, each domain's mean log 2, summed over 3 domains: 3 log 2.
    logits = torch.zeros(3, 1, 3)
    assert adversarial_loss(logits, torch.tensor([0, 1, 2]), 3).item() == pytest.approx(3 * math.log(2), abs=1e-6)
    # Output 1 confident for the domain-1 sample: its BCE becomes (log 2 + 0 + log 2) / 3.
    logits[1, 0, 1] = 50.0
    expected = math.log(2) + 2 / 3 * math.log(2) + math.log(2)
    assert adversarial_loss(logits, torch.tensor([0, 1, 2]), 3).item() == pytest.approx(expected, abs=1e-6)


PROBS = torch.tensor([[0.9, 0.55, 0.2], [0.1, 0.3, 0.6]])
Z = torch.tensor([[0.5, 0.5, 0.0], [0.4, 0.45, 0.3]])
LABELS = torch.tensor([[-2, -2, 1], [-2, -2, -2]])
SEEN = torch.tensor([True, False])
ALL = torch.ones(3, dtype=torch.bool)


def test_ensemble_losses_by_hand():
    # The masked squared errors: sample 1's unknown findings 0, 1: 0.4^2 + 0.05^2 = 0.1625;
    # finding 2 is labelled; sample 2 is not yet in the ensemble: 0.
    te = ensemble_mask(PROBS, SEEN, LABELS, ALL)
    # Default, Laine & Aila's mean over the B x C outputs (B = 2, C = 3): 0.1625 / 6
    assert ensemble_loss(PROBS, Z, te).item() == pytest.approx(0.1625 / 6)
    # C is eq. 1's C, the outputs the run trains (say 2 of the 3 columns): 0.1625 / 4
    assert ensemble_loss(PROBS, Z, te, num_classes=2).item() == pytest.approx(0.040625)
    # The older per-sample sum, averaged over the batch: 0.1625 / 2 = 0.08125 (3x the default here)
    assert ensemble_loss(PROBS, Z, te, reduction="per_sample_sum").item() == pytest.approx(0.08125)
    # UTE (eq. 6), H = 0.1: |0.5-0.55| = 0.05 < H drops finding 1: 0.16 / 6, or 0.16 / 2 = 0.08
    mask = ensemble_mask(PROBS, SEEN, LABELS, ALL, threshold=0.1)
    assert ensemble_loss(PROBS, Z, mask).item() == pytest.approx(0.16 / 6)
    assert ensemble_loss(PROBS, Z, mask, reduction="per_sample_sum").item() == pytest.approx(0.08)
    # Only finding 1 covered (the internal-only one): 0.05^2 / 6, or 0.05^2 / 2 = 0.00125
    only_1 = torch.tensor([False, True, False])
    assert ensemble_loss(PROBS, Z, ensemble_mask(PROBS, SEEN, LABELS, only_1)).item() == pytest.approx(0.0025 / 6)
    assert ensemble_loss(PROBS, Z, ensemble_mask(PROBS, SEEN, LABELS, only_1),
                         reduction="per_sample_sum").item() == pytest.approx(0.00125)


def test_ute_threshold_keeps_ties_and_drops_the_uncertain():
    # Exactly representable: |0.5 - 0.25| = 0.25 >= H = 0.25 is kept (eq. 6 says ≥), as is 0.75;
    # |0.5 - 0.375| = 0.125 < 0.25 is dropped, as is 0.5.
    probs = torch.tensor([[0.25, 0.375, 0.75, 0.5]])
    mask = ensemble_mask(probs, torch.tensor([True]), torch.full((1, 4), -2), torch.ones(4, dtype=torch.bool),
                         threshold=0.25)
    assert mask.tolist() == [[True, False, True, False]]
    # (0.25 - 0)^2 + (0.75 - 0)^2 = 0.625, over the 1 x 4 outputs
    assert ensemble_loss(probs, torch.zeros(1, 4), mask).item() == 0.625 / 4


def test_hard_labels_enter_eq_1_as_labels():
    # Masked entries (sample 1, findings 0 and 1) take round(z) = [1, 1] (0.5 rounds up); the
    # real label of finding 2 stays 1; sample 2 has no ensemble target yet and stays unknown.
    mask = ensemble_mask(PROBS, SEEN, LABELS, ALL)
    hard = with_hard_labels(LABELS, Z, mask)
    assert hard.tolist() == [[1, 1, 1], [-2, -2, -2]]
    # eq. 1 with α = 1, β = [2, 1, 1]: -(1/3)[2 log 0.9 + log 0.55 + log 0.2] / 2 (batch of 2)
    expected = -(2 * math.log(0.9) + math.log(0.55) + math.log(0.2)) / 3 / 2
    logits = torch.logit(PROBS)
    got = partial_label_bce(logits, hard, torch.ones(3), torch.tensor([2.0, 1.0, 1.0]))
    assert got.item() == pytest.approx(expected, rel=1e-5)
