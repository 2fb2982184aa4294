"""DenseIBN-121: DenseNet-121 (torchvision's layout, `cxrmodel.densenet`) with IBN-Net's IBN-a
normalisation.

As in IBN-Net's published DenseNet-IBN-a, `norm1` of dense layers 1, 4, 7, ... of dense blocks 1-3
(14 layers) becomes an `IBN`: the first 60% of channels through BatchNorm, the other 40% through
affine InstanceNorm. Module names match the official `densenet121_ibn_a` file, so it loads as is.
Weights only ever come from a local file the caller names.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from cxrmodel.densenet import BLOCK_LAYERS, DenseNet121

IBN_BLOCKS = (1, 2, 3)
BN_FRACTION = 0.6
FEATURES = 1024  # DenseNet-121's pooled feature width (the paper's N)


class IBN(nn.Module):
    """BatchNorm on the first `int(0.6 * channels)` channels, affine InstanceNorm on the rest."""

    def __init__(self, channels: int, bn_fraction: float = BN_FRACTION):
        super().__init__()
        self.bn_channels = int(channels * bn_fraction)
        self.BN = nn.BatchNorm2d(self.bn_channels)
        self.IN = nn.InstanceNorm2d(channels - self.bn_channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn_part, in_part = x.split([self.bn_channels, x.shape[1] - self.bn_channels], dim=1)
        return torch.cat([self.BN(bn_part.contiguous()), self.IN(in_part.contiguous())], dim=1)


def ibn_layer_names() -> list[str]:
    """'features.denseblockB.denselayerL' for every dense layer whose norm1 is an IBN."""
    return [
        f"features.denseblock{b}.denselayer{i + 1}"
        for b in IBN_BLOCKS
        for i in range(BLOCK_LAYERS[b - 1])
        if i % 3 == 0
    ]


def densenet121_ibn_a(weights: str | Path | None = None, in_channels: int = 3) -> nn.Module:
    """DenseIBN-121 feature extractor: images (B, in_channels, H, W) -> features (B, 1024).

    Any input size works (DenseNet pools adaptively). `weights` is a local file
    holding either a torchvision `densenet121` state dict (mapped onto the IBN layers) or an
    official `densenet121_ibn_a` state dict. With `in_channels=1`, ImageNet's RGB first-layer
    filters are summed, which gives the same response to a gray image repeated on 3 channels.
    """
    model = DenseNet121()
    for name in ibn_layer_names():
        layer = model.get_submodule(name)
        layer.norm1 = IBN(layer.norm1.num_features)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.features.conv0.weight)  # as torchvision initialises it
    model.classifier = nn.Identity()
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


class WeightsError(ValueError):
    """A weights file that is not a torchvision densenet121 nor a densenet121_ibn_a state dict."""


# Old torchvision files name dense-layer modules 'norm.1' where the code says 'norm1'.
_OLD_TORCHVISION_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist (weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise WeightsError(f"{path} is not a PyTorch state dict file: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = _OLD_TORCHVISION_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _split_torchvision_norms(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a plain DenseNet-121 state dict onto the IBN layers, channel by channel."""
    state = dict(state)
    for name in ibn_layer_names():
        prefix = f"{name}.norm1."
        if f"{prefix}weight" not in state:
            continue
        channels = state[f"{prefix}weight"].shape[0]
        k = int(channels * BN_FRACTION)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}BN.{stat}"] = state[f"{prefix}{stat}"][:k].clone()
        for stat in ("weight", "bias"):
            state[f"{prefix}IN.{stat}"] = state.pop(f"{prefix}{stat}")[k:].clone()
        state.pop(f"{prefix}running_mean")
        state.pop(f"{prefix}running_var")
        if f"{prefix}num_batches_tracked" in state:
            state[f"{prefix}BN.num_batches_tracked"] = state.pop(f"{prefix}num_batches_tracked")
    return state


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision densenet121 or an official densenet121_ibn_a file, strictly."""
    path = Path(path)
    state = _read_state_dict(path)
    is_torchvision = any(k.endswith("denselayer1.norm1.weight") for k in state)
    if is_torchvision:
        state = _split_torchvision_norms(state)
    # The ImageNet classifier is not part of the backbone.
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    conv0 = model.features.conv0.weight
    if "features.conv0.weight" in state and state["features.conv0.weight"].shape[1] != conv0.shape[1]:
        if conv0.shape[1] != 1:
            raise WeightsError(
                f"{path}: first conv has {state['features.conv0.weight'].shape[1]} input channels, "
                f"the model {conv0.shape[1]}; only 3 -> 1 (gray) is mapped"
            )
        state["features.conv0.weight"] = state["features.conv0.weight"].sum(dim=1, keepdim=True)
    expected = model.state_dict()
    for key in expected:  # files from before BatchNorm counted batches lack the counters
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, expected[key])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        k for k in set(expected) & set(state) if expected[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "") or "none"

        raise WeightsError(
            f"{path} is neither a torchvision densenet121 nor a densenet121_ibn_a state dict. "
            f"Missing keys: {show(missing)}. Unexpected keys: {show(unexpected)}. "
            f"Shape mismatches: {show(mismatched)}."
        )
    model.load_state_dict(state, strict=True)
