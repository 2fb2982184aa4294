"""DenseNet-121 as torchvision builds it: the same modules, names, initialisation and forward, so
torchvision's `densenet121` state dicts load as they are and a seed draws the same weights.

Written out here rather than imported: importing torchvision loads torch._dynamo (~1.5 s on 2
cores), which every process that builds the network paid (each training worker, sweep trial and
`cxr` command) without compiling anything. tests/test_backbone.py checks it against torchvision.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

GROWTH_RATE = 32
BLOCK_LAYERS = (6, 12, 24, 16)
INIT_FEATURES = 64
BOTTLENECK_WIDTH = 4  # a layer's 1x1 conv gives BOTTLENECK_WIDTH * GROWTH_RATE channels


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 over the concatenation of every earlier feature map."""

    def __init__(self, in_channels: int, growth_rate: int = GROWTH_RATE, bottleneck_width: int = BOTTLENECK_WIDTH):
        super().__init__()
        width = bottleneck_width * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, earlier: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(earlier, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    """`layers` dense layers; the output concatenates the input and every layer's new maps."""

    def __init__(self, layers: int, in_channels: int, growth_rate: int = GROWTH_RATE):
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * growth_rate, growth_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """Between blocks: BN-ReLU-Conv1x1 to `out_channels`, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet121(nn.Module):
    """`features` (stem, four dense blocks, three transitions, norm5), then ReLU, global average
    pooling and `classifier`. Any input size works: the pooling is adaptive."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(INIT_FEATURES)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        channels = INIT_FEATURES
        for i, layers in enumerate(BLOCK_LAYERS):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(layers, channels))
            channels += layers * GROWTH_RATE
            if i != len(BLOCK_LAYERS) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        # torchvision's initialisation, in its order (the same seed gives the same weights).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x), inplace=True), (1, 1))
        return self.classifier(torch.flatten(out, 1))
