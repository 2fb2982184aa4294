import pytest
import torch
import torch.nn.functional as F

from cxrmodel.discriminators import BatchedDiscriminators, reverse_gradient
from cxrmodel.heads import MultiTaskHead, TaskSpecificHeads
from cxrmodel.losses import adversarial_loss
from cxrmodel.network import CXRNet


def test_batched_branches_equal_a_loop_of_linears():
    torch.manual_seed(0)
    heads = TaskSpecificHeads(in_features=16, num_findings=5, branch_features=4)
    x = torch.randn(3, 16)
    logits, features = heads(x)
    for c in range(5):
        w = heads.branch_weight[:, c * 4 : (c + 1) * 4]
        f_c = torch.relu(x @ w + heads.branch_bias[c * 4 : (c + 1) * 4])
        assert torch.allclose(features[:, c], f_c, atol=1e-6)
        expected = f_c @ heads.classifier_weight[c] + heads.classifier_bias[c]
        assert torch.allclose(logits[:, c], expected, atol=1e-6)


def test_batched_discriminators_equal_separate_mlps():
    torch.manual_seed(0)
    d = BatchedDiscriminators(num_tasks=3, in_features=6, num_domains=3, hidden=5)
    f = torch.randn(4, 3, 6)
    out = d(f)
    assert out.shape == (4, 3, 3)
    for t in range(3):
        h = f[:, t]
        for i, (w, b) in enumerate(zip(d.weights, d.biases)):
            h = h @ w[t] + b[t, 0]
            if i < 2:
                h = F.leaky_relu(h, 0.2)
        assert torch.allclose(out[:, t], h, atol=1e-6)


def test_multi_task_head_scores_common_findings_per_domain():
    torch.manual_seed(0)
    head = MultiTaskHead(in_features=8, num_findings=4, common=[1, 3], num_domains=3, branch_features=5)
    x = torch.randn(3, 8)
    logits, _ = head(x, torch.tensor([0, 1, 2]))
    # The method's task-specific branches, 4 + 2 common * 2 external domains = 8 of them.
    assert isinstance(head.branches, TaskSpecificHeads) and head.branches.branch_weight.shape == (8, 8 * 5)
    outputs, _ = head.branches(x)
    assert outputs.shape == (3, 8)
    assert torch.equal(logits[0], outputs[0, [0, 1, 2, 3]])
    assert torch.equal(logits[1], outputs[1, [0, 4, 2, 5]])
    assert torch.equal(logits[2], outputs[2, [0, 6, 2, 7]])


def test_reversed_gradient_is_minus_lambda_times_the_plain_one():
    f = torch.randn(4, 3, requires_grad=True)
    (reverse_gradient(f, 0.03) ** 2).sum().backward()
    assert torch.allclose(f.grad, -0.03 * 2 * f.detach())


def _domain_features(n=64, t=2, dim=6):
    torch.manual_seed(1)
    domain = torch.arange(n) % 2
    f = torch.randn(n, t, dim) + domain.view(-1, 1, 1) * 0.8  # domains differ in their mean
    return f, domain


def test_discriminator_step_increases_its_domain_accuracy():
    f, domain = _domain_features()
    disc = BatchedDiscriminators(2, 6, num_domains=2, hidden=16)
    opt = torch.optim.RMSprop(disc.parameters(), lr=1e-3)

    def accuracy():
        with torch.no_grad():
            return ((disc(f)[..., 0] > 0).long() == (domain == 0).long().unsqueeze(1)).float().mean().item()

    before_acc, before_loss = accuracy(), adversarial_loss(disc(f), domain, 2).item()
    for _ in range(60):
        opt.zero_grad()
        adversarial_loss(disc(reverse_gradient(f, 0.03)), domain, 2).backward()
        opt.step()
    assert adversarial_loss(disc(f), domain, 2).item() < before_loss
    assert accuracy() > max(before_acc, 0.7)


def test_generator_gradient_moves_features_to_confuse_the_discriminator():
    f, domain = _domain_features()
    disc = BatchedDiscriminators(2, 6, num_domains=2, hidden=16)
    opt = torch.optim.RMSprop(disc.parameters(), lr=1e-3)
    for _ in range(60):  # a discriminator that already separates the domains
        opt.zero_grad()
        adversarial_loss(disc(f), domain, 2).backward()
        opt.step()
    features = f.clone().requires_grad_(True)
    loss = adversarial_loss(disc(reverse_gradient(features, 1.0)), domain, 2)
    loss.backward()
    moved = features.detach() - 0.5 * features.grad  # a gradient-descent step of the generator
    with torch.no_grad():
        assert adversarial_loss(disc(moved), domain, 2).item() > loss.item()


def test_network_outputs_and_eval_mode_skips_the_adversary():
    model = CXRNet(5, [1, 2], 2, branch_features=8, discriminator_hidden=8)
    x = torch.randn(2, 1, 64, 64)
    out = model(x, torch.tensor([0, 1]))
    assert out.logits.shape == (2, 5) and out.domain_logits.shape == (2, 2, 1)
    model.eval()
    assert model(x).domain_logits is None
    hat = CXRNet(5, [1, 2], 3, head="holistic", branch_features=8, discriminator_hidden=8)
    assert hat(x, torch.tensor([0, 2])).domain_logits.shape == (2, 1, 3)


def test_impossible_networks_are_refused():
    with pytest.raises(ValueError, match="at least 2 domains"):
        CXRNet(5, [1], 1)
    with pytest.raises(ValueError, match="at least one common finding"):
        CXRNet(5, [], 2)
    with pytest.raises(ValueError, match="unknown head 'fancy'"):
        CXRNet(5, [1], 2, head="fancy", adversarial=False)
