"""Each loss against numbers worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from cxrmodel.losses import adversarial_loss, ensemble_loss, finding_weights, partial_label_bce

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25, sigmoid(0) = 0.5


def test_partial_label_bce_by_hand():
    logits = torch.tensor([[0.0, LN3], [LN3, -LN3]])
    labels = torch.tensor([[1, 0], [-2, 1]])
    alpha, beta = torch.tensor([3.0, 1.0]), torch.tensor([2.0, 3.0])
    # sample 1: -(1/2) [3*2*log 0.5 + 1*log(1 - 0.75)] = -(1/2)(-4.1588831 - 1.3862944) = 2.7725887
    # sample 2: finding 0 unknown -> 0; -(1/2) [1*3*log 0.25] = 2.0794415
    # batch mean: (2.7725887 + 2.0794415) / 2 = 2.4260151
    assert partial_label_bce(logits, labels, alpha, beta).item() == pytest.approx(2.4260151, abs=1e-6)


def test_partial_label_bce_all_unknown_is_zero_and_extremes_are_finite():
    logits = torch.tensor([[100.0, -100.0]])
    assert partial_label_bce(logits, torch.tensor([[-2, -2]]), torch.ones(2), torch.ones(2)).item() == 0.0
    # A confident wrong answer: -(1/2) [1*1*log sigmoid(-100)] = 100/2 = 50, finite.
    loss = partial_label_bce(logits, torch.tensor([[-2, 1]]), torch.ones(2), torch.ones(2))
    assert loss.item() == pytest.approx(50.0, rel=1e-6)
    loss_grad = torch.tensor([[100.0, -100.0]], requires_grad=True)
    partial_label_bce(loss_grad, torch.tensor([[0, 1]]), torch.ones(2), torch.ones(2)).backward()
    assert torch.isfinite(loss_grad.grad).all()


def test_adversarial_loss_two_domains_by_hand():
    # Targets: 1 for the internal domain 0, 0 otherwise.
    # sample 1 (domain 0, logit 0): -log 0.5 = 0.6931472; sample 2 (domain 1, logit ln3): -log 0.25 = 1.3862944
    # task mean = 1.0397208; two identical tasks are summed: 2.0794415
    logits = torch.tensor([[[0.0], [0.0]], [[LN3], [LN3]]])
    assert adversarial_loss(logits, torch.tensor([0, 1]), 2).item() == pytest.approx(2.0794415, abs=1e-6)


def test_adversarial_loss_three_domains_one_vs_rest():
    # One task, K=3 outputs all 0 (p=0.5): every BCE term is log 2, mean over samples and outputs.
    logits = torch.zeros(3, 1, 3)
    assert adversarial_loss(logits, torch.tensor([0, 1, 2]), 3).item() == pytest.approx(math.log(2), abs=1e-6)
    # Output d=1 confident for the domain-1 sample only: that term drops to ~0, the others stay log 2.
    logits[1, 0, 1] = 50.0
    assert adversarial_loss(logits, torch.tensor([0, 1, 2]), 3).item() == pytest.approx(8 / 9 * math.log(2), abs=1e-6)


def test_ensemble_losses_by_hand():
    probs = torch.tensor([[0.9, 0.55, 0.2], [0.1, 0.3, 0.6]])
    z = torch.tensor([[0.5, 0.5, 0.0], [0.4, 0.45, 0.3]])
    labels = torch.tensor([[-2, -2, 1], [-2, -2, -2]])
    seen = torch.tensor([True, False])
    # TE (eq. 5): sample 1 unknown findings 0, 1: 0.4^2 + 0.05^2 = 0.1625; finding 2 is labelled.
    # sample 2 not yet in the ensemble: 0. Batch mean: 0.1625 / 2 = 0.08125
    assert ensemble_loss(probs, z, seen, labels).item() == pytest.approx(0.08125)
    # UTE (eq. 6), H = 0.1: |0.5-0.55| = 0.05 < H drops finding 1: 0.16 / 2 = 0.08
    assert ensemble_loss(probs, z, seen, labels, threshold=0.1).item() == pytest.approx(0.08)
    # Hard labels: sample 1 z = [0.5, 0.5, 0] -> [1, 1, 0] (0.5 rounds up): 0.1^2 + 0.45^2 = 0.2125 -> 0.10625
    assert ensemble_loss(probs, z, seen, labels, hard_labels=True).item() == pytest.approx(0.10625)


def test_ute_masks_exactly_the_uncertain_entries():
    probs = torch.tensor([[0.5, 0.61, 0.39, 0.6, 0.95, 0.05]])
    z = torch.zeros(1, 6)
    labels = torch.full((1, 6), -2)
    # H = 0.1: kept |0.5-p| >= 0.1 -> entries 1 (0.11), 2 (0.11), 3 (0.1), 4, 5; entry 0 (0.0) dropped.
    expected = 0.61**2 + 0.39**2 + 0.6**2 + 0.95**2 + 0.05**2
    got = ensemble_loss(probs, z, torch.tensor([True]), labels, threshold=0.1 - 1e-9).item()
    assert got == pytest.approx(expected)
    assert ensemble_loss(probs, z, torch.tensor([True]), labels, threshold=0.5).item() == 0.0


def test_finding_weights():
    space = ["Nodule", "Effusion", "Edema"]
    balance = {"Nodule": {"positive": 10, "negative": 90}, "Effusion": {"positive": 25, "negative": 75},
               "Edema": {"positive": 0, "negative": 5}}
    alpha, beta = finding_weights(space, ["Effusion"], balance, alpha=3.0)
    assert alpha.tolist() == [1.0, 3.0, 1.0]
    assert beta.tolist() == [9.0, 3.0, 1.0]  # N/P; no positives -> 1
    alpha, _ = finding_weights(space, ["Effusion"], balance, task_weighting=False)
    assert alpha.tolist() == [1.0, 1.0, 1.0]
    alpha, _ = finding_weights(space, ["Effusion"], balance, alpha_overrides={"Nodule": 2.0})
    assert alpha.tolist() == [2.0, 3.0, 1.0]
    with pytest.raises(ValueError, match=r"unknown finding\(s\) \['Nodle'\]"):
        finding_weights(space, ["Effusion"], balance, alpha_overrides={"Nodle": 2.0})
