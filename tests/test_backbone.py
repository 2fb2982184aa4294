import pytest
import torch
from torch import nn
from torchvision.models import densenet121

from cxrmodel.backbone import IBN, WeightsError, densenet121_ibn_a, ibn_layer_names
from cxrmodel.densenet import DenseNet121


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A torchvision densenet121 state dict (random init, as no weights are downloaded)."""
    torch.manual_seed(0)
    reference = densenet121(weights=None)
    with torch.no_grad():  # distinct running stats, so that a wrong mapping cannot pass
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    path = tmp_path_factory.mktemp("w") / "densenet121.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.state_dict()


def test_the_densenet_here_is_torchvisions_densenet121():
    """cxrmodel.densenet writes torchvision's network out: a seed draws the same weights under the
    same names, and they give the same outputs, training and evaluating."""
    torch.manual_seed(1)
    ours = DenseNet121()
    torch.manual_seed(1)
    theirs = densenet121(weights=None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    x = torch.randn(2, 3, 72, 72)
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        assert torch.equal(ours(x), theirs(x)), training
    assert torch.equal(ours.features.norm5.running_mean, theirs.features.norm5.running_mean)


def test_fourteen_ibn_layers_with_a_60_40_split():
    model = densenet121_ibn_a()
    ibn = {name: m for name, m in model.named_modules() if isinstance(m, IBN)}
    assert len(ibn) == 14
    assert sorted(ibn) == sorted(f"{n}.norm1" for n in ibn_layer_names())
    assert "features.denseblock1.denselayer4.norm1" in ibn and "features.denseblock1.denselayer2.norm1" not in ibn
    assert not any(n.startswith("features.denseblock4") for n in ibn)
    for m in ibn.values():
        channels = m.BN.num_features + m.IN.num_features
        assert m.BN.num_features == int(channels * 0.6)
        assert m.IN.affine and isinstance(m.IN, nn.InstanceNorm2d)
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) == 14


@pytest.mark.parametrize("size", [320, 64])
def test_forward_any_size(size):
    model = densenet121_ibn_a(in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 1024)


def test_torchvision_weights_map_onto_ibn_layers(torchvision_file):
    path, reference = torchvision_file
    model = densenet121_ibn_a(weights=path)
    state = model.state_dict()
    split = {f"{n}.norm1" for n in ibn_layer_names()}
    for key, value in reference.items():
        if key.startswith("classifier."):
            continue
        module = key.rsplit(".", 1)[0]
        if module in split:
            continue
        assert torch.equal(state[key], value), key  # every non-IBN tensor unchanged
    name = "features.denseblock2.denselayer7.norm1"
    k = int(reference[f"{name}.weight"].shape[0] * 0.6)
    for stat in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(state[f"{name}.BN.{stat}"], reference[f"{name}.{stat}"][:k])
    for stat in ("weight", "bias"):
        assert torch.equal(state[f"{name}.IN.{stat}"], reference[f"{name}.{stat}"][k:])


def test_gray_input_sums_the_rgb_filters(torchvision_file):
    path, reference = torchvision_file
    model = densenet121_ibn_a(weights=path, in_channels=1)
    assert torch.allclose(model.features.conv0.weight, reference["features.conv0.weight"].sum(1, keepdim=True))


def test_old_torchvision_key_names_load(torchvision_file, tmp_path):
    path, reference = torchvision_file
    # Files from torchvision's first releases: 'norm.1' for 'norm1' and no batch counters.
    old = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
        for k, v in reference.items() if not k.endswith("num_batches_tracked")
    }
    torch.save(old, tmp_path / "old.pth")
    a, b = densenet121_ibn_a(weights=path), densenet121_ibn_a(weights=tmp_path / "old.pth")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_official_ibn_file_loads_directly(tmp_path):
    torch.manual_seed(3)
    source = densenet121_ibn_a()
    state = {**source.state_dict(), "classifier.weight": torch.zeros(1000, 1024), "classifier.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "densenet121_ibn_a.pth")
    loaded = densenet121_ibn_a(weights=tmp_path / "densenet121_ibn_a.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))


def test_wrong_files_give_clear_errors(tmp_path):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(WeightsError, match=r"neither a torchvision densenet121 nor a densenet121_ibn_a.*Missing keys: features\..*Unexpected keys: bias, weight"):
        densenet121_ibn_a(weights=tmp_path / "linear.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        densenet121_ibn_a(weights=tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightsError, match="not a PyTorch state dict file"):
        densenet121_ibn_a(weights=tmp_path / "text.pth")
